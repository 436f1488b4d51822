package sfu

import (
	"bufio"
	"encoding/json"
	"github.com/oneport/oneport/internal/testclock"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"go.uber.org/goleak"
)

// A WHIP publisher's VP8 and Opus reach two WHEP subscribers complete and in
// order; a subscriber's PLI reaches the publisher.
func TestForwardTwoSubscribers(t *testing.T) {
	e := newTestEnv(t, nil)
	pub := newPublisher(t, e, "room1", nil, true)
	// The server publishes a track on its first packet, so send while subscribing.
	pub.start(5*time.Millisecond, 100000)
	waitFor(t, "tracks published", 5*time.Second, func() bool { return e.srv.Stats().Tracks == 2 })

	subs := []*subscriber{
		newSubscriber(t, e, "/whep/room1", true, true),
		newSubscriber(t, e, "/whep/room1", true, true),
	}
	for _, s := range subs {
		waitFor(t, "media at subscriber", 10*time.Second, func() bool { return s.video.len() >= 100 && s.audio.len() >= 25 })
	}

	// A subscriber's PLI reaches the publisher.
	before := pub.plis.Load()
	waitFor(t, "PLI at publisher", 5*time.Second, func() bool {
		_ = subs[0].pc.WriteRTCP([]rtcp.Packet{&rtcp.PictureLossIndication{MediaSSRC: subs[0].videoSSRC.Load()}})
		return pub.plis.Load() > before
	})

	pub.stopSending()
	lastV, lastA := pub.videoSent.Load()-1, pub.audioSent.Load()-1
	for i, s := range subs {
		waitFor(t, "last packets at subscriber", 10*time.Second, func() bool {
			v, okv := s.video.last()
			a, oka := s.audio.last()
			return okv && oka && v == lastV && a == lastA
		})
		t.Logf("subscriber %d: %d video packets (last %d), %d audio packets (last %d)", i, s.video.len(), lastV, s.audio.len(), lastA)
		checkInOrder(t, "video"+string(rune('0'+i)), &s.video)
		checkInOrder(t, "audio"+string(rune('0'+i)), &s.audio)
	}
	st := e.srv.Stats()
	if st.SubscriberDrops != 0 || st.ForwardedPackets == 0 || st.Subscribers != 2 || st.Publishers != 1 {
		t.Errorf("stats %+v", st)
	}
	if st.SubscriberPLIs == 0 {
		t.Errorf("no subscriber PLI counted: %+v", st)
	}
}

func resourceID(location string) string {
	return location[strings.LastIndexByte(location, '/')+1:]
}

// A subscriber gets the highest simulcast layer by default and, after a layer
// selection, only the chosen layer from its first packet on, with unbroken
// sequence numbers and one SSRC.
func TestSimulcastLayerSwitch(t *testing.T) {
	e := newTestEnv(t, nil)
	pub := newPublisher(t, e, "sc", []string{"q", "h", "f"}, false)
	pub.start(5*time.Millisecond, 100000)
	waitFor(t, "three active layers", 10*time.Second, func() bool {
		info, err := e.srv.RoomInfo("sc")
		if err != nil || len(info.Tracks) != 1 || len(info.Tracks[0].Layers) != 3 {
			return false
		}
		for _, l := range info.Tracks[0].Layers {
			if !l.Active {
				return false
			}
		}
		return true
	})
	sub := newSubscriber(t, e, "/whep/sc", true, false)
	waitFor(t, "video at subscriber", 10*time.Second, func() bool { return sub.video.len() >= 50 })
	sub.video.mu.Lock()
	for i, l := range sub.video.layers {
		if l != 2 {
			t.Fatalf("packet %d from layer %d before any switch, want only 2 (f, the highest)", i, l)
		}
	}
	sub.video.mu.Unlock()

	res := e.do("POST", "/api/rooms/sc/subscribers/"+resourceID(sub.location)+"/layer", "application/json", `{"rid":"q"}`)
	if res.code != http.StatusOK {
		t.Fatalf("layer select: %d %s", res.code, res.body)
	}
	mark := sub.video.len()
	waitFor(t, "layer q at subscriber", 10*time.Second, func() bool {
		sub.video.mu.Lock()
		defer sub.video.mu.Unlock()
		n := 0
		for _, l := range sub.video.layers[mark:] {
			if l == 0 {
				n++
			}
		}
		return n >= 50
	})
	pub.stopSending()
	sub.video.mu.Lock()
	switched := false
	for i := mark; i < len(sub.video.layers); i++ {
		switch l := sub.video.layers[i]; {
		case l == 0:
			switched = true
		case switched:
			t.Fatalf("packet %d from layer %d after the switch to 0", i, l)
		case l != 2:
			t.Fatalf("packet %d from layer %d before the switch", i, l)
		}
	}
	sub.video.mu.Unlock()
	checkInOrderSeqOnly(t, "video", &sub.video)
	info, err := e.srv.RoomInfo("sc")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range info.Participants {
		if p.Role == "subscriber" && (len(p.Subscriptions) != 1 || p.Subscriptions[0].RID != "q" || p.Subscriptions[0].TargetRID != "q") {
			t.Errorf("subscription after switch: %+v", p.Subscriptions)
		}
	}
}

