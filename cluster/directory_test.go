package cluster

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oneport/oneport/mux"
)

// lostRooms records OnRoomLost calls.
type lostRooms struct {
	mu    sync.Mutex
	calls map[string]string
}

func (l *lostRooms) record(room, reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.calls == nil {
		l.calls = map[string]string{}
	}
	l.calls[room] = reason
}

func (l *lostRooms) get(room string) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.calls[room]
	return r, ok
}

// startDirNode starts a node on ip (ephemeral ports) whose lost rooms are
// recorded.
func startDirNode(t *testing.T, ip string, join ...string) (*testNode, *lostRooms) {
	t.Helper()
	id := NewIdentity()
	m, err := mux.Listen(ip+":0", mux.Config{Sockets: 1, Tag: id.Tag, Relay: ip + ":0"})
	if err != nil {
		t.Fatal(err)
	}
	lost := &lostRooms{}
	node, err := New(Config{
		Identity: id, NodeName: "node-" + ip, Gossip: ip + ":0", Join: join,
		Relay: m, RelayPort: m.RelayAddr().(*net.UDPAddr).Port, HTTP: ip + ":1",
		Profile: "local", OnRoomLost: lost.record,
	})
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	return &testNode{id: id, m: m, node: node, ip: ip}, lost
}

func ownerIs(n *testNode, room, want string) bool {
	o, ok := n.node.Owner(room)
	return ok && o == want
}

// convergeBudget bounds the waits of the convergence test: broadcasts
// usually settle it in milliseconds, but a dropped one waits for the next
// push/pull (15 s in the local profile), longer on a loaded machine.
const convergeBudget = 40 * time.Second

// Two nodes that create the same room at the same moment (each before
// hearing of the other) end with one owner on every node; the later claim's
// node gives the room up and its OnRoomLost says why; the winner's is not
// called.
func TestDirectoryConcurrentCreationConverges(t *testing.T) {
	defer verifyNoLeaks(t)
	a, lostA := startDirNode(t, "127.0.0.1")
	defer a.close()
	b, lostB := startDirNode(t, "127.0.0.2", a.gossip())
	defer b.close()
	c, _ := startDirNode(t, "127.0.0.3", a.gossip())
	defer c.close()
	for _, n := range []*testNode{a, b, c} {
		eventually(t, convergeBudget, "three members", func() bool { return n.node.ml.NumMembers() == 3 })
	}

	const room = "same-room"
	var wg sync.WaitGroup
	owners := make([]string, 2)
	start := make(chan struct{})
	for i, n := range []*testNode{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			o, err := n.node.Claim(room)
			if err != nil {
				t.Error(err)
			}
			owners[i] = o
		}()
	}
	began := time.Now()
	close(start)
	wg.Wait()
	if owners[0] != a.node.Name() || owners[1] != b.node.Name() {
		t.Fatalf("claims returned %v: a node heard of the other claim first; nothing to settle", owners)
	}
	createdA := a.node.dir.owned()[room]
	createdB := b.node.dir.owned()[room]
	winner, loser, lostOf := a, b, lostB
	if (claim{b.node.Name(), createdB}).beats(claim{a.node.Name(), createdA}) {
		winner, loser, lostOf = b, a, lostA
	}
	for _, n := range []*testNode{a, b, c} {
		eventually(t, convergeBudget, n.node.Name()+" agrees on the owner", func() bool { return ownerIs(n, room, winner.node.Name()) })
	}
	eventually(t, convergeBudget, "the loser's OnRoomLost", func() bool { _, ok := lostOf.get(room); return ok })
	t.Logf("converged on %s in %v", winner.node.Name(), time.Since(began))
	reason, _ := lostOf.get(room)
	if !strings.Contains(reason, winner.node.Name()) || !strings.Contains(reason, room) {
		t.Errorf("lost reason %q does not name the room and the winner", reason)
	}
	if _, ok := loser.node.dir.owned()[room]; ok {
		t.Error("the loser still claims the room")
	}
	winnerLost := lostA
	if winner == b {
		winnerLost = lostB
	}
	if _, ok := winnerLost.get(room); ok {
		t.Error("the winner's OnRoomLost was called")
	}
	// The loser's release reached everyone: only the winner's claim is left.
	for _, n := range []*testNode{a, b, c} {
		eventually(t, convergeBudget, "the losing claim gone", func() bool {
			n.node.dir.mu.RLock()
			defer n.node.dir.mu.RUnlock()
			_, has := n.node.dir.sets[loser.node.Name()].rooms[room]
			return !has
		})
	}
	if st := loser.node.DirectoryStats(); st.Lost != 1 {
		t.Errorf("loser stats %+v", st)
	}
}

