package sfu

import (
	"context"
	"sync/atomic"
)

// Fan-out. The server has a few send workers (Config.SendWorkers, one per
// CPU by default). Each subscriber belongs to one worker, which alone writes
// to it: the downTracks' rewriting state is that worker's, so it needs no
// lock. A published packet becomes one job per worker that has subscribers
// of it, so a packet wakes a handful of goroutines, not one per subscriber,
// and each worker sends its share as one burst, corked when the mux can
// (oneport's mux then sends it in sendmmsg batches: one system call for many
// subscribers instead of one each).
//
// A worker's queue is bounded; when it is full the job is dropped and
// counted once per subscriber it was for. UDP writes do not wait for a slow
// receiver, so a slow or dead subscriber costs its worker only the CPU of
// writing to it; it cannot hold up the others.

// corker is a mux that can hold a burst of writes and send them in one
// system call (*mux.Mux).
type corker interface {
	Cork()
	Uncork()
}

// fanJob is one packet for a worker's subscribers of it (downs), or one
// NACKed sequence number of one subscriber (nack), received at at.
type fanJob struct {
	downs []*downTrack
	slot  *histSlot
	gen   uint64
	layer int32
	nack  *downTrack
	seq   uint16
	at    int64 // nack: monotonic ns the NACK arrived
}

type fanout struct {
	workers []*fanWorker
	cork    corker // nil: writes leave one by one
}

type fanWorker struct {
	idx  int
	f    *fanout
	jobs chan fanJob
	subs atomic.Int64 // subscribers assigned
}

func newFanout(workers, queue int, c corker) *fanout {
	f := &fanout{cork: c}
	for i := range workers {
		f.workers = append(f.workers, &fanWorker{idx: i, f: f, jobs: make(chan fanJob, queue)})
	}
	return f
}

// assign picks the worker with the fewest subscribers for a new one.
func (f *fanout) assign() *fanWorker {
	best := f.workers[0]
	for _, w := range f.workers[1:] {
		if w.subs.Load() < best.subs.Load() {
			best = w
		}
	}
	best.subs.Add(1)
	return best
}

func (f *fanout) release(w *fanWorker) { w.subs.Add(-1) }

// submit queues j, or drops it and counts a drop for each subscriber it
// was for. Never blocks.
func (w *fanWorker) submit(j fanJob, st *counters) {
	select {
	case w.jobs <- j:
	default:
		if j.nack != nil {
			j.nack.sub.nackPending.Add(-1)
			st.nackMisses.Add(1)
			return
		}
		for _, d := range j.downs {
			d.drops.Add(1)
		}
		st.drops.Add(uint64(len(j.downs)))
	}
}

// run sends jobs until ctx ends.
func (w *fanWorker) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-w.jobs:
			w.burst(j)
		}
	}
}

// burst sends one packet to the worker's subscribers of it, corked: the
// first subscriber's copy waits only for the others' (microseconds each),
// and the mux's queue bound (it sends when full) caps even that.
func (w *fanWorker) burst(j fanJob) {
	if c := w.f.cork; c != nil {
		c.Cork()
		defer c.Uncork()
	}
	w.do(&j)
}

func (w *fanWorker) do(j *fanJob) {
	if j.nack != nil {
		j.nack.retransmit(j.seq, j.at)
		j.nack.sub.nackPending.Add(-1)
		return
	}
	for _, d := range j.downs {
		d.write(j.slot, j.gen, j.layer)
	}
}

// drain runs every queued job on the caller's goroutine (tests).
func (f *fanout) drain() {
	for _, w := range f.workers {
		for {
			select {
			case j := <-w.jobs:
				w.do(&j)
				continue
			default:
			}
			break
		}
	}
}