// checkInOrderSeqOnly asserts consecutive RTP sequence numbers, forward-moving
// timestamps and one SSRC (counters restart per layer, so they are not checked).
func checkInOrderSeqOnly(t *testing.T, name string, r *received) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.ssrcs) != 1 {
		t.Errorf("%s: %d SSRCs, want 1", name, len(r.ssrcs))
	}
	for i := 1; i < len(r.seqs); i++ {
		if r.seqs[i] != r.seqs[i-1]+1 {
			t.Fatalf("%s: packet %d has seq %d after %d", name, i, r.seqs[i], r.seqs[i-1])
		}
		if int32(r.ts[i]-r.ts[i-1]) < 0 {
			t.Fatalf("%s: packet %d timestamp %d went back from %d", name, i, r.ts[i], r.ts[i-1])
		}
	}
}

// DELETE of both resources leaves no participant, track, mux session or
// goroutine behind.
func TestDeleteLeavesNothing(t *testing.T) {
	e := newTestEnv(t, nil)
	ignore := goleak.IgnoreCurrent()
	pub := newPublisher(t, e, "del", nil, true)
	pub.start(5*time.Millisecond, 100000)
	waitFor(t, "tracks published", 5*time.Second, func() bool { return e.srv.Stats().Tracks == 2 })
	sub := newSubscriber(t, e, "/whep/del", true, true)
	waitFor(t, "media at subscriber", 10*time.Second, func() bool { return sub.video.len() >= 10 && sub.audio.len() >= 3 })
	if n := e.mux.Stats().Sessions; n != 2 {
		t.Fatalf("mux sessions %d with two participants, want 2", n)
	}
	for _, loc := range []string{sub.location, pub.location} {
		if res := e.do("DELETE", loc, "", ""); res.code != http.StatusOK {
			t.Fatalf("DELETE %s: %d %s", loc, res.code, res.body)
		}
		if res := e.do("DELETE", loc, "", ""); res.code != http.StatusNotFound {
			t.Fatalf("second DELETE %s: %d, want 404", loc, res.code)
		}
	}
	st := e.srv.Stats()
	if st.Participants != 0 || st.Tracks != 0 || st.Rooms != 1 {
		t.Fatalf("after DELETE: %+v", st)
	}
	info, err := e.srv.RoomInfo("del")
	if err != nil || len(info.Participants) != 0 || len(info.Tracks) != 0 {
		t.Fatalf("room after DELETE: %+v %v", info, err)
	}
	waitFor(t, "mux sessions closed", 5*time.Second, func() bool { return e.mux.Stats().Sessions == 0 })
	pub.close()
	sub.close()
	e.http.CloseClientConnections()
	e.http.Client().CloseIdleConnections()
	goleak.VerifyNone(t, ignore)
}

type sseEvent struct {
	name string
	data map[string]any
}

// openEvents streams a room's events into a channel until the test ends.
func openEvents(t *testing.T, e *testEnv, room string) <-chan sseEvent {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxTimeout(t, 60*time.Second), "GET", e.http.URL+"/rooms/"+room+"/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.http.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events: %d %v", resp.StatusCode, resp.Header)
	}
	ch := make(chan sseEvent, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				ev.name = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				_ = json.Unmarshal([]byte(line[len("data: "):]), &ev.data)
			case line == "" && ev.name != "":
				ch <- ev
				ev = sseEvent{}
			}
		}
	}()
	t.Cleanup(func() {
		resp.Body.Close()
		<-done
	})
	return ch
}

