package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/oneport/oneport/sfu"
)

// Bounds on LoadConfig, so a run always ends and stays within the machine's
// file descriptors.
const (
	MaxLoadSessions = 5000
	MaxLoadClients  = 16
	MaxLoadRamp     = 1000 // sessions per second
)

// Waits of the load run.
const (
	loadTick       = time.Second            // progress line and time series
	loadStartLead  = 100 * time.Millisecond // from the start command to the first scheduled join
	loadCloseGrace = 30 * time.Second       // clients deleting their sessions
)

// LoadConfig configures RunLoad. The zero LoadConfig is valid: every field
// documents its zero-value default.
type LoadConfig struct {
	// URL is the WHIP/WHEP base URL (http://host:port): one node or a
	// cluster's VIP. Empty means a local node started for the run (oneport's
	// mux and sfu on 127.0.0.1, in a child process).
	URL string

	// Token is the bearer token for publishing, subscribing and deleting.
	// Empty means none.
	Token string

	// Rooms is how many rooms the load uses. Zero means 1.
	Rooms int

	// Publishers per room. Zero means 1.
	Publishers int

	// Subscribers per room; each watches every track of its room. Zero
	// means 2; negative means none.
	Subscribers int

	// VideoBitrate is each publisher's video bitrate in bits/s (the top
	// layer's with Simulcast). Zero means 1,000,000.
	VideoBitrate int

	// FPS is the synthetic video's frames per second. Zero means 30.
	FPS int

	// NoAudio leaves Opus out; the default publishes it (50 packets/s,
	// 32 kbit/s, or AudioFile).
	NoAudio bool

	// Simulcast publishes three VP8 layers (rids q, h, f at 1/4, 1/2 and
	// all of VideoBitrate); subscribers get the server's default layer.
	Simulcast bool

	// VideoFile replays an IVF file (VP8, VP9 or AV1) instead of synthetic
	// video, looping; empty means synthetic.
	VideoFile string

	// AudioFile replays an Ogg/Opus file instead of synthetic audio,
	// looping; empty means synthetic.
	AudioFile string

	// Duration is how long the full load is held after the last join.
	// Zero means 10s; at most MaxDuration.
	Duration time.Duration

	// Ramp is how many sessions start per second. Zero means 20; at most
	// MaxLoadRamp.
	Ramp float64

	// Clients is how many client processes share the sessions. Zero means
	// 2; at most MaxLoadClients.
	Clients int

	// JoinParallel bounds the joins in flight per client process. Zero
	// means 32.
	JoinParallel int

	// JoinTimeout bounds one join: offer to the first media packet. Zero
	// means 10s.
	JoinTimeout time.Duration

	// Grace is how long after the publishers stop the subscribers' figures
	// are taken: packets arriving later count as lost. Zero means 1s.
	Grace time.Duration

	// MuxSockets is the local node's SO_REUSEPORT socket count (URL empty
	// only). Zero means the mux's default (one per CPU).
	MuxSockets int

	// Progress receives a line a second: sessions up, packets/s, loss, p99
	// latency. Nil means none.
	Progress io.Writer

	// Logger receives progress events, never per-packet ones. The zero
	// Logger discards.
	Logger zerolog.Logger
}

