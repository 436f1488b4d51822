package mux

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

// relayNode is one mux of a loopback cluster.
type relayNode struct {
	m   *Mux
	tag string
}

// relayCluster starts n muxes on 127.0.0.(1..n) with relays, tags and one
// another as peers.
func relayCluster(t *testing.T, n int, key []byte) []relayNode {
	t.Helper()
	nodes := make([]relayNode, n)
	for i := range nodes {
		ip := fmt.Sprintf("127.0.0.%d", i+1)
		tag := fmt.Sprintf("N%03d", i+1)
		nodes[i] = relayNode{
			m:   listenTest(t, ip+":0", Config{Sockets: 1, Tag: tag, Relay: ip + ":0", RelayKey: key}),
			tag: tag,
		}
	}
	for i, nd := range nodes {
		var peers []Peer
		for j, o := range nodes {
			if j != i {
				peers = append(peers, Peer{Name: o.tag, Tag: o.tag, Relay: o.m.RelayAddr().(*net.UDPAddr).AddrPort()})
			}
		}
		if err := nd.m.SetPeers(peers); err != nil {
			t.Fatal(err)
		}
	}
	return nodes
}

// TestRelayIngressToOwner: a client whose packets the load balancer sends
// to a node that does not own its session is served by the owner through
// that ingress node: its check is relayed, the owner's answer leaves from
// the ingress node's port (the only one a DNAT load balancer translates
// back), media follows both ways, and after a re-hash to a third node the
// flow resumes through it without a new check.
func TestRelayIngressToOwner(t *testing.T) {
	for _, key := range [][]byte{nil, []byte("cluster secret")} {
		t.Run(fmt.Sprintf("key=%v", key != nil), func(t *testing.T) {
			nodes := relayCluster(t, 3, key)
			owner, ingress, other := nodes[0], nodes[1], nodes[2]
			ufrag, err := NewUfrag(UfragPrefix(owner.tag))
			if err != nil {
				t.Fatal(err)
			}
			sc, err := owner.m.GetConn(ufrag, owner.m.LocalAddr())
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			cl := client(t, "udp4", "127.0.0.9:0")
			clAddr := cl.LocalAddr().(*net.UDPAddr).AddrPort()
			via := muxAddrPort(ingress.m)

			// The check reaches the owner's session through the ingress.
			req := bindingRequest(t, ufrag+":cli")
			cl.WriteToUDPAddrPort(req, via)
			got, from := readConn(t, sc)
			if from != clAddr || !bytes.Equal(got, req) {
				t.Fatalf("owner got %d bytes from %v", len(got), from)
			}
			// The answer leaves from the ingress node's media port.
			if _, err := sc.WriteTo([]byte("answer"), net.UDPAddrFromAddrPort(clAddr)); err != nil {
				t.Fatal(err)
			}
			b, src, err := readTimeout(t, cl, 2*time.Second)
			if err != nil || string(b) != "answer" || src != via {
				t.Fatalf("client got %q from %v (%v), want the answer from the ingress %v", b, src, err, via)
			}
			// Media now follows the bound flow both ways.
			for i := 0; i < 20; i++ {
				cl.WriteToUDPAddrPort(rtpPacket(byte(i), 1000), via)
				if got, _ := readConn(t, sc); got[3] != byte(i) {
					t.Fatalf("relayed rtp %d arrived as %d", i, got[3])
				}
				sc.WriteTo(rtpPacket(byte(i), 300), net.UDPAddrFromAddrPort(clAddr))
				if b, src, err := readTimeout(t, cl, 2*time.Second); err != nil || b[3] != byte(i) || src != via {
					t.Fatalf("reply %d: %v from %v", i, err, src)
				}
			}

			// Re-hash: the client's packets now reach the third node, which
			// learns the owner with one query; the reply path moves too.
			start := time.Now()
			moved := muxAddrPort(other.m)
			deadline := time.Now().Add(3 * time.Second)
			var resumed bool
			for seq := 100; time.Now().Before(deadline); seq++ {
				cl.WriteToUDPAddrPort(rtpPacket(byte(seq), 200), moved)
				sc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
				if _, _, err := sc.(*conn).ReadFromAddrPort(make([]byte, 1500)); err == nil {
					resumed = true
					break
				}
			}
			if !resumed {
				t.Fatal("media did not resume after the re-hash")
			}
			t.Logf("media resumed %v after the re-hash", time.Since(start))
			sc.SetReadDeadline(time.Time{})
			sc.WriteTo([]byte("after"), net.UDPAddrFromAddrPort(clAddr))
			for {
				b, src, err := readTimeout(t, cl, 2*time.Second)
				if err != nil {
					t.Fatalf("no reply through the new ingress: %v", err)
				}
				if string(b) == "after" {
					if src != moved {
						t.Fatalf("reply from %v, want the new ingress %v", src, moved)
					}
					break
				}
			}
			os, is := owner.m.Stats(), ingress.m.Stats()
			if os.RelayFramesIn == 0 || is.RelayFramesOut == 0 || os.Drops[DropRelayAuth] != 0 {
				t.Fatalf("owner relay in %d auth drops %d, ingress relay out %d", os.RelayFramesIn, os.Drops[DropRelayAuth], is.RelayFramesOut)
			}
			// The owner's answers reached the ingress as frames, in batches
			// that demultiplex nothing there: counted all the same.
			if is.RelayFramesIn == 0 || os.RelayFramesOut == 0 {
				t.Fatalf("ingress relay in %d, owner relay out %d", is.RelayFramesIn, os.RelayFramesOut)
			}
		})
	}
}

