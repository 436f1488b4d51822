package mux

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// The relay carries client datagrams between the node the load balancer
// chose (the ingress) and the node that owns the client's session, over a
// UDP socket on the internal network. A frame is a fixed header, the client
// datagram, and, with a RelayKey, a truncated HMAC-SHA256 over both:
//
//	0      version (1)
//	1      type: toOwner, toClient, whoHas, iHave
//	2..3   reserved, zero
//	4..19  client IP, 16 bytes (IPv4-mapped for IPv4)
//	20..21 client port
//	22..29 sender's clock, unix milliseconds (frames older than
//	       relayMaxSkew are refused: a captured frame cannot be replayed
//	       later)
//	30..   the client datagram (empty for whoHas and iHave)
//	       16 bytes of MAC when a RelayKey is set
//
// Frames are accepted only from the relay address of a current member.
const (
	relayVersion   = 1
	relayHeaderLen = 30
	relayMACLen    = 16
	relayMaxSkew   = 30 * time.Second

	// headroom is reserved before every datagram a reader receives, so a
	// datagram for a remote owner becomes a relay frame in place.
	headroom = relayHeaderLen
)

// Frame types.
const (
	frameToOwner  byte = 1 // a client's datagram, ingress to owner
	frameToClient byte = 2 // the owner's datagram for a client, owner to ingress
	frameWhoHas   byte = 3 // ingress asks every member: who owns this client address?
	frameIHave    byte = 4 // the owner answers
)

// TagLen is the length of a node's owner tag in ufrags.
const TagLen = 4

// ufragFormat is the first character of a ufrag that carries an owner tag.
const ufragFormat = 'a'

// UfragPrefix returns the ufrag prefix that marks sessions owned by the
// node with the given tag; pass it to NewUfrag.
func UfragPrefix(tag string) string { return string(ufragFormat) + tag }

// ufragTag returns the owner tag of a ufrag made by NewUfrag(UfragPrefix(tag)).
func ufragTag(u []byte) (t [TagLen]byte, ok bool) {
	if len(u) != 1+TagLen+UfragRandomChars || u[0] != ufragFormat {
		return t, false
	}
	copy(t[:], u[1:1+TagLen])
	return t, true
}

// Peer is another node of the cluster as the mux needs it.
type Peer struct {
	Name  string         // unique node name
	Tag   string         // its owner tag (TagLen ice-chars)
	Relay netip.AddrPort // its relay socket
}

// peer is a Peer the mux routes to. Flows hold it; gone is set when it
// leaves the membership so they stop using it.
type peer struct {
	Peer
	tag  [TagLen]byte
	gone atomic.Bool
}

// peerSet is an immutable snapshot of the members.
type peerSet struct {
	byTag  map[[TagLen]byte]*peer
	byAddr map[netip.AddrPort]*peer
	all    []*peer
}

var (
	// ErrNoRelay is returned by SetPeers when the mux has no relay socket.
	ErrNoRelay = errors.New("mux: no relay configured")
	// ErrBadPeer is returned by SetPeers for a peer with a bad tag or
	// address, or one that repeats another's tag.
	ErrBadPeer = errors.New("mux: bad peer")
)

