package lbhealth

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime/debug"
	"time"

	"github.com/rs/zerolog"
)

// Defaults applied by Config.withDefaults for zero-valued fields.
const (
	DefaultDrainTimeout      = 10 * time.Minute
	DefaultDrainPollInterval = time.Second
	DefaultHookTimeout       = 30 * time.Second
	DefaultLoadWindow        = time.Second
	DefaultProbeRate         = 5.0 // answers per second per source
	DefaultProbeBurst        = 10
	DefaultProbeMaxSources   = 4096
	DefaultProbeGlobalRate   = 1000.0 // answers per second, all sources
	DefaultProbeGlobalBurst  = 1000
)

// ErrInvalidConfig is wrapped by every error New and NewDrainer return for a
// config they refuse.
var ErrInvalidConfig = errors.New("lbhealth: invalid config")

// Config configures a Health. Each field documents its zero value.
type Config struct {
	// Sockets reports whether the media sockets are bound. Required.
	Sockets Sockets
	// Sessions counts the sessions this node holds. Required: readiness
	// compares it with MaxSessions and a drain waits for it to reach zero.
	Sessions SessionCounter
	// Cluster reports cluster membership. Nil: the node runs without --join and
	// the "cluster" check passes as not configured.
	Cluster Membership

	// Media, SFU and ClusterStats feed /metrics at scrape time. Nil: those
	// metrics are left out. Media is also the packet counter MaxPacketRate reads.
	Media        MediaSource
	SFU          SFUSource
	ClusterStats ClusterSource

	// MaxSessions makes the node unready while it holds this many sessions or
	// more. Zero: no limit.
	MaxSessions int
	// MaxPacketRate makes the node unready while the mux moves more packets per
	// second than this, in and out over all classes, averaged over at least
	// LoadWindow. Zero: no limit. Needs Media.
	MaxPacketRate float64
	// MaxCPU makes the node unready while the process uses more than this
	// fraction of its GOMAXPROCS cores (0 < MaxCPU <= 1), averaged over at least
	// LoadWindow. Zero: no limit.
	MaxCPU float64
	// LoadWindow is the shortest interval over which packet rate and CPU are
	// measured; they are sampled lazily when a check needs them. Zero: 1 s.
	LoadWindow time.Duration

	// AdminToken is the bearer token of POST /admin/drain and /admin/undrain.
	// Empty: the admin endpoints are not mounted (404).
	AdminToken string

	// Drain configures draining.
	Drain DrainConfig
	// Probe configures the STUN health probe on the media port.
	Probe ProbeConfig

	// Version and Revision label oneport_build_info. Empty: the main module's
	// version and vcs.revision from the binary's build info, else "unknown".
	Version  string
	Revision string

	// Log receives state changes (drain, undrain, hook errors), never one line
	// per packet or per request. Zero value: logs nothing.
	Log zerolog.Logger
}

// DrainConfig configures a Drainer. Each field documents its zero value.
type DrainConfig struct {
	// Timeout bounds how long a drain waits for sessions to end, counted from
	// Drain. Zero: 10 min (--drain-timeout).
	Timeout time.Duration
	// PollInterval is how often the session count is read while draining.
	// Zero: 1 s.
	PollInterval time.Duration
	// Hooks run in order once the wait ends (clean or timed out), e.g. leave
	// the cluster, then close the server (which ends remaining sessions).
	// Nil: none.
	Hooks []Hook
	// HookTimeout bounds all hooks together. Zero: 30 s.
	HookTimeout time.Duration
}

// Hook is a shutdown step run at the end of a drain. Run must return when
// ctx is done (a second SIGTERM cancels it).
type Hook struct {
	Name string
	Run  func(ctx context.Context) error
}

// ProbeConfig bounds answers to the STUN health probe. Each field documents
// its zero value.
type ProbeConfig struct {
	// Rate is the sustained answers per second to one source address, Burst
	// how many it may get at once. Zero: 5/s and 10.
	Rate  float64
	Burst int
	// MaxSources bounds the per-source table; when full, idle sources are
	// forgotten first, then arbitrary ones. Zero: 4096.
	MaxSources int
	// GlobalRate and GlobalBurst bound answers over all sources, which bounds
	// what spoofed probes can reflect. Zero: 1000/s and 1000.
	GlobalRate  float64
	GlobalBurst int
}

