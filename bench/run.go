package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"time"

	"github.com/rs/zerolog"
)

// Bounds on the waits between the parent and its senders.
const (
	senderStartSlack = 10 * time.Second // process start and socket setup, beyond the handshake
	runReplySlack    = 30 * time.Second // a sender's "done", beyond the run's duration
	drainLimit       = 10 * time.Second // a receiver's backlog after the senders stop
	quietPolls       = 3                // polls without progress that mean drained
	pollInterval     = 10 * time.Millisecond
	heapSampleEvery  = 100 * time.Millisecond
	senderStopGrace  = 2 * time.Second
)

// ErrNoSessions is returned when no session of a receiver got its STUN
// check answered, so there is nothing to measure.
var ErrNoSessions = errors.New("bench: no session's STUN check was answered")

// RunMux replays the same STUN-then-RTP traffic into each receiver of
// cfg.Receivers in turn and reports what each delivered and what it cost.
// It starts cfg.Senders copies of the current binary as sender processes,
// so the program must call MaybeRunSender first thing. It returns the
// report so far with the error when a receiver fails.
func RunMux(ctx context.Context, cfg MuxConfig) (MuxReport, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return MuxReport{}, err
	}
	log := cfg.Logger.With().Str("component", "bench").Logger()
	rep := MuxReport{Started: time.Now(), Host: hostInfo(), Config: reportConfig(cfg)}
	for _, name := range cfg.Receivers {
		log.Info().Str("receiver", name).Int("sessions", cfg.Sessions).Msg("measuring")
		rr, err := runReceiver(ctx, cfg, name, log)
		if err != nil {
			return rep, fmt.Errorf("bench: receiver %s: %w", name, err)
		}
		rep.Receivers = append(rep.Receivers, rr)
	}
	rep.compareToRaw()
	if cfg.StalledPackets > 0 {
		for _, name := range cfg.Receivers {
			if name == ReceiverRaw {
				continue // no sessions, nothing to stall
			}
			log.Info().Str("receiver", name).Int("packets", cfg.StalledPackets).Msg("stalled session")
			rep.Stalled = append(rep.Stalled, measureStalled(ctx, cfg, name))
		}
	}
	return rep, ctx.Err()
}

// openReceiver starts the named receiver serving specs. With stall, every
// session's reader stops reading after it has answered one check.
func openReceiver(cfg MuxConfig, name string, specs []sessionSpec, stall bool) (receiver, error) {
	switch name {
	case ReceiverRaw:
		return newRawReceiver(cfg, specs)
	case ReceiverPion:
		return newPionReceiver(cfg, specs, stall, stall)
	case ReceiverOneport:
		return newOneportReceiver(cfg, specs, stall)
	}
	return nil, fmt.Errorf("%w: unknown receiver %q", ErrInvalidConfig, name)
}

func runReceiver(ctx context.Context, cfg MuxConfig, name string, log zerolog.Logger) (rr ReceiverReport, err error) {
	rr.Name = name
	specs := newSpecs(cfg.Sessions)
	rcv, err := openReceiver(cfg, name, specs, false)
	if err != nil {
		return rr, err
	}
	defer func() {
		if cerr := rcv.close(); err == nil && cerr != nil {
			err = fmt.Errorf("bench: close: %w", cerr)
		}
	}()

	start := time.Now()
	procs, err := startSenders(cfg, rcv.addr(), "", specs)
	defer func() { stopSenders(procs, err == nil) }() // runs before rcv.close
	if err != nil {
		return rr, err
	}
	for _, p := range procs {
		ev, err := p.next(ctx, "ready", cfg.HandshakeTimeout+senderStartSlack)
		if err != nil {
			return rr, err
		}
		rr.SessionsBound += ev.Bound
		rr.SessionsFailed += ev.Failed
	}
	rr.HandshakeSeconds = time.Since(start).Seconds()
	if rr.SessionsBound == 0 {
		return rr, ErrNoSessions
	}
	log.Info().Str("receiver", name).Int("bound", rr.SessionsBound).Int("failed", rr.SessionsFailed).Msg("sessions up")

	if cfg.WarmUp > 0 {
		if _, err := measure(ctx, cfg, rcv, procs, cfg.Sizes[0], cfg.WarmUp, 0, log); err != nil {
			return rr, fmt.Errorf("bench: warm-up: %w", err)
		}
	}
	rr.HeapWarmBytes = heapAfterGC()
	for _, size := range cfg.Sizes {
		m, err := measure(ctx, cfg, rcv, procs, size, cfg.Duration, 0, log)
		if err != nil {
			return rr, fmt.Errorf("bench: %d-byte run: %w", size, err)
		}
		rr.Runs = append(rr.Runs, m.runReport(size))
		log.Info().Str("receiver", name).Int("size", size).Float64("pps", rr.Runs[len(rr.Runs)-1].DeliveredPPS).Msg("run done")
	}
	if cfg.Hostile {
		m, err := measure(ctx, cfg, rcv, procs, cfg.Sizes[0], cfg.Duration, cfg.HostileRatio, log)
		if err != nil {
			return rr, fmt.Errorf("bench: hostile run: %w", err)
		}
		rr.Hostile = m.hostileReport(cfg.Sizes[0], cfg.HostileRatio)
	}
	rr.HeapEndBytes = heapAfterGC()
	return rr, nil
}

