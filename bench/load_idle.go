package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/oneport/oneport/mux"
)

// MaxIdleSessions bounds IdleConfig.Sessions.
const MaxIdleSessions = 5000

// IdleConfig configures RunIdleMemory. Every field documents its zero-value
// default.
type IdleConfig struct {
	// Sessions is how many idle sessions are set up. Zero means 200.
	Sessions int
	// Clients is how many client processes hold them. Zero means 2.
	Clients int
	// Ramp is sessions started per second. Zero means 100.
	Ramp float64
	// JoinTimeout bounds one join (offer to connected). Zero means 10s.
	JoinTimeout time.Duration
	// Logger receives progress events. The zero Logger discards.
	Logger zerolog.Logger
}

// IdleReport is the node's heap with and without the idle sessions.
type IdleReport struct {
	Started      time.Time `json:"started"`
	Host         HostInfo  `json:"host"`
	CPUModel     string    `json:"cpu_model,omitempty"`
	Sessions     int       `json:"sessions"`
	Joined       int       `json:"joined"`
	Failed       int       `json:"failed"`
	MuxSessions  int       `json:"mux_sessions"` // with the sessions up
	Participants int       `json:"participants"`
	// HeapBefore and HeapWith are the node's HeapInuse after GC, without
	// and with the sessions; BytesPerSession is their difference per
	// joined session.
	HeapBefore      uint64  `json:"heap_before"`
	HeapWith        uint64  `json:"heap_with"`
	BytesPerSession float64 `json:"bytes_per_session"`
	JoinPerSecond   float64 `json:"join_per_second"`
}

// RunIdleMemory measures the memory an idle session costs a node: oneport's
// mux and the sfu run in this process (nothing else of the program should
// be running), idle publishers (connected, sending nothing) in client
// processes. The program must call MaybeRunSender first thing.
func RunIdleMemory(ctx context.Context, cfg IdleConfig) (rep IdleReport, err error) {
	if cfg.Sessions == 0 {
		cfg.Sessions = 200
	}
	if cfg.Clients == 0 {
		cfg.Clients = 2
	}
	if cfg.Ramp == 0 {
		cfg.Ramp = 100
	}
	if cfg.JoinTimeout == 0 {
		cfg.JoinTimeout = 10 * time.Second
	}
	if cfg.Sessions < 1 || cfg.Sessions > MaxIdleSessions || cfg.Clients < 1 || cfg.Clients > MaxLoadClients || cfg.Ramp < 1 || cfg.Ramp > MaxLoadRamp {
		return rep, fmt.Errorf("%w: idle: %d sessions, %d clients, ramp %v", ErrInvalidConfig, cfg.Sessions, cfg.Clients, cfg.Ramp)
	}
	rep = IdleReport{Started: time.Now(), Host: hostInfo(), CPUModel: cpuModel(), Sessions: cfg.Sessions}
	lcfg := LoadConfig{Rooms: 1, Publishers: cfg.Sessions, Subscribers: -1, Ramp: cfg.Ramp, Clients: cfg.Clients, JoinTimeout: cfg.JoinTimeout, Duration: time.Second}
	if lcfg, err = lcfg.withDefaults(); err != nil {
		return rep, err
	}
	deadline := time.Now().Add(loadBudget(lcfg))
	srv, err := openFanoutServer(fanoutServerJob{Mux: MuxOneport, Deadline: deadline})
	if err != nil {
		return rep, err
	}
	defer srv.close()
	m := srv.closers[0].(*mux.Mux)
	rep.HeapBefore = heapAfterGC()

	base := "http://" + srv.hs.Addr
	r := &loadRun{cfg: lcfg, log: cfg.Logger.With().Str("component", "bench").Logger(), rep: &LoadReport{}, base: base, start: time.Now(), prevAt: time.Now()}
	defer r.finish(err == nil)
	job := loadClientJob{Base: base, JoinTimeout: lcfg.JoinTimeout, JoinParallel: lcfg.JoinParallel, Deadline: deadline, Media: loadMedia{Idle: true, Audio: true, VideoBitrate: lcfg.VideoBitrate, FPS: lcfg.FPS}}
	for i := range lcfg.Clients {
		job.Index = i
		p, err := startChild(ctx, fmt.Sprintf("idle client %d", i), roleLoadClient, job, nil, childStartTimeout)
		if err != nil {
			return rep, err
		}
		r.clients = append(r.clients, p)
	}
	r.last = make([]loadStats, len(r.clients))
	var ss []loadSession
	for i := range cfg.Sessions {
		ss = append(ss, loadSession{ID: i, Room: "idle", Role: rolePub, Pub: i})
	}
	r.planned = len(ss)
	if err := r.joinAll(ctx, ss); err != nil {
		return rep, err
	}
	r.rep.finish()
	rep.Joined, rep.Failed, rep.JoinPerSecond = r.rep.Sessions.Joined, r.rep.Sessions.Failed, r.rep.Join.PerSecond
	rep.HeapWith = heapAfterGC()
	rep.MuxSessions = m.Sessions()
	rep.Participants = srv.srv.Stats().Participants
	if rep.Joined > 0 {
		rep.BytesPerSession = (float64(rep.HeapWith) - float64(rep.HeapBefore)) / float64(rep.Joined)
	}
	r.log.Info().Int("joined", rep.Joined).Float64("bytes_per_session", rep.BytesPerSession).Msg("idle: measured")
	return rep, nil
}
