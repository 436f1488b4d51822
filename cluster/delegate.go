package cluster

import (
	"net/netip"

	"github.com/hashicorp/memberlist"
)

// delegate is the Node as memberlist's Delegate: it supplies the meta. The
// room directory's broadcasts and state sync come with the signaling side.
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

func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// events is the Node as memberlist's EventDelegate. Its callbacks run on
// memberlist's goroutines and must not block: they only signal.
type events Node

func (e *events) NotifyJoin(*memberlist.Node)   { (*Node)(e).signal() }
func (e *events) NotifyLeave(*memberlist.Node)  { (*Node)(e).signal() }
func (e *events) NotifyUpdate(*memberlist.Node) { (*Node)(e).signal() }