// startSenders starts cfg.Senders processes, each with a contiguous share
// of the sessions and of the hostile sockets. On error the ones started are
// returned too, for stopSenders.
// startSenders starts cfg.Senders sender processes for specs, their clients
// sending to target from source ("": the kernel's choice of address).
func startSenders(cfg MuxConfig, target netip.AddrPort, source string, specs []sessionSpec) ([]*senderProc, error) {
	deadline := time.Now().Add(runBudget(cfg))
	var procs []*senderProc
	for i := range cfg.Senders {
		job := senderJob{
			Network:          cfg.Network,
			Target:           target.String(),
			Source:           source,
			Sessions:         specs[i*len(specs)/cfg.Senders : (i+1)*len(specs)/cfg.Senders],
			Batch:            cfg.SenderBatch,
			HandshakeTimeout: cfg.HandshakeTimeout,
			HostileSSRCBase:  spoofSSRCBase + uint32(i*MaxHostileSockets),
			Deadline:         deadline,
			Nice:             cfg.SenderNice,
		}
		if cfg.Hostile {
			job.HostileSockets = (i+1)*cfg.HostileSockets/cfg.Senders - i*cfg.HostileSockets/cfg.Senders
		}
		p, err := startSender(job)
		if err != nil {
			return procs, err
		}
		procs = append(procs, p)
	}
	return procs, nil
}

// stopSenders stops every sender: after a clean run they get a moment to
// exit by themselves; on an error path they are killed at once.
func stopSenders(procs []*senderProc, clean bool) {
	deadline := time.Now()
	if clean {
		deadline = deadline.Add(senderStopGrace)
	}
	for _, p := range procs {
		p.requestStop()
	}
	for _, p := range procs {
		p.stop(deadline)
	}
}

// runBudget bounds a sender's life: everything one receiver asks of it,
// with slack for every wait.
func runBudget(cfg MuxConfig) time.Duration {
	runs := time.Duration(len(cfg.Sizes) + 1)
	return cfg.HandshakeTimeout + senderStartSlack + max(cfg.WarmUp, 0) + runs*(cfg.Duration+runReplySlack+drainLimit)
}

// measurement is one run's raw figures.
type measurement struct {
	sent, sentBytes, writeErrors uint64
	hostile                      HostileCounts
	senderElapsed                time.Duration // the longest sender's
	window                       time.Duration // start command to last delivery
	cpu                          time.Duration
	counts                       recvCounts
	drops                        map[string]uint64
	kernelDrops                  int64 // -1: unknown
	heapPeak                     uint64
}

