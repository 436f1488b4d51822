package mux

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pion/ice/v4"
	"github.com/rs/zerolog"

	"github.com/oneport/oneport/internal/batchio"
)

var _ ice.UDPMux = (*Mux)(nil)

var (
	// ErrTooManySessions is returned by GetConn when Config.MaxSessions
	// sessions are live.
	ErrTooManySessions = errors.New("mux: too many sessions")
	// ErrBadUfrag is returned by GetConn for an empty ufrag or one longer
	// than MaxUfragLen.
	ErrBadUfrag = errors.New("mux: ufrag empty or too long")
)

// Mux is one UDP port shared by every session of a node.
type Mux struct {
	cfg    Config
	log    zerolog.Logger
	socks  []*socket
	laddr  *net.UDPAddr
	listen []net.Addr // what GetListenAddresses reports
	pool   sync.Pool  // *pbuf of bufSize bytes
	now    atomic.Int64

	// The cluster relay; all nil or zero on a single node.
	relay   *socket      // the relay socket on the internal network
	tag     [TagLen]byte // this node's owner tag
	tagged  bool
	auth    *relayAuth // nil: frames are not authenticated
	peerMu  sync.Mutex // serializes SetPeers
	peers   atomic.Pointer[peerSet]
	pending pendingVia

	mu        sync.RWMutex
	ufrags    map[ufragKey]*ufragEntry // guarded by mu
	nsessions int                      // guarded by mu: live sessions
	closed    bool                     // guarded by mu

	flows flowTable
	misc  counters // drops that belong to no socket

	closing   chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// ufragEntry holds a ufrag's sessions, one per address family (ICE asks for
// one conn per listen address). A closed session stays as a tombstone until
// swept.
type ufragEntry struct {
	v4, v6 *session
}

func (e *ufragEntry) get(is6 bool) *session {
	if is6 {
		return e.v6
	}
	return e.v4
}

// pick returns the session for a datagram of the given family, falling back
// to the other family's (a dual-stack client may check either).
func (e *ufragEntry) pick(is6 bool) *session {
	s, o := e.v4, e.v6
	if is6 {
		s, o = o, s
	}
	if s == nil || s.closed() && o != nil && !o.closed() {
		return o
	}
	return s
}

// socket is one of the port's SO_REUSEPORT sockets with its reader state and
// its writer.
type socket struct {
	m     *Mux
	conn  *net.UDPConn
	rc    syscall.RawConn
	v6    bool // AF_INET6 (dual-stack or IPv6-only)
	rd    *batchio.Reader
	bufs  []*pbuf // the reader's slots, swapped out when a datagram is kept
	wb    wbatch
	wr    writer
	rs    readerState // the reader's cache and batch counters
	stats counters    // the reader's published counters
}

// WriteToAddrPort sends b from this socket; it lets probe answers leave by
// the socket the probe came in on.
func (s *socket) WriteToAddrPort(b []byte, to netip.AddrPort) (int, error) {
	return s.wr.write(b, unmap(to))
}

// Listen opens the port at addr ("host:port"; port 0 picks one) and starts
// reading it.
func Listen(addr string, cfg Config) (*Mux, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("mux: listen address %q: %w", addr, err)
	}
	if !reusePortBalances {
		cfg.Sockets = 1
	}
	m := newMux(cfg)
	for i := 0; i < cfg.Sockets; i++ {
		uc, v6, err := listenUDP(ua, cfg.SocketBuffer)
		if err != nil {
			m.closeSockets()
			return nil, fmt.Errorf("mux: listen on %s (socket %d): %w", ua, i, err)
		}
		if i == 0 {
			// The other sockets join the port the first one got.
			m.laddr = uc.LocalAddr().(*net.UDPAddr)
			ua = &net.UDPAddr{IP: ua.IP, Port: m.laddr.Port, Zone: ua.Zone}
		}
		if err := m.addSocket(uc, v6); err != nil {
			uc.Close()
			m.closeSockets()
			return nil, err
		}
	}
	m.listen = listenAddrs(m.laddr, cfg.Advertise, cfg.AdvertisePort)
	if cfg.Relay != "" {
		if err := m.openRelay(cfg.Relay); err != nil {
			m.closeSockets()
			return nil, err
		}
	}
	for _, s := range m.socks {
		m.wg.Add(1)
		go m.readLoop(s)
	}
	if m.relay != nil {
		m.wg.Add(1)
		go m.relayLoop(m.relay)
	}
	m.wg.Add(1)
	go m.janitor()
	m.log.Info().Stringer("addr", m.laddr).Int("sockets", len(m.socks)).
		Int("batch", cfg.BatchSize).Msg("listening")
	return m, nil
}