func (c LoadConfig) withDefaults() (LoadConfig, error) {
	def := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	def(&c.Rooms, 1)
	def(&c.Publishers, 1)
	def(&c.Subscribers, 2)
	c.Subscribers = max(c.Subscribers, 0)
	def(&c.VideoBitrate, 1_000_000)
	def(&c.FPS, 30)
	def(&c.Clients, 2)
	def(&c.JoinParallel, 32)
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	if c.Ramp == 0 {
		c.Ramp = 20
	}
	if c.JoinTimeout == 0 {
		c.JoinTimeout = 10 * time.Second
	}
	if c.Grace == 0 {
		c.Grace = time.Second
	}
	total := c.Rooms * (c.Publishers + c.Subscribers)
	switch {
	case c.Rooms < 1 || c.Publishers < 1:
		return c, fmt.Errorf("%w: Rooms %d and Publishers %d must be positive", ErrInvalidConfig, c.Rooms, c.Publishers)
	case c.Rooms > MaxLoadSessions || c.Publishers > MaxLoadSessions || c.Subscribers > MaxLoadSessions || total > MaxLoadSessions:
		return c, fmt.Errorf("%w: %d sessions > %d", ErrInvalidConfig, total, MaxLoadSessions)
	case c.Publishers*c.Rooms*8 > math.MaxInt32:
		return c, fmt.Errorf("%w: too many publishers", ErrInvalidConfig)
	case c.VideoBitrate < 10_000 || c.VideoBitrate > 50_000_000:
		return c, fmt.Errorf("%w: VideoBitrate %d not in 10000..50000000", ErrInvalidConfig, c.VideoBitrate)
	case c.FPS < 1 || c.FPS > 120:
		return c, fmt.Errorf("%w: FPS %d not in 1..120", ErrInvalidConfig, c.FPS)
	case c.Duration < time.Second || c.Duration > MaxDuration:
		return c, fmt.Errorf("%w: Duration %v not in 1s..%v", ErrInvalidConfig, c.Duration, MaxDuration)
	case c.Ramp < 0.1 || c.Ramp > MaxLoadRamp || math.IsNaN(c.Ramp):
		return c, fmt.Errorf("%w: Ramp %v not in 0.1..%d", ErrInvalidConfig, c.Ramp, MaxLoadRamp)
	case c.Clients < 1 || c.Clients > MaxLoadClients:
		return c, fmt.Errorf("%w: Clients %d not in 1..%d", ErrInvalidConfig, c.Clients, MaxLoadClients)
	case c.JoinParallel < 1 || c.JoinParallel > 256:
		return c, fmt.Errorf("%w: JoinParallel %d not in 1..256", ErrInvalidConfig, c.JoinParallel)
	case c.JoinTimeout < 0 || c.JoinTimeout > time.Minute:
		return c, fmt.Errorf("%w: JoinTimeout %v not in 0..1m", ErrInvalidConfig, c.JoinTimeout)
	case c.Grace < 0 || c.Grace > time.Minute:
		return c, fmt.Errorf("%w: Grace %v not in 0..1m", ErrInvalidConfig, c.Grace)
	case c.MuxSockets < 0 || c.MuxSockets > 256:
		return c, fmt.Errorf("%w: MuxSockets %d not in 0..256", ErrInvalidConfig, c.MuxSockets)
	case c.Simulcast && c.VideoFile != "":
		return c, fmt.Errorf("%w: Simulcast needs synthetic video, not VideoFile", ErrInvalidConfig)
	case c.NoAudio && c.AudioFile != "":
		return c, fmt.Errorf("%w: AudioFile with NoAudio", ErrInvalidConfig)
	}
	if c.URL != "" {
		u, err := url.Parse(c.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return c, fmt.Errorf("%w: URL %q: want http(s)://host[:port]", ErrInvalidConfig, c.URL)
		}
	}
	for _, f := range []string{c.VideoFile, c.AudioFile} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return c, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
	}
	return c, nil
}

// media is what every publisher of the run sends.
func (c LoadConfig) media() loadMedia {
	return loadMedia{VideoBitrate: c.VideoBitrate, FPS: c.FPS, Audio: !c.NoAudio, Simulcast: c.Simulcast,
		VideoFile: c.VideoFile, AudioFile: c.AudioFile}
}

// tracksPerPublisher is how many tracks the server lists per publisher.
func (c LoadConfig) tracksPerPublisher() int {
	if c.NoAudio {
		return 1
	}
	return 2
}

// loadRun is one RunLoad: its processes and what they reported.
type loadRun struct {
	cfg     LoadConfig
	log     zerolog.Logger
	base    string
	rooms   []string
	node    *childProc // the local node; nil with a URL
	clients []*childProc
	rep     *LoadReport
	start   time.Time

	planned, started int
	last             []loadStats // the latest stats of each client
	prev             loadTotals  // the totals at the previous tick
	prevAt           time.Time
	steadyFrom       loadTotals // the totals when the steady window began
	steadyAt         time.Time  // zero until it begins
}