// measure runs the senders once and counts what the receiver got: from the
// start command until its counters stop moving after the senders finished.
func measure(ctx context.Context, cfg MuxConfig, rcv receiver, procs []*senderProc, size int, dur time.Duration, hostile float64, log zerolog.Logger) (m measurement, err error) {
	if _, err := waitQuiet(ctx, rcv, log); err != nil {
		return m, err
	}
	c0, d0 := rcv.counts(), rcv.muxDrops()
	k0, kok := kernelDrops(cfg.Network, rcv.addr().Port())
	cpu0, err := cpuTime()
	if err != nil {
		return m, err
	}
	pt := rcv.nextRun()
	t0 := time.Now()
	hs := startHeapSampler()
	defer func() { m.heapPeak = hs.stop() }()
	var rate float64
	if cfg.Rate > 0 {
		rate = float64(cfg.Rate) / float64(len(procs))
	}
	for _, p := range procs {
		if err := p.send(senderCmd{Cmd: "run", Size: size, PayloadType: pt, Duration: dur, Rate: rate, HostileRatio: hostile}); err != nil {
			return m, err
		}
	}
	for _, p := range procs {
		ev, err := p.next(ctx, "done", dur+runReplySlack)
		if err != nil {
			return m, err
		}
		m.sent += ev.Sent
		m.sentBytes += ev.Bytes
		m.writeErrors += ev.WriteErrors
		m.hostile = m.hostile.add(ev.Hostile)
		m.senderElapsed = max(m.senderElapsed, ev.Elapsed)
	}
	last, err := waitQuiet(ctx, rcv, log)
	if err != nil {
		return m, err
	}
	cpu1, err := cpuTime()
	if err != nil {
		return m, err
	}
	m.counts = rcv.counts().sub(c0)
	m.drops = subCounts(rcv.muxDrops(), d0)
	if k1, ok := kernelDrops(cfg.Network, rcv.addr().Port()); ok && kok {
		m.kernelDrops = int64(k1 - k0)
	} else {
		m.kernelDrops = -1
	}
	m.window = last.Sub(t0)
	m.cpu = cpu1 - cpu0
	return m, nil
}

// waitQuiet polls the receiver until its counters have not moved for
// quietPolls polls, and returns when they last moved. A receiver that is
// still busy after drainLimit is logged and measured as it is: its backlog
// counts as lost.
func waitQuiet(ctx context.Context, rcv receiver, log zerolog.Logger) (time.Time, error) {
	activity := func() uint64 { return rcv.counts().total() + rcv.datagramsIn() }
	last, lastMoved := activity(), time.Now()
	limit := time.Now().Add(drainLimit)
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for still := 0; still < quietPolls; {
		select {
		case <-ctx.Done():
			return lastMoved, ctx.Err()
		case now := <-t.C:
			if a := activity(); a != last {
				last, lastMoved, still = a, now, 0
			} else {
				still++
			}
			if now.After(limit) {
				log.Warn().Dur("limit", drainLimit).Msg("receiver still busy; measuring anyway")
				return lastMoved, nil
			}
		}
	}
	return lastMoved, nil
}

func (m measurement) runReport(size int) RunReport {
	r := RunReport{
		Size:              size,
		Seconds:           m.window.Seconds(),
		Sent:              m.sent,
		Delivered:         m.counts.Delivered,
		Lost:              int64(m.sent) - int64(m.counts.Delivered),
		Misrouted:         m.counts.Misrouted,
		Stale:             m.counts.Stale,
		KernelDrops:       m.kernelDrops,
		CPUSeconds:        m.cpu.Seconds(),
		HeapPeakBytes:     m.heapPeak,
		MuxDrops:          m.drops,
		SenderWriteErrors: m.writeErrors,
		ReadErrors:        m.counts.Errors,
	}
	if m.senderElapsed > 0 {
		r.OfferedPPS = float64(m.sent) / m.senderElapsed.Seconds()
	}
	if m.sent > 0 {
		r.LossRatio = float64(r.Lost) / float64(m.sent)
	}
	if m.window > 0 {
		r.DeliveredPPS = float64(m.counts.Delivered) / m.window.Seconds()
		r.CPUCores = m.cpu.Seconds() / m.window.Seconds()
	}
	if m.counts.Delivered > 0 {
		r.CPUNsPerPacket = float64(m.cpu.Nanoseconds()) / float64(m.counts.Delivered)
		r.CPUPerMillion = r.CPUNsPerPacket / 1e3 // ns per packet = 1e-3 s per million
	}
	return r
}

