package mux

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// pbuf is a pooled datagram buffer; a pointer so sync.Pool stores it without
// allocating.
type pbuf struct{ b []byte }

// qpkt is one queued datagram.
type qpkt struct {
	buf     *pbuf
	off, n  int // the datagram is buf.b[off:off+n]
	from    netip.AddrPort
	unbound bool // reached the session by ufrag, not by a bound address
}

// session is one ufrag's (and one address family's) share of the port: what
// pion calls a muxed conn. It outlives the conns GetConn hands out for it
// until the last one closes or RemoveConnByUfrag.
type session struct {
	m     *Mux
	key   ufragKey
	ufrag string
	is6   bool
	w     *writer // the socket it sends from

	refs int // guarded by m.mu: conns handed out and not yet closed

	qmu     sync.Mutex
	ring    []qpkt // guarded by qmu: the receive queue, grown up to QueueLen
	head    int    // guarded by qmu
	n       int    // guarded by qmu
	unbound int    // guarded by qmu: queued datagrams with unbound set
	ubTAT   int64  // guarded by qmu: GCRA theoretical arrival time of the next unbound datagram (unix ns)
	qclosed bool   // guarded by qmu

	// notify (capacity 1) says a datagram was queued; it is closed when the
	// session closes, so a waiting reader needs no second channel for that.
	// Sent to and closed only under qmu, after checking qclosed.
	notify    chan struct{}
	closeOnce sync.Once
	closedAt  atomic.Int64 // unix nanoseconds; zero while live

	amu   sync.Mutex
	addrs []netip.AddrPort // guarded by amu: addresses bound to this session

	// sent caches the flow of the address last written to, so a steady
	// stream of writes skips the table. Valid while the table's generation
	// equals its gen.
	sent atomic.Pointer[sentFlow]
}

type sentFlow struct {
	addr netip.AddrPort
	f    *flow
	gen  uint64
}

func newSession(m *Mux, key ufragKey, is6 bool, w *writer) *session {
	return &session{
		m:      m,
		key:    key,
		ufrag:  key.String(),
		is6:    is6,
		w:      w,
		ring:   make([]qpkt, min(16, m.cfg.QueueLen)),
		notify: make(chan struct{}, 1),
	}
}

func (s *session) closed() bool { return s.closedAt.Load() != 0 }

// push queues a datagram, taking ownership of buf. It never blocks; when the
// queue is full it returns the reason and the caller keeps buf.
func (s *session) push(buf *pbuf, off, n int, from netip.AddrPort, unbound bool, now int64) (DropReason, bool) {
	s.qmu.Lock()
	switch {
	case s.qclosed:
		s.qmu.Unlock()
		return DropClosed, false
	case s.n >= s.m.cfg.QueueLen:
		s.qmu.Unlock()
		return DropQueueFull, false
	case unbound && s.unbound >= s.m.cfg.UnboundQueueLen:
		s.qmu.Unlock()
		return DropUnboundLimit, false
	case unbound && !s.unboundAllowedLocked(now):
		s.qmu.Unlock()
		return DropUnboundRate, false
	}
	if s.n == len(s.ring) {
		s.growLocked()
	}
	i := s.head + s.n
	if i >= len(s.ring) {
		i -= len(s.ring)
	}
	s.ring[i] = qpkt{buf: buf, off: off, n: n, from: from, unbound: unbound}
	s.n++
	if unbound {
		s.unbound++
	}
	s.wakeLocked()
	s.qmu.Unlock()
	return 0, true
}

// wakeLocked wakes a reader waiting on notify, if any; s.qmu is held.
func (s *session) wakeLocked() {
	if s.qclosed {
		return
	}
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// wake is wakeLocked for callers without the lock.
func (s *session) wake() {
	s.qmu.Lock()
	s.wakeLocked()
	s.qmu.Unlock()
}

// growLocked doubles the ring, up to QueueLen; the queue is full.
func (s *session) growLocked() {
	r := make([]qpkt, min(2*len(s.ring), s.m.cfg.QueueLen))
	k := copy(r, s.ring[s.head:])
	copy(r[k:], s.ring[:s.head])
	s.ring, s.head = r, 0
}

// pop dequeues the oldest datagram into b (truncating as a UDP read does).
func (s *session) pop(b []byte) (n int, from netip.AddrPort, ok bool) {
	s.qmu.Lock()
	if s.n == 0 {
		s.qmu.Unlock()
		return 0, from, false
	}
	p := s.ring[s.head]
	s.ring[s.head] = qpkt{}
	s.head++
	if s.head == len(s.ring) {
		s.head = 0
	}
	s.n--
	if p.unbound {
		s.unbound--
	}
	if s.n > 0 {
		s.wakeLocked() // another reader of this session may be waiting
	}
	s.qmu.Unlock()
	n = copy(b, p.buf.b[p.off:p.off+p.n])
	s.m.putBuf(p.buf)
	return n, p.from, true
}

// close ends the session: waiters wake, queued datagrams are freed, and its
// ufrag and addresses become tombstones until the janitor sweeps them.
func (s *session) close(now int64) {
	s.closeOnce.Do(func() {
		s.closedAt.Store(max(now, 1))
		s.qmu.Lock()
		s.qclosed = true
		for s.n > 0 {
			s.m.putBuf(s.ring[s.head].buf)
			s.ring[s.head] = qpkt{}
			s.head = (s.head + 1) % len(s.ring)
			s.n--
		}
		s.unbound = 0
		s.ring = nil
		close(s.notify)
		s.qmu.Unlock()
	})
}

// addAddr records a newly bound address; when over the limit it returns the
// address idle longest, which the caller unbinds.
func (s *session) addAddr(a netip.AddrPort, limit int, lastSeen func(netip.AddrPort) int64) (evict netip.AddrPort, ok bool) {
	s.amu.Lock()
	defer s.amu.Unlock()
	for _, x := range s.addrs {
		if x == a {
			return evict, false
		}
	}
	s.addrs = append(s.addrs, a)
	if len(s.addrs) <= limit {
		return evict, false
	}
	oldest, at := 0, int64(0)
	for i, x := range s.addrs[:len(s.addrs)-1] {
		if t := lastSeen(x); i == 0 || t < at {
			oldest, at = i, t
		}
	}
	evict = s.addrs[oldest]
	s.addrs = append(s.addrs[:oldest], s.addrs[oldest+1:]...)
	return evict, true
}

// removeAddr forgets a (it expired or another session took it).
func (s *session) removeAddr(a netip.AddrPort) {
	s.amu.Lock()
	for i, x := range s.addrs {
		if x == a {
			s.addrs = append(s.addrs[:i], s.addrs[i+1:]...)
			break
		}
	}
	s.amu.Unlock()
}

// Addrs returns the addresses bound to the session.
func (s *session) boundAddrs() []netip.AddrPort {
	s.amu.Lock()
	defer s.amu.Unlock()
	return append([]netip.AddrPort(nil), s.addrs...)
}

// unboundAllowedLocked takes one unbound datagram from the session's rate
// (GCRA: a token bucket kept as one timestamp), bursts up to
// UnboundQueueLen. s.qmu is held.
func (s *session) unboundAllowedLocked(now int64) bool {
	rate := s.m.cfg.UnboundRate
	if rate < 0 {
		return true
	}
	interval := int64(time.Second) / int64(rate)
	tat := max(s.ubTAT, now)
	if tat-now > int64(s.m.cfg.UnboundQueueLen-1)*interval {
		return false
	}
	s.ubTAT = tat + interval
	return true
}
