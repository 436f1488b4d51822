package bench

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

const sessionCapture = "testdata/session.pcap"

// The shipped capture: tcpdump on lo while `oneport bench load` ran one
// publisher and one subscriber against `oneport serve` (see
// testdata/README.md).
func TestReplayCaptureParses(t *testing.T) {
	b, err := os.ReadFile(sessionCapture)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := readCapture(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	pl, err := planReplay(ds)
	if err != nil {
		t.Fatal(err)
	}
	if len(pl.flows) != 2 || !pl.server.IsValid() {
		t.Fatalf("server %v, flows %+v; want two client flows", pl.server, pl.flows)
	}
	var kinds [numPktKinds]int
	for _, p := range pl.pkts {
		kinds[p.kind]++
		if p.at < 0 || p.at > pl.span {
			t.Errorf("datagram at %v outside 0..%v", p.at, pl.span)
		}
	}
	if kinds[kindSTUN] == 0 || kinds[kindDTLS] == 0 || kinds[kindRTP] == 0 {
		t.Errorf("client datagrams by kind %v: want STUN, DTLS and RTP", kinds)
	}
	// The publisher's flow carries its video and audio SSRCs.
	if n := len(pl.flows[0].ssrcs) + len(pl.flows[1].ssrcs); n < 2 {
		t.Errorf("%d SSRCs in the flows", n)
	}
}

// TestReplayDelivers replays the shipped capture, copied and sped up, and
// counts its datagrams at the sessions: every one is read by the mux and
// either reaches the session it was rewritten for or is dropped with a
// reason, and the RTP all arrives (it follows the checks that bind).
func TestReplayDelivers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const copies = 6
	rep, err := RunReplay(ctx, ReplayConfig{Capture: sessionCapture, Copies: copies, Speed: 5})
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", text.String())
	var captured uint64
	for _, n := range rep.CapturedByKind {
		captured += n
	}
	if rep.Sessions != copies*rep.Flows || rep.SessionsBound != rep.Sessions {
		t.Errorf("%d sessions, %d bound; want %d", rep.Sessions, rep.SessionsBound, copies*rep.Flows)
	}
	if rep.SendErrors != 0 || rep.Sent != copies*captured {
		t.Errorf("sent %d with %d errors, want %d", rep.Sent, rep.SendErrors, copies*captured)
	}
	var drops uint64
	for _, n := range rep.MuxDrops {
		drops += n
	}
	if rep.KernelDrops <= 0 && rep.MuxIn != rep.Sent {
		t.Errorf("mux read %d of %d sent without kernel drops", rep.MuxIn, rep.Sent)
	}
	if rep.Delivered+drops+rep.ChecksRejected+rep.Misrouted != rep.MuxIn {
		t.Errorf("delivered %d + dropped %d + rejected %d + misrouted %d != read %d", rep.Delivered, drops, rep.ChecksRejected, rep.Misrouted, rep.MuxIn)
	}
	if rep.Misrouted != 0 || rep.ChecksRejected != 0 || rep.ChecksAnswered == 0 {
		t.Errorf("misrouted %d, checks rejected %d, answered %d", rep.Misrouted, rep.ChecksRejected, rep.ChecksAnswered)
	}
	for _, k := range []string{"rtp", "rtcp"} {
		if rep.DeliveredByKind[k] != rep.SentByKind[k] || rep.SentByKind[k] != copies*rep.CapturedByKind[k] {
			t.Errorf("%s: delivered %d of %d sent (%d captured)", k, rep.DeliveredByKind[k], rep.SentByKind[k], rep.CapturedByKind[k])
		}
	}
}

