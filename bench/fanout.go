package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/oneport/oneport/sfu"
)

// fanoutRoom is the room the publisher and every subscriber join.
const fanoutRoom = "bench"

// Bounds on FanoutConfig, so a run always ends and stays within the
// machine's file descriptors.
const (
	MaxFanoutSubscribers = 4000
	MaxFanoutClients     = 16
)

// Waits around the steps.
const (
	childStartTimeout = 15 * time.Second
	windowLead        = 200 * time.Millisecond // from the window command to the window's start
	roomPollInterval  = 50 * time.Millisecond
	tracksTimeout     = 10 * time.Second
	clientStopGrace   = 10 * time.Second // clients delete their sessions before exiting
	serverStopGrace   = 3 * time.Second
)

// FanoutConfig configures RunFanout. The zero FanoutConfig is valid: every
// field documents its zero-value default.
type FanoutConfig struct {
	// Muxes names the servers to measure, in order: MuxPion, MuxOneport.
	// Nil means both, pion's first.
	Muxes []string

	// Steps are the subscriber counts to measure, ascending. Nil means 25,
	// 50, 100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500. Steps above
	// MaxSubscribers are left out.
	Steps []int

	// MaxSubscribers bounds the steps. Zero means 1000; at most
	// MaxFanoutSubscribers.
	MaxSubscribers int

	// StepDuration is each step's measured window (of send time). Zero
	// means 4s; at least 1s, at most MaxDuration.
	StepDuration time.Duration

	// Settle is the pause between the last join of a step and its window,
	// for the joins' keyframes and handshakes to pass. Zero means 1s;
	// negative means none.
	Settle time.Duration

	// Grace is how long after a window's end its reports are taken:
	// packets of the window that arrive later count as lost. Zero means 1s.
	Grace time.Duration

	// Slice is the width of the send-time slices whose mean latencies give
	// the latency slope. Zero means 250ms; at most StepDuration/2.
	Slice time.Duration

	// Clients is how many subscriber processes share the subscribers. Zero
	// means 2; at most MaxFanoutClients.
	Clients int

	// JoinParallel is how many subscribers each client process joins at
	// once. Zero means 16.
	JoinParallel int

	// JoinTimeout bounds one join: offer to the first packet of each kind.
	// Zero means 10s.
	JoinTimeout time.Duration

	// VideoBitrate is the publisher's video bitrate in bits/s. Zero means
	// 2,000,000.
	VideoBitrate int

	// VideoPPS is the publisher's video packets per second. Zero means 200.
	VideoPPS int

	// FPS is the publisher's video frames per second; each frame's packets
	// leave back to back. Zero means 25; at most VideoPPS.
	FPS int

	// AudioPPS is the publisher's Opus packets per second. Zero means 50.
	AudioPPS int

	// AudioBitrate is the publisher's Opus bitrate in bits/s. Zero means
	// 32,000.
	AudioBitrate int

	// MaxLoss is the loss ratio at which a step fails. Zero means 0.01.
	MaxLoss float64

	// MaxLatencySlope is the growth of the publisher's packets' latency, in
	// ms per s, at which a step fails. Zero means 2.
	MaxLatencySlope float64

	// MuxSockets is how many SO_REUSEPORT sockets oneport's mux opens.
	// Zero means its default (one per CPU).
	MuxSockets int

	// ProfileDir, when set, is where the server writes a CPU profile of
	// each step's window: fanout-<mux>-n<N>.pprof (-retry for a second
	// window). Empty means none.
	ProfileDir string

	// Logger receives progress events, never per-packet ones. The zero
	// Logger discards.
	Logger zerolog.Logger
}

