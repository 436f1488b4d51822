package cluster

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// memberTable is the Node's own copy of the member list, kept by the
// EventDelegate callbacks (which run under memberlist's node lock): the
// *memberlist.Node values Memberlist.Members returns are updated in place
// by memberlist (Meta, State) without a lock the caller can take, so reading
// them races.
type memberTable struct {
	mu sync.RWMutex
	m  map[string]memberEntry // by name; guarded by mu
}

type memberEntry struct {
	name  string
	addr  netip.Addr
	port  uint16 // gossip
	state memberlist.NodeStateType
	since time.Time // when it entered state
	meta  []byte    // a copy
}

// maxMembers bounds the table; departed members go first.
const maxMembers = 4096

func (t *memberTable) note(n *memberlist.Node, state memberlist.NodeStateType) {
	a, _ := netip.AddrFromSlice(n.Addr)
	e := memberEntry{name: n.Name, addr: a.Unmap(), port: n.Port, state: state, since: time.Now(), meta: slices.Clone(n.Meta)}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string]memberEntry{}
	}
	if old, ok := t.m[n.Name]; ok && old.state == state {
		e.since = old.since
	}
	if _, ok := t.m[n.Name]; !ok && len(t.m) >= maxMembers {
		for k, v := range t.m {
			if v.state != memberlist.StateAlive {
				delete(t.m, k)
			}
		}
	}
	t.m[n.Name] = e
}

func (t *memberTable) list() []memberEntry {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]memberEntry, 0, len(t.m))
	for _, e := range t.m {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b memberEntry) int { return strings.Compare(a.name, b.name) })
	return out
}
