package mux

import (
	"net/netip"
	"sync"
	"sync/atomic"
)

// outPkt is one datagram to send. b is either the caller's slice (only while
// the caller waits inside write) or a pooled copy in buf.
type outPkt struct {
	b   []byte
	buf *pbuf
	to  netip.AddrPort
}

// writer sends datagrams from one socket. Writes combine: a writer that finds
// the socket idle sends at once on its own goroutine (no hand-off, no added
// latency); writers that find a send in progress queue a copy, and whoever
// holds the socket next sends the queue in one sendmmsg before its own
// datagram, so per-caller order is kept.
//
// While corked (Mux.Cork), writes queue even on an idle socket, and Uncork
// sends the queue in sendmmsg batches: a goroutine that writes a burst, such
// as one packet fanned out to many subscribers, pays one system call per
// batch instead of one per datagram.
type writer struct {
	s *socket

	sendMu sync.Mutex // held while sending; guards out and the batch state in s
	out    []outPkt   // guarded by sendMu: the batch being sent

	qmu     sync.Mutex
	q       []outPkt     // guarded by qmu: waiting datagrams, at most WriteQueueLen
	pending atomic.Int32 // len(q), readable without qmu

	corked atomic.Int32 // Cork calls not yet matched by Uncork

	stats   counters
	batched atomic.Uint64 // datagrams that left queued behind another send
}

func (w *writer) init(s *socket) {
	w.s = s
	n := s.m.cfg.WriteQueueLen
	w.q = make([]outPkt, 0, n)
	w.out = make([]outPkt, 0, n+1)
}

// write sends b to `to`, or queues a copy while another goroutine is inside
// a send. When the queue is full it waits for the socket, as a blocking
// send on a full socket buffer would, rather than drop a datagram the
// kernel would take: the queue bounds memory, callers get backpressure.
func (w *writer) write(b []byte, to netip.AddrPort) (int, error) {
	if w.corked.Load() > 0 && w.enqueue(b, to) {
		// Uncork flushes; if it ran between the check and the enqueue, the
		// datagram would be stranded, so look again.
		if w.corked.Load() == 0 {
			w.flush()
		}
		return len(b), nil
	}
	if !w.sendMu.TryLock() {
		if w.enqueue(b, to) {
			w.flush()
			return len(b), nil
		}
		w.sendMu.Lock()
	}
	var err error
	if w.pending.Load() == 0 {
		err = w.sendOneLocked(b, to)
	} else {
		err = w.sendQueueLocked(outPkt{b: b, to: to})
	}
	w.sendMu.Unlock()
	w.flush()
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

// enqueue queues a copy of b; false when the queue is full.
func (w *writer) enqueue(b []byte, to netip.AddrPort) bool {
	w.qmu.Lock()
	defer w.qmu.Unlock()
	if len(w.q) >= cap(w.q) {
		return false
	}
	buf := w.s.m.getBufFor(len(b))
	n := copy(buf.b, b)
	w.q = append(w.q, outPkt{b: buf.b[:n], buf: buf, to: to})
	w.pending.Store(int32(len(w.q)))
	return true
}

// flush sends what is queued unless another goroutine holds the socket; that
// goroutine flushes after it releases it, so nothing is stranded.
func (w *writer) flush() {
	for w.pending.Load() > 0 && w.sendMu.TryLock() {
		_ = w.sendQueueLocked(outPkt{})
		w.sendMu.Unlock()
	}
}

// sendQueueLocked sends the queue, then own (when own.b is set), in batches.
// It returns own's error only.
func (w *writer) sendQueueLocked(own outPkt) error {
	w.qmu.Lock()
	w.out = append(w.out[:0], w.q...)
	clear(w.q)
	w.q = w.q[:0]
	w.pending.Store(0)
	w.qmu.Unlock()
	queued := len(w.out)
	w.batched.Add(uint64(queued))
	if own.b != nil {
		w.out = append(w.out, own)
	}
	err := w.s.sendBatchLocked(w.out, &w.stats)
	for i := range w.out[:queued] {
		w.s.m.putBuf(w.out[i].buf)
	}
	clear(w.out)
	w.out = w.out[:0]
	if own.b == nil {
		return nil
	}
	return err
}

func (w *writer) sendOneLocked(b []byte, to netip.AddrPort) error {
	if _, err := w.s.conn.WriteToUDPAddrPort(b, to); err != nil {
		w.stats.drop(DropWriteError)
		return err
	}
	w.stats.count(Classify(b), len(b))
	return nil
}

// uncork ends one Cork and sends what is queued.
func (w *writer) uncork() {
	w.corked.Add(-1)
	w.flush()
}
