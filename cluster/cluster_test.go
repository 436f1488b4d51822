package cluster

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"go.uber.org/goleak"

	"github.com/oneport/oneport/mux"
)

type testNode struct {
	id   Identity
	m    *mux.Mux
	node *Node
	ip   string
}

// verifyNoLeaks checks for leaked goroutines, polling for a few seconds:
// memberlist's Shutdown does not wait for a probe in flight, which ends
// within its probe timeout.
func verifyNoLeaks(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := goleak.Find()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Error(err)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startNode opens a mux with a relay on ip and joins it to the cluster
// through join (empty: the first node).
func startNode(t *testing.T, ip string, id Identity, key []byte, join ...string) (*testNode, error) {
	t.Helper()
	m, err := mux.Listen(ip+":0", mux.Config{Sockets: 1, Tag: id.Tag, Relay: ip + ":0", RelayKey: RelayKey(key)})
	if err != nil {
		return nil, err
	}
	node, err := New(Config{
		Identity:  id,
		NodeName:  "node-" + ip,
		Gossip:    ip + ":0",
		Join:      join,
		Key:       key,
		Relay:     m,
		RelayPort: m.RelayAddr().(*net.UDPAddr).Port,
		Profile:   "local",
	})
	if err != nil {
		m.Close()
		return nil, err
	}
	return &testNode{id: id, m: m, node: node, ip: ip}, nil
}

func (n *testNode) gossip() string {
	ln := n.node.ml.LocalNode()
	return net.JoinHostPort(ln.Addr.String(), fmt.Sprint(ln.Port))
}

func (n *testNode) close() {
	n.node.Close()
	n.m.Close()
}

// TestClusterRelaysThroughAnyNode: three nodes find each other by gossip,
// hand the relay each other's tags and addresses, and a client whose
// packets land on a node that does not own its session is served by the
// owner through it. A node that dies leaves the others' peer sets; a
// newcomer with a taken tag is refused.
func TestClusterRelaysThroughAnyNode(t *testing.T) {
	defer verifyNoLeaks(t)
	key := []byte("test cluster key")
	var nodes []*testNode
	for i := 1; i <= 3; i++ {
		var join []string
		if i > 1 {
			join = []string{nodes[0].gossip()}
		}
		n, err := startNode(t, fmt.Sprintf("127.0.0.%d", i), NewIdentity(), key, join...)
		if err != nil {
			t.Fatal(err)
		}
		defer n.close()
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		eventually(t, 5*time.Second, "every node sees two peers", func() bool { return n.m.Stats().Peers == 2 })
	}

	// A client of node 1's session, sent by the load balancer to node 2.
	owner, ingress := nodes[0], nodes[1]
	ufrag, _ := mux.NewUfrag(mux.UfragPrefix(owner.id.Tag))
	sc, err := owner.m.GetConn(ufrag, owner.m.LocalAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	cl, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 9)})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	msg, _ := stun.Build(stun.TransactionID, stun.BindingRequest, stun.NewUsername(ufrag+":cli"))
	cl.WriteTo(msg.Raw, ingress.m.LocalAddr())
	buf := make([]byte, 1500)
	sc.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, from, err := sc.ReadFrom(buf)
	if err != nil || n != len(msg.Raw) || from.String() != cl.LocalAddr().String() {
		t.Fatalf("owner read %d bytes from %v: %v", n, from, err)
	}
	sc.WriteTo([]byte("answer"), from)
	cl.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, src, err := cl.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "answer" || src != ingress.m.LocalAddr().(*net.UDPAddr).AddrPort() {
		t.Fatalf("client got %q from %v (%v)", buf[:n], src, err)
	}

	// Node 3 dies without leaving: the others drop it after failure
	// detection.
	start := time.Now()
	nodes[2].node.shutdown()
	nodes[2].m.Close()
	for _, n := range nodes[:2] {
		eventually(t, 15*time.Second, "the dead node dropped", func() bool { return n.m.Stats().Peers == 1 })
	}
	t.Logf("dead node dropped from the relay after %v", time.Since(start))

	// A newcomer with node 1's tag is refused.
	if _, err := startNode(t, "127.0.0.4", owner.id, key, owner.gossip()); !errors.Is(err, ErrDuplicateTag) {
		t.Fatalf("duplicate tag: %v", err)
	}
}

func TestIdentity(t *testing.T) {
	a, b := NewIdentity(), IdentityFromID("fixed")
	if len(a.Tag) != mux.TagLen || !mux.IsIceChars(a.Tag) || a.ID == "" {
		t.Fatalf("identity %+v", a)
	}
	if IdentityFromID("fixed") != b {
		t.Fatal("tag not derived deterministically from the id")
	}
	if RelayKey(nil) != nil || len(RelayKey([]byte("k"))) != 32 {
		t.Fatal("relay key derivation")
	}
	m := Meta{Version: metaVersion, ID: a.ID, Tag: a.Tag, Relay: netip.MustParseAddrPort("10.0.0.1:7947"), HTTP: "10.0.0.1:8080"}
	raw, err := m.encode(512)
	if err != nil {
		t.Fatal(err)
	}
	back, err := decodeMeta(raw)
	if err != nil || back != m {
		t.Fatalf("meta round trip: %+v %v", back, err)
	}
	if _, err := decodeMeta([]byte(`{"v":1,"t":"a:b"}`)); err == nil {
		t.Fatal("bad meta accepted")
	}
}
