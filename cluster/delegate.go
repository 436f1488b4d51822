package cluster

import (
	"encoding/json"
	"net/netip"

	"github.com/hashicorp/memberlist"
)

// delegate is the Node as memberlist's Delegate: it supplies the meta and
// carries the room directory's broadcasts and push/pull state.
type delegate Node

func (d *delegate) NodeMeta(limit int) []byte {
	n := (*Node)(d)
	n.mu.Lock()
	m := n.meta
	n.mu.Unlock()
	if n.ml != nil {
		// The advertise address is known once memberlist runs.
		m.Relay = netip.AddrPortFrom(n.advertiseAddr(), uint16(n.cfg.RelayPort))
		if m.HTTP == "" {
			m.HTTP = n.cfg.HTTP
		}
	}
	b, err := m.encode(limit)
	if err != nil {
		n.log.Error().Err(err).Msg("node meta")
		return nil
	}
	return b
}

func (d *delegate) NotifyMsg(b []byte) { (*Node)(d).dir.applyMsg(b) }
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return (*Node)(d).dir.queue.GetBroadcasts(overhead, limit)
}
func (d *delegate) LocalState(join bool) []byte            { return (*Node)(d).dir.localState() }
func (d *delegate) MergeRemoteState(buf []byte, join bool) { (*Node)(d).dir.mergeState(buf) }

// events is the Node as memberlist's EventDelegate. Its callbacks run on
// memberlist's goroutines, under its node lock, and must not block: they
// update the directory's member view (a short lock of its own) and signal.
type events Node

func (e *events) NotifyJoin(m *memberlist.Node) {
	(*Node)(e).members.note(m, memberlist.StateAlive)
	(*Node)(e).dir.memberUp(m.Name, metaID(m.Meta))
	(*Node)(e).signal()
}

func (e *events) NotifyLeave(m *memberlist.Node) {
	st := m.State
	if st != memberlist.StateLeft {
		st = memberlist.StateDead
	}
	(*Node)(e).members.note(m, st)
	(*Node)(e).dir.memberDown(m.Name, metaID(m.Meta))
	(*Node)(e).signal()
}

func (e *events) NotifyUpdate(m *memberlist.Node) {
	(*Node)(e).members.note(m, memberlist.StateAlive)
	(*Node)(e).dir.memberUp(m.Name, metaID(m.Meta))
	(*Node)(e).signal()
}

// metaID reads a member's id from its meta, which may still lack the relay
// address (the first meta goes out before it is known).
func metaID(b []byte) string {
	var m struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(b, &m) != nil || !validID(m.ID) {
		return ""
	}
	return m.ID
}
