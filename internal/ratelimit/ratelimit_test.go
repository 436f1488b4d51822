package ratelimit

import (
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestGCRABurstAndRefill(t *testing.T) {
	interval, tol := Params(10, 3) // 100 ms per token, burst 3
	if interval != int64(100*time.Millisecond) || tol != 2*interval {
		t.Fatalf("params %d %d", interval, tol)
	}
	var tat int64
	now := int64(time.Hour)
	allowed := 0
	for range 10 {
		var ok bool
		if tat, ok = Step(tat, now, interval, tol); ok {
			allowed++
		}
	}
	if allowed != 3 {
		t.Errorf("burst allowed %d, want 3", allowed)
	}
	if _, ok := Step(tat, now+interval-1, interval, tol); ok {
		t.Error("allowed before a token accrued")
	}
	if _, ok := Step(tat, now+interval, interval, tol); !ok {
		t.Error("refused after a token accrued")
	}
}

func TestSourceLimiterPerSource(t *testing.T) {
	l := NewSources(1, 2, 64)
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	now := int64(time.Hour)
	for i, want := range []bool{true, true, false} {
		if got := l.Allow(a, now); got != want {
			t.Errorf("a probe %d: %v, want %v", i, got, want)
		}
	}
	if !l.Allow(b, now) {
		t.Error("b limited by a's bucket")
	}
	if !l.Allow(a, now+int64(time.Second)) {
		t.Error("a not refilled after 1/rate")
	}
}

// IPv6 sources charge their /64: a host rotating addresses in its prefix
// shares one bucket; another /64 has its own; IPv4 addresses are their own.
func TestSourceKeyIPv6Prefix(t *testing.T) {
	l := NewSources(1, 2, 1024)
	now := int64(time.Hour)
	for i, s := range []string{"2001:db8:1:2::1", "2001:db8:1:2:ffff::7", "2001:db8:1:2::1%eth0"} {
		if got, want := l.Allow(netip.MustParseAddr(s), now), i < 2; got != want {
			t.Fatalf("%s: allowed %v, want %v (burst 2 per /64)", s, got, want)
		}
	}
	for _, s := range []string{"2001:db8:1:3::1", "192.0.2.1", "192.0.2.2"} {
		if !l.Allow(netip.MustParseAddr(s), now) {
			t.Fatalf("%s: refused; its own bucket", s)
		}
	}
	if n := l.Len(); n != 4 {
		t.Fatalf("%d buckets, want 4", n)
	}
	if k := SourceKey(netip.MustParseAddr("2001:db8:1:2:aaaa:bbbb:cccc:dddd")); k != netip.MustParseAddr("2001:db8:1:2::") {
		t.Fatalf("SourceKey = %v", k)
	}
	if testing.AllocsPerRun(100, func() { _ = SourceKey(netip.MustParseAddr("2001:db8::1")) }) != 0 {
		t.Fatal("SourceKey allocates")
	}
}

// TestSourceLimiterBounded: a flood of distinct sources never grows the table
// past MaxSources; idle sources are forgotten before live ones.
func TestSourceLimiterBounded(t *testing.T) {
	const maxSources = 64
	l := NewSources(1, 1, maxSources)
	now := int64(time.Hour)
	for i := range 10000 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		l.Allow(a, now)
		if n := l.Len(); n > maxSources {
			t.Fatalf("table holds %d sources after %d, bound %d", n, i+1, maxSources)
		}
	}
	if l.Evicted() == 0 {
		t.Error("no eviction counted in a flood of live sources")
	}

	// Once every bucket is full again, a new source in a full shard makes
	// room by forgetting that shard's idle buckets, which changes no one's
	// limit, and counts no eviction.
	if n := l.Len(); n != maxSources {
		t.Fatalf("table holds %d after the flood, want every shard full (%d)", n, maxSources)
	}
	evicted := l.Evicted()
	l.Allow(netip.MustParseAddr("172.16.0.1"), now+int64(time.Minute))
	if got := l.Evicted(); got != evicted {
		t.Errorf("%d live buckets evicted while idle ones were there", got-evicted)
	}
	if n, want := l.Len(), maxSources-l.perShard+1; n != want {
		t.Errorf("table holds %d after the sweep, want %d", n, want)
	}
}

func TestGlobalLimitConcurrent(t *testing.T) {
	defer goleak.VerifyNone(t)
	var g Global
	g.interval, g.tolerance = Params(1, 100)
	now := int64(time.Hour)
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				if g.Allow(now) {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if got := allowed.Load(); got != 100 {
		t.Errorf("allowed %d of a burst of 100", got)
	}
}

func TestGCRAParamsNoOverflow(t *testing.T) {
	for _, tc := range []struct {
		rate  float64
		burst int
	}{{1e-300, 1 << 30}, {1e-9, 1000}, {1e300, 1}, {0.001, 0}} {
		interval, tol := Params(tc.rate, tc.burst)
		if interval < 1 || tol < 0 || tol > math.MaxInt64/2 {
			t.Errorf("rate %v burst %d: interval %d tolerance %d", tc.rate, tc.burst, interval, tol)
		}
	}
}

// TestSourcesCheckWait: a refused event is told how long until one conforms,
// and waiting that long is enough.
func TestSourcesCheckWait(t *testing.T) {
	l := NewSources(2, 3, 16) // 500 ms per token, burst 3
	a := netip.MustParseAddr("198.51.100.7")
	now := int64(time.Hour)
	for range 3 {
		if ok, _ := l.Check(a, now); !ok {
			t.Fatal("burst refused")
		}
	}
	ok, wait := l.Check(a, now)
	if ok || wait != 500*time.Millisecond {
		t.Fatalf("over the burst: %v, wait %v; want refused, 500ms", ok, wait)
	}
	if ok, _ := l.Check(a, now+int64(wait)-1); ok {
		t.Error("allowed before the wait")
	}
	if ok, _ := l.Check(a, now+int64(wait)); !ok {
		t.Error("refused after the wait")
	}
}
