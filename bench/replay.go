package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/oneport/oneport/mux"
)

// RunReplay sends a capture's client datagrams, with their captured timing
// (scaled by Speed), from Copies × flows client sockets to a oneport mux on
// 127.0.0.1, and counts what reaches each session.
//
// The sessions are made on an in-process mux (GetConn, one per copy of
// each flow), not through WHIP on a node: a capture's DTLS and SRTP belong
// to keys that died with the captured session, so a real node's
// PeerConnections would drop them after the mux delivered them, and only
// the mux's routing could be counted anyway. Each session's reader answers
// connectivity checks as an ICE agent does (MESSAGE-INTEGRITY with the
// session's password), which binds the client address in the mux, and
// counts every datagram by kind; RTP and RTCP count as the session's only
// when they carry its rewritten SSRCs, so a misrouted packet shows.

// Bounds on ReplayConfig.
const (
	MaxReplayCopies = 2000
	MaxReplaySpeed  = 1000
)

// ReplayConfig configures RunReplay. Capture is required; every other
// field documents its zero-value default.
type ReplayConfig struct {
	// Capture is the pcap or pcapng file to replay (read whole, at most
	// 64 MiB). Required unless CaptureData is set.
	Capture string
	// CaptureData is the capture's bytes, instead of a file.
	CaptureData []byte

	// Speed scales the capture's timing: 2 sends twice as fast. Zero means
	// 1; at most MaxReplaySpeed.
	Speed float64

	// Copies is how many times the capture's sessions are replayed at
	// once, each copy from its own sockets to its own sessions. Zero means
	// 1; at most MaxReplayCopies.
	Copies int

	// Mux configures the mux the sessions are on; its zero value is valid.
	Mux mux.Config

	// Settle bounds the wait for the last datagrams to reach the sessions
	// after the last is sent. Zero means 2s.
	Settle time.Duration

	// Logger receives progress events, never per-packet ones. The zero
	// Logger discards.
	Logger zerolog.Logger
}

func (c ReplayConfig) withDefaults() (ReplayConfig, error) {
	if c.Speed == 0 {
		c.Speed = 1
	}
	if c.Copies == 0 {
		c.Copies = 1
	}
	if c.Settle == 0 {
		c.Settle = 2 * time.Second
	}
	switch {
	case c.Capture == "" && c.CaptureData == nil:
		return c, fmt.Errorf("%w: no Capture", ErrInvalidConfig)
	case !(c.Speed >= 0.01 && c.Speed <= MaxReplaySpeed):
		return c, fmt.Errorf("%w: Speed %v not in 0.01..%d", ErrInvalidConfig, c.Speed, MaxReplaySpeed)
	case c.Copies < 1 || c.Copies > MaxReplayCopies:
		return c, fmt.Errorf("%w: Copies %d not in 1..%d", ErrInvalidConfig, c.Copies, MaxReplayCopies)
	case c.Settle < 0 || c.Settle > time.Minute:
		return c, fmt.Errorf("%w: Settle %v not in 0..1m", ErrInvalidConfig, c.Settle)
	}
	return c, nil
}

// ReplayReport is what RunReplay measured.
type ReplayReport struct {
	Started  time.Time `json:"started"`
	Host     HostInfo  `json:"host"`
	CPUModel string    `json:"cpu_model,omitempty"`
	Capture  string    `json:"capture"`
	Speed    float64   `json:"speed"`
	Copies   int       `json:"copies"`

	// The capture: client flows (one ICE session each), their datagrams
	// by kind, and the time from the first to the last.
	Flows          int               `json:"flows"`
	CapturedByKind map[string]uint64 `json:"captured_by_kind"`
	CaptureSeconds float64           `json:"capture_s"`

	Sessions int     `json:"sessions"` // Copies × Flows
	Seconds  float64 `json:"seconds"`  // sending
	// SentByKind counts datagrams sent, DeliveredByKind those a session
	// read as its own; Misrouted counts RTP/RTCP a session read carrying
	// another session's SSRC.
	Sent            uint64            `json:"sent"`
	SentByKind      map[string]uint64 `json:"sent_by_kind"`
	SendErrors      uint64            `json:"send_errors"`
	Delivered       uint64            `json:"delivered"`
	DeliveredByKind map[string]uint64 `json:"delivered_by_kind"`
	Misrouted       uint64            `json:"misrouted"`
	ChecksAnswered  uint64            `json:"checks_answered"`
	ChecksRejected  uint64            `json:"checks_rejected"`
	SessionsBound   int               `json:"sessions_bound"` // sessions that answered a check
	// MuxIn and MuxDrops are the mux's own counters over the run; every
	// datagram it read was delivered or dropped.
	MuxIn       uint64            `json:"mux_in"`
	MuxDrops    map[string]uint64 `json:"mux_drops,omitempty"`
	KernelDrops int64             `json:"kernel_drops"` // -1: unknown
	SentPPS     float64           `json:"sent_pps"`
}

