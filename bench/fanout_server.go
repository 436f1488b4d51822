package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/pion/ice/v4"
	"github.com/rs/zerolog"

	"github.com/oneport/oneport/mux"
	"github.com/oneport/oneport/sfu"
)

// Mux names for FanoutConfig.Muxes: the UDP mux the server under test puts
// every PeerConnection on.
const (
	MuxPion    = "pion"    // ice.NewUDPMuxDefault on one socket, as `oneport serve --mux pion`
	MuxOneport = "oneport" // oneport's mux, as `oneport serve`
)

// fanoutServerJob starts the node under test.
type fanoutServerJob struct {
	Mux        string    `json:"mux"`
	Sockets    int       `json:"sockets"`     // oneport mux sockets; 0: its default
	ProfileDir string    `json:"profile_dir"` // CPU profile of each window here; "": none
	Deadline   time.Time `json:"deadline"`
}

type fanoutServerReady struct {
	childMsg
	PID  int    `json:"pid"`
	HTTP string `json:"http"` // signaling address, host:port
	UDP  string `json:"udp"`  // the media port
}

// serverSample is the server's cost and counters at one instant.
type serverSample struct {
	At          time.Time         `json:"at"`
	CPU         time.Duration     `json:"cpu"` // user+system, all threads
	SFU         sfu.Stats         `json:"sfu"`
	MuxDrops    map[string]uint64 `json:"mux_drops,omitempty"` // oneport's mux only
	MuxOut      uint64            `json:"mux_out"`             // datagrams oneport's mux sent
	MuxQueued   uint64            `json:"mux_queued"`          // of them, sent queued behind another send (sendmmsg)
	KernelDrops int64             `json:"kernel_drops"`        // media port's sockets; -1: unknown
}

type fanoutServerReport struct {
	childMsg
	Start   serverSample `json:"start"`
	End     serverSample `json:"end"`
	Profile string       `json:"profile,omitempty"`
}

// fanoutServer is the node under test: the sfu on one of the two muxes with
// its signaling API, as `oneport serve` builds it (same sfu.Config but for
// the logger), in its own process so that process's CPU is the server's.
type fanoutServer struct {
	job      fanoutServerJob
	srv      *sfu.Server
	hs       *http.Server
	httpDone chan error
	port     uint16
	closers  []io.Closer
	muxStats func(*serverSample) // oneport's mux only

	mu       sync.Mutex // guards the fields below and every serverWindow's
	win      *serverWindow
	profFile *os.File // the CPU profile being written
}

// serverWindow is one measurement window: samples taken by timers at its
// bounds, and a CPU profile between them when asked for.
type serverWindow struct {
	startT, endT *time.Timer
	start, end   serverSample
	over         bool          // the end sample is being taken: no start any more
	ended        chan struct{} // closed after the end sample
	profile      string
}

func runFanoutServer(cio *childIO) error {
	var job fanoutServerJob
	if err := cio.next(&job); err != nil {
		return err
	}
	if err := exitAtDeadline(roleServer, job.Deadline); err != nil {
		return err
	}
	s, err := openFanoutServer(job)
	if err != nil {
		return err
	}
	defer s.close()
	if err := cio.reply(fanoutServerReady{childMsg{Event: "ready"}, os.Getpid(), s.hs.Addr, net.JoinHostPort("127.0.0.1", fmt.Sprint(s.port))}); err != nil {
		return err
	}
	for {
		var cmd childCmd
		if err := cio.next(&cmd); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		switch cmd.Cmd {
		case "quit":
			return nil
		case "window":
			if err := s.schedule(cmd); err != nil {
				return err
			}
			if err := cio.reply(childMsg{Event: "window"}); err != nil {
				return err
			}
		case "report":
			rep, err := s.report()
			if err != nil {
				return err
			}
			if err := cio.reply(rep); err != nil {
				return err
			}
		default:
			return fmt.Errorf("bench server: unknown command %q", cmd.Cmd)
		}
		select {
		case err := <-s.httpDone:
			return fmt.Errorf("bench server: http: %w", err)
		default:
		}
	}
}

