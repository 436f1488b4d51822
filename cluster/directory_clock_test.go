package cluster

import (
	"github.com/oneport/oneport/internal/testclock"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oneport/oneport/mux"
)

// stubSFU stands in for the sfu behind Node.Signaling: it serves every
// request with a Served-By header naming its node, records what it served
// and the client IP it would charge, and holds the rooms a POST to
// /whip/{room} or /whep/{room} created (its LocalRooms).
type stubSFU struct {
	name string
	node *Node // set once the node exists

	mu     sync.Mutex
	rooms  map[string]bool
	served []servedReq
}

type servedReq struct {
	method, path string
	client       netip.Addr
}

func (s *stubSFU) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	seg := strings.Split(strings.TrimPrefix(r.URL.Path, "/"), "/")
	s.mu.Lock()
	s.served = append(s.served, servedReq{r.Method, r.URL.Path, s.node.ClientIP(r)})
	if r.Method == http.MethodPost && len(seg) == 2 && (seg[0] == "whip" || seg[0] == "whep") {
		s.rooms[seg[1]] = true
	}
	s.mu.Unlock()
	w.Header().Set("Served-By", s.name)
	w.WriteHeader(http.StatusCreated)
}

func (s *stubSFU) roomNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for r := range s.rooms {
		out = append(out, r)
	}
	return out
}

// servedPath returns what this node served locally for path.
func (s *stubSFU) servedPath(method, path string) []servedReq {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []servedReq
	for _, r := range s.served {
		if r.method == method && r.path == path {
			out = append(out, r)
		}
	}
	return out
}

// httpNode is a node with its signaling served over HTTP in front of a stub
// sfu, wired as cmd/oneport serve wires the real one.
type httpNode struct {
	*testNode
	stub *stubSFU
	lost *lostRooms
	hs   *http.Server
	url  string
	done chan struct{}
}

type httpNodeOpts struct {
	key   []byte
	clock Clock
	join  []string
}