// withDefaults returns c with every zero field set to its default, or an
// error wrapping ErrInvalidConfig.
func (c FanoutConfig) withDefaults() (FanoutConfig, error) {
	if c.Muxes == nil {
		c.Muxes = []string{MuxPion, MuxOneport}
	} else {
		c.Muxes = slices.Clone(c.Muxes)
	}
	if c.MaxSubscribers == 0 {
		c.MaxSubscribers = 1000
	}
	if c.Steps == nil {
		c.Steps = []int{25, 50, 100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500}
	} else {
		c.Steps = slices.Clone(c.Steps)
	}
	if c.StepDuration == 0 {
		c.StepDuration = 4 * time.Second
	}
	if c.Settle == 0 {
		c.Settle = time.Second
	}
	if c.Grace == 0 {
		c.Grace = time.Second
	}
	if c.Slice == 0 {
		c.Slice = 250 * time.Millisecond
	}
	if c.Clients == 0 {
		c.Clients = 2
	}
	if c.JoinParallel == 0 {
		c.JoinParallel = 16
	}
	if c.JoinTimeout == 0 {
		c.JoinTimeout = 10 * time.Second
	}
	if c.VideoBitrate == 0 {
		c.VideoBitrate = 2_000_000
	}
	if c.VideoPPS == 0 {
		c.VideoPPS = 200
	}
	if c.FPS == 0 {
		c.FPS = 25
	}
	if c.AudioPPS == 0 {
		c.AudioPPS = 50
	}
	if c.AudioBitrate == 0 {
		c.AudioBitrate = 32_000
	}
	if c.MaxLoss == 0 {
		c.MaxLoss = 0.01
	}
	if c.MaxLatencySlope == 0 {
		c.MaxLatencySlope = 2
	}
	switch {
	case len(c.Muxes) == 0:
		return c, fmt.Errorf("%w: no Muxes", ErrInvalidConfig)
	case c.MaxSubscribers < 1 || c.MaxSubscribers > MaxFanoutSubscribers:
		return c, fmt.Errorf("%w: MaxSubscribers %d not in 1..%d", ErrInvalidConfig, c.MaxSubscribers, MaxFanoutSubscribers)
	case c.StepDuration < time.Second || c.StepDuration > MaxDuration:
		return c, fmt.Errorf("%w: StepDuration %v not in 1s..%v", ErrInvalidConfig, c.StepDuration, MaxDuration)
	case c.Settle > MaxDuration:
		return c, fmt.Errorf("%w: Settle %v > %v", ErrInvalidConfig, c.Settle, MaxDuration)
	case c.Grace < 0 || c.Grace > time.Minute:
		return c, fmt.Errorf("%w: Grace %v not in 0..1m", ErrInvalidConfig, c.Grace)
	case c.Slice < 10*time.Millisecond || c.Slice > c.StepDuration/2:
		return c, fmt.Errorf("%w: Slice %v not in 10ms..StepDuration/2", ErrInvalidConfig, c.Slice)
	case c.Clients < 1 || c.Clients > MaxFanoutClients:
		return c, fmt.Errorf("%w: Clients %d not in 1..%d", ErrInvalidConfig, c.Clients, MaxFanoutClients)
	case c.JoinParallel < 1 || c.JoinParallel > 256:
		return c, fmt.Errorf("%w: JoinParallel %d not in 1..256", ErrInvalidConfig, c.JoinParallel)
	case c.JoinTimeout < 0 || c.JoinTimeout > time.Minute:
		return c, fmt.Errorf("%w: JoinTimeout %v not in 0..1m", ErrInvalidConfig, c.JoinTimeout)
	case c.VideoPPS < 1 || c.VideoPPS > 2000:
		return c, fmt.Errorf("%w: VideoPPS %d not in 1..2000", ErrInvalidConfig, c.VideoPPS)
	case c.FPS < 1 || c.FPS > c.VideoPPS:
		return c, fmt.Errorf("%w: FPS %d not in 1..VideoPPS", ErrInvalidConfig, c.FPS)
	case c.AudioPPS < 1 || c.AudioPPS > 200:
		return c, fmt.Errorf("%w: AudioPPS %d not in 1..200", ErrInvalidConfig, c.AudioPPS)
	case c.VideoBitrate < 0 || c.AudioBitrate < 0:
		return c, fmt.Errorf("%w: negative bitrate", ErrInvalidConfig)
	case c.MaxLoss <= 0 || c.MaxLoss > 1:
		return c, fmt.Errorf("%w: MaxLoss %v not in (0, 1]", ErrInvalidConfig, c.MaxLoss)
	case c.MaxLatencySlope <= 0:
		return c, fmt.Errorf("%w: MaxLatencySlope %v <= 0", ErrInvalidConfig, c.MaxLatencySlope)
	case c.MuxSockets < 0 || c.MuxSockets > 256:
		return c, fmt.Errorf("%w: MuxSockets %d not in 0..256", ErrInvalidConfig, c.MuxSockets)
	}
	seen := map[string]bool{}
	for _, m := range c.Muxes {
		if m != MuxPion && m != MuxOneport {
			return c, fmt.Errorf("%w: unknown mux %q (want %s or %s)", ErrInvalidConfig, m, MuxPion, MuxOneport)
		}
		if seen[m] {
			return c, fmt.Errorf("%w: mux %q named twice", ErrInvalidConfig, m)
		}
		seen[m] = true
	}
	c.Steps = slices.DeleteFunc(c.Steps, func(n int) bool { return n > c.MaxSubscribers })
	if len(c.Steps) == 0 {
		return c, fmt.Errorf("%w: no step within MaxSubscribers %d", ErrInvalidConfig, c.MaxSubscribers)
	}
	for i, n := range c.Steps {
		if n < 1 || (i > 0 && n <= c.Steps[i-1]) {
			return c, fmt.Errorf("%w: Steps %v must be positive and ascending", ErrInvalidConfig, c.Steps)
		}
	}
	if c.videoPayload() < trailerLen+4 || c.videoPayload() > 1300 {
		return c, fmt.Errorf("%w: video packets of %d bytes (VideoBitrate/8/VideoPPS) not in %d..1300", ErrInvalidConfig, c.videoPayload(), trailerLen+4)
	}
	if c.audioPayload() < trailerLen+1 || c.audioPayload() > 1300 {
		return c, fmt.Errorf("%w: audio packets of %d bytes (AudioBitrate/8/AudioPPS) not in %d..1300", ErrInvalidConfig, c.audioPayload(), trailerLen+1)
	}
	return c, nil
}