func (m measurement) hostileReport(size int, ratio float64) *HostileReport {
	run := m.runReport(size)
	return &HostileReport{
		Ratio:          ratio,
		Size:           size,
		Seconds:        run.Seconds,
		ValidSent:      m.sent,
		ValidDelivered: m.counts.Delivered,
		ValidLossRatio: run.LossRatio,
		DeliveredPPS:   run.DeliveredPPS,
		CPUNsPerPacket: run.CPUNsPerPacket,
		HostileSent:    m.hostile,
		Reached: HostileReached{
			STUNRejected: m.counts.STUNRejected,
			SpoofedRTP:   m.counts.SpoofedRTP,
			Other:        m.counts.Other,
			Misrouted:    m.counts.Misrouted,
			STUNAnswered: m.counts.STUNAnswered,
		},
		MuxDrops:    m.drops,
		KernelDrops: m.kernelDrops,
	}
}

// compareToRaw fills the ratios against the raw receiver's run of the same
// size.
func (r *MuxReport) compareToRaw() {
	rawRuns := map[int]RunReport{}
	for _, rr := range r.Receivers {
		if rr.Name == ReceiverRaw {
			for _, run := range rr.Runs {
				rawRuns[run.Size] = run
			}
		}
	}
	for i := range r.Receivers {
		rr := &r.Receivers[i]
		for j := range rr.Runs {
			run := &rr.Runs[j]
			raw, ok := rawRuns[run.Size]
			if !ok {
				continue
			}
			if raw.DeliveredPPS > 0 {
				run.PPSvsRaw = run.DeliveredPPS / raw.DeliveredPPS
			}
			if raw.CPUNsPerPacket > 0 {
				run.CPUvsRaw = run.CPUNsPerPacket / raw.CPUNsPerPacket
			}
		}
	}
}

func subCounts(a, b map[string]uint64) map[string]uint64 {
	if a == nil {
		return nil
	}
	d := make(map[string]uint64, len(a))
	for k, v := range a {
		if v > b[k] {
			d[k] = v - b[k]
		}
	}
	return d
}

func hostInfo() HostInfo {
	return HostInfo{
		GOOS: runtime.GOOS, GOARCH: runtime.GOARCH, CPUs: runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0), GoVersion: runtime.Version(),
	}
}

func reportConfig(c MuxConfig) ReportConfig {
	r := ReportConfig{
		Sessions: c.Sessions, Senders: c.Senders, Seconds: c.Duration.Seconds(), WarmUpSeconds: max(c.WarmUp, 0).Seconds(),
		Sizes: c.Sizes, Rate: c.Rate, SenderNice: c.SenderNice, SenderBatch: c.SenderBatch, Network: c.Network, SocketBuffer: c.SocketBuffer,
		RawSockets: c.RawSockets, RawBatch: c.RawBatch, StalledPackets: max(c.StalledPackets, 0), Hostile: c.Hostile,
	}
	if !reusePortBalances {
		r.RawSockets = 1
	}
	if c.Hostile {
		r.HostileRatio, r.HostileSockets = c.HostileRatio, c.HostileSockets
	}
	return r
}

// heapInuse is runtime.MemStats.HeapInuse now.
func heapInuse() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// heapAfterGC is HeapInuse after two collections: the second frees what
// sync.Pools (pion's packet buffers) kept through the first.
func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	return heapInuse()
}

// heapSampler records the highest HeapInuse seen during a run.
type heapSampler struct {
	stopc chan struct{}
	peak  chan uint64
}

func startHeapSampler() *heapSampler {
	h := &heapSampler{stopc: make(chan struct{}), peak: make(chan uint64)}
	go func() {
		t := time.NewTicker(heapSampleEvery)
		defer t.Stop()
		peak := heapInuse()
		for {
			select {
			case <-t.C:
				peak = max(peak, heapInuse())
			case <-h.stopc:
				h.peak <- max(peak, heapInuse())
				return
			}
		}
	}()
	return h
}

func (h *heapSampler) stop() uint64 {
	close(h.stopc)
	return <-h.peak
}