func startHTTPNode(t *testing.T, ip string, o httpNodeOpts) *httpNode {
	t.Helper()
	id := NewIdentity()
	m, err := mux.Listen(ip+":0", mux.Config{Sockets: 1, Tag: id.Tag, Relay: ip + ":0", RelayKey: RelayKey(o.key)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	stub := &stubSFU{name: "node-" + ip, rooms: map[string]bool{}}
	lost := &lostRooms{}
	node, err := New(Config{
		Identity: id, NodeName: stub.name, Gossip: ip + ":0", Join: o.join, Key: o.key,
		Relay: m, RelayPort: m.RelayAddr().(*net.UDPAddr).Port, HTTP: ln.Addr().String(),
		Profile: "local", OnRoomLost: lost.record, LocalRooms: stub.roomNames, Clock: o.clock,
		// The tests drive the directory's periodic work themselves.
		ReconcileInterval: time.Hour,
	})
	if err != nil {
		ln.Close()
		m.Close()
		t.Fatal(err)
	}
	stub.node = node
	n := &httpNode{
		testNode: &testNode{id: id, m: m, node: node, ip: ip},
		stub:     stub, lost: lost, url: "http://" + ln.Addr().String(), done: make(chan struct{}),
		hs: &http.Server{Handler: node.Signaling(stub), ReadHeaderTimeout: 5 * time.Second},
	}
	go func() {
		defer close(n.done)
		_ = n.hs.Serve(ln)
	}()
	return n
}

func (n *httpNode) close() {
	n.hs.Close()
	<-n.done
	n.testNode.close()
}

// waitMembers waits until every node sees count live members, each with its
// HTTP address.
func waitMembers(t *testing.T, nodes []*httpNode, count int) {
	t.Helper()
	for _, n := range nodes {
		eventually(t, 10*time.Second, n.node.Name()+" sees every member", func() bool {
			ms := n.node.Members()
			alive := 0
			for _, m := range ms {
				if m.State == "alive" && m.Meta.HTTP != "" {
					alive++
				}
			}
			return alive == count
		})
	}
}

// httpClient makes requests from a chosen loopback IP.
type httpClient struct {
	tr *http.Transport
}

func newHTTPClient(ip string) *httpClient {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &httpClient{tr: &http.Transport{DialContext: d.DialContext}}
}

func (c *httpClient) close() { c.tr.CloseIdleConnections() }

// do sends a request with headers (name, value pairs) and returns the status
// and the node that served it.
func (c *httpClient) do(t *testing.T, method, url string, hdr ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader("v=0\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := (&http.Client{Transport: c.tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Served-By")
}

// A room stays with its owner for 48 hours of the cluster's clock while it
// is occupied: the directory's periodic work (reconciliation every 2 s, a
// full push/pull between every pair of nodes every 30 s), client requests
// through every node every hour, and a node joining and leaving on the way
// never drop it, re-place it (its claim time stays the first one) or split
// it (no other node serves it or claims it).
//
// The directory keeps no timer of its own beyond the reconciliation tick;
// its time source (Config.Clock) is read for claim times, the ClaimGrace
// check and how long departed owners are remembered, and the signaling
// proxy signs with it. The test moves that clock and drives the periodic
// work itself; memberlist runs in real time alongside.
func TestDirectoryRoomKeptFor48Hours(t *testing.T) {
	defer verifyNoLeaks(t)
	clk := testclock.New(time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC))
	key := []byte("48 hours")
	a := startHTTPNode(t, "127.0.0.1", httpNodeOpts{key: key, clock: clk})
	defer a.close()
	b := startHTTPNode(t, "127.0.0.2", httpNodeOpts{key: key, clock: clk, join: []string{a.gossip()}})
	defer b.close()
	c := startHTTPNode(t, "127.0.0.3", httpNodeOpts{key: key, clock: clk, join: []string{a.gossip()}})
	defer c.close()
	nodes := []*httpNode{a, b, c}
	waitMembers(t, nodes, 3)
	cl := newHTTPClient("127.0.0.9")
	defer cl.close()

	const room = "all-weekend"
	const path = "/whip/" + room
	code, ownerName := cl.do(t, "POST", a.url+path)
	if code != http.StatusCreated || ownerName == "" {
		t.Fatalf("creating the room: %d, served by %q", code, ownerName)
	}
	var owner *httpNode
	for _, n := range nodes {
		if n.node.Name() == ownerName {
			owner = n
		}
	}
	for _, n := range nodes {
		eventually(t, 5*time.Second, n.node.Name()+" knows the owner", func() bool { return ownerIs(n.testNode, room, ownerName) })
	}
	created := owner.node.dir.owned()[room]
	served := 1 // creates the owner served

	// check asserts the room is where it was, as every node sees it.
	check := func(at time.Duration) {
		t.Helper()
		if c, ok := owner.node.dir.owned()[room]; !ok || c != created {
			t.Fatalf("at %v: the owner's claim is %v (held %v), want the first one, %v", at, c, ok, created)
		}
		for _, n := range nodes {
			if !ownerIs(n.testNode, room, ownerName) {
				o, ok := n.node.Owner(room)
				t.Fatalf("at %v: %s says the owner is %q (%v), want %s", at, n.node.Name(), o, ok, ownerName)
			}
		}
	}
	// through sends a client request for the room to every node but the
	// owner and asserts the owner served it.
	through := func(at time.Duration) {
		t.Helper()
		for _, n := range nodes {
			if n == owner {
				continue
			}
			if code, by := cl.do(t, "POST", n.url+path); code != http.StatusCreated || by != ownerName {
				t.Fatalf("at %v: POST through %s: %d, served by %q, want %s", at, n.node.Name(), code, by, ownerName)
			}
			served++
		}
	}

	const (
		tick     = 2 * time.Second  // Config.ReconcileInterval's default
		pushPull = 30 * time.Second // memberlist's LAN push/pull interval
		total    = 48 * time.Hour
	)
	var joiner *httpNode
	defer func() {
		if joiner != nil {
			joiner.close()
		}
	}()
	for at := tick; at <= total; at += tick {
		clk.Advance(tick)
		for _, n := range nodes {
			n.node.directoryTick()
		}
		if at%pushPull == 0 {
			for _, from := range nodes {
				st := from.node.dir.localState()
				for _, to := range nodes {
					if to != from {
						to.node.dir.mergeState(st)
					}
				}
			}
		}
		check(at)
		switch {
		case at == 24*time.Hour:
			// A node joins halfway: it learns the owner and sends its
			// clients there.
			joiner = startHTTPNode(t, "127.0.0.4", httpNodeOpts{key: key, clock: clk, join: []string{b.gossip()}})
			nodes = append(nodes, joiner)
			eventually(t, 10*time.Second, "the joiner knows the owner's HTTP address", func() bool {
				m, ok := joiner.node.aliveMember(ownerName, "")
				return ok && m.Meta.HTTP != ""
			})
			check(at)
		case at == 36*time.Hour:
			// And leaves: the others remember it is gone by the clock.
			name := joiner.node.Name()
			joiner.close()
			nodes = slices.DeleteFunc(nodes, func(n *httpNode) bool { return n == joiner })
			joiner = nil
			for _, n := range nodes {
				// The leave broadcast, or failure detection when it is lost
				// (slow under -race on a loaded machine).
				eventually(t, 30*time.Second, n.node.Name()+" sees the joiner gone", func() bool {
					m, ok := n.node.aliveMember(name, "")
					return !ok || m.State != "alive"
				})
			}
		}
		if at%time.Hour == 0 {
			through(at)
		}
	}

	if got := len(owner.stub.servedPath("POST", path)); got != served {
		t.Errorf("the owner served %d requests for the room, want %d", got, served)
	}
	for _, n := range nodes {
		st := n.node.DirectoryStats()
		if st.Lost != 0 || st.Releases != 0 {
			t.Errorf("%s: directory stats %+v: a room was lost or released", n.node.Name(), st)
		}
		if _, ok := n.lost.get(room); ok {
			t.Errorf("%s: OnRoomLost called for the room", n.node.Name())
		}
		if n == owner {
			if st.Claims != 1 {
				t.Errorf("the owner claimed %d times, want once", st.Claims)
			}
			continue
		}
		if got := n.stub.servedPath("POST", path); len(got) != 0 {
			t.Errorf("%s served the room itself %d times: the room split", n.node.Name(), len(got))
		}
		if _, ok := n.node.dir.owned()[room]; ok {
			t.Errorf("%s claims the room", n.node.Name())
		}
	}
	t.Logf("room %q kept on %s for %v of cluster time; %d requests through other nodes", room, ownerName, total, served-1)
}

// Without any traffic or membership change, the reconciliation alone keeps
// an occupied room for 48 hours, and releases a claim the sfu does not hold
// once ClaimGrace has passed on the injected clock, not on the wall clock.
func TestReconcileUsesTheClock(t *testing.T) {
	defer verifyNoLeaks(t)
	clk := testclock.New(time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC))
	n := startHTTPNode(t, "127.0.0.1", httpNodeOpts{clock: clk})
	defer n.close()
	n.stub.mu.Lock()
	n.stub.rooms["held"] = true
	n.stub.mu.Unlock()
	for _, r := range []string{"held", "claimed-only"} {
		if o, err := n.node.Claim(r); err != nil || o != n.node.Name() {
			t.Fatalf("claim %s: %s %v", r, o, err)
		}
	}
	if got := time.Unix(0, n.node.dir.owned()["held"]); !got.Equal(clk.Now()) {
		t.Fatalf("claim time %v, want the injected clock's %v", got, clk.Now())
	}
	n.node.directoryTick()
	if _, ok := n.node.dir.owned()["claimed-only"]; !ok {
		t.Fatal("a fresh claim was released before ClaimGrace")
	}
	clk.Advance(31 * time.Second)
	n.node.directoryTick()
	if _, ok := n.node.dir.owned()["claimed-only"]; ok {
		t.Fatal("a claim the sfu does not hold survived ClaimGrace on the injected clock")
	}
	for range 48 * 60 * 30 { // 48 h of 2 s ticks
		clk.Advance(2 * time.Second)
		n.node.directoryTick()
	}
	if c, ok := n.node.dir.owned()["held"]; !ok || !time.Unix(0, c).Equal(clk.Now().Add(-48*time.Hour-31*time.Second)) {
		t.Fatalf("the held room after 48 h: claimed %v (%v)", time.Unix(0, c), ok)
	}
	if st := n.node.DirectoryStats(); st.Claims != 2 || st.Releases != 1 {
		t.Fatalf("stats %+v, want 2 claims and the one release", st)
	}
}
