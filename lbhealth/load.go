package lbhealth

import (
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// loadSampler measures the mux packet rate and the process CPU share lazily:
// a check that needs them takes a new sample when the last one is at least
// window old, so the averages span window or longer and no goroutine ticks.
// Readers of the results never block; one of them at a time samples.
type loadSampler struct {
	window  time.Duration
	media   MediaSource // nil: packet rate not measured
	wantCPU bool
	epoch   time.Time // monotonic origin of due

	due     atomic.Int64  // nanoseconds after epoch from which a new sample is taken
	pktRate atomic.Uint64 // float64 bits, packets/s
	cpuFrac atomic.Uint64 // float64 bits, share of GOMAXPROCS cores
	valid   atomic.Bool   // two samples taken: the rates mean something

	mu      sync.Mutex // guards the fields below
	primed  bool
	at      time.Time
	packets uint64
	cpu     time.Duration
}

// load returns the latest packet rate and CPU share, sampling first if due.
// valid is false until two samples are window apart.
func (s *loadSampler) load() (pktRate, cpuFrac float64, valid bool) {
	now := time.Now()
	if int64(now.Sub(s.epoch)) >= s.due.Load() && s.mu.TryLock() {
		s.sampleLocked(now)
		s.mu.Unlock()
	}
	return math.Float64frombits(s.pktRate.Load()), math.Float64frombits(s.cpuFrac.Load()), s.valid.Load()
}

func (s *loadSampler) sampleLocked(now time.Time) {
	if s.primed && now.Sub(s.at) < s.window {
		return // another caller sampled between our due check and TryLock
	}
	var packets uint64
	if s.media != nil {
		st := s.media.MediaStats()
		packets = st.packets()
	}
	var cpu time.Duration
	if s.wantCPU {
		// Checked in withDefaults: on platforms without it MaxCPU is refused.
		cpu, _ = processCPUTime()
	}
	if s.primed {
		dt := now.Sub(s.at).Seconds()
		var rate, frac float64
		if packets >= s.packets { // a restarted source reads as idle, not negative
			rate = float64(packets-s.packets) / dt
		}
		if cpu >= s.cpu {
			frac = (cpu - s.cpu).Seconds() / dt / float64(runtime.GOMAXPROCS(0))
		}
		s.pktRate.Store(math.Float64bits(rate))
		s.cpuFrac.Store(math.Float64bits(frac))
		s.valid.Store(true)
	}
	s.primed, s.at, s.packets, s.cpu = true, now, packets, cpu
	s.due.Store(int64(now.Add(s.window).Sub(s.epoch)))
}