// withDefaults returns c with defaults applied, or an error wrapping
// ErrInvalidConfig.
func (c Config) withDefaults() (Config, error) {
	if c.Sockets == nil {
		return c, fmt.Errorf("%w: Sockets is nil", ErrInvalidConfig)
	}
	if c.Sessions == nil {
		return c, fmt.Errorf("%w: Sessions is nil", ErrInvalidConfig)
	}
	if c.MaxSessions < 0 {
		return c, fmt.Errorf("%w: MaxSessions %d < 0", ErrInvalidConfig, c.MaxSessions)
	}
	if !finiteNonNeg(c.MaxPacketRate) {
		return c, fmt.Errorf("%w: MaxPacketRate %v", ErrInvalidConfig, c.MaxPacketRate)
	}
	if c.MaxPacketRate > 0 && c.Media == nil {
		return c, fmt.Errorf("%w: MaxPacketRate needs Media", ErrInvalidConfig)
	}
	if !finiteNonNeg(c.MaxCPU) || c.MaxCPU > 1 {
		return c, fmt.Errorf("%w: MaxCPU %v not in [0, 1]", ErrInvalidConfig, c.MaxCPU)
	}
	if c.MaxCPU > 0 {
		if _, err := processCPUTime(); err != nil {
			return c, fmt.Errorf("%w: MaxCPU: %w", ErrInvalidConfig, err)
		}
	}
	if c.LoadWindow < 0 {
		return c, fmt.Errorf("%w: LoadWindow %v < 0", ErrInvalidConfig, c.LoadWindow)
	}
	if c.LoadWindow == 0 {
		c.LoadWindow = DefaultLoadWindow
	}
	var err error
	if c.Drain, err = c.Drain.withDefaults(); err != nil {
		return c, err
	}
	if c.Probe, err = c.Probe.withDefaults(); err != nil {
		return c, err
	}
	if c.Version == "" || c.Revision == "" {
		v, r := buildVersion()
		if c.Version == "" {
			c.Version = v
		}
		if c.Revision == "" {
			c.Revision = r
		}
	}
	return c, nil
}

func (c DrainConfig) withDefaults() (DrainConfig, error) {
	if c.Timeout < 0 || c.PollInterval < 0 || c.HookTimeout < 0 {
		return c, fmt.Errorf("%w: negative drain duration", ErrInvalidConfig)
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultDrainTimeout
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultDrainPollInterval
	}
	if c.HookTimeout == 0 {
		c.HookTimeout = DefaultHookTimeout
	}
	for i, h := range c.Hooks {
		if h.Run == nil {
			return c, fmt.Errorf("%w: drain hook %d (%q) has no Run", ErrInvalidConfig, i, h.Name)
		}
	}
	return c, nil
}

func (c ProbeConfig) withDefaults() (ProbeConfig, error) {
	if !finiteNonNeg(c.Rate) || !finiteNonNeg(c.GlobalRate) ||
		c.Burst < 0 || c.GlobalBurst < 0 || c.MaxSources < 0 {
		return c, fmt.Errorf("%w: negative or non-finite probe limit", ErrInvalidConfig)
	}
	if c.Rate == 0 {
		c.Rate = DefaultProbeRate
	}
	if c.Burst == 0 {
		c.Burst = DefaultProbeBurst
	}
	if c.MaxSources == 0 {
		c.MaxSources = DefaultProbeMaxSources
	}
	if c.GlobalRate == 0 {
		c.GlobalRate = DefaultProbeGlobalRate
	}
	if c.GlobalBurst == 0 {
		c.GlobalBurst = DefaultProbeGlobalBurst
	}
	return c, nil
}

func finiteNonNeg(f float64) bool { return f >= 0 && !math.IsInf(f, 0) && !math.IsNaN(f) }

// buildVersion reads the version and VCS revision the Go toolchain stamped
// into the binary.
func buildVersion() (version, revision string) {
	version, revision = "unknown", "unknown"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return version, revision
	}
	if bi.Main.Version != "" {
		version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && s.Value != "" {
			revision = s.Value
		}
	}
	return version, revision
}
