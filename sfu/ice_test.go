package sfu

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/webrtc/v4"
)

// A subscriber that goes silent (its socket closed, no DTLS close) is removed
// when ICE fails (consent expiry), with its mux session.
func TestSilentSubscriberRemoved(t *testing.T) {
	e := newTestEnv(t, func(c *Config) {
		c.ICEDisconnectedTimeout = 300 * time.Millisecond
		c.ICEFailedTimeout = 700 * time.Millisecond
		c.ICEKeepaliveInterval = 100 * time.Millisecond
	})
	pub := newPublisher(t, e, "silent", nil, false)
	pub.start(10*time.Millisecond, 100000)
	waitFor(t, "track published", 5*time.Second, func() bool { return e.srv.Stats().Tracks == 1 })

	// A client whose only socket the test can pull away.
	uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	cm := ice.NewUDPMuxDefault(ice.UDPMuxParams{UDPConn: uc})
	me := &webrtc.MediaEngine{}
	if err := me.RegisterDefaultCodecs(); err != nil {
		t.Fatal(err)
	}
	se := webrtc.SettingEngine{}
	se.SetICEUDPMux(cm)
	se.SetIncludeLoopbackCandidate(true)
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	api := webrtc.NewAPI(webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(&interceptor.Registry{}), webrtc.WithSettingEngine(se))
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
		t.Fatal(err)
	}
	connected := make(chan struct{})
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateConnected {
			close(connected)
		}
	})
	e.signal(pc, "/whep/silent")
	select {
	case <-connected:
	case <-time.After(10 * time.Second):
		t.Fatal("subscriber did not connect")
	}
	waitFor(t, "subscriber counted", 5*time.Second, func() bool { return e.srv.Stats().Subscribers == 1 })
	if n := e.mux.Stats().Sessions; n != 2 {
		t.Fatalf("mux sessions %d, want 2", n)
	}
	cm.Close() // closes uc: the client falls silent without telling the server
	waitFor(t, "silent subscriber removed", 10*time.Second, func() bool {
		st := e.srv.Stats()
		return st.Subscribers == 0 && e.mux.Stats().Sessions == 1
	})
	if st := e.srv.Stats(); st.Publishers != 1 || st.Tracks != 1 {
		t.Fatalf("publisher affected: %+v", st)
	}
}

// PATCH with new remote credentials restarts ICE: 200, a fragment with the
// server's credentials and candidates, a new ETag.
func TestICERestartPatch(t *testing.T) {
	e := newTestEnv(t, nil)
	pub := newPublisher(t, e, "restart", nil, false)
	etag := e.srv.resourceETag(t, pub.location)
	frag := "a=ice-ufrag:Nw3r\r\na=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n"
	res := e.do("PATCH", pub.location, "application/trickle-ice-sdpfrag", frag, "If-Match", etag)
	if res.code != http.StatusOK || res.hdr.Get("Content-Type") != "application/trickle-ice-sdpfrag" ||
		!strings.Contains(res.body, "a=ice-ufrag:") || !strings.Contains(res.body, "a=candidate:") {
		t.Fatalf("ICE restart: %d %v %q", res.code, res.hdr, res.body)
	}
	if res.hdr.Get("ETag") == "" || res.hdr.Get("ETag") == etag {
		t.Fatalf("ETag %q after restart, was %q", res.hdr.Get("ETag"), etag)
	}
	if res := e.do("PATCH", pub.location, "application/trickle-ice-sdpfrag", "a=end-of-candidates\r\n", "If-Match", etag); res.code != http.StatusPreconditionFailed {
		t.Fatalf("old ETag after restart: %d", res.code)
	}
}

func (s *Server) resourceETag(t *testing.T, location string) string {
	t.Helper()
	p, err := s.resource(strings.Split(location, "/")[2], resourceID(location), rolePublisher)
	if err != nil {
		t.Fatal(err)
	}
	return p.currentETag()
}