func (c FanoutConfig) videoPayload() int { return c.VideoBitrate / 8 / c.VideoPPS }
func (c FanoutConfig) audioPayload() int { return c.AudioBitrate / 8 / c.AudioPPS }

// RunFanout measures fan-out capacity (see the package doc) for each of
// cfg.Muxes in turn: one publisher to N subscribers, N stepped up through
// cfg.Steps until a step loses MaxLoss or more or the publisher's packets
// grow late faster than MaxLatencySlope. The program must call
// MaybeRunSender first thing (it runs the child processes). It returns the
// report so far with the error when a server or client fails; a step that
// fails its criteria is a result, not an error.
func RunFanout(ctx context.Context, cfg FanoutConfig) (FanoutReport, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return FanoutReport{}, err
	}
	log := cfg.Logger.With().Str("component", "bench").Logger()
	rep := FanoutReport{Started: time.Now(), Host: hostInfo(), LoadAvgStart: loadAvg(), Config: fanoutReportConfig(cfg)}
	for _, m := range cfg.Muxes {
		log.Info().Str("mux", m).Ints("steps", cfg.Steps).Msg("fan-out: measuring")
		sr, err := runFanoutMux(ctx, cfg, m, log)
		rep.Servers = append(rep.Servers, sr)
		if err != nil {
			rep.LoadAvgEnd = loadAvg()
			return rep, fmt.Errorf("bench: fan-out on %s mux: %w", m, err)
		}
	}
	rep.LoadAvgEnd = loadAvg()
	rep.compare()
	return rep, ctx.Err()
}

// fanoutRun is one server's run: the processes and what they have.
type fanoutRun struct {
	cfg     FanoutConfig
	log     zerolog.Logger
	server  *childProc
	pub     *childProc
	clients []*childProc
	subs    []int // subscribers joined, per client process
}

func (r *fanoutRun) all() []*childProc {
	return append([]*childProc{r.server, r.pub}, r.clients...)
}

