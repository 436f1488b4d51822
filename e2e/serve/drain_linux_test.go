package serve

import (
	"encoding/json"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
)

// mediaAfter is how many packets (at videoEvery) a subscriber must get after
// an event to show that media goes on: one second's worth.
const mediaAfter = uint64(time.Second / videoEvery)

// roomTracks returns the tracks of room on n, 0 while it does not exist.
func (n *node) roomTracks(room string) int {
	n.t.Helper()
	code, _, body := n.do(n.base, http.MethodGet, "/api/rooms/"+room, "")
	if code == http.StatusNotFound {
		return 0
	}
	if code != http.StatusOK {
		n.t.Fatalf("GET /api/rooms/%s: %d %s", room, code, body)
	}
	var info struct {
		Tracks []json.RawMessage `json:"tracks"`
	}
	if err := json.Unmarshal([]byte(body), &info); err != nil {
		n.t.Fatalf("GET /api/rooms/%s: %v", room, err)
	}
	return len(info.Tracks)
}

// joinRoom publishes to room on n, subscribes to it, and waits until media
// flows from one to the other.
func joinRoom(t *testing.T, n *node, room string) (*publisher, *subscriber) {
	t.Helper()
	pub := newPublisher(t, n, room)
	pub.waitConnected()
	// The node publishes a track on its first packet; a subscriber gets the
	// tracks there are when it joins.
	waitFor(t, "track published", mediaBudget, func() bool { return n.roomTracks(room) >= 1 })
	sub := newSubscriber(t, n, room)
	sub.waitConnected()
	waitPackets(t, sub, 50)
	return pub, sub
}

// waitPackets waits until s has received at least k packets.
func waitPackets(t *testing.T, s *subscriber, k int) {
	t.Helper()
	waitFor(t, "media at the subscriber", mediaBudget, func() bool {
		c, _, _, _ := s.received()
		return c >= k
	})
}

// signalDrain sends SIGTERM and waits until the process has started the
// drain (lbhealth logs "draining" after readiness has flipped).
func (n *node) signalDrain() logEntry {
	n.t.Helper()
	n.signal(syscall.SIGTERM)
	return n.waitLog("the drain to start", exitBudget, func(e logEntry) bool {
		return e.str("message") == "draining" && e.str("component") == "lbhealth"
	})
}

// wantReady asserts /readyz on base, and the draining check's state.
func (n *node) wantReady(base string, ready bool) {
	n.t.Helper()
	code, rep := n.health(base, "/readyz")
	want := http.StatusOK
	if !ready {
		want = http.StatusServiceUnavailable
	}
	if code != want {
		n.t.Fatalf("/readyz: %d %+v, want %d", code, rep, want)
	}
	ok, found, reason := rep.check("draining")
	if !found || ok != ready {
		n.t.Errorf("/readyz draining check: ok=%v found=%v reason %q, want ok=%v", ok, found, reason, ready)
	}
}

// participantsLeft returns the node's "participant left" log lines.
func (n *node) participantsLeft() []logEntry {
	return n.log.find(msgIs("participant left"))
}

// drainFinished waits for lbhealth's "drain finished" line.
func (n *node) drainFinished() logEntry {
	n.t.Helper()
	return n.waitLog("drain finished", exitBudget, msgIs("drain finished"))
}

// TestDrainWithLiveSessions is issue 5's drain: on SIGTERM, readiness fails
// at once and the UDP probe goes silent, while the sessions already on the
// node keep their media and the room keeps taking joiners; when the clients
// hang up, the process exits 0 by itself.
func TestDrainWithLiveSessions(t *testing.T) {
	n := startNode(t, "--admin-token", "T", "--drain-timeout", "60s")
	n.wantReady(n.base, true)
	n.wantProbeAnswered()

	pub, sub := joinRoom(t, n, "drain")
	mf := n.scrape()
	if s := mf.value(t, "oneport_sessions"); s != 2 {
		t.Fatalf("oneport_sessions %v before the drain, want 2", s)
	}
	if d := mf.value(t, "oneport_cluster_members_draining"); d != 0 {
		t.Errorf("oneport_cluster_members_draining %v before the drain", d)
	}
	pubStates, subStates := pub.stateCount(), sub.stateCount()

	n.signalDrain()
	// The first /readyz after the signal was handled already fails.
	n.wantReady(n.base, false)
	if code, rep := n.health(n.base, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz while draining: %d %+v (liveness must not depend on draining)", code, rep)
	}
	n.wantProbeSilent()

	// Media keeps flowing to the subscriber.
	_, last, _, _ := sub.received()
	sub.waitCounter(last+mediaAfter, mediaBudget)
	// The room keeps taking joiners.
	sub2 := newSubscriber(t, n, "drain")
	sub2.waitConnected()
	waitPackets(t, sub2, int(mediaAfter))
	_, last, _, _ = sub.received()
	sub.waitCounter(last+mediaAfter, mediaBudget)

	// No session was dropped: no client changed state since the drain began,
	// the node removed nobody, and it still holds all three.
	for _, c := range []struct {
		name string
		p    *peer
		from int
	}{{"publisher", pub.peer, pubStates}, {"subscriber", sub.peer, subStates}} {
		if ch := c.p.statesSince(c.from); len(ch) != 0 || c.p.state() != webrtc.PeerConnectionStateConnected {
			t.Errorf("%s: state changes %v while draining, now %v", c.name, ch, c.p.state())
		}
	}
	if left := n.participantsLeft(); len(left) != 0 {
		t.Errorf("participants removed while draining: %v", left)
	}
	// The node announces the drain in its cluster meta (a cluster of one
	// here), so no new room would be placed on it.
	waitFor(t, "the cluster meta to say draining", exitBudget, func() bool {
		return n.scrape().value(t, "oneport_cluster_members_draining") == 1
	})
	mf = n.scrape()
	for _, m := range []struct {
		name string
		want float64
	}{{"oneport_sessions", 3}, {"oneport_sfu_participants", 3}, {"oneport_draining", 1}, {"oneport_ready", 0}} {
		if v := mf.value(t, m.name); v != m.want {
			t.Errorf("%s = %v while draining, want %v", m.name, v, m.want)
		}
	}
	if !n.running() {
		t.Fatal("the process exited while sessions were live")
	}

	// The clients hang up; the node exits by itself, cleanly.
	pub.stopSending()
	sub2.leave(n)
	sub.leave(n)
	pub.leave(n)
	if code := n.waitExit(exitBudget); code != 0 {
		t.Errorf("exit code %d after a clean drain, want 0", code)
	}
	fin := n.drainFinished()
	if fin.str("outcome") != "clean" || fin.str("error") != "" {
		t.Errorf("drain finished: %v, want outcome clean without error", fin)
	}
	if r, _ := fin.num("remaining"); r != 0 {
		t.Errorf("drain finished with %v sessions remaining", r)
	}
	left := n.participantsLeft()
	if len(left) != 3 {
		t.Errorf("%d participants left, want 3: %v", len(left), left)
	}
	for _, e := range left {
		if e.str("reason") != "deleted" {
			t.Errorf("participant left for %q, want only DELETEs: %v", e.str("reason"), e)
		}
	}
	count, lastC, lost, backwards := sub.received()
	if backwards != 0 {
		t.Errorf("subscriber: %d packets out of order", backwards)
	}
	t.Logf("subscriber: %d packets up to counter %d, %d lost; publisher sent %d, got %d PLIs",
		count, lastC, lost, pub.sent.Load(), pub.plis.Load())
}

