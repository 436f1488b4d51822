package sfu

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/stun/v3"
	"github.com/pion/webrtc/v4"

	"github.com/oneport/oneport/mux"
)

// restartTag is the owner tag of the restart tests' node.
const restartTag = "T3st"

// newTaggedEnv is newTestEnv on a mux with an owner tag and server ufrags
// carrying it, as a cluster node's (cmd/oneport serve).
func newTaggedEnv(t *testing.T) *testEnv {
	t.Helper()
	return newTestEnvOn(t, mux.Config{Tag: restartTag}, func(c *Config) {
		c.NewICECredentials = func() (string, string) {
			u, err := mux.NewUfrag(mux.UfragPrefix(restartTag))
			if err != nil {
				panic(err)
			}
			return u, mux.NewPassword()
		}
	})
}

// restartRoom starts a tagged server with a publisher sending and a
// subscriber receiving in room "rs".
func restartRoom(t *testing.T) (*testEnv, *publisher, *subscriber) {
	t.Helper()
	e := newTaggedEnv(t)
	pub := newPublisher(t, e, "rs", nil, false)
	pub.start(10*time.Millisecond, 1_000_000)
	// The server publishes a track on its first packet.
	waitFor(t, "track published", 5*time.Second, func() bool { return e.srv.Stats().Tracks == 1 })
	sub := newSubscriber(t, e, "/whep/rs", true, false)
	waitFor(t, "media before the restart", 10*time.Second, func() bool { return sub.video.len() > 0 })
	return e, pub, sub
}

// clientRestart makes pc restart ICE as a WHIP/WHEP client does (RFC 9725
// §4.3.2): a restart offer kept locally, its new credentials and candidates
// PATCHed to location. It returns the response and pc's new ufrag.
func clientRestart(t *testing.T, e *testEnv, pc *webrtc.PeerConnection, location, ifMatch string) (httpResult, string) {
	t.Helper()
	offer, err := pc.CreateOffer(&webrtc.OfferOptions{ICERestart: true})
	if err != nil {
		t.Fatal(err)
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	// CreateOffer began the restart's gather: the promise alone can miss it.
	if err := awaitGathering(pc, gathered, 10*time.Second, nil); err != nil {
		t.Fatalf("restart: %v", err)
	}
	frag, err := localFragment(pc.LocalDescription().SDP)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := iceCredentials(pc.LocalDescription().SDP)
	return e.do("PATCH", location, "application/trickle-ice-sdpfrag", frag, "If-Match", ifMatch), u
}

// applyRestartAnswer completes the client's restart with the server's
// fragment: the previous answer with the new credentials, then the new
// candidates.
func applyRestartAnswer(t *testing.T, pc *webrtc.PeerConnection, body string) {
	t.Helper()
	f, err := parseTrickleFragment(body, defaultSDPLimits)
	if err != nil {
		t.Fatalf("server fragment: %v\n%s", err, body)
	}
	answer, err := withICECredentials(pc.RemoteDescription().SDP, f.ufrag, f.pwd, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		t.Fatalf("restart answer: %v", err)
	}
	for _, c := range f.candidates {
		mid, ml := c.mid, c.mline
		if err := pc.AddICECandidate(webrtc.ICECandidateInit{Candidate: c.candidate, SDPMid: &mid, SDPMLineIndex: &ml}); err != nil {
			t.Fatalf("restart candidate %q: %v", c.candidate, err)
		}
	}
}

// stunCheck sends a connectivity check for the local ufrag (USERNAME
// local:remote, MESSAGE-INTEGRITY with pwd) to the mux from a new socket
// and reports whether a success response came back before the deadline.
func stunCheck(t *testing.T, to net.Addr, local, remote, pwd string, wait time.Duration) bool {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req, err := stun.Build(stun.BindingRequest, stun.TransactionID, stun.NewUsername(local+":"+remote),
		ice.PriorityAttr(1), ice.AttrControlling(1), stun.NewShortTermIntegrity(pwd), stun.Fingerprint)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteTo(req.Raw, to); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 1500)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return false
		}
		res := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if res.Decode() == nil && res.TransactionID == req.TransactionID {
			return res.Type == stun.BindingSuccess && stun.NewShortTermIntegrity(pwd).Check(res) == nil
		}
	}
}