// runFanoutMux measures one server: it starts the server, the publisher
// and the client processes, steps through cfg.Steps, and stops them all.
func runFanoutMux(ctx context.Context, cfg FanoutConfig, muxName string, log zerolog.Logger) (sr FanoutServerReport, err error) {
	sr.Mux = muxName
	r := &fanoutRun{cfg: cfg, log: log.With().Str("mux", muxName).Logger(), subs: make([]int, cfg.Clients)}
	defer func() {
		if err != nil {
			sr.Error = err.Error()
		}
		// Clients first: they delete their sessions on the running server.
		stopChildren(append([]*childProc{r.pub}, r.clients...), err == nil, clientStopGrace)
		stopChildren([]*childProc{r.server}, err == nil, serverStopGrace)
	}()

	deadline := time.Now().Add(fanoutBudget(cfg))
	var ready fanoutServerReady
	r.server, err = startChild(ctx, "server", roleServer,
		fanoutServerJob{Mux: muxName, Sockets: cfg.MuxSockets, ProfileDir: cfg.ProfileDir, Deadline: deadline}, &ready, childStartTimeout)
	if err != nil {
		return sr, err
	}
	sr.ServerPID = ready.PID
	base := "http://" + ready.HTTP
	job := fanoutClientJob{Base: base, Room: fanoutRoom, JoinTimeout: cfg.JoinTimeout, JoinParallel: cfg.JoinParallel, Deadline: deadline}
	pubJob := job
	pubJob.Publish = &publishSpec{FPS: cfg.FPS, VideoPPS: cfg.VideoPPS, VideoPayload: cfg.videoPayload(), AudioPPS: cfg.AudioPPS, AudioPayload: cfg.audioPayload()}
	if r.pub, err = startChild(ctx, "publisher", roleClient, pubJob, nil, childStartTimeout+cfg.JoinTimeout); err != nil {
		return sr, err
	}
	if err := waitTracks(ctx, base); err != nil {
		return sr, err
	}
	for i := range cfg.Clients {
		p, err := startChild(ctx, fmt.Sprintf("client %d", i), roleClient, job, nil, childStartTimeout)
		if err != nil {
			return sr, err
		}
		r.clients = append(r.clients, p)
	}
	r.log.Info().Int("server_pid", ready.PID).Str("http", ready.HTTP).Str("udp", ready.UDP).Msg("fan-out: server up, publishing")

	for _, n := range cfg.Steps {
		st, err := r.step(ctx, n)
		if err != nil {
			return sr, fmt.Errorf("step %d: %w", n, err)
		}
		sr.Steps = append(sr.Steps, st)
		r.log.Info().Int("subscribers", st.Subscribers).Float64("fwd_pps", st.ForwardedPPS).
			Float64("server_cores", st.ServerCPUCores).Float64("server_us_per_pkt", st.ServerUsPerPacket).
			Float64("client_cores", st.ClientCPUCores).Float64("loss", st.LossRatio).
			Float64("p50_ms", st.LatencyP50Ms).Float64("p99_ms", st.LatencyP99Ms).Float64("slope_ms_per_s", st.LatencySlope).
			Bool("pass", st.Pass).Str("fail", st.Fail).Msg("fan-out: step")
		if !st.Pass {
			break
		}
		sr.MaxSubscribers = st.Subscribers
	}
	return sr, nil
}