// TestDrainTimeout: a session that does not leave keeps its media until
// --drain-timeout; then the node ends it, and exits with the code the CLI
// gives a timed-out drain (lbhealth's DrainResult.ExitCode: 1).
func TestDrainTimeout(t *testing.T) {
	const timeout = 2 * time.Second
	n := startNode(t, "--drain-timeout", timeout.String())
	pub, sub := joinRoom(t, n, "stay")

	_, atSignal, _, _ := sub.received()
	n.signalDrain()
	n.wantReady(n.base, false)

	if code := n.waitExit(exitBudget); code != 1 {
		t.Errorf("exit code %d after a timed-out drain, want 1", code)
	}
	fin := n.drainFinished()
	if fin.str("outcome") != "timed_out" {
		t.Errorf("drain finished: %v, want outcome timed_out", fin)
	}
	if r, _ := fin.num("remaining"); r != 2 {
		t.Errorf("drain finished with %v sessions remaining, want 2", r)
	}
	// zerolog writes durations in milliseconds.
	if w, ok := fin.num("waited"); !ok || w < float64(timeout.Milliseconds()) {
		t.Errorf("drain waited %v ms, want at least the timeout %v", w, timeout)
	}
	if l := n.log.line("oneport: drain timed_out"); l == "" || strings.Contains(l, "<nil>") {
		t.Errorf("stderr: %q, want the timed-out drain named (and no <nil>)", l)
	} else {
		t.Logf("stderr: %s", l)
	}
	// Media flowed while the drain waited.
	if _, last, _, _ := sub.received(); last <= atSignal {
		t.Errorf("no media after the drain began: last counter %d, %d at SIGTERM", last, atSignal)
	}
	// The node ended both sessions itself, and the clients see them end.
	left := map[string]string{}
	for _, e := range n.participantsLeft() {
		left[e.str("participant")] = e.str("reason")
	}
	for _, p := range []*peer{pub.peer, sub.peer} {
		if r, ok := left[p.id()]; !ok || r != "server closed" {
			t.Errorf("participant %s: left %v (%q), want by \"server closed\"", p.id(), ok, r)
		}
	}
	// Closed, not disconnected or failed: the node closed DTLS (close_notify)
	// rather than just going away.
	for _, p := range []*peer{pub.peer, sub.peer} {
		waitFor(t, "the client to see its session closed", connectBudget, func() bool {
			return p.state() == webrtc.PeerConnectionStateClosed
		})
	}
}

// TestSecondSignalExits: a second SIGTERM while the drain waits on a live
// session exits at once, without waiting for --drain-timeout.
func TestSecondSignalExits(t *testing.T) {
	n := startNode(t, "--drain-timeout", "60s")
	pub := newPublisher(t, n, "hold")
	pub.waitConnected()

	n.signalDrain()
	n.wantReady(n.base, false)
	if s := n.scrape().value(t, "oneport_sessions"); s != 1 {
		t.Fatalf("oneport_sessions %v while draining, want 1 (the drain must be waiting on it)", s)
	}
	if !n.running() {
		t.Fatal("the process exited with a live session")
	}

	start := time.Now()
	n.signal(syscall.SIGTERM)
	code := n.waitExit(exitBudget)
	t.Logf("exited %v after the second SIGTERM, code %d", time.Since(start).Round(time.Millisecond), code)
	if code != 1 {
		t.Errorf("exit code %d after a second SIGTERM, want 1 (an aborted drain)", code)
	}
	if fin := n.drainFinished(); fin.str("outcome") != "aborted" {
		t.Errorf("drain finished: %v, want outcome aborted", fin)
	}
	if !n.log.contains("second signal terminated") {
		t.Error("stderr does not name the second signal")
	}
	for _, e := range n.log.find(msgIs("drained, exiting")) {
		t.Errorf("logged a clean exit after an aborted drain: %v", e)
	}
	if strings.Contains(n.log.tail(5), "panic") {
		t.Error("the process panicked on exit")
	}
}