// newMux builds a Mux with no sockets; Listen adds them.
func newMux(cfg Config) *Mux {
	m := &Mux{
		cfg:     cfg,
		log:     cfg.Logger.With().Str("component", "mux").Logger(),
		ufrags:  make(map[ufragKey]*ufragEntry),
		closing: make(chan struct{}),
	}
	size := m.bufSize()
	m.pool.New = func() any { return &pbuf{b: make([]byte, size)} }
	m.flows.init()
	m.peers.Store(&peerSet{})
	if cfg.Tag != "" {
		copy(m.tag[:], cfg.Tag)
		m.tagged = true
	}
	m.auth = newRelayAuth(cfg.RelayKey)
	m.now.Store(time.Now().UnixNano())
	return m
}

// bufSize is the size of every pooled buffer: headroom for a relay header
// before a datagram, and room after it for a relay frame's header, a
// datagram of MaxPacketSize, its MAC and one spare byte that tells a
// truncated read.
func (m *Mux) bufSize() int {
	return headroom + relayHeaderLen + m.cfg.MaxPacketSize + relayMACLen + 1
}

func (m *Mux) addSocket(uc *net.UDPConn, v6 bool) error {
	s, err := m.newSocket(uc, v6)
	if err != nil {
		return err
	}
	m.socks = append(m.socks, s)
	return nil
}

func (m *Mux) newSocket(uc *net.UDPConn, v6 bool) (*socket, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("mux: raw conn: %w", err)
	}
	s := &socket{m: m, conn: uc, rc: rc, v6: v6}
	s.bufs = make([]*pbuf, m.cfg.BatchSize)
	bs := make([][]byte, m.cfg.BatchSize)
	for i := range s.bufs {
		s.bufs[i] = m.getBuf()
		bs[i] = s.bufs[i].b[headroom:]
	}
	if s.rd, err = batchio.NewReader(uc, bs); err != nil {
		return nil, err
	}
	s.initWriteBatch(m.cfg.BatchSize)
	s.wr.init(s)
	return s, nil
}

func (m *Mux) closeSockets() {
	for _, s := range m.socks {
		s.conn.Close()
	}
	if m.relay != nil {
		m.relay.conn.Close()
	}
}

func (m *Mux) getBuf() *pbuf { return m.pool.Get().(*pbuf) }

// getBufFor returns a buffer of at least n bytes (a send larger than
// MaxPacketSize gets its own).
func (m *Mux) getBufFor(n int) *pbuf {
	if n <= m.bufSize() {
		return m.getBuf()
	}
	return &pbuf{b: make([]byte, n)}
}

func (m *Mux) putBuf(b *pbuf) {
	if b != nil && len(b.b) == m.bufSize() {
		m.pool.Put(b)
	}
}

// Sessions is the number of live sessions.
func (m *Mux) Sessions() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.nsessions
}

// Bound reports whether the port is open: nil until Close, then
// net.ErrClosed.
func (m *Mux) Bound() error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return net.ErrClosed
	}
	return nil
}

// LocalAddr is the address the port is bound to.
func (m *Mux) LocalAddr() net.Addr { return m.laddr }

// Cork holds the writes of every goroutine on every socket in the send queue
// until the matching Uncork, which sends them in sendmmsg batches. A caller
// about to write a burst corks, writes, and uncorks at once: datagrams wait
// only for the rest of the burst. A queue that fills sends at once, as it
// would uncorked. Calls nest and may overlap across goroutines.
func (m *Mux) Cork() {
	for _, s := range m.socks {
		s.wr.corked.Add(1)
	}
}

// Uncork ends a Cork and sends what the sockets queued.
func (m *Mux) Uncork() {
	for _, s := range m.socks {
		s.wr.uncork()
	}
}

// GetListenAddresses reports the addresses ICE agents advertise as host
// candidates (Config.Advertise, or the bound addresses).
func (m *Mux) GetListenAddresses() []net.Addr {
	return append([]net.Addr(nil), m.listen...)
}

