package cluster

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
)

// Reconnecting. memberlist gossips to a member it declared dead only for
// GossipToTheDeadTime after a broadcast, and never probes or push/pulls with
// it, so after a partition heals each side can go on believing the other
// dead. Like Serf, the node periodically joins again the members it saw
// fail (for ReconnectTimeout) and its Join addresses when they are not
// alive members: one successful push/pull merges the two views, and the
// room directory settles any room both sides created (earliest claim).

func (n *Node) reconnectLoop() {
	defer n.wg.Done()
	t := time.NewTicker(n.cfg.ReconnectInterval)
	defer t.Stop()
	for {
		select {
		case <-n.closing:
			return
		case <-t.C:
			if targets := n.reconnectTargets(time.Now()); len(targets) > 0 && !n.left.Load() {
				// Join blocks for at most memberlist's TCPTimeout per
				// address; this goroutine has nothing else to do.
				joined, err := n.ml.Join(targets)
				if joined > 0 {
					n.log.Info().Int("contacted", joined).Strs("addresses", targets).Msg("reconnected")
				} else {
					n.log.Debug().Err(err).Strs("addresses", targets).Msg("reconnect")
				}
			}
		}
	}
}

// reconnectTargets are the gossip addresses of members that failed less
// than ReconnectTimeout ago, and the Join addresses no alive member has.
func (n *Node) reconnectTargets(now time.Time) []string {
	self := n.ml.LocalNode()
	selfAddr, _ := netip.AddrFromSlice(self.Addr)
	selfAP := netip.AddrPortFrom(selfAddr.Unmap(), self.Port)
	alive := map[netip.AddrPort]bool{selfAP: true}
	var targets []string
	members := n.members.list()
	for _, m := range members {
		if m.state == memberlist.StateAlive {
			alive[netip.AddrPortFrom(m.addr, m.port)] = true
		}
	}
	for _, m := range members {
		ap := netip.AddrPortFrom(m.addr, m.port)
		if m.state == memberlist.StateDead && m.name != n.cfg.NodeName && !alive[ap] && now.Sub(m.since) < n.cfg.ReconnectTimeout {
			targets = append(targets, ap.String())
		}
	}
	for _, j := range resolveJoin(n.cfg.Join, n.log) {
		h, p, err := net.SplitHostPort(j)
		if err != nil {
			continue
		}
		a, err1 := netip.ParseAddr(h)
		port, err2 := strconv.Atoi(p)
		if err1 != nil || err2 != nil || alive[netip.AddrPortFrom(a.Unmap(), uint16(port))] {
			continue
		}
		targets = append(targets, j)
	}
	slices.Sort(targets)
	return slices.Compact(targets)
}
