package bench

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/pion/ice/v4"
)

// SSRC plan: session i sends SSRC ssrcBase+i; hostile spoofers send SSRCs in
// spoofSSRCBase's range, so a reader tells its own packets, another session's
// (misrouted) and a spoofer's apart from 4 bytes.
const (
	ssrcBase      uint32 = 0x10000000
	spoofSSRCBase uint32 = 0xBAD00000
	spoofSSRCMask uint32 = 0xFFF00000
)

// sessionSpec is what the receiver and the sender both know of one session.
type sessionSpec struct {
	ServerUfrag string `json:"u"`
	ServerPwd   string `json:"p"`
	ClientUfrag string `json:"c"`
	SSRC        uint32 `json:"s"`
}

// newSpecs makes n sessions with fresh random credentials.
func newSpecs(n int) []sessionSpec {
	specs := make([]sessionSpec, n)
	for i := range specs {
		specs[i] = sessionSpec{
			ServerUfrag: newUfrag(),
			ServerPwd:   newPassword(),
			ClientUfrag: randomIceChars(8),
			SSRC:        ssrcBase + uint32(i),
		}
	}
	return specs
}

// iceChars is RFC 8839's ice-char set, 64 characters: 6 random bits each.
const iceChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

// newUfrag returns a server ufrag of 20 random ice-chars (120 bits), within
// oneport's mux.MaxUfragLen.
func newUfrag() string { return randomIceChars(20) }

// newPassword returns an ICE password of 32 random ice-chars (192 bits).
func newPassword() string { return randomIceChars(32) }

func randomIceChars(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails on supported platforms (Go 1.24+)
	for i := range b {
		b[i] = iceChars[b[i]&63]
	}
	return string(b)
}

// recvCounters is one reader's counters; each reader owns one, so the
// atomic adds never contend, and the padding keeps neighbours apart.
type recvCounters struct {
	delivered    atomic.Uint64 // this run's RTP carrying this session's own SSRC (raw: any session's)
	bytes        atomic.Uint64 // bytes of the delivered packets
	stale        atomic.Uint64 // RTP of an earlier run, read late
	misrouted    atomic.Uint64 // RTP carrying another session's SSRC
	spoofedRTP   atomic.Uint64 // RTP carrying a hostile spoofer's SSRC
	stunAnswered atomic.Uint64 // Binding requests answered (valid checks)
	stunRejected atomic.Uint64 // STUN that failed the ICE checks (spoofed or foreign)
	other        atomic.Uint64 // neither RTP nor STUN
	errors       atomic.Uint64 // read or write errors other than close
	_            [64]byte
}

// recvCounts is a snapshot (or a difference) of recvCounters.
type recvCounts struct {
	Delivered, Bytes, Stale, Misrouted, SpoofedRTP, STUNAnswered, STUNRejected, Other, Errors uint64
}

func (c *recvCounters) load() recvCounts {
	return recvCounts{
		Delivered: c.delivered.Load(), Bytes: c.bytes.Load(), Stale: c.stale.Load(), Misrouted: c.misrouted.Load(),
		SpoofedRTP: c.spoofedRTP.Load(), STUNAnswered: c.stunAnswered.Load(),
		STUNRejected: c.stunRejected.Load(), Other: c.other.Load(), Errors: c.errors.Load(),
	}
}

// combine applies op to every pair of fields of a and b.
func (a recvCounts) combine(b recvCounts, op func(x, y uint64) uint64) recvCounts {
	return recvCounts{
		Delivered: op(a.Delivered, b.Delivered), Bytes: op(a.Bytes, b.Bytes), Stale: op(a.Stale, b.Stale),
		Misrouted: op(a.Misrouted, b.Misrouted), SpoofedRTP: op(a.SpoofedRTP, b.SpoofedRTP),
		STUNAnswered: op(a.STUNAnswered, b.STUNAnswered), STUNRejected: op(a.STUNRejected, b.STUNRejected),
		Other: op(a.Other, b.Other), Errors: op(a.Errors, b.Errors),
	}
}

func (a recvCounts) add(b recvCounts) recvCounts {
	return a.combine(b, func(x, y uint64) uint64 { return x + y })
}

func (a recvCounts) sub(b recvCounts) recvCounts {
	return a.combine(b, func(x, y uint64) uint64 { return x - y })
}

// total is every packet a reader has seen, of any kind.
func (a recvCounts) total() uint64 {
	return a.Delivered + a.Stale + a.Misrouted + a.SpoofedRTP + a.STUNAnswered + a.STUNRejected + a.Other + a.Errors
}

// runTagger tells one run's packets from an earlier run's: the senders
// put the run's RTP payload type (96..127, in turn) in every packet, and
// readers count as delivered only packets of the current one. Counts are
// then exact even when a backlog drains after the next run has started.
type runTagger struct {
	cur atomic.Uint32 // the current run's payload type; read per packet
	n   uint32        // runs so far; only the goroutine driving the runs uses it
}

// nextRun starts a run and returns the payload type its packets carry.
func (t *runTagger) nextRun() uint8 {
	t.n++
	pt := 96 + t.n%32
	t.cur.Store(pt)
	return uint8(pt)
}

// current reports whether an RTP packet's second byte names the current run.
func (t *runTagger) current(b1 byte) bool { return uint32(b1&0x7f) == t.cur.Load() }