// GetConn returns a conn for the session of ufrag in addr's address family,
// creating the session on first use. Every returned conn must be closed; the
// session lives until the last is, or until RemoveConnByUfrag.
func (m *Mux) GetConn(ufrag string, addr net.Addr) (net.PacketConn, error) {
	key, ok := makeUfragKey(ufrag)
	if !ok {
		return nil, fmt.Errorf("%w: %d bytes", ErrBadUfrag, len(ufrag))
	}
	is6 := false
	if ua, ok := addr.(*net.UDPAddr); ok && ua.IP.To4() == nil && ua.IP != nil {
		is6 = true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, io.ErrClosedPipe
	}
	e := m.ufrags[key]
	if e == nil {
		e = &ufragEntry{}
		m.ufrags[key] = e
	}
	s := e.get(is6)
	if s == nil || s.closed() {
		if m.nsessions >= m.cfg.MaxSessions {
			if e.v4 == nil && e.v6 == nil {
				delete(m.ufrags, key)
			}
			return nil, ErrTooManySessions
		}
		s = newSession(m, key, is6, m.writerFor(key))
		if is6 {
			e.v6 = s
		} else {
			e.v4 = s
		}
		m.nsessions++
	}
	s.refs++
	return &conn{s: s, laddr: addr, done: make(chan struct{})}, nil
}

// writerFor spreads sessions over the sockets' writers.
func (m *Mux) writerFor(k ufragKey) *writer {
	h := uint32(2166136261)
	for _, c := range k.b[:k.n] {
		h = (h ^ uint32(c)) * 16777619
	}
	return &m.socks[h%uint32(len(m.socks))].wr
}

// release drops one reference to s, closing it with the last.
func (m *Mux) release(s *session) {
	m.mu.Lock()
	s.refs--
	last := s.refs <= 0
	if last {
		m.closeSessionLocked(s)
	}
	m.mu.Unlock()
}

// RemoveConnByUfrag closes ufrag's sessions whatever their references.
func (m *Mux) RemoveConnByUfrag(ufrag string) {
	key, ok := makeUfragKey(ufrag)
	if !ok {
		return
	}
	m.mu.Lock()
	if e := m.ufrags[key]; e != nil {
		for _, s := range [2]*session{e.v4, e.v6} {
			if s != nil {
				m.closeSessionLocked(s)
			}
		}
	}
	m.mu.Unlock()
}

func (m *Mux) closeSessionLocked(s *session) {
	if s.closed() {
		return
	}
	s.close(m.now.Load())
	m.nsessions--
}

// bindOnWrite binds to to s (its agent is answering that address) and
// returns the flow, or nil when the table is full.
func (m *Mux) bindOnWrite(s *session, to netip.AddrPort) *flow {
	now := m.now.Load()
	gen := m.flows.gen.Load() // before any lookup: a later change invalidates
	if c := s.sent.Load(); c != nil && c.addr == to && c.gen == gen {
		c.f.touch(now)
		return c.f
	}
	if f := m.flows.get(to); f != nil && f.sess == s {
		f.touch(now)
		s.sent.Store(&sentFlow{addr: to, f: f, gen: gen})
		return f
	}
	res, f, prev := m.flows.bind(to, s, nil, now, m.cfg.MaxFlows)
	switch res {
	case bindFull:
		m.misc.drop(DropTableFull)
		return nil
	case bindExisting:
		return f
	}
	if m.relay != nil {
		// The check this answers may have come through another node.
		if p := m.pending.take(to, now); p != nil {
			f.via.Store(p)
		}
	}
	if prev != nil {
		prev.removeAddr(to)
	}
	if old, ok := s.addAddr(to, m.cfg.MaxAddrsPerSession, m.lastSeen); ok {
		m.flows.unbind(old, s)
	}
	if s.closed() {
		// Closed while binding: leave no live binding behind.
		m.flows.unbind(to, s)
	}
	return f
}

func (m *Mux) lastSeen(a netip.AddrPort) int64 {
	if f := m.flows.get(a); f != nil {
		return f.lastSeen.Load()
	}
	return 0
}

// WriteToAddrPort sends b from the port to addr outside any session (health
// probe answers). It binds nothing.
func (m *Mux) WriteToAddrPort(b []byte, addr netip.AddrPort) (int, error) {
	if len(m.socks) == 0 {
		return 0, net.ErrClosed
	}
	return m.socks[0].wr.write(b, unmap(addr))
}