// An owner that dies (no leave: found by failure detection) takes its rooms
// out of the directory; the next claim re-creates the room on a live node,
// and every live node agrees.
func TestDirectoryOwnerDeath(t *testing.T) {
	defer verifyNoLeaks(t)
	a, _ := startDirNode(t, "127.0.0.1")
	defer a.close()
	b, _ := startDirNode(t, "127.0.0.2", a.gossip())
	defer b.close()
	c, _ := startDirNode(t, "127.0.0.3", a.gossip())
	defer c.close()
	for _, n := range []*testNode{a, b, c} {
		eventually(t, 5*time.Second, "three members", func() bool { return n.node.ml.NumMembers() == 3 })
	}
	for i := range 5 {
		if o, err := c.node.Claim(fmt.Sprint("room-", i)); err != nil || o != c.node.Name() {
			t.Fatalf("claim: %s %v", o, err)
		}
	}
	for _, n := range []*testNode{a, b} {
		eventually(t, 5*time.Second, "claims spread", func() bool { return ownerIs(n, "room-4", c.node.Name()) })
	}
	died := time.Now()
	c.node.shutdown()
	c.m.Close()
	for _, n := range []*testNode{a, b} {
		eventually(t, 15*time.Second, "the dead owner's rooms gone", func() bool {
			_, ok := n.node.Owner("room-0")
			return !ok && len(n.node.dir.roomsByOwner()[c.node.Name()]) == 0
		})
	}
	t.Logf("rooms of the dead owner left the directory after %v", time.Since(died))
	if o, err := b.node.Claim("room-0"); err != nil || o != b.node.Name() {
		t.Fatalf("re-creating the room: %s %v", o, err)
	}
	eventually(t, 5*time.Second, "a agrees on the new owner", func() bool { return ownerIs(a, "room-0", b.node.Name()) })
}