// SetPeers replaces the set of other nodes datagrams may be relayed to and
// accepted from. Flows routed through a node that is no longer listed stop
// using it at once.
func (m *Mux) SetPeers(peers []Peer) error {
	if m.relay == nil {
		return ErrNoRelay
	}
	m.peerMu.Lock()
	defer m.peerMu.Unlock()
	old := m.peers.Load()
	next := &peerSet{
		byTag:  make(map[[TagLen]byte]*peer, len(peers)),
		byAddr: make(map[netip.AddrPort]*peer, len(peers)),
	}
	for _, p := range peers {
		if len(p.Tag) != TagLen || !IsIceChars(p.Tag) || !p.Relay.IsValid() {
			return fmt.Errorf("%w: %q tag %q relay %v", ErrBadPeer, p.Name, p.Tag, p.Relay)
		}
		var t [TagLen]byte
		copy(t[:], p.Tag)
		if t == m.tag || next.byTag[t] != nil {
			return fmt.Errorf("%w: %q repeats tag %q", ErrBadPeer, p.Name, p.Tag)
		}
		p.Relay = unmap(p.Relay)
		np := &peer{Peer: p, tag: t}
		if o := old.byTag[t]; o != nil && o.Peer == p {
			np = o // unchanged: flows keep pointing at it
		}
		next.byTag[t] = np
		next.byAddr[p.Relay] = np
		next.all = append(next.all, np)
	}
	for t, o := range old.byTag {
		if next.byTag[t] != o {
			o.gone.Store(true)
		}
	}
	m.peers.Store(next)
	return nil
}

// relayAuth computes and checks frame MACs. HMAC states are pooled: senders
// are many goroutines.
type relayAuth struct {
	pool sync.Pool // *macState
}

// macState is an HMAC with its own output buffer, so Sum allocates nothing.
type macState struct {
	h   hash.Hash
	out [sha256.Size]byte
}

func newRelayAuth(key []byte) *relayAuth {
	if len(key) == 0 {
		return nil
	}
	k := append([]byte(nil), key...)
	return &relayAuth{pool: sync.Pool{New: func() any { return &macState{h: hmac.New(sha256.New, k)} }}}
}

// mac computes frame's MAC into a pooled state, which the caller puts back.
func (a *relayAuth) mac(frame []byte) *macState {
	st := a.pool.Get().(*macState)
	st.h.Reset()
	st.h.Write(frame)
	st.h.Sum(st.out[:0])
	return st
}

// sum appends the MAC of frame to frame's backing array; frame must have
// relayMACLen bytes of capacity to spare.
func (a *relayAuth) sum(frame []byte) []byte {
	st := a.mac(frame)
	out := append(frame, st.out[:relayMACLen]...)
	a.pool.Put(st)
	return out
}

// verify checks frame's trailing MAC and returns the frame without it.
func (a *relayAuth) verify(frame []byte) ([]byte, bool) {
	if len(frame) < relayHeaderLen+relayMACLen {
		return nil, false
	}
	body, mac := frame[:len(frame)-relayMACLen], frame[len(frame)-relayMACLen:]
	st := a.mac(body)
	ok := hmac.Equal(st.out[:relayMACLen], mac)
	a.pool.Put(st)
	return body, ok
}

// putRelayHeader writes a frame header into h (relayHeaderLen bytes).
func putRelayHeader(h []byte, typ byte, client netip.AddrPort, nowMillis int64) {
	h[0], h[1], h[2], h[3] = relayVersion, typ, 0, 0
	ip := client.Addr().As16()
	copy(h[4:20], ip[:])
	binary.BigEndian.PutUint16(h[20:22], client.Port())
	binary.BigEndian.PutUint64(h[22:30], uint64(nowMillis))
}

// parseRelayHeader reads a frame header: its type, the client address and
// the sender's clock. ok is false for a frame too short or of another
// version or type.
func parseRelayHeader(f []byte) (typ byte, client netip.AddrPort, sentMillis int64, ok bool) {
	if len(f) < relayHeaderLen || f[0] != relayVersion || f[2] != 0 || f[3] != 0 {
		return 0, client, 0, false
	}
	typ = f[1]
	if typ < frameToOwner || typ > frameIHave {
		return 0, client, 0, false
	}
	ip := netip.AddrFrom16([16]byte(f[4:20])).Unmap()
	client = netip.AddrPortFrom(ip, binary.BigEndian.Uint16(f[20:22]))
	if !client.IsValid() || client.Port() == 0 || ip.IsUnspecified() {
		return 0, client, 0, false
	}
	return typ, client, int64(binary.BigEndian.Uint64(f[22:30])), true
}
