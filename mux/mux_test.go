package mux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func rtpPacket(seq byte, size int) []byte {
	b := make([]byte, size)
	b[0], b[1], b[3] = 0x80, 96, seq
	return b
}

func stats(m *Mux) Stats { return m.Stats() }

func waitDrops(t *testing.T, m *Mux, r DropReason, want uint64) {
	t.Helper()
	eventually(t, 2*time.Second, "drops "+r.String(), func() bool { return m.Stats().Drops[r] >= want })
	if got := m.Stats().Drops[r]; got != want {
		t.Fatalf("drops %v = %d, want %d", r, got, want)
	}
}

func readConn(t *testing.T, c net.PacketConn) ([]byte, netip.AddrPort) {
	t.Helper()
	buf := make([]byte, 2048)
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, from, err := c.(*conn).ReadFromAddrPort(buf)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return buf[:n], from
}

// TestDemuxByAddressAndUfrag walks one flow through the mux's rules: dropped
// while unknown, delivered by ufrag, bound by the session's answer, then
// delivered by address; a spoofer naming the same ufrag reaches the session
// only as an unbound check and never takes the flow.
func TestDemuxByAddressAndUfrag(t *testing.T) {
	m := listenTest(t, "127.0.0.1:0", Config{Sockets: 2})
	sc, err := m.GetConn("srvUfragA", m.LocalAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	srv := net.UDPAddrFromAddrPort(muxAddrPort(m))
	cl := client(t, "udp4", "127.0.0.1:0")
	spoof := client(t, "udp4", "127.0.0.1:0")
	clAddr := cl.LocalAddr().(*net.UDPAddr).AddrPort()

	// Unknown address, not STUN: dropped.
	cl.WriteTo(rtpPacket(1, 100), srv)
	waitDrops(t, m, DropUnknownAddr, 1)

	// A Binding request naming our ufrag reaches the session, unbound.
	req := bindingRequest(t, "srvUfragA:cli")
	cl.WriteTo(req, srv)
	got, from := readConn(t, sc)
	if from != clAddr || string(got) != string(req) {
		t.Fatalf("got %d bytes from %v, want the request from %v", len(got), from, clAddr)
	}
	cl.WriteTo(rtpPacket(2, 100), srv)
	waitDrops(t, m, DropUnknownAddr, 2)

	// The session answers: that binds the address.
	if _, err := sc.WriteTo([]byte("answer"), net.UDPAddrFromAddrPort(clAddr)); err != nil {
		t.Fatal(err)
	}
	if b, _, err := readTimeout(t, cl, 2*time.Second); err != nil || string(b) != "answer" {
		t.Fatalf("client read %q, %v", b, err)
	}
	cl.WriteTo(rtpPacket(3, 1200), srv)
	if got, from = readConn(t, sc); from != clAddr || got[3] != 3 || len(got) != 1200 {
		t.Fatalf("rtp not delivered by address: %d bytes from %v", len(got), from)
	}

	// A spoofed check for the bound ufrag from elsewhere: delivered as an
	// unbound check, binds nothing, diverts nothing.
	spoof.WriteTo(bindingRequest(t, "srvUfragA:evil"), srv)
	if _, from = readConn(t, sc); from == clAddr {
		t.Fatal("spoofed request arrived as the bound client")
	}
	spoof.WriteTo(rtpPacket(4, 100), srv)
	waitDrops(t, m, DropUnknownAddr, 3)
	cl.WriteTo(rtpPacket(5, 100), srv)
	if got, from = readConn(t, sc); from != clAddr || got[3] != 5 {
		t.Fatalf("bound flow diverted: got seq %d from %v", got[3], from)
	}
	if f := m.flows.get(clAddr); f == nil || f.sess != sc.(*conn).s {
		t.Fatal("client address no longer bound to its session")
	}
	if m.flows.get(spoof.LocalAddr().(*net.UDPAddr).AddrPort()) != nil {
		t.Fatal("spoofer's address got bound")
	}

	// Unknown ufrag, junk, non-request STUN, a probe with no handler.
	cl2 := client(t, "udp4", "127.0.0.1:0")
	cl2.WriteTo(bindingRequest(t, "nobody:cli"), srv)
	cl2.WriteTo([]byte{0xff, 1, 2, 3}, srv)
	cl2.WriteTo(bindingRequest(t, ""), srv)
	waitDrops(t, m, DropUnknownUfrag, 1)
	waitDrops(t, m, DropJunk, 1)
	waitDrops(t, m, DropProbe, 1)
	st := stats(m)
	if st.Sessions != 1 || st.Flows != 1 {
		t.Fatalf("sessions %d flows %d, want 1 and 1", st.Sessions, st.Flows)
	}
	if st.PacketsIn[ClassSTUN] != 4 || st.PacketsIn[ClassRTP] != 5 || st.PacketsIn[ClassOther] != 1 {
		t.Fatalf("in counters %v", st.PacketsIn)
	}
	if st.PacketsOut[ClassOther] != 1 || st.BytesOut[ClassOther] != 6 {
		t.Fatalf("out counters %v %v", st.PacketsOut, st.BytesOut)
	}
}

// bindClient makes cl's address bound to the session behind sc.
func bindClient(t *testing.T, m *Mux, sc net.PacketConn, cl *net.UDPConn, ufrag string) {
	t.Helper()
	srv := net.UDPAddrFromAddrPort(muxAddrPort(m))
	cl.WriteTo(bindingRequest(t, ufrag+":cli"), srv)
	_, from := readConn(t, sc)
	if _, err := sc.WriteTo([]byte("ok"), net.UDPAddrFromAddrPort(from)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := readTimeout(t, cl, 2*time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestQueuesAreBounded: a stalled session holds QueueLen datagrams and drops
// the rest; checks from unbound addresses get only UnboundQueueLen of it, so
// a spoofed flood cannot crowd out the bound flow.
func TestQueuesAreBounded(t *testing.T) {
	m := listenTest(t, "127.0.0.1:0", Config{Sockets: 1, QueueLen: 32, UnboundQueueLen: 4, UnboundRate: -1}) // the queue bound alone; TestUnboundRate has the rate
	sc, _ := m.GetConn("stalled", m.LocalAddr())
	defer sc.Close()
	srv := net.UDPAddrFromAddrPort(muxAddrPort(m))
	cl := client(t, "udp4", "127.0.0.1:0")
	bindClient(t, m, sc, cl, "stalled")

	spoof := client(t, "udp4", "127.0.0.1:0")
	for i := 0; i < 50; i++ {
		spoof.WriteTo(bindingRequest(t, "stalled:evil"), srv)
	}
	waitDrops(t, m, DropUnboundLimit, 46)
	for i := 0; i < 100; i++ {
		cl.WriteTo(rtpPacket(byte(i), 200), srv)
	}
	waitDrops(t, m, DropQueueFull, 100-(32-4))
	spoofed, rtp := 0, 0
	for i := 0; i < 32; i++ {
		b, from := readConn(t, sc)
		switch {
		case Classify(b) == ClassSTUN && from != cl.LocalAddr().(*net.UDPAddr).AddrPort():
			spoofed++
		case Classify(b) == ClassRTP:
			if int(b[3]) != rtp {
				t.Fatalf("rtp out of order: seq %d, want %d", b[3], rtp)
			}
			rtp++
		}
	}
	if spoofed != 4 || rtp != 28 {
		t.Fatalf("queue held %d spoofed and %d rtp, want 4 and 28", spoofed, rtp)
	}
}

// TestSessionLifecycle covers pion's reference counting, RemoveConnByUfrag,
// tombstones, MaxSessions and idle expiry.
func TestSessionLifecycle(t *testing.T) {
	m := listenTest(t, "127.0.0.1:0", Config{
		Sockets: 1, MaxSessions: 2, IdleTimeout: time.Hour,
		TombstoneTTL: 100 * time.Millisecond, SweepInterval: 10 * time.Millisecond,
	})
	srv := net.UDPAddrFromAddrPort(muxAddrPort(m))
	a1, _ := m.GetConn("sessA", m.LocalAddr())
	a2, _ := m.GetConn("sessA", m.LocalAddr())
	b1, _ := m.GetConn("sessB", m.LocalAddr())
	if a1.(*conn).s != a2.(*conn).s {
		t.Fatal("two GetConn for one ufrag made two sessions")
	}
	if _, err := m.GetConn("sessC", m.LocalAddr()); !errors.Is(err, ErrTooManySessions) {
		t.Fatalf("third session: %v, want ErrTooManySessions", err)
	}
	if _, err := m.GetConn("", m.LocalAddr()); !errors.Is(err, ErrBadUfrag) {
		t.Fatalf("empty ufrag: %v", err)
	}
	cl := client(t, "udp4", "127.0.0.1:0")
	bindClient(t, m, a1, cl, "sessA")

	// Closing one reference keeps the session.
	a1.Close()
	if _, _, err := a1.(*conn).ReadFromAddrPort(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on closed conn: %v", err)
	}
	if _, err := a1.WriteTo([]byte("x"), cl.LocalAddr()); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("write on closed conn: %v", err)
	}
	cl.WriteTo(rtpPacket(7, 100), srv)
	if b, _ := readConn(t, a2); b[3] != 7 {
		t.Fatal("session lost with its first reference")
	}

	// The last reference closes it: a tombstone absorbs late datagrams.
	a2.Close()
	if st := m.Stats(); st.Sessions != 1 {
		t.Fatalf("sessions %d after close", st.Sessions)
	}
	cl.WriteTo(rtpPacket(8, 100), srv)
	cl.WriteTo(bindingRequest(t, "sessA:cli"), srv)
	waitDrops(t, m, DropClosed, 2)
	if c, err := m.GetConn("sessC", m.LocalAddr()); err != nil {
		t.Fatalf("session after a close: %v", err)
	} else {
		defer c.Close()
	}

	// Tombstones expire; then the ufrag is simply unknown.
	eventually(t, 2*time.Second, "tombstones swept", func() bool { return m.Stats().Flows == 0 })
	cl.WriteTo(bindingRequest(t, "sessA:cli"), srv)
	waitDrops(t, m, DropUnknownUfrag, 1)

	// RemoveConnByUfrag closes the session under a live reference.
	done := make(chan error, 1)
	go func() {
		_, _, err := b1.(*conn).ReadFromAddrPort(make([]byte, 10))
		done <- err
	}()
	m.RemoveConnByUfrag("sessB")
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("blocked read ended with %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("RemoveConnByUfrag did not wake a blocked read")
	}
	b1.Close()
}

func TestIdleAddressesExpire(t *testing.T) {
	m := listenTest(t, "127.0.0.1:0", Config{
		Sockets: 1, IdleTimeout: 50 * time.Millisecond, SweepInterval: 10 * time.Millisecond,
	})
	sc, _ := m.GetConn("idle", m.LocalAddr())
	defer sc.Close()
	cl := client(t, "udp4", "127.0.0.1:0")
	bindClient(t, m, sc, cl, "idle")
	eventually(t, 2*time.Second, "idle flow expiry", func() bool { return m.Stats().Flows == 0 })
	if addrs := sc.(*conn).s.boundAddrs(); len(addrs) != 0 {
		t.Fatalf("session still lists %v", addrs)
	}
	cl.WriteTo(rtpPacket(1, 100), net.UDPAddrFromAddrPort(muxAddrPort(m)))
	waitDrops(t, m, DropUnknownAddr, 1)
}

func TestAddressesPerSessionBounded(t *testing.T) {
	m := listenTest(t, "127.0.0.1:0", Config{Sockets: 1, MaxAddrsPerSession: 2})
	sc, _ := m.GetConn("few", m.LocalAddr())
	defer sc.Close()
	var cls []*net.UDPConn
	for i := 0; i < 3; i++ {
		cl := client(t, "udp4", "127.0.0.1:0")
		cls = append(cls, cl)
		if _, err := sc.WriteTo([]byte("hi"), cl.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	if st := m.Stats(); st.Flows != 2 {
		t.Fatalf("flows %d, want 2", st.Flows)
	}
	if m.flows.get(cls[0].LocalAddr().(*net.UDPAddr).AddrPort()) != nil {
		t.Fatal("oldest address kept past the limit")
	}
}

// TestIPv6AndDualStack: an IPv6 listener works, and on a dual-stack one an
// IPv4 client is seen (and answered) as a plain IPv4 address.
func TestIPv6AndDualStack(t *testing.T) {
	if c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback}); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		c.Close()
	}
	for _, tc := range []struct{ listen, network, client string }{
		{"[::1]:0", "udp6", "[::1]:0"},
		{"[::]:0", "udp4", "127.0.0.1:0"},
		{"[::]:0", "udp6", "[::1]:0"},
	} {
		t.Run(tc.listen+"/"+tc.client, func(t *testing.T) {
			m := listenTest(t, tc.listen, Config{Sockets: 2})
			sc, err := m.GetConn("dual", &net.UDPAddr{IP: netip.MustParseAddrPort(tc.client).Addr().AsSlice()})
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			cl := client(t, tc.network, tc.client)
			port := muxAddrPort(m).Port()
			dst := netip.AddrPortFrom(netip.MustParseAddrPort(tc.client).Addr(), port)
			cl.WriteToUDPAddrPort(bindingRequest(t, "dual:cli"), dst)
			_, from := readConn(t, sc)
			want := cl.LocalAddr().(*net.UDPAddr).AddrPort()
			if from != want || from.Addr().Is4In6() {
				t.Fatalf("from %v, want %v", from, want)
			}
			if _, err := sc.WriteTo([]byte("back"), net.UDPAddrFromAddrPort(from)); err != nil {
				t.Fatal(err)
			}
			if b, _, err := readTimeout(t, cl, 2*time.Second); err != nil || string(b) != "back" {
				t.Fatalf("answer: %q %v", b, err)
			}
			cl.WriteToUDPAddrPort(rtpPacket(9, 100), dst)
			if b, _ := readConn(t, sc); b[3] != 9 {
				t.Fatal("bound IPv6/dual-stack flow not delivered")
			}
		})
	}
}

func TestReadDeadlineAndClose(t *testing.T) {
	m, err := Listen("127.0.0.1:0", Config{Sockets: 1})
	if err != nil {
		t.Fatal(err)
	}
	sc, _ := m.GetConn("dl", m.LocalAddr())
	sc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, _, err := sc.ReadFrom(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past deadline: %v", err)
	}
	sc.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, _, err := sc.ReadFrom(make([]byte, 10))
		done <- err
	}()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("blocked read after Close: %v", err)
	}
	if _, err := m.GetConn("late", m.LocalAddr()); err == nil {
		t.Fatal("GetConn after Close succeeded")
	}
	sc.Close()
	if st := m.Stats(); st.Sessions != 0 {
		t.Fatalf("sessions %d after Close", st.Sessions)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, cfg := range []Config{
		{Sockets: -1}, {BatchSize: 5000}, {MaxPacketSize: 100}, {QueueLen: -1},
		{QueueLen: 4, UnboundQueueLen: 8}, {IdleTimeout: -time.Second},
		{Advertise: []netip.AddrPort{netip.MustParseAddrPort("1.2.3.4:0")}},
	} {
		if _, err := Listen("127.0.0.1:0", cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: %v, want ErrInvalidConfig", cfg, err)
		}
	}
	m := listenTest(t, "127.0.0.1:0", Config{Sockets: 1, Advertise: []netip.AddrPort{netip.MustParseAddrPort("203.0.113.7:3478")}})
	if la := m.GetListenAddresses(); len(la) != 1 || la[0].String() != "203.0.113.7:3478" {
		t.Fatalf("listen addresses %v", la)
	}
	m2 := listenTest(t, "127.0.0.1:0", Config{Sockets: 1, AdvertisePort: 443})
	if la := m2.GetListenAddresses(); len(la) != 1 || la[0].String() != "127.0.0.1:443" {
		t.Fatalf("listen addresses with AdvertisePort %v", la)
	}
}

// TestConcurrentWritersKeepOrder drives the combining writer from many
// goroutines at once (so sends queue behind each other and leave in
// sendmmsg batches) and checks that every datagram arrives, in each
// writer's order.
func TestConcurrentWritersKeepOrder(t *testing.T) {
	for _, qlen := range []int{0, 2} { // the default, and one that fills: writers wait
		t.Run(fmt.Sprintf("WriteQueueLen=%d", qlen), func(t *testing.T) { testConcurrentWriters(t, qlen) })
	}
}

func testConcurrentWriters(t *testing.T, qlen int) {
	m := listenTest(t, "127.0.0.1:0", Config{Sockets: 1, WriteQueueLen: qlen})
	// each stays well inside the client sockets' default receive buffer.
	const writers, each = 8, 100
	type peer struct {
		sc net.PacketConn
		cl *net.UDPConn
	}
	peers := make([]peer, writers)
	for i := range peers {
		sc, err := m.GetConn(fmt.Sprintf("writer%d", i), m.LocalAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		cl := client(t, "udp4", "127.0.0.1:0")
		cl.SetReadBuffer(4 << 20)
		peers[i] = peer{sc, cl}
	}
	var wg sync.WaitGroup
	for _, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < each; j++ {
				pkt := rtpPacket(0, 200)
				binary.BigEndian.PutUint32(pkt[8:], uint32(j))
				if _, err := p.sc.WriteTo(pkt, p.cl.LocalAddr()); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for i, p := range peers {
		for j := 0; j < each; j++ {
			b, _, err := readTimeout(t, p.cl, 2*time.Second)
			if err != nil {
				t.Fatalf("writer %d: datagram %d: %v", i, j, err)
			}
			if got := binary.BigEndian.Uint32(b[8:]); got != uint32(j) {
				t.Fatalf("writer %d: datagram %d arrived in place %d", i, got, j)
			}
		}
	}
	st := m.Stats()
	if st.PacketsOut[ClassRTP] != writers*each || st.TotalDrops() != 0 {
		t.Fatalf("out %d, drops %v", st.PacketsOut[ClassRTP], st.Drops)
	}
	t.Logf("%d of %d datagrams queued behind another send", st.QueuedOut, writers*each)
}

// Corked writes wait in the queue, leave in order in sendmmsg batches on
// Uncork, allocate nothing, and a queue that fills while corked sends at
// once instead of dropping or blocking.
func TestCorkBatchesWrites(t *testing.T) {
	const qlen = 64
	m := listenTest(t, "127.0.0.1:0", Config{Sockets: 2, WriteQueueLen: qlen})
	sc, err := m.GetConn("corked", m.LocalAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	cl := client(t, "udp4", "127.0.0.1:0")
	cl.SetReadBuffer(4 << 20)
	pkt := rtpPacket(0, 200)
	send := func(from, n int) {
		for j := from; j < from+n; j++ {
			binary.BigEndian.PutUint32(pkt[8:], uint32(j))
			if _, err := sc.WriteTo(pkt, cl.LocalAddr()); err != nil {
				t.Fatal(err)
			}
		}
	}
	m.Cork()
	send(0, 10)
	if _, _, err := readTimeout(t, cl, 50*time.Millisecond); err == nil {
		t.Fatal("a corked write left before Uncork")
	}
	m.Cork() // nested
	send(10, 10)
	m.Uncork()
	m.Uncork()
	m.Cork()
	send(20, 3*qlen) // fills the queue: sends at once
	m.Uncork()
	total := 20 + 3*qlen
	for j := 0; j < total; j++ {
		b, _, err := readTimeout(t, cl, 2*time.Second)
		if err != nil {
			t.Fatalf("datagram %d: %v", j, err)
		}
		if got := binary.BigEndian.Uint32(b[8:]); got != uint32(j) {
			t.Fatalf("datagram %d arrived in place %d", got, j)
		}
	}
	st := m.Stats()
	if st.PacketsOut[ClassRTP] != uint64(total) || st.TotalDrops() != 0 || st.QueuedOut < 20 {
		t.Fatalf("out %d queued %d drops %v", st.PacketsOut[ClassRTP], st.QueuedOut, st.Drops)
	}
	if raceEnabled {
		return
	}
	c := sc.(interface {
		WriteToAddrPort([]byte, netip.AddrPort) (int, error)
	})
	to := cl.LocalAddr().(*net.UDPAddr).AddrPort()
	allocs := testing.AllocsPerRun(100, func() {
		m.Cork()
		for range 8 {
			c.WriteToAddrPort(pkt, to)
		}
		m.Uncork()
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per corked burst, want 0", allocs)
	}
}

// Checks from unbound addresses reach a session no faster than UnboundRate
// (bursts of UnboundQueueLen), even while its reader keeps the queue empty:
// a flood of spoofed checks for a live ufrag costs its ICE agent a bounded
// amount of work. Every datagram is delivered or counted.
func TestUnboundRate(t *testing.T) {
	const sent, rate, burst = 300, 20, 4
	m := listenTest(t, "127.0.0.1:0", Config{Sockets: 1, UnboundQueueLen: burst, UnboundRate: rate})
	sc, _ := m.GetConn("live", m.LocalAddr())
	defer sc.Close()
	var delivered atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			if _, _, err := sc.ReadFrom(buf); err != nil {
				return
			}
			delivered.Add(1)
		}
	}()
	srv := net.UDPAddrFromAddrPort(muxAddrPort(m))
	spoof := client(t, "udp4", "127.0.0.1:0")
	start := time.Now()
	req := bindingRequest(t, "live:evil")
	accounted := func(n int64) func() bool {
		return func() bool {
			st := m.Stats()
			return delivered.Load()+int64(st.Drops[DropUnboundRate]+st.Drops[DropUnboundLimit]) == n
		}
	}
	// Rounds of 10, each sent once the last is read or dropped: the queue
	// is empty when each round arrives, so what stops it is the rate.
	for i := 1; i <= sent/10; i++ {
		for range 10 {
			spoof.WriteTo(req, srv)
		}
		eventually(t, 2*time.Second, "every datagram delivered or dropped", accounted(int64(10*i)))
	}
	elapsed := time.Since(start)
	sc.Close()
	<-done
	st := m.Stats()
	allowed := int64(burst + rate*elapsed.Seconds() + 1)
	if d := delivered.Load(); d > allowed || st.Drops[DropUnboundRate] == 0 {
		t.Fatalf("delivered %d in %v (allowed %d), unbound_rate drops %d", d, elapsed, allowed, st.Drops[DropUnboundRate])
	}
	t.Logf("%d sent in %v: %d delivered, unbound_rate %d, unbound_limit %d", sent, elapsed, delivered.Load(), st.Drops[DropUnboundRate], st.Drops[DropUnboundLimit])
}
