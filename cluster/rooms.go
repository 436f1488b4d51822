package cluster

import (
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
)

// Claim makes this node the owner of room unless a node already owns it, and
// returns the owner's name. It fails with ErrTooManyRooms at MaxRooms.
func (n *Node) Claim(room string) (string, error) {
	owner, err := n.dir.claim(room)
	if err == nil && owner == n.cfg.NodeName {
		n.log.Debug().Str("room", room).Msg("room claimed")
	}
	return owner, err
}

// Release gives up this node's ownership of room (its sfu room ended). It
// does nothing for a room this node does not own.
func (n *Node) Release(room string) {
	if n.dir.release(room) {
		n.log.Debug().Str("room", room).Msg("room released")
	}
}

// Owner returns the name of the node that owns room, if any does.
func (n *Node) Owner(room string) (string, bool) { return n.dir.owner(room) }

// Name is this node's name in the cluster.
func (n *Node) Name() string { return n.cfg.NodeName }

// Tag is this node's owner tag.
func (n *Node) Tag() string { return n.cfg.Identity.Tag }

// DirectoryStats returns the directory's counters.
func (n *Node) DirectoryStats() DirectoryStats { return n.dir.statsSnapshot() }

// runDirectory hands lost rooms to OnRoomLost and reconciles the directory
// with the sfu's rooms.
func (n *Node) runDirectory() {
	defer n.wg.Done()
	t := time.NewTicker(n.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		select {
		case <-n.closing:
			return
		case <-n.dir.lostC:
			n.endLost()
		case <-t.C:
			n.directoryTick()
		}
	}
}

// directoryTick is the directory's periodic work, every ReconcileInterval.
func (n *Node) directoryTick() {
	n.reconcile(n.cfg.Clock.Now())
	n.endLost()
}

func (n *Node) endLost() {
	for room, reason := range n.dir.takeLost() {
		if n.cfg.OnRoomLost != nil {
			n.cfg.OnRoomLost(room, reason)
		}
	}
}

// reconcile makes this node's claims match the sfu's rooms (see
// Config.LocalRooms).
func (n *Node) reconcile(now time.Time) {
	if n.cfg.LocalRooms == nil {
		return
	}
	local := map[string]bool{}
	for _, r := range n.cfg.LocalRooms() {
		local[r] = true
	}
	for room, created := range n.dir.owned() {
		if !local[room] && now.Sub(time.Unix(0, created)) > n.cfg.ClaimGrace {
			n.log.Info().Str("room", room).Msg("releasing a claimed room the sfu does not hold")
			n.Release(room)
		}
	}
	for room := range local {
		if !ValidRoomName(room) {
			continue
		}
		owner, err := n.dir.claim(room)
		switch {
		case err != nil:
			n.log.Warn().Err(err).Str("room", room).Msg("claiming a room the sfu holds")
		case owner != n.cfg.NodeName:
			n.dir.mu.Lock()
			if _, ok := n.dir.lost[room]; !ok && len(n.dir.lost) < n.dir.max {
				n.dir.lost[room] = fmt.Sprintf("room %q is owned by node %s", room, owner)
			}
			n.dir.mu.Unlock()
		}
	}
}

// aliveMember returns the live member with name, or with tag when name is
// empty; this node included.
func (n *Node) aliveMember(name, tag string) (Member, bool) {
	for _, m := range n.members.list() {
		if m.state != memberlist.StateAlive || name != "" && m.name != name {
			continue
		}
		meta, err := decodeMeta(m.meta)
		if err != nil || tag != "" && meta.Tag != tag {
			continue
		}
		return Member{Name: m.name, Addr: m.addr, State: stateName(m.state), Meta: meta, Self: m.name == n.cfg.NodeName}, true
	}
	return Member{}, false
}

// candidates lists the live, non-draining members that announce an HTTP
// address: where new rooms may go.
func (n *Node) candidates() []candidate {
	var out []candidate
	for _, m := range n.members.list() {
		if m.state != memberlist.StateAlive {
			continue
		}
		meta, err := decodeMeta(m.meta)
		if m.name == n.cfg.NodeName {
			n.mu.Lock()
			meta, err = n.meta, nil
			if n.draining {
				err = errDraining
			}
			n.mu.Unlock()
		}
		if err != nil || meta.Draining || meta.HTTP == "" && m.name != n.cfg.NodeName {
			continue
		}
		out = append(out, candidate{name: m.name, load: meta.Load})
	}
	return out
}

var errDraining = fmt.Errorf("cluster: draining")

// GossipAddr is the address other nodes join this one at.
func (n *Node) GossipAddr() string {
	ln := n.ml.LocalNode()
	return net.JoinHostPort(ln.Addr.String(), strconv.Itoa(int(ln.Port)))
}