// waitTracks polls the room until the publisher's two tracks are published
// (the server publishes a track on its first packet).
func waitTracks(ctx context.Context, base string) error {
	deadline := time.Now().Add(tracksTimeout)
	t := time.NewTicker(roomPollInterval)
	defer t.Stop()
	hc := &http.Client{Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	for {
		if info, err := getRoom(ctx, hc, base); err == nil && len(info.Tracks) == 2 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: publisher's tracks not published within %v", tracksTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func getRoom(ctx context.Context, hc *http.Client, base string) (sfu.RoomInfo, error) {
	var info sfu.RoomInfo
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/rooms/"+fanoutRoom, nil)
	if err != nil {
		return info, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return info, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return info, fmt.Errorf("bench: GET room: %s", resp.Status)
	}
	return info, json.NewDecoder(resp.Body).Decode(&info)
}

// step grows the audience to n, waits Settle, measures one window and
// judges it.
func (r *fanoutRun) step(ctx context.Context, n int) (FanoutStep, error) {
	st := FanoutStep{Target: n}
	joinStart := time.Now()
	added, err := r.addSubscribers(ctx, n)
	if err != nil {
		return st, err
	}
	st.JoinSeconds = time.Since(joinStart).Seconds()
	for _, a := range added {
		st.JoinFailed += a.Failed
		st.JoinErrors = append(st.JoinErrors, a.Errors...)
	}
	for _, s := range r.subs {
		st.Subscribers += s
	}
	if len(st.JoinErrors) > maxJoinErrors {
		st.JoinErrors = st.JoinErrors[:maxJoinErrors]
	}
	if st.Subscribers == 0 {
		st.Fail = "no subscriber joined"
		return st, nil
	}
	if err := r.measure(ctx, &st); err != nil {
		return st, err
	}
	if st.Pass || st.JoinFailed > 0 || st.Starved > 0 {
		return st, nil
	}
	// One more window at the same N before the step counts as failed: a
	// transient (the joins' backlog draining, a pause elsewhere on the
	// machine) must not end the run; overload persists.
	first := st.Fail
	if err := r.measure(ctx, &st); err != nil {
		return st, err
	}
	st.FirstFail = first
	return st, nil
}

// measure waits Settle, measures one window of the current audience and
// judges it into st (keeping st's join figures).
func (r *fanoutRun) measure(ctx context.Context, st *FanoutStep) error {
	if err := sleepCtx(ctx, r.cfg.Settle); err != nil {
		return err
	}
	label := fmt.Sprintf("n%d", st.Target)
	if st.Fail != "" {
		label += "-retry"
	}
	start := time.Now().Add(windowLead)
	end := start.Add(r.cfg.StepDuration)
	win := childCmd{Cmd: "window", Start: start, End: end, Slice: int64(r.cfg.Slice), Label: label}
	for _, p := range r.all() {
		if err := p.call(ctx, win, "window", runReplySlack, nil); err != nil {
			return err
		}
	}
	var h0, h1 hostSample
	t0 := time.AfterFunc(time.Until(start), h0.take)
	defer t0.Stop()
	t1 := time.AfterFunc(time.Until(end), h1.take)
	defer t1.Stop()
	if err := sleepCtx(ctx, time.Until(end.Add(r.cfg.Grace))); err != nil {
		return err
	}
	var srv fanoutServerReport
	if err := r.server.call(ctx, childCmd{Cmd: "report"}, "report", runReplySlack, &srv); err != nil {
		return err
	}
	var pub clientReport
	if err := r.pub.call(ctx, childCmd{Cmd: "report"}, "report", runReplySlack, &pub); err != nil {
		return err
	}
	clients := make([]clientReport, len(r.clients))
	for i, p := range r.clients {
		if err := p.call(ctx, childCmd{Cmd: "report"}, "report", runReplySlack, &clients[i]); err != nil {
			return err
		}
	}
	join := *st
	*st = FanoutStep{Target: join.Target, Subscribers: join.Subscribers, JoinFailed: join.JoinFailed, JoinErrors: join.JoinErrors, JoinSeconds: join.JoinSeconds}
	st.judge(r.cfg, srv, pub, clients)
	st.fillHost(&h0, &h1)
	return nil
}

// hostSample is the machine's busy CPU time at one instant, taken by a
// timer.
type hostSample struct {
	mu   sync.Mutex // guards the fields below
	at   time.Time
	busy time.Duration
	ok   bool
}

func (h *hostSample) take() {
	busy, ok := hostBusy()
	h.mu.Lock()
	h.at, h.busy, h.ok = time.Now(), busy, ok
	h.mu.Unlock()
}

func (h *hostSample) get() (time.Time, time.Duration, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.at, h.busy, h.ok
}

// fillHost fills the machine's busy cores over the window, and the part
// of them that neither the server nor the clients used.
func (st *FanoutStep) fillHost(h0, h1 *hostSample) {
	at0, b0, ok0 := h0.get()
	at1, b1, ok1 := h1.get()
	if !ok0 || !ok1 {
		st.HostBusyCores, st.OtherCores = -1, -1
		return
	}
	st.HostBusyCores = cores(b1-b0, at1.Sub(at0))
	st.OtherCores = max(st.HostBusyCores-st.ServerCPUCores-st.ClientCPUCores-st.PublisherCPUCores, 0)
}

// addSubscribers joins subscribers until n have joined in all (failed
// joins are not retried), spread evenly over the client processes, which
// join at the same time.
func (r *fanoutRun) addSubscribers(ctx context.Context, n int) ([]clientAdded, error) {
	k := len(r.clients)
	added := make([]clientAdded, k)
	errs := make([]error, k)
	var wg sync.WaitGroup
	for i, p := range r.clients {
		want := (i+1)*n/k - i*n/k - r.subs[i]
		if want <= 0 {
			continue
		}
		rounds := (want + r.cfg.JoinParallel - 1) / r.cfg.JoinParallel
		timeout := time.Duration(rounds)*(r.cfg.JoinTimeout+5*time.Second) + runReplySlack
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = p.call(ctx, childCmd{Cmd: "add", N: want}, "added", timeout, &added[i])
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for i, a := range added {
		if a.Subs > 0 || a.OK > 0 || a.Failed > 0 {
			r.subs[i] = a.Subs
		}
	}
	return added, nil
}

// fanoutBudget bounds a child's life: everything one server's run asks of
// it, with slack for every wait.
func fanoutBudget(cfg FanoutConfig) time.Duration {
	d := 3*childStartTimeout + cfg.JoinTimeout + tracksTimeout
	prev := 0
	for _, n := range cfg.Steps {
		per := (n - prev + cfg.Clients - 1) / cfg.Clients
		rounds := (per + cfg.JoinParallel - 1) / cfg.JoinParallel
		window := max(cfg.Settle, 0) + windowLead + cfg.StepDuration + cfg.Grace + 2*runReplySlack
		d += time.Duration(rounds)*(cfg.JoinTimeout+5*time.Second) + 2*window // a failed window is measured again
		prev = n
	}
	return d + clientStopGrace + serverStopGrace
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