// RunLoad puts cfg's sessions on a WHIP/WHEP server (real pion clients in
// child processes: ICE, DTLS and SRTP through the server's media port),
// publishers first, then subscribers, at cfg.Ramp sessions a second; holds
// the load for cfg.Duration; stops the publishers, takes every client's
// figures and deletes every session. The program must call MaybeRunSender
// first thing (it runs the child processes). It returns the report so far
// with the error when a process fails or ctx ends; sessions are deleted on
// every path.
func RunLoad(ctx context.Context, cfg LoadConfig) (rep LoadReport, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return LoadReport{}, err
	}
	r := &loadRun{cfg: cfg, log: cfg.Logger.With().Str("component", "bench").Logger(), rep: &rep}
	rep = LoadReport{Started: time.Now(), Host: hostInfo(), CPUModel: cpuModel(), Config: loadReportConfig(cfg), Leftover: -1}
	runID := randomIceChars(6)
	for i := range cfg.Rooms {
		r.rooms = append(r.rooms, fmt.Sprintf("load-%s-%d", safeRoomID(runID), i))
	}
	deadline := time.Now().Add(loadBudget(cfg))
	defer func() {
		if ctx.Err() != nil {
			r.interrupted()
		}
		r.finish(err == nil)
		if err != nil {
			rep.Error = err.Error()
		}
	}()
	if err := r.startProcesses(ctx, deadline); err != nil {
		return rep, err
	}
	rep.URL = r.base
	r.start = time.Now()
	r.prevAt = r.start

	// Publishers, then (once their tracks are up) subscribers.
	var pubs, subs []loadSession
	for ri, room := range r.rooms {
		for p := range cfg.Publishers {
			pubs = append(pubs, loadSession{ID: len(pubs), Room: room, Role: rolePub, Pub: ri*cfg.Publishers + p})
		}
	}
	for _, room := range r.rooms {
		for range cfg.Subscribers {
			subs = append(subs, loadSession{ID: len(pubs) + len(subs), Room: room, Role: roleSub, Tracks: cfg.Publishers})
		}
	}
	r.planned = len(pubs) + len(subs)
	if err := r.joinAll(ctx, pubs); err != nil {
		return rep, err
	}
	if len(subs) > 0 {
		r.waitTracks(ctx)
		if err := r.joinAll(ctx, subs); err != nil {
			return rep, err
		}
	}
	// The steady state: every session that could join has.
	r.steadyFrom, r.steadyAt = r.prev, time.Now()
	for end := time.Now().Add(cfg.Duration); time.Now().Before(end); {
		if err := r.tick(ctx, min(loadTick, time.Until(end))); err != nil {
			return rep, err
		}
	}
	rep.Steady = steadyFigures(r.steadyFrom, r.prev, r.prevAt.Sub(r.steadyAt))
	return rep, r.collect(ctx)
}

// interrupted takes the figures of a run whose ctx ended (Ctrl-C): the
// clients are still up, so the report gets what they counted.
func (r *loadRun) interrupted() {
	if len(r.clients) == 0 {
		return
	}
	if !r.steadyAt.IsZero() { // the steady window so far
		r.rep.Steady = steadyFigures(r.steadyFrom, r.prev, r.prevAt.Sub(r.steadyAt))
	}
	ctx, cancel := context.WithTimeout(context.Background(), runReplySlack)
	defer cancel()
	if err := r.collect(ctx); err != nil {
		r.log.Warn().Err(err).Msg("load: figures after the interruption")
	}
}

// safeRoomID keeps room names URL-path clean (ice-chars include + and /).
func safeRoomID(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '+' || c == '/' {
			b[i] = 'x'
		}
	}
	return string(b)
}

