package mux

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/oneport/oneport/internal/udplb"
)

// TestRelayPeerConnectionBehindBalancer: three muxes behind a DNAT-like
// balancer all advertise the VIP; a real pion PeerConnection whose session
// lives on node 1 reaches it through whichever node the balancer picks,
// DTLS and SCTP included, and keeps working when the balancer re-hashes
// its flow to another node.
func TestRelayPeerConnectionBehindBalancer(t *testing.T) {
	nodes := relayCluster(t, 3, []byte("k"))
	var backends []netip.AddrPort
	for _, n := range nodes {
		backends = append(backends, muxAddrPort(n.m))
	}
	lb, err := udplb.New("127.0.0.100:0", netip.MustParseAddr("127.0.0.50"), backends)
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	// Every node advertises the VIP: re-open node muxes' listen addresses.
	for _, n := range nodes {
		n.m.listen = []net.Addr{net.UDPAddrFromAddrPort(lb.Addr())}
	}
	owner := nodes[0]

	var se webrtc.SettingEngine
	se.SetICEUDPMux(owner.m)
	se.SetLite(true)
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	ufrag, _ := NewUfrag(UfragPrefix(owner.tag))
	se.SetICECredentials(ufrag, NewPassword())
	answerer, err := webrtc.NewAPI(webrtc.WithSettingEngine(se)).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer answerer.Close()
	// The client only reaches the VIP: pin its candidates to one address
	// so the balancer sees one flow.
	var cse webrtc.SettingEngine
	cse.SetIncludeLoopbackCandidate(true)
	cse.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	cse.SetIPFilter(func(ip net.IP) bool { return ip.Equal(net.IPv4(127, 0, 0, 1)) })
	offerer, err := webrtc.NewAPI(webrtc.WithSettingEngine(cse)).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer offerer.Close()

	answerer.OnDataChannel(func(dc *webrtc.DataChannel) {
		dc.OnMessage(func(msg webrtc.DataChannelMessage) { _ = dc.Send(msg.Data) })
	})
	dc, err := offerer.CreateDataChannel("echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	echoed := make(chan string, 64)
	dc.OnMessage(func(msg webrtc.DataChannelMessage) { echoed <- string(msg.Data) })
	opened := make(chan struct{})
	dc.OnOpen(func() { close(opened) })
	negotiate(t, offerer, answerer)
	select {
	case <-opened:
	case <-time.After(10 * time.Second):
		t.Fatal("data channel did not open through the balancer")
	}
	roundTrip := func(msg string, within time.Duration) time.Duration {
		start := time.Now()
		deadline := start.Add(within)
		for time.Now().Before(deadline) {
			_ = dc.SendText(msg)
			select {
			case got := <-echoed:
				if got == msg {
					return time.Since(start)
				}
			case <-time.After(50 * time.Millisecond):
			}
		}
		t.Fatalf("no echo of %q within %v", msg, within)
		return 0
	}
	roundTrip("before", 5*time.Second)

	// Re-hash until the client's flow sits on a node that is not the
	// owner, so the relay carries it.
	var client netip.AddrPort
	for i := 0; i < 20; i++ {
		lb.Rehash()
		client = onlyFlow(t, lb)
		if be, _ := lb.Backend(client); be != backends[0] {
			break
		}
	}
	if be, _ := lb.Backend(client); be == backends[0] {
		t.Fatal("twenty re-hashes all left the flow on the owner")
	}
	relayedBefore := owner.m.Stats().RelayFramesIn
	took := roundTrip("after re-hash", 3*time.Second)
	t.Logf("echo through the new ingress %v after the re-hash", took)
	if st := owner.m.Stats(); st.RelayFramesIn <= relayedBefore {
		t.Fatal("the echo after the re-hash did not come through the relay")
	}
	if lb.Stray.Load() != 0 {
		t.Logf("%d replies left by a node the flow was not on (dropped, as DNAT would)", lb.Stray.Load())
	}
}

// onlyFlow returns the one client address the balancer tracks.
func onlyFlow(t *testing.T, lb *udplb.Balancer) netip.AddrPort {
	t.Helper()
	cl, ok := lb.OnlyClient()
	if !ok {
		t.Fatal("the balancer tracks more or fewer than one flow")
	}
	return cl
}

func negotiate(t *testing.T, offerer, answerer *webrtc.PeerConnection) {
	t.Helper()
	offer, err := offerer.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	g := webrtc.GatheringCompletePromise(offerer)
	if err := offerer.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-g
	if err := answerer.SetRemoteDescription(*offerer.LocalDescription()); err != nil {
		t.Fatal(err)
	}
	answer, err := answerer.CreateAnswer(nil)
	if err != nil {
		t.Fatal(err)
	}
	g = webrtc.GatheringCompletePromise(answerer)
	if err := answerer.SetLocalDescription(answer); err != nil {
		t.Fatal(err)
	}
	<-g
	if err := offerer.SetRemoteDescription(*answerer.LocalDescription()); err != nil {
		t.Fatal(fmt.Errorf("set answer: %w", err))
	}
}