// receiver is one of the systems under test, serving every session of a run.
type receiver interface {
	// addr is where the clients send.
	addr() netip.AddrPort
	// counts sums what the readers have seen so far.
	counts() recvCounts
	// muxDrops returns the receiver's own drop counters by reason, or nil
	// when it keeps none (the raw socket, pion).
	muxDrops() map[string]uint64
	// nextRun starts a run; its packets carry the returned payload type.
	nextRun() uint8
	// datagramsIn is how many datagrams the receiver has read from its
	// sockets, including those it dropped; 0 when it does not count them.
	datagramsIn() uint64
	// close stops the readers, closes the sockets and waits.
	close() error
}

// udpMux is what the bench drives of pion's and oneport's muxes.
type udpMux interface {
	ice.UDPMux
	LocalAddr() net.Addr
}

// muxReceiver serves sessions through a ice.UDPMux: one conn and one reader
// goroutine per session, as an SFU does.
type muxReceiver struct {
	mux      udpMux
	local    netip.AddrPort
	sessions []*session
	drops    func() map[string]uint64 // nil when the mux keeps no drop counters
	in       func() uint64            // nil when the mux does not count datagrams in
	runTagger

	closing atomic.Bool
	stall   chan struct{} // closed by close; stalled readers wait on it
	wg      sync.WaitGroup
	once    sync.Once
	err     error
}

// session is one GetConn and its reader.
type session struct {
	spec sessionSpec
	conn net.PacketConn
	ap   ice.AddrPortReaderWriter // nil when conn lacks the netip.AddrPort methods
	c    recvCounters
}

// newMuxReceiver opens a session per spec on m and starts its reader. With
// stall, each reader answers one valid check and then never reads again.
func newMuxReceiver(m udpMux, specs []sessionSpec, stall bool) (*muxReceiver, error) {
	ap, err := addrPortOf(m.LocalAddr())
	if err != nil {
		_ = m.Close()
		return nil, err
	}
	r := &muxReceiver{mux: m, local: ap, stall: make(chan struct{})}
	for _, spec := range specs {
		conn, err := m.GetConn(spec.ServerUfrag, m.LocalAddr())
		if err != nil {
			_ = r.close()
			return nil, fmt.Errorf("bench: GetConn: %w", err)
		}
		s := &session{spec: spec, conn: conn}
		s.ap, _ = conn.(ice.AddrPortReaderWriter)
		r.sessions = append(r.sessions, s)
	}
	for _, s := range r.sessions {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.read(s, stall)
		}()
	}
	return r, nil
}

func (r *muxReceiver) addr() netip.AddrPort { return r.local }

func (r *muxReceiver) counts() (c recvCounts) {
	for _, s := range r.sessions {
		c = c.add(s.c.load())
	}
	return c
}

func (r *muxReceiver) muxDrops() map[string]uint64 {
	if r.drops == nil {
		return nil
	}
	return r.drops()
}

func (r *muxReceiver) datagramsIn() uint64 {
	if r.in == nil {
		return 0
	}
	return r.in()
}

func (r *muxReceiver) close() error {
	r.once.Do(func() {
		r.closing.Store(true)
		close(r.stall)
		for _, s := range r.sessions {
			_ = s.conn.Close()
		}
		r.err = r.mux.Close()
		r.wg.Wait()
	})
	return r.err
}

// read drains one session's conn, counting what arrives and answering
// valid connectivity checks through the conn.
func (r *muxReceiver) read(s *session, stall bool) {
	buf := make([]byte, 2048)
	pwdOf := func(u string) (string, bool) { return s.spec.ServerPwd, u == s.spec.ServerUfrag }
	for {
		n, from, err := s.readFrom(buf)
		if err != nil {
			if r.closing.Load() || isClosed(err) {
				return
			}
			s.c.errors.Add(1)
			continue
		}
		p := buf[:n]
		switch {
		case n >= 12 && p[0]&0xc0 == 0x80:
			switch ssrc := binary.BigEndian.Uint32(p[8:12]); {
			case ssrc == s.spec.SSRC && r.current(p[1]):
				s.c.delivered.Add(1)
				s.c.bytes.Add(uint64(n))
			case ssrc == s.spec.SSRC:
				s.c.stale.Add(1)
			case ssrc&spoofSSRCMask == spoofSSRCBase:
				s.c.spoofedRTP.Add(1)
			default:
				s.c.misrouted.Add(1)
			}
		case isSTUN(p):
			resp, err := answerBinding(p, from, pwdOf)
			if err != nil {
				s.c.stunRejected.Add(1)
				continue
			}
			if _, err := s.writeTo(resp, from); err != nil {
				s.c.errors.Add(1)
				continue
			}
			s.c.stunAnswered.Add(1)
			if stall {
				<-r.stall
				return
			}
		default:
			s.c.other.Add(1)
		}
	}
}

func (s *session) readFrom(b []byte) (int, netip.AddrPort, error) {
	if s.ap != nil {
		return s.ap.ReadFromAddrPort(b)
	}
	n, a, err := s.conn.ReadFrom(b)
	if err != nil {
		return n, netip.AddrPort{}, err
	}
	ap, err := addrPortOf(a)
	return n, ap, err
}

func (s *session) writeTo(b []byte, to netip.AddrPort) (int, error) {
	if s.ap != nil {
		return s.ap.WriteToAddrPort(b, to)
	}
	return s.conn.WriteTo(b, net.UDPAddrFromAddrPort(to))
}

// isClosed reports whether err means the conn or socket was closed, in the
// words of the net package, pion (io.EOF, io.ErrClosedPipe) or oneport.
func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe)
}

func addrPortOf(a net.Addr) (netip.AddrPort, error) {
	ua, ok := a.(*net.UDPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("bench: address %v is a %T, not a *net.UDPAddr", a, a)
	}
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// loopback is the address receivers listen on for network.
func loopback(network string) netip.Addr {
	if network == "udp6" {
		return netip.IPv6Loopback()
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, 1})
}
