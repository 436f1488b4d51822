package mux

import (
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// demuxFixture is a socketless mux with n sessions, each with one bound
// address, for measuring the demux step alone: packet in hand to the
// session's queue and out again, no kernel.
type demuxFixture struct {
	m     *Mux
	addrs []netip.AddrPort
	sess  []*session
	rs    readerState
	c     counters
	out   []byte
}

func newDemuxFixture(tb testing.TB, n int) *demuxFixture {
	cfg, err := Config{Sockets: 1, UnboundRate: 1 << 30}.withDefaults() // the rate check runs, never bites
	if err != nil {
		tb.Fatal(err)
	}
	f := &demuxFixture{m: newMux(cfg), out: make([]byte, 2048)}
	now := f.m.now.Load()
	for i := 0; i < n; i++ {
		key, _ := makeUfragKey(randomIceChars(UfragRandomChars))
		s := newSession(f.m, key, false, nil)
		a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), uint16(40000+i%20000))
		if res, _, _ := f.m.flows.bind(a, s, nil, now, cfg.MaxFlows); res != bindNew {
			tb.Fatalf("bind %v: %v", a, res)
		}
		f.m.ufrags[key] = &ufragEntry{v4: s}
		f.addrs = append(f.addrs, a)
		f.sess = append(f.sess, s)
	}
	return f
}

// step hands pkt from session i's address to the mux and reads it back from
// the session's queue.
func (f *demuxFixture) step(tb testing.TB, i int, pkt []byte) {
	buf := f.m.getBuf()
	n := copy(buf.b[headroom:], pkt)
	if !f.m.demux(&f.rs, nil, buf, headroom, n, f.addrs[i], f.m.now.Load(), nil) {
		tb.Fatal("not delivered")
	}
	if _, _, ok := f.sess[i].pop(f.out); !ok {
		tb.Fatal("queue empty")
	}
	if i%32 == 31 { // a reader publishes its counters once per batch
		f.rs.local.flush(&f.c)
	}
}

// TestDemuxAllocatesNothing pins the hot path at zero allocations per packet
// for bound flows (RTP, DTLS) and for the drop paths an attacker can drive:
// unknown addresses, unknown ufrags and junk.
func TestDemuxAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	f := newDemuxFixture(t, 1000)
	rtp := rtpPacket(1, 1200)
	for i := range 2000 { // warm the pool and grow the rings
		f.step(t, i%1000, rtp)
	}
	i := 0
	if a := testing.AllocsPerRun(10000, func() {
		f.step(t, i%1000, rtp)
		i++
	}); a != 0 {
		t.Fatalf("bound flow: %v allocs per packet", a)
	}
	unknown := netip.MustParseAddrPort("192.0.2.1:5000")
	for name, pkt := range map[string][]byte{
		"unknown ufrag": bindingRequest(t, "nosuchufrag:x"),
		"junk":          {0xff, 0, 1, 2},
		"rtp":           rtp,
		"probe":         bindingRequest(t, ""),
	} {
		buf := f.m.getBuf()
		n := copy(buf.b[headroom:], pkt)
		if a := testing.AllocsPerRun(10000, func() {
			if f.m.demux(&f.rs, nil, buf, headroom, n, unknown, 0, nil) {
				t.Fatal("delivered")
			}
		}); a != 0 {
			t.Fatalf("%s from an unknown address: %v allocs per packet", name, a)
		}
	}
	// STUN reaching a session by ufrag.
	req := bindingRequest(t, f.sess[0].ufrag+":cli")
	if a := testing.AllocsPerRun(10000, func() {
		buf := f.m.getBuf()
		n := copy(buf.b[headroom:], req)
		if !f.m.demux(&f.rs, nil, buf, headroom, n, unknown, 0, nil) {
			t.Fatal("check not delivered")
		}
		f.sess[0].pop(f.out)
	}); a != 0 {
		t.Fatalf("check by ufrag: %v allocs per packet", a)
	}
}

// BenchmarkDemux measures the demux step alone with 1,000 sessions: a
// datagram in hand (in a reader's buffer) to its session's queue, including
// the fresh buffer the reader takes in its place. The queues are drained with
// the timer stopped. DemuxAndRead adds the session reader's dequeue and copy.
func BenchmarkDemux(b *testing.B) {
	for _, size := range []int{100, 1200} {
		name := map[int]string{100: "rtp100B", 1200: "rtp1200B"}[size]
		b.Run(name, func(b *testing.B) {
			f := newDemuxFixture(b, 1000)
			pkt := rtpPacket(1, size)
			bufs := make([]*pbuf, 1000)
			for i := range bufs {
				bufs[i] = f.m.getBuf()
				copy(bufs[i].b[headroom:], pkt)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				j := i % 1000
				if !f.m.demux(&f.rs, nil, bufs[j], headroom, size, f.addrs[j], 0, nil) {
					b.Fatal("not delivered")
				}
				bufs[j] = f.m.getBuf() // the reader's replacement
				if j == 999 {          // each session holds one datagram: drain
					b.StopTimer()
					f.rs.local.flush(&f.c)
					for _, s := range f.sess {
						for {
							if _, _, ok := s.pop(f.out); !ok {
								break
							}
						}
					}
					for k := range bufs {
						copy(bufs[k].b[headroom:], pkt)
					}
					b.StartTimer()
				}
			}
		})
		b.Run(name+"AndRead", func(b *testing.B) {
			f := newDemuxFixture(b, 1000)
			pkt := rtpPacket(1, size)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				f.step(b, i%1000, pkt)
			}
		})
	}
	b.Run("stunByUfrag", func(b *testing.B) {
		f := newDemuxFixture(b, 1000)
		reqs := make([][]byte, 1000)
		for i := range reqs {
			reqs[i] = bindingRequest(b, f.sess[i].ufrag+":cli")
		}
		from := netip.MustParseAddrPort("192.0.2.1:5000")
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			buf := f.m.getBuf()
			n := copy(buf.b[headroom:], reqs[i%1000])
			if !f.m.demux(&f.rs, nil, buf, headroom, n, from, 0, nil) {
				b.Fatal("not delivered")
			}
			f.sess[i%1000].pop(f.out)
		}
	})
	b.Run("junkFlood", func(b *testing.B) {
		f := newDemuxFixture(b, 1000)
		buf := f.m.getBuf()
		n := copy(buf.b[headroom:], bindingRequest(b, "nosuchufrag:x"))
		from := netip.MustParseAddrPort("192.0.2.1:5000")
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			f.m.demux(&f.rs, nil, buf, headroom, n, from, 0, nil)
		}
	})
}