// replayRx is one session and its reader's counters.
type replayRx struct {
	s         replaySession
	conn      net.PacketConn
	own       map[uint32]bool
	delivered [numPktKinds]atomic.Uint64
	misrouted atomic.Uint64
	answered  atomic.Uint64
	rejected  atomic.Uint64
}

// RunReplay replays cfg.Capture (see the type's doc). It returns the report
// so far with the error when ctx ends.
func RunReplay(ctx context.Context, cfg ReplayConfig) (ReplayReport, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return ReplayReport{}, err
	}
	log := cfg.Logger.With().Str("component", "bench").Logger()
	data := cfg.CaptureData
	if data == nil {
		if data, err = readBounded(cfg.Capture); err != nil {
			return ReplayReport{}, err
		}
	}
	ds, err := readCaptureBytes(data)
	if err != nil {
		return ReplayReport{}, err
	}
	pl, err := planReplay(ds)
	if err != nil {
		return ReplayReport{}, err
	}
	rep := ReplayReport{Started: time.Now(), Host: hostInfo(), CPUModel: cpuModel(), Capture: cfg.Capture, Speed: cfg.Speed, Copies: cfg.Copies,
		Flows: len(pl.flows), CapturedByKind: map[string]uint64{}, CaptureSeconds: pl.span.Seconds(), Sessions: cfg.Copies * len(pl.flows),
		SentByKind: map[string]uint64{}, DeliveredByKind: map[string]uint64{}, KernelDrops: -1}
	for _, p := range pl.pkts {
		rep.CapturedByKind[p.kind.String()]++
	}

	mcfg := cfg.Mux
	mcfg.Logger = log
	m, err := mux.Listen("127.0.0.1:0", mcfg)
	if err != nil {
		return rep, err
	}
	target := m.LocalAddr().(*net.UDPAddr).AddrPort()
	var wg sync.WaitGroup
	rxs := make([]*replayRx, 0, rep.Sessions)
	defer func() {
		for _, rx := range rxs {
			_ = rx.conn.Close()
		}
		_ = m.Close()
		wg.Wait()
	}()
	for c := range cfg.Copies {
		for f := range pl.flows {
			s := replaySession{ufrag: newUfrag(), pwd: newPassword()}
			rx := &replayRx{s: s, own: map[uint32]bool{}}
			for i := range pl.flows[f].ssrcs {
				ssrc := ssrcBase + uint32(c*len(pl.flows)+f)<<8 + uint32(i)
				s.ssrcs = append(s.ssrcs, ssrc)
				rx.own[ssrc] = true
			}
			rx.s = s
			if rx.conn, err = m.GetConn(s.ufrag, m.LocalAddr()); err != nil {
				return rep, fmt.Errorf("bench: replay session: %w", err)
			}
			rxs = append(rxs, rx)
			wg.Add(1)
			go func() {
				defer wg.Done()
				rx.read()
			}()
		}
	}
	// Every copy's datagrams, rewritten before the clock starts.
	sends := make([][][]byte, cfg.Copies)
	for c := range cfg.Copies {
		sends[c] = make([][]byte, len(pl.pkts))
		for i, p := range pl.pkts {
			if sends[c][i], err = rewrite(p, pl.flows[p.flow], rxs[c*len(pl.flows)+p.flow].s); err != nil {
				return rep, err
			}
		}
	}
	st0 := m.Stats()
	drops0, _ := kernelDrops("udp4", target.Port())
	log.Info().Int("flows", len(pl.flows)).Int("copies", cfg.Copies).Int("datagrams", len(pl.pkts)).Msg("replay: sending")

	start := time.Now()
	sent := make([][numPktKinds]uint64, cfg.Copies)
	sendErrs := make([]uint64, cfg.Copies)
	errs := make([]error, cfg.Copies)
	var swg sync.WaitGroup
	for c := range cfg.Copies {
		swg.Add(1)
		go func() {
			defer swg.Done()
			errs[c] = replayCopy(ctx, target, pl, sends[c], start, cfg.Speed, &sent[c], &sendErrs[c])
		}()
	}
	swg.Wait()
	rep.Seconds = time.Since(start).Seconds()
	for c := range cfg.Copies {
		if errs[c] != nil && err == nil {
			err = errs[c]
		}
		rep.SendErrors += sendErrs[c]
		for k, n := range sent[c] {
			rep.Sent += n
			if n > 0 {
				rep.SentByKind[pktKind(k).String()] += n
			}
		}
	}
	// Wait for the mux to have read and settled every datagram sent.
	deadline := time.Now().Add(cfg.Settle)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		st := m.Stats()
		if st.TotalIn()-st0.TotalIn() >= rep.Sent && accounted(rxs, st, st0) >= st.TotalIn()-st0.TotalIn() {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	st := m.Stats()
	rep.MuxIn = st.TotalIn() - st0.TotalIn()
	rep.MuxDrops = map[string]uint64{}
	for i := range st.Drops {
		if n := st.Drops[i] - st0.Drops[i]; n > 0 {
			rep.MuxDrops[mux.DropReason(i).String()] = n
		}
	}
	if d, ok := kernelDrops("udp4", target.Port()); ok {
		rep.KernelDrops = int64(d - drops0)
	}
	for _, rx := range rxs {
		for k := range rx.delivered {
			if n := rx.delivered[k].Load(); n > 0 {
				rep.Delivered += n
				rep.DeliveredByKind[pktKind(k).String()] += n
			}
		}
		rep.Misrouted += rx.misrouted.Load()
		rep.ChecksAnswered += rx.answered.Load()
		rep.ChecksRejected += rx.rejected.Load()
		if rx.answered.Load() > 0 {
			rep.SessionsBound++
		}
	}
	if rep.Seconds > 0 {
		rep.SentPPS = float64(rep.Sent) / rep.Seconds
	}
	return rep, err
}

