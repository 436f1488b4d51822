package mux

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"
)

// connectAgents exchanges candidates and credentials and connects a
// controlling client agent to a controlled server agent.
func connectAgents(t *testing.T, client, server *ice.Agent) (*ice.Conn, *ice.Conn) {
	t.Helper()
	gather := func(a *ice.Agent) []ice.Candidate {
		done := make(chan struct{})
		var cands []ice.Candidate
		if err := a.OnCandidate(func(c ice.Candidate) {
			if c == nil {
				close(done)
				return
			}
			cands = append(cands, c)
		}); err != nil {
			t.Fatal(err)
		}
		if err := a.GatherCandidates(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("gathering timed out")
		}
		return cands
	}
	for _, c := range gather(server) {
		if err := client.AddRemoteCandidate(c); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range gather(client) {
		if err := server.AddRemoteCandidate(c); err != nil {
			t.Fatal(err)
		}
	}
	cu, cp, _ := client.GetLocalUserCredentials()
	su, sp, _ := server.GetLocalUserCredentials()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		c   *ice.Conn
		err error
	}
	accepted := make(chan res, 1)
	go func() {
		c, err := server.Accept(ctx, cu, cp)
		accepted <- res{c, err}
	}()
	cc, err := client.Dial(ctx, su, sp)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	r := <-accepted
	if r.err != nil {
		t.Fatalf("accept: %v", r.err)
	}
	return cc, r.c
}

// TestICEAgentsEcho: a pion ICE client connects to an ICE-lite agent on the
// mux; 1 MiB in 1200-byte packets goes through the mux and back, checked for
// order and integrity.
func TestICEAgentsEcho(t *testing.T) {
	m := listenTest(t, "127.0.0.1:0", Config{Sockets: 2})
	ufrag, _ := NewUfrag("")
	server, err := ice.NewAgent(&ice.AgentConfig{
		UDPMux: m, Lite: true, LocalUfrag: ufrag, LocalPwd: NewPassword(),
		CandidateTypes: []ice.CandidateType{ice.CandidateTypeHost},
		NetworkTypes:   []ice.NetworkType{ice.NetworkTypeUDP4}, IncludeLoopback: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	client, err := ice.NewAgent(&ice.AgentConfig{
		CandidateTypes: []ice.CandidateType{ice.CandidateTypeHost},
		NetworkTypes:   []ice.NetworkType{ice.NetworkTypeUDP4}, IncludeLoopback: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	cc, sc := connectAgents(t, client, server)

	// Echo server on the mux side.
	echoDone := make(chan error, 1)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, err := sc.Read(buf)
			if err != nil {
				echoDone <- err
				return
			}
			if _, err := sc.Write(buf[:n]); err != nil {
				echoDone <- err
				return
			}
		}
	}()

	const size, total, window = 1200, 1 << 20, 32
	count := (total + size - 1) / size
	payload := func(i int) []byte {
		b := make([]byte, size)
		binary.BigEndian.PutUint32(b, uint32(i))
		for j := 4; j < size; j++ {
			b[j] = byte(i*7 + j)
		}
		return b
	}
	sent := 0
	buf := make([]byte, 1500)
	for recv := 0; recv < count; recv++ {
		for sent < count && sent-recv < window {
			if _, err := cc.Write(payload(sent)); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		_ = cc.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := cc.Read(buf)
		if err != nil {
			t.Fatalf("echo %d of %d: %v", recv, count, err)
		}
		if !bytes.Equal(buf[:n], payload(recv)) {
			t.Fatalf("echo %d: got packet %d (%d bytes)", recv, binary.BigEndian.Uint32(buf), n)
		}
	}
	if err := client.Close(); err != nil {
		t.Fatal(err)
	}
	if err := server.Close(); err != nil {
		t.Fatal(err)
	}
	<-echoDone
	eventually(t, 5*time.Second, "session closed", func() bool { return m.Stats().Sessions == 0 })
	if st := m.Stats(); st.TotalDrops() != 0 {
		t.Fatalf("drops on a clean loopback echo: %v", st.Drops)
	}
}

// TestPeerConnectionDataChannel: a pion/webrtc answerer with
// SetICEUDPMux(mux) and ICE-lite echoes DataChannel messages.
func TestPeerConnectionDataChannel(t *testing.T) {
	m := listenTest(t, "127.0.0.1:0", Config{})

	var se webrtc.SettingEngine
	se.SetICEUDPMux(m)
	se.SetLite(true)
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	ufrag, _ := NewUfrag("")
	se.SetICECredentials(ufrag, NewPassword())
	answerer, err := webrtc.NewAPI(webrtc.WithSettingEngine(se)).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	var cse webrtc.SettingEngine
	cse.SetIncludeLoopbackCandidate(true)
	cse.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	offerer, err := webrtc.NewAPI(webrtc.WithSettingEngine(cse)).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}

	answerer.OnDataChannel(func(dc *webrtc.DataChannel) {
		dc.OnMessage(func(msg webrtc.DataChannelMessage) { _ = dc.Send(msg.Data) })
	})
	dc, err := offerer.CreateDataChannel("echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	const msgs = 200
	echoed := make(chan []byte, msgs)
	dc.OnMessage(func(msg webrtc.DataChannelMessage) { echoed <- msg.Data })
	opened := make(chan struct{})
	dc.OnOpen(func() { close(opened) })

	offer, err := offerer.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	gathered := webrtc.GatheringCompletePromise(offerer)
	if err := offerer.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-gathered
	if err := answerer.SetRemoteDescription(*offerer.LocalDescription()); err != nil {
		t.Fatal(err)
	}
	answer, err := answerer.CreateAnswer(nil)
	if err != nil {
		t.Fatal(err)
	}
	gathered = webrtc.GatheringCompletePromise(answerer)
	if err := answerer.SetLocalDescription(answer); err != nil {
		t.Fatal(err)
	}
	<-gathered
	if err := offerer.SetRemoteDescription(*answerer.LocalDescription()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-opened:
	case <-time.After(10 * time.Second):
		t.Fatal("data channel did not open")
	}
	for i := 0; i < msgs; i++ {
		if err := dc.SendText(fmt.Sprintf("message %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < msgs; i++ {
		select {
		case b := <-echoed:
			if want := fmt.Sprintf("message %d", i); string(b) != want {
				t.Fatalf("echo %d: %q", i, b)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("echo %d timed out", i)
		}
	}
	// ICE-lite answers the checks to every client candidate, so each of
	// the client's addresses is bound.
	if st := m.Stats(); st.Sessions != 1 || st.Flows < 1 || st.Flows > 8 {
		t.Errorf("sessions %d flows %d during the call", st.Sessions, st.Flows)
	}
	if err := offerer.Close(); err != nil {
		t.Fatal(err)
	}
	if err := answerer.Close(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "session closed", func() bool { return m.Stats().Sessions == 0 })
}
