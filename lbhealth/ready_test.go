package lbhealth

import (
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// checkOf returns the named check of r.
func checkOf(t *testing.T, r Report, name string) Check {
	t.Helper()
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no %q check in %+v", name, r)
	return Check{}
}

// wantOnlyFailing asserts that r failed on exactly the check named fail (or
// passed, when fail is ""), that the failing reason contains reason, and that
// the fast path agrees.
func wantOnlyFailing(t *testing.T, h *Health, fail, reason string) {
	t.Helper()
	r := h.Ready()
	if len(r.Checks) != len(readyChecks) {
		t.Fatalf("report has %d checks, want %d: %+v", len(r.Checks), len(readyChecks), r)
	}
	for i, c := range r.Checks {
		if c.Name != readyChecks[i] {
			t.Errorf("check %d is %q, want %q", i, c.Name, readyChecks[i])
		}
		if c.OK == (c.Name == fail) {
			t.Errorf("check %s ok=%v (%s), want failing check %q only", c.Name, c.OK, c.Reason, fail)
		}
		if c.Name == fail && !strings.Contains(c.Reason, reason) {
			t.Errorf("check %s reason %q does not contain %q", c.Name, c.Reason, reason)
		}
	}
	if r.OK() != (fail == "") || h.ready() != r.OK() {
		t.Errorf("status %q, fast path %v, want ok=%v", r.Status, h.ready(), fail == "")
	}
}

func TestReadinessReasons(t *testing.T) {
	for _, tc := range []struct {
		name, fail, reason string
		edit               func(*Config)
		set                func(*Health, *fakeNode)
	}{
		{name: "ready"},
		{name: "unbound", fail: CheckSockets, reason: errUnbound.Error(),
			set: func(_ *Health, f *fakeNode) { f.unbound.Store(true) }},
		{name: "not joined", fail: CheckCluster, reason: errNotJoined.Error(),
			set: func(_ *Health, f *fakeNode) { f.notJoin.Store(true) }},
		{name: "draining", fail: CheckDraining, reason: "draining since",
			set: func(h *Health, _ *fakeNode) { h.Drainer().Drain("SIGTERM") }},
		{name: "full", fail: CheckSessions, reason: "3 sessions, limit 3",
			edit: func(c *Config) { c.MaxSessions = 3 },
			set:  func(_ *Health, f *fakeNode) { f.sessions.Store(3) }},
		{name: "under max sessions",
			edit: func(c *Config) { c.MaxSessions = 3 },
			set:  func(_ *Health, f *fakeNode) { f.sessions.Store(2) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, f := newHealth(t, tc.edit)
			if tc.set != nil {
				tc.set(h, f)
			}
			wantOnlyFailing(t, h, tc.fail, tc.reason)
		})
	}
}

func TestReadinessClusterNotConfigured(t *testing.T) {
	h, _ := newHealth(t, func(c *Config) { c.Cluster = nil })
	wantOnlyFailing(t, h, "", "")
	if c := checkOf(t, h.Ready(), CheckCluster); c.Reason != "not configured" {
		t.Errorf("cluster reason %q", c.Reason)
	}
}

// TestReadinessPacketRate drives the mux counters on a fake clock: the rate is
// measured over LoadWindow and the check follows it both ways.
func TestReadinessPacketRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, f := newHealth(t, func(c *Config) { c.MaxPacketRate = 1000 })
		add := func(n uint64) {
			f.update(func(f *fakeNode) {
				f.media.In[ClassRTP].Packets += n / 2
				f.media.Out[ClassRTP].Packets += n - n/2
			})
		}
		wantOnlyFailing(t, h, "", "") // first sample: measuring
		if c := checkOf(t, h.Ready(), CheckPacketRate); c.Reason != "measuring" {
			t.Errorf("reason before two samples: %q", c.Reason)
		}
		add(3000)
		time.Sleep(2 * time.Second) // 1500 packets/s
		wantOnlyFailing(t, h, CheckPacketRate, "1500 packets/s, limit 1000")
		add(2 * 900)
		time.Sleep(2 * time.Second) // 900 packets/s
		wantOnlyFailing(t, h, "", "")
		if c := checkOf(t, h.Ready(), CheckPacketRate); c.Reason != "900 packets/s, limit 1000" {
			t.Errorf("reason %q", c.Reason)
		}
	})
}

// TestReadinessCPU uses the real process CPU clock against a fake wall clock:
// burning a few milliseconds of CPU over one fake second exceeds a tiny limit
// and stays far below a limit of all cores.
func TestReadinessCPU(t *testing.T) {
	burn := func(t *testing.T) {
		start, err := processCPUTime()
		if err != nil {
			t.Fatal(err)
		}
		x := 1
		for i := 0; i < 1<<32; i++ {
			x = x*31 + i
			if i%(1<<16) == 0 {
				if now, _ := processCPUTime(); now-start >= 5*time.Millisecond {
					break
				}
			}
		}
		sink = x
	}
	synctest.Test(t, func(t *testing.T) {
		h, _ := newHealth(t, func(c *Config) { c.MaxCPU = 1e-9 })
		h.Ready()
		burn(t)
		time.Sleep(time.Second)
		wantOnlyFailing(t, h, CheckCPU, "limit 0.0%")
	})
	synctest.Test(t, func(t *testing.T) {
		h, _ := newHealth(t, func(c *Config) { c.MaxCPU = 1 })
		h.Ready()
		burn(t)
		time.Sleep(time.Second)
		wantOnlyFailing(t, h, "", "")
		if c := checkOf(t, h.Ready(), CheckCPU); !strings.Contains(c.Reason, "limit 100.0%") {
			t.Errorf("reason %q", c.Reason)
		}
	})
}

var sink int

func TestLiveness(t *testing.T) {
	h, f := newHealth(t, nil)
	h.Drainer().Drain("test")
	if r := h.Live(); !r.OK() {
		t.Errorf("draining node not live: %+v", r)
	}
	f.unbound.Store(true)
	r := h.Live()
	if r.OK() || checkOf(t, r, CheckSockets).Reason != errUnbound.Error() {
		t.Errorf("unbound node live: %+v", r)
	}
}

func TestConfigRejects(t *testing.T) {
	f := &fakeNode{}
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no sockets", Config{Sessions: f}},
		{"no sessions", Config{Sockets: f}},
		{"packet rate without media", Config{Sockets: f, Sessions: f, MaxPacketRate: 10}},
		{"cpu over 1", Config{Sockets: f, Sessions: f, MaxCPU: 1.5}},
		{"negative sessions", Config{Sockets: f, Sessions: f, MaxSessions: -1}},
		{"negative timeout", Config{Sockets: f, Sessions: f, Drain: DrainConfig{Timeout: -1}}},
		{"hook without Run", Config{Sockets: f, Sessions: f, Drain: DrainConfig{Hooks: []Hook{{Name: "x"}}}}},
		{"negative probe rate", Config{Sockets: f, Sessions: f, Probe: ProbeConfig{Rate: -1}}},
	} {
		if _, err := New(tc.cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: err %v, want ErrInvalidConfig", tc.name, err)
		}
	}
	h, err := New(Config{Sockets: f, Sessions: f})
	if err != nil {
		t.Fatal(err)
	}
	if h.cfg.Drain.Timeout != DefaultDrainTimeout || h.cfg.Probe.Burst != DefaultProbeBurst || h.cfg.Version == "" {
		t.Errorf("defaults not applied: %+v", h.cfg)
	}
}