func (r *loadRun) startProcesses(ctx context.Context, deadline time.Time) error {
	r.base = r.cfg.URL
	if r.base == "" {
		var ready fanoutServerReady
		p, err := startChild(ctx, "node", roleServer, fanoutServerJob{Mux: MuxOneport, Sockets: r.cfg.MuxSockets, Deadline: deadline}, &ready, childStartTimeout)
		if err != nil {
			return err
		}
		r.node = p
		r.base = "http://" + ready.HTTP
		r.rep.NodePID = ready.PID
	}
	u, _ := url.Parse(r.base)
	job := loadClientJob{Base: r.base, Token: r.cfg.Token, JoinTimeout: r.cfg.JoinTimeout, JoinParallel: r.cfg.JoinParallel,
		Deadline: deadline, AnyInterface: !isLoopbackHost(u.Hostname()), Media: r.cfg.media()}
	for i := range r.cfg.Clients {
		job.Index = i
		p, err := startChild(ctx, fmt.Sprintf("load client %d", i), roleLoadClient, job, nil, childStartTimeout)
		if err != nil {
			return err
		}
		r.clients = append(r.clients, p)
	}
	r.last = make([]loadStats, len(r.clients))
	r.log.Info().Str("url", r.base).Int("sessions", r.cfg.Rooms*(r.cfg.Publishers+r.cfg.Subscribers)).Int("clients", len(r.clients)).Msg("load: clients up")
	return nil
}

// joinAll schedules sessions at the ramp over the clients (round robin)
// and ticks until every one of them has joined or failed.
func (r *loadRun) joinAll(ctx context.Context, ss []loadSession) error {
	at := time.Now().Add(loadStartLead)
	per := make([][]loadSession, len(r.clients))
	for i, s := range ss {
		s.At = at.Add(time.Duration(float64(i) / r.cfg.Ramp * float64(time.Second)))
		per[i%len(r.clients)] = append(per[i%len(r.clients)], s)
	}
	for i, p := range r.clients {
		if len(per[i]) == 0 {
			continue
		}
		if err := p.call(ctx, loadCmd{Cmd: "start", Sessions: per[i]}, "started", runReplySlack, nil); err != nil {
			return err
		}
	}
	r.started += len(ss)
	last := at.Add(time.Duration(float64(len(ss)) / r.cfg.Ramp * float64(time.Second)))
	limit := last.Add(r.cfg.JoinTimeout + 2*r.cfg.JoinTimeout*time.Duration(len(ss)/(r.cfg.JoinParallel*len(r.clients))+1) + 5*time.Second)
	for {
		if r.prev.Joined+r.prev.Failed >= r.started {
			return nil
		}
		if time.Now().After(limit) {
			return fmt.Errorf("bench: load: %d of %d joins unanswered after %v", r.started-r.prev.Joined-r.prev.Failed, r.started, time.Since(at).Round(time.Second))
		}
		if err := r.tick(ctx, loadTick); err != nil {
			return err
		}
	}
}