func openFanoutServer(job fanoutServerJob) (s *fanoutServer, err error) {
	s = &fanoutServer{job: job, httpDone: make(chan error, 1), muxStats: func(*serverSample) {}}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	log := zerolog.New(os.Stderr).Level(zerolog.WarnLevel).With().Timestamp().Str("role", roleServer).Logger()
	var udpMux ice.UDPMux
	switch job.Mux {
	case MuxOneport:
		m, err := mux.Listen("127.0.0.1:0", mux.Config{Sockets: job.Sockets, Logger: log})
		if err != nil {
			return s, err
		}
		s.closers = append(s.closers, m)
		s.port = uint16(m.LocalAddr().(*net.UDPAddr).Port)
		s.muxStats = func(smp *serverSample) {
			st := m.Stats()
			smp.MuxDrops = map[string]uint64{}
			for i, n := range st.Drops {
				if n > 0 {
					smp.MuxDrops[mux.DropReason(i).String()] = n
				}
			}
			for _, n := range st.PacketsOut {
				smp.MuxOut += n
			}
			smp.MuxQueued = st.QueuedOut
		}
		udpMux = m
	case MuxPion:
		// One socket, as `oneport serve --mux pion`, with the kernel buffer
		// oneport's mux asks for (8 MiB), so neither loses for lack of one.
		uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return s, fmt.Errorf("bench server: listen: %w", err)
		}
		if err := setSocketBuffers(uc, 8<<20); err != nil {
			_ = uc.Close()
			return s, err
		}
		s.port = uint16(uc.LocalAddr().(*net.UDPAddr).Port)
		pm := ice.NewUDPMuxDefault(ice.UDPMuxParams{UDPConn: uc})
		s.closers = append(s.closers, pm, uc)
		udpMux = pm
	default:
		return s, fmt.Errorf("%w: mux %q (want %s or %s)", ErrInvalidConfig, job.Mux, MuxPion, MuxOneport)
	}
	// No signaling rate limit: every client of the bench comes from
	// 127.0.0.1, and the limit guards against a client, not what is measured.
	if s.srv, err = sfu.New(sfu.Config{UDPMux: udpMux, Logger: log, IncludeLoopback: true, SignalingRate: -1}); err != nil {
		return s, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return s, fmt.Errorf("bench server: http listen: %w", err)
	}
	s.hs = sfu.NewHTTPServer(ln.Addr().String(), s.srv.Handler())
	go func() { s.httpDone <- s.hs.Serve(ln) }()
	return s, nil
}

// schedule arms the window's samples (and profile) at its bounds. The
// parent reports each window before it schedules the next.
func (s *fanoutServer) schedule(cmd childCmd) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.win != nil && s.win.endT.Stop() {
		s.win.startT.Stop()
		s.stopProfileLocked()
	}
	w := &serverWindow{ended: make(chan struct{})}
	if s.job.ProfileDir != "" {
		w.profile = filepath.Join(s.job.ProfileDir, fmt.Sprintf("fanout-%s-%s.pprof", s.job.Mux, cmd.Label))
	}
	s.win = w
	w.startT = time.AfterFunc(time.Until(cmd.Start), func() {
		smp := s.sample()
		s.mu.Lock()
		defer s.mu.Unlock()
		if w.over {
			return
		}
		w.start = smp
		if w.profile != "" {
			s.startProfileLocked(w.profile)
		}
	})
	w.endT = time.AfterFunc(time.Until(cmd.End), func() {
		s.mu.Lock()
		w.over = true
		s.stopProfileLocked()
		s.mu.Unlock()
		smp := s.sample()
		s.mu.Lock()
		w.end = smp
		s.mu.Unlock()
		close(w.ended)
	})
	return nil
}

func (s *fanoutServer) startProfileLocked(path string) {
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench server: profile:", err)
		return
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		fmt.Fprintln(os.Stderr, "bench server: profile:", err)
		return
	}
	s.profFile = f
}

func (s *fanoutServer) stopProfileLocked() {
	if s.profFile != nil {
		pprof.StopCPUProfile()
		_ = s.profFile.Close()
		s.profFile = nil
	}
}

// report waits for the current window's end sample.
func (s *fanoutServer) report() (fanoutServerReport, error) {
	s.mu.Lock()
	w := s.win
	s.mu.Unlock()
	if w == nil {
		return fanoutServerReport{}, errors.New("bench server: report before any window")
	}
	t := time.NewTimer(runReplySlack)
	defer t.Stop()
	select {
	case <-w.ended:
	case <-t.C:
		return fanoutServerReport{}, errors.New("bench server: window never ended")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rep := fanoutServerReport{childMsg: childMsg{Event: "report"}, Start: w.start, End: w.end}
	if w.start.At.IsZero() {
		return rep, errors.New("bench server: window ended before it started")
	}
	if w.profile != "" {
		rep.Profile = w.profile
	}
	return rep, nil
}

func (s *fanoutServer) sample() serverSample {
	cpu, _ := cpuTime()
	smp := serverSample{At: time.Now(), CPU: cpu, SFU: s.srv.Stats(), KernelDrops: -1}
	s.muxStats(&smp)
	if d, ok := kernelDrops("udp4", s.port); ok {
		smp.KernelDrops = int64(d)
	}
	return smp
}

func (s *fanoutServer) close() {
	s.mu.Lock()
	if s.win != nil {
		s.win.startT.Stop()
		s.win.endT.Stop()
	}
	s.stopProfileLocked()
	s.mu.Unlock()
	if s.hs != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := s.hs.Shutdown(ctx); err != nil {
			_ = s.hs.Close()
		}
		cancel()
	}
	if s.srv != nil {
		_ = s.srv.Close()
	}
	for _, c := range s.closers {
		_ = c.Close()
	}
}
