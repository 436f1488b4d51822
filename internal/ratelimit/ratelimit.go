// Package ratelimit holds GCRA token buckets: one lock-free bucket shared by
// all callers (Global) and a bounded table of buckets keyed by source IP
// (Sources). lbhealth limits STUN health probes with them, sfu limits
// signaling requests per client IP. Sources keys an IPv6 address by its /64
// (see SourceKey).
//
// A bucket is one int64, the theoretical arrival time (TAT) of the next
// conforming event, in nanoseconds on the caller's monotonic clock. A bucket
// whose TAT is not after now is full, so forgetting it loses nothing: that is
// what lets the per-source table stay bounded without changing anyone's limit
// while it is not full.
package ratelimit

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Step returns the bucket's next TAT and whether an event arriving at now
// conforms. interval is 1/rate; tolerance is interval*(burst-1).
func Step(tat, now, interval, tolerance int64) (int64, bool) {
	tat = max(tat, now)
	if tat-now > tolerance {
		return tat, false
	}
	return tat + interval, true
}

// Params converts a rate per second and a burst into GCRA terms. The
// interval is clamped so that interval*burst stays far from overflowing int64
// whatever the configured rate.
func Params(rate float64, burst int) (interval, tolerance int64) {
	burst = max(burst, 1)
	limit := float64(math.MaxInt64) / 4 / float64(burst)
	interval = int64(math.Max(1, math.Min(float64(time.Second)/rate, limit)))
	return interval, interval * int64(burst-1)
}

// Global is one lock-free bucket shared by all sources. The zero value
// refuses nothing until SetRate.
type Global struct {
	interval, tolerance int64
	tat                 atomic.Int64
}

// SetRate sets the rate (per second) and burst; call it before Allow.
func (g *Global) SetRate(rate float64, burst int) {
	g.interval, g.tolerance = Params(rate, burst)
}

// Allow reports whether an event at now conforms, and charges it if so.
func (g *Global) Allow(now int64) bool {
	for {
		old := g.tat.Load()
		next, ok := Step(old, now, g.interval, g.tolerance)
		if !ok {
			return false
		}
		if g.tat.CompareAndSwap(old, next) {
			return true
		}
	}
}

// shards spreads sources over independently locked shards so concurrent
// callers (the mux's readers, HTTP handlers) rarely contend.
const (
	shardBits = 4
	numShards = 1 << shardBits
)

// SourceKey is the bucket a source address charges: an IPv4 address itself,
// an IPv6 address its /64. A site, and often a single host, gets at least a
// /64 (RFC 6177); keyed by the full address, one attacker would have 2^64
// buckets, each with a fresh burst. a must already be unmapped.
func SourceKey(a netip.Addr) netip.Addr {
	if !a.Is6() {
		return a
	}
	p, err := a.Prefix(64)
	if err != nil {
		return a
	}
	return p.Addr()
}

// Sources keeps one bucket per source (SourceKey), at most maxSources in
// all.
type Sources struct {
	interval, tolerance int64
	perShard            int
	seed                uint64
	evicted             atomic.Uint64 // live buckets dropped because a shard was full
	shards              [numShards]shard
}

type shard struct {
	mu        sync.Mutex // guards tat and lastSweep
	tat       map[netip.Addr]int64
	lastSweep int64
	_         [40]byte // pad to 64 bytes: neighbouring shards' locks on separate cache lines
}

// NewSources returns a table allowing rate events per second with the given
// burst to each source, holding at most maxSources buckets (rounded up to a
// multiple of the shard count).
func NewSources(rate float64, burst, maxSources int) *Sources {
	l := &Sources{
		perShard: max(1, (maxSources+numShards-1)/numShards),
		seed:     rand.Uint64() | 1,
	}
	l.interval, l.tolerance = Params(rate, burst)
	for i := range l.shards {
		l.shards[i].tat = make(map[netip.Addr]int64, l.perShard)
	}
	return l
}

func (l *Sources) shard(a netip.Addr) *shard {
	b := a.As16()
	h := binary.LittleEndian.Uint64(b[:8])*l.seed ^ binary.LittleEndian.Uint64(b[8:])
	h *= 0x9e3779b97f4a7c15 // only the high bits of a product depend on every input bit
	return &l.shards[h>>(64-shardBits)]
}

// Allow reports whether an event from a (already unmapped) at now conforms,
// and charges it if so.
func (l *Sources) Allow(a netip.Addr, now int64) bool {
	ok, _ := l.Check(a, now)
	return ok
}

// Check is Allow that also says, for a refused event, how long until one
// would conform (for Retry-After).
func (l *Sources) Check(a netip.Addr, now int64) (bool, time.Duration) {
	a = SourceKey(a)
	s := l.shard(a)
	s.mu.Lock()
	defer s.mu.Unlock()
	tat, ok := s.tat[a]
	if !ok && len(s.tat) >= l.perShard {
		l.makeRoomLocked(s, now)
	}
	next, conform := Step(tat, now, l.interval, l.tolerance)
	if !conform {
		return false, time.Duration(max(tat, now) - now - l.tolerance)
	}
	s.tat[a] = next
	return true, 0
}

// makeRoomLocked frees at least one slot in the full shard s. It forgets all
// full buckets, at most once per interval so a flood of new sources costs a
// sweep only now and then; otherwise it drops an arbitrary bucket (map order
// is random), which can only let that source burst again. s.mu must be held.
func (l *Sources) makeRoomLocked(s *shard, now int64) {
	if now-s.lastSweep >= l.interval {
		s.lastSweep = now
		for a, tat := range s.tat {
			if tat <= now {
				delete(s.tat, a)
			}
		}
		if len(s.tat) < l.perShard {
			return
		}
	}
	for a := range s.tat {
		delete(s.tat, a)
		l.evicted.Add(1)
		return
	}
}

// Len returns the number of buckets held, for tests and metrics.
func (l *Sources) Len() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.tat)
		s.mu.Unlock()
	}
	return n
}

// Evicted counts live buckets forgotten because the table was full.
func (l *Sources) Evicted() uint64 { return l.evicted.Load() }