// A rewritten check names the new session and verifies with its password;
// RTP and RTCP carry the new SSRCs; the rest is untouched.
func TestReplayRewrite(t *testing.T) {
	req, err := bindingRequest(stun.NewTransactionID(), "oldserver", "cli", "oldpassword-oldpassword")
	if err != nil {
		t.Fatal(err)
	}
	f := capFlow{clientUfrag: "cli", ssrcs: []uint32{0x11111111, 0x22222222}}
	s := replaySession{ufrag: "newserver", pwd: "newpassword-newpassword", ssrcs: []uint32{0xA, 0xB}}
	out, err := rewrite(planPkt{kind: kindSTUN, payload: req}, f, s)
	if err != nil {
		t.Fatal(err)
	}
	server, client, ok := checkUsername(out)
	if !ok || server != "newserver" || client != "cli" {
		t.Fatalf("rewritten USERNAME %q:%q", server, client)
	}
	m := &stun.Message{Raw: out}
	if err := m.Decode(); err != nil {
		t.Fatal(err)
	}
	if err := stun.NewShortTermIntegrity(s.pwd).Check(m); err != nil {
		t.Errorf("MESSAGE-INTEGRITY: %v", err)
	}
	if err := stun.Fingerprint.Check(m); err != nil {
		t.Errorf("FINGERPRINT: %v", err)
	}
	rtpPkt := []byte{0x80, 96, 0, 1, 0, 0, 0, 1, 0x22, 0x22, 0x22, 0x22, 0xde, 0xad}
	out, _ = rewrite(planPkt{kind: kindRTP, payload: rtpPkt}, f, s)
	if got, _ := senderSSRC(out, kindRTP); got != 0xB || !bytes.Equal(out[12:], rtpPkt[12:]) || rtpPkt[8] != 0x22 {
		t.Errorf("RTP rewritten to SSRC %#x: % x", got, out)
	}
	rtcpPkt := []byte{0x80, 200, 0, 6, 0x11, 0x11, 0x11, 0x11, 1, 2, 3, 4}
	out, _ = rewrite(planPkt{kind: kindRTCP, payload: rtcpPkt}, f, s)
	if got, _ := senderSSRC(out, kindRTCP); got != 0xA {
		t.Errorf("RTCP rewritten to SSRC %#x", got)
	}
	dtls := []byte{22, 0xfe, 0xfd, 0, 0}
	if out, _ := rewrite(planPkt{kind: kindDTLS, payload: dtls}, f, s); !bytes.Equal(out, dtls) {
		t.Errorf("DTLS changed: % x", out)
	}
}

// FuzzReplayCapture: any bytes as a capture; whatever parses plans and
// rewrites without panicking, and every rewritten check verifies.
func FuzzReplayCapture(f *testing.F) {
	b, err := os.ReadFile(sessionCapture)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add(b[:len(b)/3])
	f.Fuzz(func(t *testing.T, data []byte) {
		ds, err := readCapture(bytes.NewReader(data))
		if err != nil {
			return
		}
		pl, err := planReplay(ds)
		if err != nil {
			return
		}
		checkRewrites(t, pl)
	})
}

// FuzzReplayRewrite: any datagram as a client's; the rewrite never panics,
// and a rewritten Binding request names the new session and verifies.
func FuzzReplayRewrite(f *testing.F) {
	req, _ := bindingRequest(stun.NewTransactionID(), "srv", "cli", "pwdpwdpwdpwdpwdpwdpwdpwd")
	f.Add(req)
	f.Add([]byte{0x80, 96, 0, 1, 0, 0, 0, 1, 1, 2, 3, 4})
	f.Add([]byte{0x80, 200, 0, 1, 1, 2, 3, 4})
	f.Add([]byte{22, 0xfe, 0xfd})
	f.Fuzz(func(t *testing.T, b []byte) {
		pl := &replayPlan{flows: []capFlow{{clientUfrag: "cli"}}, pkts: []planPkt{{kind: classify(b), payload: b}}}
		if ssrc, ok := senderSSRC(b, classify(b)); ok {
			pl.flows[0].ssrcs = []uint32{ssrc}
		}
		checkRewrites(t, pl)
	})
}

func checkRewrites(t *testing.T, pl *replayPlan) {
	s := replaySession{ufrag: "newufrag", pwd: "newpasswordnewpasswordnewpass", ssrcs: []uint32{1, 2, 3, 4, 5, 6, 7, 8}}
	for _, p := range pl.pkts {
		out, err := rewrite(p, pl.flows[p.flow], s)
		if err != nil {
			continue
		}
		if p.kind != kindSTUN {
			if len(out) != len(p.payload) {
				t.Fatalf("%v rewritten from %d to %d bytes", p.kind, len(p.payload), len(out))
			}
			continue
		}
		if _, _, isCheck := checkUsername(p.payload); !isCheck {
			continue
		}
		server, _, ok := checkUsername(out)
		m := &stun.Message{Raw: out}
		if !ok || server != "newufrag" || m.Decode() != nil || stun.NewShortTermIntegrity(s.pwd).Check(m) != nil || stun.Fingerprint.Check(m) != nil {
			t.Fatalf("rewritten check does not verify: % x", out)
		}
	}
}