func readCaptureBytes(b []byte) ([]capDatagram, error) { return readCapture(bytesReader(b)) }

// accounted is what the sessions read plus what the mux dropped, since st0.
func accounted(rxs []*replayRx, st, st0 mux.Stats) uint64 {
	n := st.TotalDrops() - st0.TotalDrops()
	for _, rx := range rxs {
		for k := range rx.delivered {
			n += rx.delivered[k].Load()
		}
		n += rx.misrouted.Load() + rx.rejected.Load()
	}
	return n
}

// replayCopy sends one copy: a socket per flow, each datagram at its
// captured time divided by speed.
func replayCopy(ctx context.Context, target netip.AddrPort, pl *replayPlan, pkts [][]byte, start time.Time, speed float64, sent *[numPktKinds]uint64, errs *uint64) error {
	conns := make([]*net.UDPConn, len(pl.flows))
	defer func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
	}()
	for i := range conns {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(target))
		if err != nil {
			return fmt.Errorf("bench: replay socket: %w", err)
		}
		conns[i] = c
	}
	for i, p := range pl.pkts {
		due := start.Add(time.Duration(float64(p.at) / speed))
		if d := time.Until(due); d > 0 {
			if err := sleepCtx(ctx, d); err != nil {
				return err
			}
		} else if i%256 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		if _, err := conns[p.flow].Write(pkts[i]); err != nil && !isRefused(err) {
			*errs++
			continue
		}
		sent[p.kind]++
	}
	return nil
}

// read is one session's reader: it answers checks that carry its
// credentials (which binds the sender's address) and counts the rest.
func (rx *replayRx) read() {
	buf := make([]byte, 2048)
	ap, _ := rx.conn.(interface {
		ReadFromAddrPort([]byte) (int, netip.AddrPort, error)
		WriteToAddrPort([]byte, netip.AddrPort) (int, error)
	})
	pwdOf := func(u string) (string, bool) { return rx.s.pwd, u == rx.s.ufrag }
	for {
		n, from, err := ap.ReadFromAddrPort(buf)
		if err != nil {
			if isClosed(err) {
				return
			}
			continue
		}
		p := buf[:n]
		k := classify(p)
		switch k {
		case kindSTUN:
			if p[0] == 0 && p[1] == 1 { // Binding request: answer as the ICE agent would
				resp, err := answerBinding(p, from, pwdOf)
				if err != nil {
					rx.rejected.Add(1)
					continue
				}
				if _, err := ap.WriteToAddrPort(resp, from); err == nil {
					rx.answered.Add(1)
				}
			}
		case kindRTP, kindRTCP:
			off := 8
			if k == kindRTCP {
				off = 4
			}
			if !rx.own[binary.BigEndian.Uint32(p[off:off+4])] {
				rx.misrouted.Add(1)
				continue
			}
		}
		rx.delivered[k].Add(1)
	}
}

// WriteText writes the report.
func (r ReplayReport) WriteText(w io.Writer) error {
	e := &errWriter{w: w}
	e.printf("oneport bench replay  %s  %s\n", r.Started.Format(time.RFC3339), r.Capture)
	e.printf("machine: %s, %d CPUs, %s/%s, %s\n", orUnknown(r.CPUModel), r.Host.CPUs, r.Host.GOOS, r.Host.GOARCH, r.Host.GoVersion)
	e.printf("capture: %d client flows, %.2fs, %s\n", r.Flows, r.CaptureSeconds, formatCounts(r.CapturedByKind))
	e.printf("replay: %d copies at %gx = %d sessions on oneport's mux (127.0.0.1), %.2fs\n", r.Copies, r.Speed, r.Sessions, r.Seconds)
	e.printf("sent %d datagrams (%.0f/s): %s; send errors %d\n", r.Sent, r.SentPPS, formatCounts(r.SentByKind), r.SendErrors)
	e.printf("delivered to their sessions %d: %s; misrouted %d\n", r.Delivered, formatCounts(r.DeliveredByKind), r.Misrouted)
	e.printf("checks answered %d (sessions bound %d of %d), rejected %d\n", r.ChecksAnswered, r.SessionsBound, r.Sessions, r.ChecksRejected)
	e.printf("mux read %d; dropped %s; kernel drops %d\n", r.MuxIn, formatCounts(r.MuxDrops), r.KernelDrops)
	return e.err
}
