package lbhealth

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// The probe limits are GCRA token buckets: one int64 per bucket, the
// theoretical arrival time (TAT) of the next conforming probe, in nanoseconds
// on a monotonic clock. A bucket whose TAT is not after now is full, so
// forgetting it loses nothing: that is what lets the per-source table stay
// bounded without changing anyone's limit while it is not full.

// gcraStep returns the bucket's next TAT and whether a probe arriving at now
// conforms. interval is 1/rate; tolerance is interval*(burst-1).
func gcraStep(tat, now, interval, tolerance int64) (int64, bool) {
	tat = max(tat, now)
	if tat-now > tolerance {
		return tat, false
	}
	return tat + interval, true
}

// gcraParams converts a rate per second and a burst into GCRA terms. The
// interval is clamped so that interval*burst stays far from overflowing int64
// whatever the configured rate.
func gcraParams(rate float64, burst int) (interval, tolerance int64) {
	burst = max(burst, 1)
	limit := float64(math.MaxInt64) / 4 / float64(burst)
	interval = int64(math.Max(1, math.Min(float64(time.Second)/rate, limit)))
	return interval, interval * int64(burst-1)
}

// globalLimit is one lock-free bucket shared by all sources.
type globalLimit struct {
	interval, tolerance int64
	tat                 atomic.Int64
}

func (g *globalLimit) allow(now int64) bool {
	for {
		old := g.tat.Load()
		next, ok := gcraStep(old, now, g.interval, g.tolerance)
		if !ok {
			return false
		}
		if g.tat.CompareAndSwap(old, next) {
			return true
		}
	}
}

// limiterShards spreads sources over independently locked shards so the mux's
// reader goroutines rarely contend on a probe flood.
const (
	limiterShardBits = 4
	limiterShards    = 1 << limiterShardBits
)

// sourceLimiter keeps one bucket per source address, at most perShard per
// shard.
type sourceLimiter struct {
	interval, tolerance int64
	perShard            int
	seed                uint64
	evicted             atomic.Uint64 // live buckets dropped because a shard was full
	shards              [limiterShards]limiterShard
}

type limiterShard struct {
	mu        sync.Mutex // guards tat and lastSweep
	tat       map[netip.Addr]int64
	lastSweep int64
	_         [40]byte // pad to 64 bytes: neighbouring shards' locks on separate cache lines
}

func newSourceLimiter(rate float64, burst, maxSources int) *sourceLimiter {
	l := &sourceLimiter{
		perShard: max(1, (maxSources+limiterShards-1)/limiterShards),
		seed:     rand.Uint64() | 1,
	}
	l.interval, l.tolerance = gcraParams(rate, burst)
	for i := range l.shards {
		l.shards[i].tat = make(map[netip.Addr]int64, l.perShard)
	}
	return l
}

func (l *sourceLimiter) shard(a netip.Addr) *limiterShard {
	b := a.As16()
	h := binary.LittleEndian.Uint64(b[:8])*l.seed ^ binary.LittleEndian.Uint64(b[8:])
	h *= 0x9e3779b97f4a7c15 // only the high bits of a product depend on every input bit
	return &l.shards[h>>(64-limiterShardBits)]
}

// allow reports whether a probe from a (already unmapped) at now conforms,
// and charges it if so.
func (l *sourceLimiter) allow(a netip.Addr, now int64) bool {
	s := l.shard(a)
	s.mu.Lock()
	defer s.mu.Unlock()
	tat, ok := s.tat[a]
	if !ok && len(s.tat) >= l.perShard {
		l.makeRoomLocked(s, now)
	}
	next, conform := gcraStep(tat, now, l.interval, l.tolerance)
	if conform {
		s.tat[a] = next
	}
	return conform
}

// makeRoomLocked frees at least one slot in the full shard s. It forgets all
// full buckets, at most once per interval so a flood of new sources costs a
// sweep only now and then; otherwise it drops an arbitrary bucket (map order
// is random), which can only let that source burst again. s.mu must be held.
func (l *sourceLimiter) makeRoomLocked(s *limiterShard, now int64) {
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

// len returns the number of buckets held, for tests and metrics.
func (l *sourceLimiter) len() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.tat)
		s.mu.Unlock()
	}
	return n
}