// refusedChecks counts checks the mux dropped for a ufrag it has no live
// session for.
func refusedChecks(m *mux.Mux) uint64 {
	st := m.Stats()
	return st.Drops[mux.DropClosed] + st.Drops[mux.DropUnknownUfrag]
}

// checkRestarted asserts the restart response: 200, a fragment whose ufrag
// and pwd are new and carry the node's owner tag, a new ETag; that p took
// them; that the mux answers checks for the new ufrag and refuses the old
// one, and holds no more sessions than before.
func checkRestarted(t *testing.T, e *testEnv, p *participant, res httpResult, oldUfrag, oldPwd, oldETag, clientUfrag string, sessions int) {
	t.Helper()
	if res.code != http.StatusOK || res.hdr.Get("Content-Type") != "application/trickle-ice-sdpfrag" {
		t.Fatalf("ICE restart: %d %v %q", res.code, res.hdr, res.body)
	}
	if et := res.hdr.Get("ETag"); et == "" || et == oldETag || et != p.currentETag() {
		t.Fatalf("ETag %q after restart, was %q, resource has %q", et, oldETag, p.currentETag())
	}
	f, err := parseTrickleFragment(res.body, defaultSDPLimits)
	if err != nil {
		t.Fatalf("server fragment: %v\n%s", err, res.body)
	}
	prefix := mux.UfragPrefix(restartTag)
	switch {
	case f.ufrag == oldUfrag || f.pwd == oldPwd:
		t.Fatalf("restart kept credentials: ufrag %q (was %q), pwd changed %v", f.ufrag, oldUfrag, f.pwd != oldPwd)
	case !strings.HasPrefix(f.ufrag, prefix) || len(f.ufrag) != len(prefix)+mux.UfragRandomChars:
		t.Fatalf("new ufrag %q: want the owner tag prefix %q and %d random chars", f.ufrag, prefix, mux.UfragRandomChars)
	case len(f.pwd) < 22 || !validICECredentials(f.ufrag, f.pwd):
		t.Fatalf("new credentials %q %q invalid", f.ufrag, f.pwd)
	case p.localUfrag() != f.ufrag:
		t.Fatalf("participant ufrag %q, fragment %q", p.localUfrag(), f.ufrag)
	case len(f.candidates) == 0 || !f.end:
		t.Fatalf("fragment without candidates or end-of-candidates:\n%s", res.body)
	}
	if n := e.mux.Stats().Sessions; n != sessions {
		t.Fatalf("mux sessions %d after restart, want %d (old ufrag released, new registered)", n, sessions)
	}
	if !stunCheck(t, e.mux.LocalAddr(), f.ufrag, clientUfrag, f.pwd, 5*time.Second) {
		t.Fatal("no answer to a check for the new ufrag")
	}
	before := refusedChecks(e.mux)
	if stunCheck(t, e.mux.LocalAddr(), oldUfrag, clientUfrag, oldPwd, 0) {
		t.Fatal("the old ufrag still answers")
	}
	waitFor(t, "check for the old ufrag refused", 5*time.Second, func() bool { return refusedChecks(e.mux) > before })
}

// waitMediaAfter waits until the subscriber gets a video packet the
// publisher sent after counter sent.
func waitMediaAfter(t *testing.T, what string, sub *subscriber, sent uint64) {
	t.Helper()
	waitFor(t, what, 15*time.Second, func() bool {
		c, ok := sub.video.last()
		return ok && c > sent+10
	})
}

