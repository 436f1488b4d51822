package cluster

import (
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// The node tries again the members it saw fail, for ReconnectTimeout, and
// the Join addresses no alive member has; never itself, an alive member, or
// a member that failed long ago.
func TestReconnectTargets(t *testing.T) {
	defer verifyNoLeaks(t)
	n, err := startNode(t, "127.0.0.1", NewIdentity(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n.close()
	node := n.node
	node.cfg.Join = []string{"127.0.0.5:7000", "127.0.0.6:7000", n.gossip()}
	now := time.Now()
	add := func(name, addr string, st memberlist.NodeStateType, ago time.Duration) {
		ap := netip.MustParseAddrPort(addr)
		node.members.note(&memberlist.Node{Name: name, Addr: net.IP(ap.Addr().AsSlice()), Port: ap.Port()}, st)
		node.members.mu.Lock()
		e := node.members.m[name]
		e.since = now.Add(-ago)
		node.members.m[name] = e
		node.members.mu.Unlock()
	}
	add("alive", "127.0.0.2:7000", memberlist.StateAlive, time.Minute)
	add("failed", "127.0.0.3:7000", memberlist.StateDead, time.Minute)
	add("failed-long-ago", "127.0.0.4:7000", memberlist.StateDead, 2*time.Hour)
	add("seed-alive", "127.0.0.5:7000", memberlist.StateAlive, time.Minute)
	got := node.reconnectTargets(now)
	want := []string{"127.0.0.3:7000", "127.0.0.6:7000"}
	if !slices.Equal(got, want) {
		t.Fatalf("targets %v, want %v", got, want)
	}
}