// Stats returns a snapshot of the counters.
func (m *Mux) Stats() Stats {
	var st Stats
	add := func(c *counters, out bool) {
		for i := range c.packets {
			if out {
				st.PacketsOut[i] += c.packets[i].Load()
				st.BytesOut[i] += c.bytes[i].Load()
			} else {
				st.PacketsIn[i] += c.packets[i].Load()
				st.BytesIn[i] += c.bytes[i].Load()
			}
		}
		for i := range c.drops {
			st.Drops[i] += c.drops[i].Load()
		}
		st.Probes += c.probes.Load()
	}
	for _, s := range m.socks {
		add(&s.stats, false)
		add(&s.wr.stats, true)
		st.QueuedOut += s.wr.batched.Load()
	}
	if r := m.relay; r != nil {
		add(&r.stats, false) // the relayed datagrams, by class, and drops
		st.RelayFramesIn += r.stats.frames.Load()
		st.RelayBytesIn += r.stats.frameBytes.Load()
		for i := range r.wr.stats.packets {
			st.RelayFramesOut += r.wr.stats.packets[i].Load()
			st.RelayBytesOut += r.wr.stats.bytes[i].Load()
		}
		st.Drops[DropWriteError] += r.wr.stats.drops[DropWriteError].Load()
		st.Peers = len(m.peers.Load().all)
	}
	add(&m.misc, false)
	m.mu.RLock()
	st.Sessions = m.nsessions
	m.mu.RUnlock()
	st.Flows = m.flows.len()
	return st
}

// Close closes the sockets and every session and waits for the mux's
// goroutines. It is idempotent.
func (m *Mux) Close() error {
	m.closeOnce.Do(func() {
		m.mu.Lock()
		m.closed = true
		now := m.now.Load()
		for _, e := range m.ufrags {
			for _, s := range [2]*session{e.v4, e.v6} {
				if s != nil && !s.closed() {
					s.close(now)
					m.nsessions--
				}
			}
		}
		m.mu.Unlock()
		close(m.closing)
		m.closeSockets()
		m.wg.Wait()
		m.log.Info().Msg("closed")
	})
	return nil
}

// janitor keeps the coarse clock and sweeps idle flows and tombstones.
func (m *Mux) janitor() {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-m.closing:
			return
		case now := <-t.C:
			m.now.Store(now.UnixNano())
			m.sweep(now.UnixNano())
		}
	}
}

func (m *Mux) sweep(now int64) {
	idleBefore := now - int64(m.cfg.IdleTimeout)
	deadBefore := now - int64(m.cfg.TombstoneTTL)
	m.flows.sweep(idleBefore, deadBefore, func(s *session, a netip.AddrPort) { s.removeAddr(a) })
	m.mu.Lock()
	for k, e := range m.ufrags {
		if e.v4 != nil && e.v4.closedAt.Load() != 0 && e.v4.closedAt.Load() < deadBefore {
			e.v4 = nil
		}
		if e.v6 != nil && e.v6.closedAt.Load() != 0 && e.v6.closedAt.Load() < deadBefore {
			e.v6 = nil
		}
		if e.v4 == nil && e.v6 == nil {
			delete(m.ufrags, k)
		}
	}
	m.mu.Unlock()
}

// readLoop reads a media socket until it is closed.
func (m *Mux) readLoop(s *socket) {
	m.serveSocket(s, func(i int, b []byte, from netip.AddrPort, now int64) bool {
		if len(b) > m.cfg.MaxPacketSize {
			s.rs.local.drop(DropTruncated)
			return false
		}
		return m.demux(&s.rs, s, s.bufs[i], headroom, len(b), from, now, nil)
	})
}