// TestRelayRefusesStrangers: frames from an address that is no member's,
// and with a relay key frames with a bad MAC, are dropped and counted.
func TestRelayRefusesStrangers(t *testing.T) {
	nodes := relayCluster(t, 2, []byte("k"))
	target := nodes[0].m.RelayAddr().(*net.UDPAddr).AddrPort()
	stranger := client(t, "udp4", "127.0.0.7:0")
	frame := make([]byte, relayHeaderLen+10)
	putRelayHeader(frame, frameToOwner, netip.MustParseAddrPort("192.0.2.1:5000"), time.Now().UnixMilli())
	stranger.WriteToUDPAddrPort(frame, target)
	eventually(t, 2*time.Second, "not-member drop", func() bool { return nodes[0].m.Stats().Drops[DropRelayNotMember] == 1 })

	// From the member's own relay socket, but without the right MAC.
	forged := append(frame, make([]byte, relayMACLen)...)
	nodes[1].m.relay.conn.WriteToUDPAddrPort(forged, target)
	eventually(t, 2*time.Second, "auth drop", func() bool { return nodes[0].m.Stats().Drops[DropRelayAuth] == 1 })

	// A well-formed, authenticated frame that is too old.
	old := make([]byte, relayHeaderLen, relayHeaderLen+relayMACLen)
	putRelayHeader(old, frameWhoHas, netip.MustParseAddrPort("192.0.2.1:5000"), time.Now().Add(-time.Minute).UnixMilli())
	nodes[1].m.relay.conn.WriteToUDPAddrPort(nodes[1].m.auth.sum(old), target)
	eventually(t, 2*time.Second, "stale drop", func() bool { return nodes[0].m.Stats().Drops[DropRelayAuth] == 2 })

	// Peers with bad or repeated tags are refused.
	if err := nodes[0].m.SetPeers([]Peer{{Name: "x", Tag: "N001", Relay: target}}); err == nil {
		t.Fatal("a peer with our own tag was accepted")
	}
	if err := nodes[0].m.SetPeers([]Peer{{Name: "x", Tag: "ab:c", Relay: target}}); err == nil {
		t.Fatal("a peer with a bad tag was accepted")
	}
}

func TestRelayHeaderRoundTrip(t *testing.T) {
	for _, a := range []string{"192.0.2.1:5000", "[2001:db8::1]:443"} {
		ap := netip.MustParseAddrPort(a)
		h := make([]byte, relayHeaderLen)
		putRelayHeader(h, frameToClient, ap, 123456)
		typ, got, ms, ok := parseRelayHeader(h)
		if !ok || typ != frameToClient || got != ap || ms != 123456 {
			t.Fatalf("%v: %v %v %v %v", a, ok, typ, got, ms)
		}
	}
}

// FuzzRelayFrame: the frame parser never panics and accepts only what it
// can route.
func FuzzRelayFrame(f *testing.F) {
	h := make([]byte, relayHeaderLen)
	putRelayHeader(h, frameToOwner, netip.MustParseAddrPort("192.0.2.1:5000"), 1)
	f.Add(append(h, 0x80, 0x60))
	f.Add(h[:10])
	f.Add(make([]byte, relayHeaderLen))
	f.Fuzz(func(t *testing.T, b []byte) {
		typ, client, _, ok := parseRelayHeader(b)
		if ok && (typ < frameToOwner || typ > frameIHave || client.Port() == 0 || client.Addr().Is4In6()) {
			t.Fatalf("accepted type %d client %v", typ, client)
		}
	})
}