// waitTracks polls the rooms until each lists every publisher's tracks (the
// server publishes a track on its first packet), so subscribers get them
// all; bounded by tracksTimeout, and skipped when the API is unreachable.
func (r *loadRun) waitTracks(ctx context.Context) {
	want := r.cfg.Publishers * r.cfg.tracksPerPublisher()
	deadline := time.Now().Add(tracksTimeout)
	hc := &http.Client{Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	for _, room := range r.rooms {
		for {
			info, err := getRoomInfo(ctx, hc, r.base, room, r.cfg.Token)
			if err != nil || len(info.Tracks) >= want || time.Now().After(deadline) {
				break
			}
			if sleepCtx(ctx, roomPollInterval) != nil {
				return
			}
		}
	}
}

var errRoomNotFound = errors.New("bench: room not found")

func getRoomInfo(ctx context.Context, hc *http.Client, base, room, token string) (sfu.RoomInfo, error) {
	var info sfu.RoomInfo
	u, err := url.Parse(base)
	if err != nil {
		return info, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.JoinPath("api", "rooms", room).String(), nil)
	if err != nil {
		return info, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return info, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		if resp.StatusCode == http.StatusNotFound {
			return info, errRoomNotFound
		}
		return info, fmt.Errorf("bench: GET room %s: %s", room, resp.Status)
	}
	return info, jsonDecode(io.LimitReader(resp.Body, 8<<20), &info)
}

// tick waits d, takes every client's stats, appends a sample to the time
// series and prints the progress line.
func (r *loadRun) tick(ctx context.Context, d time.Duration) error {
	if err := sleepCtx(ctx, d); err != nil {
		return err
	}
	stats := make([]loadStats, len(r.clients))
	errs := make([]error, len(r.clients))
	var wg sync.WaitGroup
	for i, p := range r.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = p.call(ctx, loadCmd{Cmd: "stats"}, "stats", runReplySlack, &stats[i])
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	now := time.Now()
	var tot loadTotals
	for i, st := range stats {
		r.last[i] = st
		tot.add(st.loadTotals)
		for _, j := range st.Joins {
			j.T = j.At.Sub(r.start).Seconds()
			r.rep.addJoin(j)
		}
	}
	smp := sampleOf(r.prev, tot, now.Sub(r.prevAt))
	smp.T = now.Sub(r.start).Seconds()
	r.rep.Series = append(r.rep.Series, smp)
	r.prev, r.prevAt = tot, now
	if w := r.cfg.Progress; w != nil {
		fmt.Fprintf(w, "%6.0fs  sessions %d/%d up, %d failed  %8.0f pkt/s  %7.2f Mbit/s  loss %6.2f%%  p99 %7.1f ms\n",
			smp.T, smp.Up, r.planned, tot.Failed, smp.PPS, smp.Mbps, 100*smp.Loss, smp.LatencyP99Ms)
	}
	return nil
}

// collect stops the publishers, waits Grace, and takes the final figures.
func (r *loadRun) collect(ctx context.Context) error {
	lastCtr := map[uint32]uint64{}
	for _, p := range r.clients {
		var st loadStopped
		if err := p.call(ctx, loadCmd{Cmd: "stop"}, "stopped", runReplySlack, &st); err != nil {
			return err
		}
		for _, t := range st.Tracks {
			lastCtr[t.ID] = t.Last
			r.rep.addPublished(t)
		}
	}
	if err := r.tick(ctx, r.cfg.Grace); err != nil {
		return err
	}
	for _, p := range r.clients {
		var cr loadClientReport
		if err := p.call(ctx, loadCmd{Cmd: "report", Last: lastCtr}, "report", runReplySlack, &cr); err != nil {
			return err
		}
		r.rep.addReceived(cr)
	}
	r.rep.finish()
	return nil
}

// finish deletes every session (asking each client, on every path, also
// after ctx ended), stops the processes, and checks what the server still
// holds of the run's rooms.
func (r *loadRun) finish(clean bool) {
	grace := loadCloseGrace + closeTimeout(r.planned)
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range r.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c loadClosed
			err := p.call(ctx, loadCmd{Cmd: "close"}, "closed", grace, &c)
			mu.Lock()
			defer mu.Unlock()
			r.rep.Cleanup.Deleted += c.Deleted
			r.rep.Cleanup.DeleteErrors += c.Errors
			if err != nil {
				r.rep.Cleanup.DeleteErrors++
				if r.rep.Cleanup.Error == "" {
					r.rep.Cleanup.Error = err.Error()
				}
			}
		}()
	}
	wg.Wait()
	stopChildren(r.clients, clean, clientStopGrace)
	r.rep.Leftover = r.leftover(ctx)
	if r.node != nil {
		stopChildren([]*childProc{r.node}, true, serverStopGrace)
	}
}

// leftover counts the participants the server still lists in the run's
// rooms, polling a few seconds for the deletions to settle; -1 when the
// API does not answer.
func (r *loadRun) leftover(ctx context.Context) int {
	if r.base == "" {
		return -1
	}
	hc := &http.Client{Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := 0
		for _, room := range r.rooms {
			info, err := getRoomInfo(ctx, hc, r.base, room, r.cfg.Token)
			if errors.Is(err, errRoomNotFound) {
				continue // the room is gone (or never was)
			}
			if err != nil {
				return -1
			}
			n += len(info.Participants)
		}
		if n == 0 || time.Now().After(deadline) || sleepCtx(ctx, roomPollInterval) != nil {
			return n
		}
	}
}

// loadBudget bounds a child's life: the whole run with slack for every
// wait.
func loadBudget(c LoadConfig) time.Duration {
	n := c.Rooms * (c.Publishers + c.Subscribers)
	ramp := time.Duration(float64(n) / c.Ramp * float64(time.Second))
	joins := 2 * (3*c.JoinTimeout*time.Duration(n/(c.JoinParallel*c.Clients)+1) + 5*time.Second)
	return childStartTimeout*2 + ramp + joins + tracksTimeout + c.Duration + c.Grace + 4*runReplySlack + loadCloseGrace + closeTimeout(n) + clientStopGrace + serverStopGrace
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