// A node that joins while rooms are live learns their owners from the node
// it joins through (even one that owns none of them), so it never creates a
// second copy of a live room.
func TestDirectoryJoinDuringLiveRoom(t *testing.T) {
	defer verifyNoLeaks(t)
	a, _ := startDirNode(t, "127.0.0.1")
	defer a.close()
	b, _ := startDirNode(t, "127.0.0.2", a.gossip())
	defer b.close()
	for i := range 50 {
		if _, err := b.node.Claim(fmt.Sprint("live-", i)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 5*time.Second, "a learns b's rooms", func() bool { return len(a.node.dir.roomsByOwner()[b.node.Name()]) == 50 })
	// Through a, which owns none of the rooms; b's broadcasts are over.
	c, _ := startDirNode(t, "127.0.0.3", a.gossip())
	defer c.close()
	for i := range 50 {
		if !ownerIs(c, fmt.Sprint("live-", i), b.node.Name()) {
			t.Fatalf("the newcomer does not know live-%d's owner right after joining", i)
		}
	}
	if o, err := c.node.Claim("live-7"); err != nil || o != b.node.Name() {
		t.Fatalf("the newcomer's claim of a live room: %s %v, want owner %s", o, err, b.node.Name())
	}
	if _, ok := c.node.dir.owned()["live-7"]; ok {
		t.Fatal("the newcomer claimed a live room")
	}
}

// Room and message limits hold.
func TestDirectoryLimits(t *testing.T) {
	d := newDirectory("self", "id1", 2, 4, testLogger())
	for _, r := range []string{"a", "b"} {
		if o, err := d.claim(r); err != nil || o != "self" {
			t.Fatal(o, err)
		}
	}
	if _, err := d.claim("c"); err == nil {
		t.Fatal("claim beyond MaxRooms accepted")
	}
	if _, err := d.claim("bad/name"); err == nil {
		t.Fatal("invalid room name claimed")
	}
	// Another owner's claims beyond the limit are dropped and counted.
	for i, r := range []string{"x", "y", "z"} {
		d.applyMsg(encodeMsg(dirMsg{kind: kindClaim, owner: "other", id: "id2", version: uint64(i + 1), room: r, created: 10}))
	}
	if _, ok := d.owner("z"); ok || d.statsSnapshot().OverLimit != 1 {
		t.Fatalf("over-limit claim: %+v", d.statsSnapshot())
	}
	// A departed owner's re-gossiped claims are ignored.
	d.memberDown("other", "id2")
	d.applyMsg(encodeMsg(dirMsg{kind: kindClaim, owner: "other", id: "id2", version: 9, room: "x", created: 10}))
	if _, ok := d.owner("x"); ok {
		t.Fatal("a departed owner's claim came back")
	}
	// An earlier claim from another node takes "a" from this one.
	d.applyMsg(encodeMsg(dirMsg{kind: kindClaim, owner: "third", id: "id3", version: 1, room: "a", created: 1}))
	if o, _ := d.owner("a"); o != "third" {
		t.Fatalf("owner of a: %s", o)
	}
	if l := d.takeLost(); !strings.Contains(l["a"], "third") {
		t.Fatalf("lost: %v", l)
	}
	d.applyMsg([]byte("garbage"))
	d.mergeState([]byte{wireVersion, kindState, 0xff, 0xff})
	if d.statsSnapshot().BadMessages != 2 {
		t.Fatalf("bad messages: %+v", d.statsSnapshot())
	}
}

// Placement is the same on every node, follows load, and removing a node
// moves only the rooms it would have had.
func TestPlacement(t *testing.T) {
	cands := []candidate{{name: "n1"}, {name: "n2"}, {name: "n3"}}
	count := map[string]int{}
	before := map[string]string{}
	for i := range 3000 {
		room := fmt.Sprint("room-", i)
		p, ok := place(room, cands)
		if !ok {
			t.Fatal("no placement")
		}
		count[p]++
		before[room] = p
	}
	for _, c := range cands {
		if count[c.name] < 800 || count[c.name] > 1200 {
			t.Errorf("equal weights, uneven placement: %v", count)
		}
	}
	for room, p := range before {
		after, _ := place(room, cands[:2])
		if p != "n3" && after != p {
			t.Fatalf("room %s moved from %s to %s when n3 left", room, p, after)
		}
	}
	loaded := []candidate{{name: "n1", load: Load{Sessions: 9}}, {name: "n2"}, {name: "n3"}}
	count = map[string]int{}
	for i := range 3000 {
		p, _ := place(fmt.Sprint("room-", i), loaded)
		count[p]++
	}
	// Weights 1/10, 1, 1: n1 should get about 1/21 of the rooms.
	if count["n1"] > 300 || count["n2"] < 1100 {
		t.Errorf("placement ignores load: %v", count)
	}
	t.Logf("placement with n1 loaded: %v", count)
}

func TestResourceIDs(t *testing.T) {
	for _, tag := range []string{"AbC+", "//++", "zz09"} {
		id := NewResourceID(tag)
		if got, ok := ResourceTag(id); !ok || got != tag {
			t.Fatalf("ResourceTag(%q) = %q %v, want %q", id, got, ok, tag)
		}
		if strings.ContainsAny(id, "+/") {
			t.Fatalf("id %q is not URL-path safe", id)
		}
	}
	for _, bad := range []string{"", "rAAAA", "xAAAAaaaaaaaaaaaaaaaaaaaaaa", "rAA!Aaaaaaaaaaaaaaaaaaaaaaa"} {
		if _, ok := ResourceTag(bad); ok {
			t.Errorf("ResourceTag(%q) accepted", bad)
		}
	}
}

func TestParseRoute(t *testing.T) {
	for _, tc := range []struct {
		method, path string
		want         route
		ok           bool
	}{
		{"POST", "/whip/r1", route{room: "r1", creates: true}, true},
		{"POST", "/whep/r1", route{room: "r1", creates: true}, true},
		{"PATCH", "/whep/r1/id1", route{room: "r1", id: "id1"}, true},
		{"DELETE", "/whip/r1/id1", route{room: "r1", id: "id1"}, true},
		{"GET", "/rooms/r1/events", route{room: "r1", creates: true}, true},
		{"GET", "/api/rooms/r1", route{room: "r1"}, true},
		{"POST", "/api/rooms/r1/subscribers/id1/layer", route{room: "r1", id: "id1"}, true},
		{"OPTIONS", "/whip/r1", route{}, false},
		{"GET", "/api/rooms", route{}, false},
		{"GET", "/", route{}, false},
		{"POST", "/whip/bad%20name", route{}, false},
		{"GET", "/whip/r1", route{}, false},
	} {
		got, ok := parseRoute(tc.method, tc.path)
		if ok != tc.ok || ok && got != tc.want {
			t.Errorf("%s %s: %+v %v, want %+v %v", tc.method, tc.path, got, ok, tc.want, tc.ok)
		}
	}
}