// TestWriteBindAllocatesNothing: a session writing to its bound address
// allocates nothing to check or refresh the binding.
func TestWriteBindAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	f := newDemuxFixture(t, 10)
	s, a := f.sess[3], f.addrs[3]
	f.m.bindOnWrite(s, a)
	if n := testing.AllocsPerRun(10000, func() { f.m.bindOnWrite(s, a) }); n != 0 {
		t.Fatalf("%v allocs per write", n)
	}
}

func BenchmarkBindOnWrite(b *testing.B) {
	f := newDemuxFixture(b, 1000)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		f.m.bindOnWrite(f.sess[7], f.addrs[7])
	}
}

// FuzzDemux feeds arbitrary datagrams from arbitrary addresses to a mux
// with live sessions and checks the accounting: every datagram is counted
// once, and is either queued for a session or dropped with a reason; none
// binds an address.
func FuzzDemux(f *testing.F) {
	f.Add([]byte{0x80, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1}, uint16(0), false)
	f.Add(rfc5769Request, uint16(7), false)
	f.Add(bindingRequest(f, "nosuch:x"), uint16(9), true)
	f.Add(bindingRequest(f, ""), uint16(3), false)
	f.Add([]byte{22, 0xfe, 0xfd, 0, 0}, uint16(1), true)
	f.Add([]byte{}, uint16(2), false)
	fx := newDemuxFixture(f, 16)
	// Session 0's ufrag is "evtj" so RFC 5769's request reaches it.
	key, _ := makeUfragKey("evtj")
	s := newSession(fx.m, key, false, nil)
	fx.m.ufrags[key] = &ufragEntry{v4: s}
	f.Fuzz(func(t *testing.T, pkt []byte, who uint16, bound bool) {
		from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(who)}), who)
		if bound {
			from = fx.addrs[int(who)%len(fx.addrs)]
		}
		if len(pkt) > fx.m.cfg.MaxPacketSize {
			pkt = pkt[:fx.m.cfg.MaxPacketSize]
		}
		flows := fx.m.flows.len()
		buf := fx.m.getBuf()
		n := copy(buf.b[headroom:], pkt)
		var before localCounts = fx.rs.local
		kept := fx.m.demux(&fx.rs, nil, buf, headroom, n, from, 1, nil)
		after := fx.rs.local
		var in, drops uint64
		for i := range after.packets {
			in += after.packets[i] - before.packets[i]
		}
		for i := range after.drops {
			drops += after.drops[i] - before.drops[i]
		}
		if in != 1 {
			t.Fatalf("counted %d datagrams", in)
		}
		if kept == (drops == 1) || drops > 1 {
			t.Fatalf("kept %v with %d drops", kept, drops)
		}
		if !kept {
			fx.m.putBuf(buf)
		}
		for _, s := range append(fx.sess, s) {
			for {
				if _, _, ok := s.pop(fx.out); !ok {
					break
				}
			}
		}
		if fx.m.flows.len() != flows {
			t.Fatal("a received datagram bound an address")
		}
	})
}

// BenchmarkHandoff measures the whole in-process path per datagram: demux
// into a session's queue, the session's reader goroutine woken, dequeue and
// copy, with 1,000 sessions each read by its own goroutine as pion's ICE
// agents do. cpu-ns/op is the process CPU (user+sys) per datagram, both
// sides included.
func BenchmarkHandoff(b *testing.B) {
	f := newDemuxFixture(b, 1000)
	var wg sync.WaitGroup
	var got atomic.Int64
	conns := make([]*conn, len(f.sess))
	for i, s := range f.sess {
		conns[i] = &conn{s: s, done: make(chan struct{})}
		wg.Add(1)
		go func(c *conn) {
			defer wg.Done()
			buf := make([]byte, 1500)
			for {
				if _, _, err := c.ReadFromAddrPort(buf); err != nil {
					return
				}
				got.Add(1)
			}
		}(conns[i])
	}
	pkt := rtpPacket(1, 200)
	cpu0 := processCPU()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		j := i % 1000
		buf := f.m.getBuf()
		n := copy(buf.b[headroom:], pkt)
		if !f.m.demux(&f.rs, nil, buf, headroom, n, f.addrs[j], 0, nil) {
			f.m.putBuf(buf) // queue full: the readers fell behind
		}
		if j == 999 {
			f.rs.local.flush(&f.c)
		}
	}
	want := int64(b.N) - int64(f.c.drops[DropQueueFull].Load()+f.rs.local.drops[DropQueueFull])
	for deadline := time.Now().Add(10 * time.Second); got.Load() < want && time.Now().Before(deadline); {
		runtime.Gosched()
	}
	b.StopTimer()
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
	for _, s := range f.sess {
		s.close(1)
	}
	wg.Wait()
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