// TestRelayForwardAllocatesNothing pins the ingress's per-datagram relay
// path (frame built in place, MAC, send) at zero allocations.
func TestRelayForwardAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	for _, key := range [][]byte{nil, []byte("k")} {
		nodes := relayCluster(t, 2, key)
		m := nodes[0].m
		p := m.peers.Load().all[0]
		buf := m.getBuf()
		n := copy(buf.b[headroom:], rtpPacket(1, 1200))
		client := netip.MustParseAddrPort("192.0.2.1:5000")
		var c localCounts
		if a := testing.AllocsPerRun(1000, func() {
			m.relayDatagram(&c, buf, headroom, n, frameToOwner, client, p)
		}); a != 0 {
			t.Fatalf("key %v: %v allocs per relayed datagram", key != nil, a)
		}
	}
}

// BenchmarkRelayRoundTrip measures what the relay adds: a client pings a
// session that echoes, either straight to the owner's port or through an
// ingress node that relays both ways. ns/op is the round trip; cpu-ns/op is
// the process CPU per round trip (client, ingress and owner all run in this
// process, so the difference between the two is the relay's cost for two
// relayed datagrams, one each way).
func BenchmarkRelayRoundTrip(b *testing.B) {
	for _, path := range []string{"direct", "relayed", "relayed-unauthenticated"} {
		b.Run(path, func(b *testing.B) {
			key := []byte("k")
			if path == "relayed-unauthenticated" {
				key = nil
			}
			nodes := relayClusterB(b, 2, key)
			owner, ingress := nodes[0], nodes[1]
			ufrag, _ := NewUfrag(UfragPrefix(owner.tag))
			sc, err := owner.m.GetConn(ufrag, owner.m.LocalAddr())
			if err != nil {
				b.Fatal(err)
			}
			defer sc.Close()
			go func() {
				buf := make([]byte, 1500)
				for {
					n, from, err := sc.(*conn).ReadFromAddrPort(buf)
					if err != nil {
						return
					}
					sc.(*conn).WriteToAddrPort(buf[:n], from)
				}
			}()
			cl, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 9)})
			if err != nil {
				b.Fatal(err)
			}
			defer cl.Close()
			to := muxAddrPort(owner.m)
			if path != "direct" {
				to = muxAddrPort(ingress.m)
			}
			// Bind the flow with a check, as ICE would.
			req := bindingRequest(b, ufrag+":cli")
			buf := make([]byte, 1500)
			cl.WriteToUDPAddrPort(req, to)
			cl.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, _, err := cl.ReadFromUDPAddrPort(buf); err != nil {
				b.Fatal(err)
			}
			pkt := rtpPacket(1, 1200)
			cl.SetReadDeadline(time.Time{})
			cpu0 := processCPU()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				cl.WriteToUDPAddrPort(pkt, to)
				if _, _, err := cl.ReadFromUDPAddrPort(buf); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
			if path != "direct" && owner.m.Stats().RelayFramesIn < uint64(b.N) {
				b.Fatalf("only %d relayed frames for %d round trips", owner.m.Stats().RelayFramesIn, b.N)
			}
		})
	}
}

// relayClusterB is relayCluster for benchmarks.
func relayClusterB(b *testing.B, n int, key []byte) []relayNode {
	b.Helper()
	nodes := make([]relayNode, n)
	for i := range nodes {
		ip := fmt.Sprintf("127.0.0.%d", i+1)
		tag := fmt.Sprintf("N%03d", i+1)
		m, err := Listen(ip+":0", Config{Sockets: 1, Tag: tag, Relay: ip + ":0", RelayKey: key})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { m.Close() })
		nodes[i] = relayNode{m: m, tag: tag}
	}
	for i, nd := range nodes {
		var peers []Peer
		for j, o := range nodes {
			if j != i {
				peers = append(peers, Peer{Name: o.tag, Tag: o.tag, Relay: o.m.RelayAddr().(*net.UDPAddr).AddrPort()})
			}
		}
		if err := nd.m.SetPeers(peers); err != nil {
			b.Fatal(err)
		}
	}
	return nodes
}