func nextEvent(t *testing.T, ch <-chan sseEvent) sseEvent {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("event stream ended")
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event")
	}
	return sseEvent{}
}

// The events stream announces joins and tracks (with kind and rids), gives a
// late watcher the current state, and announces leaving.
func TestEventsStream(t *testing.T) {
	e := newTestEnv(t, nil)
	early := openEvents(t, e, "ev")
	pub := newPublisher(t, e, "ev", []string{"q", "h", "f"}, true)
	pubID := resourceID(pub.location)
	pub.start(5*time.Millisecond, 100000)
	check := func(ch <-chan sseEvent) {
		t.Helper()
		ev := nextEvent(t, ch)
		if ev.name != "participant-joined" || ev.data["participant"] != pubID || ev.data["role"] != "publisher" {
			t.Fatalf("first event %+v", ev)
		}
		kinds := map[string]bool{}
		for range 2 {
			ev = nextEvent(t, ch)
			if ev.name != "track-published" || ev.data["participant"] != pubID {
				t.Fatalf("event %+v, want track-published", ev)
			}
			kind, _ := ev.data["kind"].(string)
			kinds[kind] = true
			rids, _ := ev.data["rids"].([]any)
			if kind == "video" && len(rids) != 3 {
				t.Fatalf("video track rids %v, want 3", ev.data["rids"])
			}
		}
		if !kinds["video"] || !kinds["audio"] {
			t.Fatalf("track kinds %v", kinds)
		}
	}
	check(early)
	late := openEvents(t, e, "ev")
	check(late)
	if res := e.do("DELETE", pub.location, "", ""); res.code != http.StatusOK {
		t.Fatalf("DELETE: %d", res.code)
	}
	for _, ch := range []<-chan sseEvent{early, late} {
		for range 2 {
			if ev := nextEvent(t, ch); ev.name != "track-unpublished" {
				t.Fatalf("event %+v, want track-unpublished", ev)
			}
		}
		if ev := nextEvent(t, ch); ev.name != "participant-left" || ev.data["participant"] != pubID {
			t.Fatalf("event %+v, want participant-left", ev)
		}
	}
}

// A room live for days still accepts joiners; it ends only after being empty
// for EmptyTimeout.
func TestRoomLivesForDays(t *testing.T) {
	clk := testclock.New(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	e := newTestEnv(t, func(c *Config) { c.Clock = clk; c.SweepInterval = time.Hour })
	pub := newPublisher(t, e, "days", nil, true)
	pub.start(5*time.Millisecond, 100000)
	waitFor(t, "tracks published", 5*time.Second, func() bool { return e.srv.Stats().Tracks == 2 })
	for range 5 * 24 {
		clk.Advance(time.Hour)
		e.srv.sweep(clk.Now())
	}
	sub := newSubscriber(t, e, "/whep/days", true, true)
	waitFor(t, "media after 5 days", 10*time.Second, func() bool { return sub.video.len() >= 10 && sub.audio.len() >= 3 })
	info, err := e.srv.RoomInfo("days")
	if err != nil || !info.Created.Equal(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)) || len(info.Participants) != 2 {
		t.Fatalf("room after 5 days: %+v %v", info, err)
	}
	for _, loc := range []string{sub.location, pub.location} {
		if res := e.do("DELETE", loc, "", ""); res.code != http.StatusOK {
			t.Fatalf("DELETE: %d", res.code)
		}
	}
	clk.Advance(29 * time.Second)
	e.srv.sweep(clk.Now())
	if res := e.do("GET", "/api/rooms/days", "", ""); res.code != http.StatusOK {
		t.Fatalf("room gone 29s after empty: %d", res.code)
	}
	clk.Advance(2 * time.Second)
	e.srv.sweep(clk.Now())
	if res := e.do("GET", "/api/rooms/days", "", ""); res.code != http.StatusNotFound {
		t.Fatalf("room still there 31s after empty: %d %s", res.code, res.body)
	}
}
