package lbhealth

import (
	"crypto/sha256"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/oneport/oneport/internal/ratelimit"
)

// Check names, as they appear in /healthz and /readyz bodies and in the
// oneport_ready_check metric.
const (
	CheckSockets    = "sockets"
	CheckCluster    = "cluster"
	CheckDraining   = "draining"
	CheckSessions   = "sessions"
	CheckPacketRate = "packet_rate"
	CheckCPU        = "cpu"
)

// readyChecks lists the readiness checks in report order.
var readyChecks = [...]string{CheckDraining, CheckSockets, CheckCluster, CheckSessions, CheckPacketRate, CheckCPU}

// Check is one line of a health report.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Reason string `json:"reason"`
}

// Report is the body of /healthz and /readyz.
type Report struct {
	Status string  `json:"status"` // "ok" or "fail"
	Checks []Check `json:"checks"`
}

// OK reports whether every check passed.
func (r Report) OK() bool { return r.Status == "ok" }

func (r *Report) add(name string, ok bool, reason string) {
	r.Checks = append(r.Checks, Check{Name: name, OK: ok, Reason: reason})
}

func (r *Report) finish(ok bool) {
	r.Status = "fail"
	if ok {
		r.Status = "ok"
	}
}

// Health is a node's health, readiness, probe responder, drain and metrics.
// Create it with New; it starts no goroutine and needs no Close.
type Health struct {
	cfg   Config
	log   zerolog.Logger
	drain *Drainer
	epoch time.Time // monotonic origin of the rate limiters' clocks

	load    loadSampler
	sources *ratelimit.Sources
	global  ratelimit.Global

	probes       [NumProbeResults]atomic.Uint64
	unauthorized atomic.Uint64 // admin requests refused for a bad or missing token

	adminHash [sha256.Size]byte // SHA-256 of Config.AdminToken
	reg       *prometheus.Registry
}

// New returns a Health for cfg, or an error wrapping ErrInvalidConfig.
func New(cfg Config) (*Health, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	h := &Health{
		cfg:   cfg,
		log:   cfg.Log.With().Str("component", "lbhealth").Logger(),
		epoch: time.Now(),
	}
	if h.drain, err = NewDrainer(cfg.Sessions, cfg.Drain, cfg.Log); err != nil {
		return nil, err
	}
	h.load.window = cfg.LoadWindow
	h.load.epoch = h.epoch
	if cfg.MaxPacketRate > 0 {
		h.load.media = cfg.Media
	}
	h.load.wantCPU = cfg.MaxCPU > 0
	h.sources = ratelimit.NewSources(cfg.Probe.Rate, cfg.Probe.Burst, cfg.Probe.MaxSources)
	h.global.SetRate(cfg.Probe.GlobalRate, cfg.Probe.GlobalBurst)
	if cfg.AdminToken != "" {
		h.adminHash = sha256.Sum256([]byte(cfg.AdminToken))
	}
	if h.reg, err = newRegistry(h); err != nil {
		return nil, err
	}
	return h, nil
}

// Drainer returns the node's drain state machine: the CLI calls Drain on the
// first SIGTERM and Run to wait; gossip reads Draining and Watch.
func (h *Health) Drainer() *Drainer { return h.drain }

// Registry returns the registry /metrics serves, so other packages can add
// their own collectors.
func (h *Health) Registry() *prometheus.Registry { return h.reg }

// Live reports liveness: the process answers and its media sockets are
// bound. Draining does not affect it.
func (h *Health) Live() Report {
	var r Report
	err := h.cfg.Sockets.Bound()
	if err != nil {
		r.add(CheckSockets, false, err.Error())
	} else {
		r.add(CheckSockets, true, "bound")
	}
	r.finish(err == nil)
	return r
}

// Ready reports readiness for new flows, with every check and its reason.
func (h *Health) Ready() Report {
	r := Report{Checks: make([]Check, 0, len(readyChecks))}
	r.finish(h.evaluate(&r))
	return r
}

// ready is Ready without the report: it stops at the first failed check and
// allocates nothing while the node is ready.
func (h *Health) ready() bool { return h.evaluate(nil) }

// evaluate runs the readiness checks. With rep nil it returns at the first
// failure; otherwise it runs them all and adds each with its reason.
func (h *Health) evaluate(rep *Report) bool {
	ok := true

	// Draining first: one atomic load, and the usual reason during shutdown.
	if h.drain.Draining() {
		if rep == nil {
			return false
		}
		ok = false
		st, since, why := h.drain.status()
		rep.add(CheckDraining, false, fmt.Sprintf("%s since %s (%s)", st, since.UTC().Format(time.RFC3339), why))
	} else if rep != nil {
		rep.add(CheckDraining, true, "serving")
	}

	if err := h.cfg.Sockets.Bound(); err != nil {
		if rep == nil {
			return false
		}
		ok = false
		rep.add(CheckSockets, false, err.Error())
	} else if rep != nil {
		rep.add(CheckSockets, true, "bound")
	}

	if h.cfg.Cluster == nil {
		if rep != nil {
			rep.add(CheckCluster, true, "not configured")
		}
	} else if err := h.cfg.Cluster.Joined(); err != nil {
		if rep == nil {
			return false
		}
		ok = false
		rep.add(CheckCluster, false, err.Error())
	} else if rep != nil {
		rep.add(CheckCluster, true, "joined")
	}

	n, maxN := h.cfg.Sessions.Sessions(), h.cfg.MaxSessions
	switch {
	case maxN > 0 && n >= maxN:
		if rep == nil {
			return false
		}
		ok = false
		rep.add(CheckSessions, false, fmt.Sprintf("%d sessions, limit %d", n, maxN))
	case rep == nil:
	case maxN > 0:
		rep.add(CheckSessions, true, fmt.Sprintf("%d sessions, limit %d", n, maxN))
	default:
		rep.add(CheckSessions, true, fmt.Sprintf("%d sessions, no limit", n))
	}

	if h.cfg.MaxPacketRate == 0 && h.cfg.MaxCPU == 0 {
		if rep != nil {
			rep.add(CheckPacketRate, true, "no limit")
			rep.add(CheckCPU, true, "no limit")
		}
		return ok
	}
	rate, cpu, valid := h.load.load()

	switch maxR := h.cfg.MaxPacketRate; {
	case maxR > 0 && valid && rate > maxR:
		if rep == nil {
			return false
		}
		ok = false
		rep.add(CheckPacketRate, false, fmt.Sprintf("%.0f packets/s, limit %.0f", rate, maxR))
	case rep == nil:
	case maxR == 0:
		rep.add(CheckPacketRate, true, "no limit")
	case !valid:
		rep.add(CheckPacketRate, true, "measuring")
	default:
		rep.add(CheckPacketRate, true, fmt.Sprintf("%.0f packets/s, limit %.0f", rate, maxR))
	}

	switch maxC := h.cfg.MaxCPU; {
	case maxC > 0 && valid && cpu > maxC:
		if rep == nil {
			return false
		}
		ok = false
		rep.add(CheckCPU, false, cpuReason(cpu, maxC))
	case rep == nil:
	case maxC == 0:
		rep.add(CheckCPU, true, "no limit")
	case !valid:
		rep.add(CheckCPU, true, "measuring")
	default:
		rep.add(CheckCPU, true, cpuReason(cpu, maxC))
	}
	return ok
}

func cpuReason(cpu, limit float64) string {
	return fmt.Sprintf("%.1f%% of %d cores, limit %.1f%%", cpu*100, runtime.GOMAXPROCS(0), limit*100)
}