// A publisher's ICE restart through PATCH gives the server fresh credentials
// with the owner tag, moves the session to the new ufrag on the mux, and
// media keeps reaching the subscriber.
func TestICERestartPublisherMedia(t *testing.T) {
	e, pub, sub := restartRoom(t)

	p, err := e.srv.resource("rs", resourceID(pub.location), rolePublisher)
	if err != nil {
		t.Fatal(err)
	}
	oldUfrag, oldPwd := iceCredentials(pub.pc.RemoteDescription().SDP)
	if oldUfrag != p.localUfrag() || !strings.HasPrefix(oldUfrag, mux.UfragPrefix(restartTag)) {
		t.Fatalf("server ufrag %q, participant %q", oldUfrag, p.localUfrag())
	}
	oldETag := p.currentETag()

	res, clientUfrag := clientRestart(t, e, pub.pc, pub.location, "*")
	checkRestarted(t, e, p, res, oldUfrag, oldPwd, oldETag, clientUfrag, 2)
	applyRestartAnswer(t, pub.pc, res.body)
	sent := pub.videoSent.Load()
	waitMediaAfter(t, "media sent after the publisher's restart", sub, sent)
	if st := e.srv.Stats(); st.Publishers != 1 || st.Subscribers != 1 {
		t.Fatalf("after restart: %+v", st)
	}

	// The old ETag is stale now; the new one takes trickled candidates.
	if res := e.do("PATCH", pub.location, "application/trickle-ice-sdpfrag", "a=end-of-candidates\r\n", "If-Match", oldETag); res.code != http.StatusPreconditionFailed {
		t.Fatalf("old ETag after restart: %d", res.code)
	}
	if res := e.do("PATCH", pub.location, "application/trickle-ice-sdpfrag", "a=end-of-candidates\r\n", "If-Match", p.currentETag()); res.code != http.StatusNoContent {
		t.Fatalf("trickle with the new ETag: %d %s", res.code, res.body)
	}
}

// A subscriber's ICE restart: fresh credentials, and it keeps receiving.
func TestICERestartSubscriberMedia(t *testing.T) {
	e, pub, sub := restartRoom(t)

	p, err := e.srv.resource("rs", resourceID(sub.location), roleSubscriber)
	if err != nil {
		t.Fatal(err)
	}
	oldUfrag, oldPwd := iceCredentials(sub.pc.RemoteDescription().SDP)
	oldETag := p.currentETag()

	res, clientUfrag := clientRestart(t, e, sub.pc, sub.location, oldETag)
	checkRestarted(t, e, p, res, oldUfrag, oldPwd, oldETag, clientUfrag, 2)
	applyRestartAnswer(t, sub.pc, res.body)
	sent := pub.videoSent.Load()
	waitMediaAfter(t, "media after the subscriber's restart", sub, sent)

	// A second restart works the same way from the new credentials.
	oldUfrag, oldPwd, oldETag = p.localUfrag(), "", p.currentETag()
	_, oldPwd = iceCredentials(sub.pc.RemoteDescription().SDP)
	res, clientUfrag = clientRestart(t, e, sub.pc, sub.location, "*")
	checkRestarted(t, e, p, res, oldUfrag, oldPwd, oldETag, clientUfrag, 2)
	applyRestartAnswer(t, sub.pc, res.body)
	waitMediaAfter(t, "media after the second restart", sub, pub.videoSent.Load())
}

// A restart PATCH whose If-Match is not the resource's ETag gets 412 and
// changes nothing: same server credentials, same ETag.
func TestICERestartStaleETag(t *testing.T) {
	e := newTaggedEnv(t)
	pub := newPublisher(t, e, "rs", nil, false)
	p, err := e.srv.resource("rs", resourceID(pub.location), rolePublisher)
	if err != nil {
		t.Fatal(err)
	}
	ufrag, etag := p.localUfrag(), p.currentETag()
	frag := "a=ice-ufrag:Nw3r\r\na=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n"
	res := e.do("PATCH", pub.location, "application/trickle-ice-sdpfrag", frag, "If-Match", `"stale"`)
	if res.code != http.StatusPreconditionFailed {
		t.Fatalf("stale If-Match: %d, want 412", res.code)
	}
	if p.localUfrag() != ufrag || p.currentETag() != etag {
		t.Fatalf("refused restart changed the resource: ufrag %q -> %q, ETag %q -> %q", ufrag, p.localUfrag(), etag, p.currentETag())
	}
	// A new pwd alone is a restart too (RFC 8839 §4.4.1.1.2).
	u, _ := iceCredentials(p.pc.RemoteDescription().SDP)
	frag = "a=ice-ufrag:" + u + "\r\na=ice-pwd:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n"
	res = e.do("PATCH", pub.location, "application/trickle-ice-sdpfrag", frag, "If-Match", "*")
	if res.code != http.StatusOK || p.localUfrag() == ufrag || res.hdr.Get("ETag") == etag {
		t.Fatalf("pwd-only restart: %d ufrag %q (was %q) ETag %q", res.code, p.localUfrag(), ufrag, res.hdr.Get("ETag"))
	}
}

