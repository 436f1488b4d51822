package mux

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// openRelay opens the relay socket on the internal network.
func (m *Mux) openRelay(addr string) error {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return fmt.Errorf("mux: relay address %q: %w", addr, err)
	}
	uc, v6, err := listenUDP(ua, m.cfg.SocketBuffer)
	if err != nil {
		return fmt.Errorf("mux: relay listen on %s: %w", ua, err)
	}
	s, err := m.newSocket(uc, v6)
	if err != nil {
		uc.Close()
		return err
	}
	m.relay = s
	m.log.Info().Stringer("relay", uc.LocalAddr()).Bool("authenticated", m.auth != nil).Msg("relay listening")
	return nil
}

// RelayAddr is the relay socket's address, or nil without a relay.
func (m *Mux) RelayAddr() net.Addr {
	if m.relay == nil {
		return nil
	}
	return m.relay.conn.LocalAddr()
}

// relayLoop reads relay frames from the other nodes until the socket closes.
func (m *Mux) relayLoop(s *socket) {
	m.serveSocket(s, func(i int, b []byte, from netip.AddrPort, now int64) bool {
		s.rs.local.frame(len(b))
		return m.handleFrame(s, m.peers.Load(), i, b, from, now)
	})
}

// handleFrame acts on one relay frame, which is s.bufs[i].b[headroom:] and
// aliased by b. It reports whether a session kept the buffer.
func (m *Mux) handleFrame(s *socket, ps *peerSet, i int, b []byte, from netip.AddrPort, now int64) bool {
	c := &s.rs.local
	p := ps.byAddr[from]
	if p == nil {
		c.drop(DropRelayNotMember)
		return false
	}
	if m.auth != nil {
		var ok bool
		if b, ok = m.auth.verify(b); !ok {
			c.drop(DropRelayAuth)
			return false
		}
	}
	typ, client, sent, ok := parseRelayHeader(b)
	if !ok {
		c.drop(DropRelayMalformed)
		return false
	}
	if skew := time.Duration(now - sent*int64(time.Millisecond)); skew > relayMaxSkew || skew < -relayMaxSkew {
		c.drop(DropRelayAuth) // a replayed frame, or clocks too far apart
		return false
	}
	payload := b[relayHeaderLen:]
	switch typ {
	case frameToOwner:
		if len(payload) > m.cfg.MaxPacketSize {
			c.drop(DropTruncated)
			return false
		}
		return m.demux(&s.rs, s, s.bufs[i], headroom+relayHeaderLen, len(payload), client, now, p)
	case frameToClient:
		// The owner answered the client: its datagrams go to the owner from
		// now on, and this one goes out of the media port.
		m.bindRemote(client, p, now)
		if len(m.socks) > 0 {
			_, _ = m.socks[addrHash(client)%uint64(len(m.socks))].wr.write(payload, client)
		}
	case frameWhoHas:
		f := m.flows.get(client)
		if f == nil || f.sess == nil || f.sess.closed() {
			return false
		}
		f.via.Store(p) // the client's datagrams reach p now: answer through it
		var hdr [relayHeaderLen + relayMACLen]byte
		m.sendFrame(hdr[:relayHeaderLen], frameIHave, client, p)
	case frameIHave:
		if f := m.flows.get(client); f != nil && f.sess != nil && !f.sess.closed() {
			return false // served here; a stale claim
		}
		m.bindRemote(client, p, now)
	}
	return false
}

// bindRemote routes client's datagrams to the remote owner p.
func (m *Mux) bindRemote(client netip.AddrPort, p *peer, now int64) {
	if f := m.flows.get(client); f != nil && f.owner == p {
		f.touch(now)
		return
	}
	res, _, prev := m.flows.bind(client, nil, p, now, m.cfg.MaxFlows)
	if res == bindFull {
		m.misc.drop(DropTableFull)
		return
	}
	if prev != nil {
		prev.removeAddr(client)
	}
}

// relayDatagram sends buf.b[off:off+n], a client's datagram that arrived
// here, to p as a frame built in place in the headroom before it.
func (m *Mux) relayDatagram(c *localCounts, buf *pbuf, off, n int, typ byte, client netip.AddrPort, p *peer) {
	if off < relayHeaderLen {
		c.drop(DropNoRoute) // cannot happen: every reader leaves headroom
		return
	}
	m.sendFrame(buf.b[off-relayHeaderLen:off+n], typ, client, p)
}

// relayToClient sends a session's datagram for client through the ingress
// node p.
func (m *Mux) relayToClient(b []byte, client netip.AddrPort, p *peer) (int, error) {
	buf := m.getBufFor(relayHeaderLen + len(b) + relayMACLen)
	n := copy(buf.b[relayHeaderLen:], b)
	err := m.sendFrame(buf.b[:relayHeaderLen+n], frameToClient, client, p)
	m.putBuf(buf)
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

// sendFrame fills frame's header (its first relayHeaderLen bytes), appends
// the MAC (frame needs relayMACLen bytes of spare capacity) and sends it.
func (m *Mux) sendFrame(frame []byte, typ byte, client netip.AddrPort, p *peer) error {
	putRelayHeader(frame[:relayHeaderLen], typ, client, time.Now().UnixMilli())
	if m.auth != nil {
		frame = m.auth.sum(frame)
	}
	_, err := m.relay.wr.write(frame, p.Relay)
	return err
}

// askWhoHas asks every member who owns client, at most once per
// Config.WhoHasInterval per address and Config.WhoHasRate per second per
// reader, so a spray of unknown addresses cannot turn into a storm.
func (m *Mux) askWhoHas(rs *readerState, client netip.AddrPort, now int64) {
	ps := m.peers.Load()
	if len(ps.all) == 0 {
		return
	}
	e := &rs.asked[addrHash(client)&(askedSize-1)]
	if e.addr == client && now-e.at < int64(m.cfg.WhoHasInterval) {
		return
	}
	if sec := now / int64(time.Second); sec != rs.askSecond {
		rs.askSecond, rs.askCount = sec, 0
	}
	if rs.askCount >= m.cfg.WhoHasRate {
		return
	}
	rs.askCount++
	e.addr, e.at = client, now
	var hdr [relayHeaderLen + relayMACLen]byte
	for _, p := range ps.all {
		if !p.gone.Load() {
			m.sendFrame(hdr[:relayHeaderLen], frameWhoHas, client, p)
		}
	}
}

// pendingVia remembers, for a short while, which node a STUN check from an
// unbound client address was relayed by, so the session's answer (which
// binds the address) can set the flow's return path. Direct-mapped and
// fixed-size: a flood overwrites entries, it cannot grow anything.
type pendingVia struct {
	mu    sync.Mutex
	slots [pendingSlots]pendingSlot // guarded by mu
}

const (
	pendingSlots = 4096
	pendingTTL   = int64(30 * time.Second)
)

type pendingSlot struct {
	addr netip.AddrPort
	p    *peer
	at   int64
}

func (pv *pendingVia) put(a netip.AddrPort, p *peer, now int64) {
	pv.mu.Lock()
	pv.slots[addrHash(a)&(pendingSlots-1)] = pendingSlot{addr: a, p: p, at: now}
	pv.mu.Unlock()
}

func (pv *pendingVia) take(a netip.AddrPort, now int64) *peer {
	pv.mu.Lock()
	defer pv.mu.Unlock()
	e := &pv.slots[addrHash(a)&(pendingSlots-1)]
	if e.addr != a || e.p == nil || now-e.at > pendingTTL || e.p.gone.Load() {
		return nil
	}
	p := e.p
	*e = pendingSlot{}
	return p
}