// serveSocket reads s in batches until it is closed, handing each datagram
// (slot i, aliasing s.bufs[i]) to handle, which reports whether it kept the
// slot's buffer. Counters are published once per batch.
func (m *Mux) serveSocket(s *socket, handle func(i int, b []byte, from netip.AddrPort, now int64) bool) {
	defer m.wg.Done()
	var backoff time.Duration
	for {
		n, err := s.rd.Read()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Transient kernel errors (ENOMEM, ICMP-reported errors): count,
			// back off briefly so a persistent one does not spin a core.
			s.stats.drop(DropReadError)
			backoff = min(max(2*backoff, time.Millisecond), 100*time.Millisecond)
			select {
			case <-m.closing:
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		now := time.Now().UnixNano()
		m.now.Store(now)
		for i := 0; i < n; i++ {
			b, from, trunc := s.rd.Datagram(i)
			if trunc {
				s.rs.local.drop(DropTruncated)
				continue
			}
			if handle(i, b, from, now) {
				s.bufs[i] = m.getBuf()
				s.rd.SetBuffer(i, s.bufs[i].b[headroom:])
			}
		}
		s.rs.local.flush(&s.stats)
	}
}

// demux routes one datagram that arrived from `from`, straight (via nil)
// or relayed by the ingress node via, counting it and any drop in rs. The
// datagram is buf.b[off:off+n]. It reports whether it kept buf (handed it to
// a session).
func (m *Mux) demux(rs *readerState, w ProbeWriter, buf *pbuf, off, n int, from netip.AddrPort, now int64, via *peer) bool {
	b := buf.b[off : off+n]
	class := Classify(b)
	c := &rs.local
	c.count(class, n)
	if f := rs.lookup(&m.flows, from); f != nil {
		if o := f.owner; o != nil {
			if via != nil || o.gone.Load() {
				// Relayed to us, yet routed on by us: the members disagree
				// for a moment. Or the owner left. Never bounce it on.
				c.drop(DropNoRoute)
				return false
			}
			f.touch(now)
			m.relayDatagram(c, buf, off, n, frameToOwner, from, o)
			return false
		}
		s := f.sess
		if !s.closed() {
			f.touch(now)
			if f.via.Load() != via {
				f.via.Store(via) // the latest path wins (a load balancer re-hash)
			}
			r, ok := s.push(buf, off, n, from, false, now)
			if !ok {
				c.drop(r)
			}
			return ok
		}
		if class != ClassSTUN {
			c.drop(DropClosed)
			return false
		}
		// A check from a closed session's address may name a live ufrag: an
		// ICE restart from the same address. Route it by its ufrag below.
	}
	if class != ClassSTUN {
		switch {
		case class == ClassOther:
			c.drop(DropJunk)
		default:
			if via == nil && m.relay != nil {
				// A live flow the load balancer moved here: ask who owns it.
				m.askWhoHas(rs, from, now)
			}
			c.drop(DropUnknownAddr)
		}
		return false
	}
	kind, ufrag := ParseSTUN(b)
	switch kind {
	case StunInvalid:
		c.drop(DropJunk)
		return false
	case StunOther:
		c.drop(DropNotRequest)
		return false
	case StunBindingProbe:
		if m.cfg.Probe == nil || via != nil {
			c.drop(DropProbe)
			return false
		}
		c.probes++
		m.cfg.Probe.HandleProbe(b, from, w)
		return false
	}
	if m.tagged {
		if t, ok := ufragTag(ufrag); ok && t != m.tag {
			o := m.peers.Load().byTag[t]
			if o == nil || via != nil {
				c.drop(DropUnknownUfrag)
				return false
			}
			m.relayDatagram(c, buf, off, n, frameToOwner, from, o)
			return false
		}
	}
	key, ok := makeUfragKey(ufrag)
	if !ok {
		c.drop(DropUnknownUfrag)
		return false
	}
	m.mu.RLock()
	var s *session
	if e := m.ufrags[key]; e != nil {
		s = e.pick(from.Addr().Is6())
	}
	m.mu.RUnlock()
	switch {
	case s == nil:
		c.drop(DropUnknownUfrag)
		return false
	case s.closed():
		c.drop(DropClosed)
		return false
	}
	r, ok := s.push(buf, off, n, from, true, now)
	if !ok {
		c.drop(r)
		return false
	}
	if via != nil {
		m.pending.put(from, via, now)
	}
	return true
}

// listenAddrs is what GetListenAddresses reports: the advertised addresses,
// else the bound one, else (bound to a wildcard) the host's global unicast
// addresses of the socket's families.
func listenAddrs(bound *net.UDPAddr, adv []netip.AddrPort, port uint16) []net.Addr {
	var out []net.Addr
	for _, a := range adv {
		out = append(out, net.UDPAddrFromAddrPort(a))
	}
	if len(out) > 0 {
		return out
	}
	if port != 0 {
		bound = &net.UDPAddr{IP: bound.IP, Port: int(port), Zone: bound.Zone}
	}
	if !bound.IP.IsUnspecified() {
		return []net.Addr{bound}
	}
	want6 := bound.IP.To4() == nil // "[::]" is dual-stack
	ifAddrs, _ := net.InterfaceAddrs()
	var loop []net.Addr
	for _, ia := range ifAddrs {
		ipn, ok := ia.(*net.IPNet)
		if !ok {
			continue
		}
		ip := ipn.IP
		if ip.To4() == nil && !want6 {
			continue
		}
		a := &net.UDPAddr{IP: ip, Port: bound.Port}
		switch {
		case ip.IsLoopback():
			loop = append(loop, a)
		case ip.IsGlobalUnicast():
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		out = loop
	}
	if len(out) == 0 {
		out = []net.Addr{bound}
	}
	return out
}