// apiSettingEngine finds the SettingEngine pion's API uses: credentials set
// there are the ones the next agent (or restart) takes. This pins the
// unexported field restartICE depends on across pion upgrades.
func TestICERestartAPISettingEngine(t *testing.T) {
	api := webrtc.NewAPI(webrtc.WithSettingEngine(webrtc.SettingEngine{}))
	se := apiSettingEngine(api)
	if se == nil {
		t.Fatal("pion's API no longer has its settingEngine field: ICE restarts cannot get fresh credentials")
	}
	se.SetICECredentials("abcdEFGH", "0123456789abcdefghijklmnop")
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo); err != nil {
		t.Fatal(err)
	}
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	if u, pw := iceCredentials(offer.SDP); u != "abcdEFGH" || pw != "0123456789abcdefghijklmnop" {
		t.Fatalf("offer credentials %q %q, not those set through apiSettingEngine", u, pw)
	}
}

// A client that restarts ICE from the same address (one socket, as behind a
// NAT that keeps its mapping, or a client on a UDP mux) reaches the new
// ufrag at once: the address was bound to the old session, closed by the
// restart, and its tombstone must not swallow the checks for the new one.
// The wait is well under the mux's TombstoneTTL (10s), after which the
// tombstone would be gone anyway, and under pion's give-up on a pair.
func TestICERestartSameAddress(t *testing.T) {
	e := newTaggedEnv(t)
	pub := newPublisher(t, e, "rs", nil, false)
	pub.start(10*time.Millisecond, 1_000_000)
	waitFor(t, "track published", 5*time.Second, func() bool { return e.srv.Stats().Tracks == 1 })

	uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	cm := ice.NewUDPMuxDefault(ice.UDPMuxParams{UDPConn: uc})
	t.Cleanup(func() { _ = cm.Close() }) // after the subscriber's PeerConnection (cleanups run last first)
	me := &webrtc.MediaEngine{}
	if err := me.RegisterDefaultCodecs(); err != nil {
		t.Fatal(err)
	}
	se := webrtc.SettingEngine{}
	se.SetICEUDPMux(cm)
	se.SetIncludeLoopbackCandidate(true)
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	api := webrtc.NewAPI(webrtc.WithMediaEngine(me), webrtc.WithSettingEngine(se))
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	sub := &subscriber{pc: pc}
	t.Cleanup(sub.close)
	if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
		t.Fatal(err)
	}
	pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		sub.wg.Add(1)
		go func() {
			defer sub.wg.Done()
			for {
				p, _, err := tr.ReadRTP()
				if err != nil {
					return
				}
				sub.video.add(p)
			}
		}()
	})
	sub.location = e.signal(pc, "/whep/rs")
	waitFor(t, "media before the restart", 10*time.Second, func() bool { return sub.video.len() > 0 })

	res, _ := clientRestart(t, e, pc, sub.location, "*")
	if res.code != http.StatusOK {
		t.Fatalf("ICE restart: %d %s", res.code, res.body)
	}
	applyRestartAnswer(t, pc, res.body)
	sent := pub.videoSent.Load()
	waitFor(t, "media after a same-address restart", 5*time.Second, func() bool {
		c, ok := sub.video.last()
		return ok && c > sent+10
	})
}
