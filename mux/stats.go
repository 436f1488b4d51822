package mux

import "sync/atomic"

// DropReason says why the mux dropped a datagram (or refused a binding).
type DropReason uint8

// Drop reasons, counted in Stats.Drops.
const (
	DropUnknownAddr    DropReason = iota // non-STUN datagram from an address bound to no session
	DropJunk                             // malformed STUN, or not STUN/DTLS/RTP, from an unknown address
	DropNotRequest                       // STUN from an unknown address that is not a Binding request
	DropUnknownUfrag                     // Binding request for a ufrag no session has
	DropProbe                            // Binding request without USERNAME and no probe handler
	DropClosed                           // datagram for a closed session (tombstone)
	DropQueueFull                        // the session's receive queue was full
	DropUnboundLimit                     // too many datagrams queued for a session from unbound addresses
	DropTruncated                        // datagram larger than Config.MaxPacketSize
	DropTableFull                        // a session could not bind an address: flow table full
	DropWriteError                       // the kernel refused a send
	DropReadError                        // the kernel reported a receive error
	DropNoRoute                          // a flow's owner left, or a relayed datagram would be relayed again
	DropRelayNotMember                   // a relay frame from an address that is no member's
	DropRelayAuth                        // a relay frame with a bad MAC or too old
	DropRelayMalformed                   // a relay frame that does not parse
	DropUnboundRate                      // datagrams reaching a session from unbound addresses faster than Config.UnboundRate
	NumDropReasons
)

var dropNames = [NumDropReasons]string{
	"unknown_address", "junk", "not_request", "unknown_ufrag", "probe",
	"closed_session", "queue_full", "unbound_limit", "truncated",
	"table_full", "write_error", "read_error",
	"no_route", "relay_not_member", "relay_auth", "relay_malformed",
	"unbound_rate",
}

func (r DropReason) String() string {
	if r < NumDropReasons {
		return dropNames[r]
	}
	return "invalid"
}

// Stats is a snapshot of the mux counters. Counters only grow; gauges
// (Sessions, Flows) are current values.
type Stats struct {
	PacketsIn  [NumClasses]uint64
	BytesIn    [NumClasses]uint64
	PacketsOut [NumClasses]uint64
	BytesOut   [NumClasses]uint64
	Drops      [NumDropReasons]uint64
	Probes     uint64 // Binding requests without USERNAME handed to the probe handler
	QueuedOut  uint64 // datagrams sent after waiting behind another send (in sendmmsg batches)

	RelayFramesIn, RelayBytesIn   uint64 // relay frames received from other nodes
	RelayFramesOut, RelayBytesOut uint64 // relay frames sent to other nodes
	Peers                         int    // other nodes the relay knows
	Sessions                      int    // live sessions
	Flows                         int    // bound addresses, tombstones included
}

// TotalIn is the number of datagrams received, of all classes.
func (s Stats) TotalIn() (n uint64) {
	for _, v := range s.PacketsIn {
		n += v
	}
	return n
}

// TotalDrops is the number of datagrams dropped, for any reason.
func (s Stats) TotalDrops() (n uint64) {
	for _, v := range s.Drops {
		n += v
	}
	return n
}

// counters is one goroutine's (or one socket's) share of the counters.
// Writers of a counters value are few (its reader, or the senders on one
// socket), so the atomic adds rarely contend; Stats sums them all.
type counters struct {
	packets [NumClasses]atomic.Uint64
	bytes   [NumClasses]atomic.Uint64
	drops   [NumDropReasons]atomic.Uint64
	probes  atomic.Uint64
	// frames and frameBytes count relay frames received (relay socket only).
	frames, frameBytes atomic.Uint64
	_                  [64]byte // keep neighbours off this cache line
}

func (c *counters) count(cl Class, n int) {
	c.packets[cl].Add(1)
	c.bytes[cl].Add(uint64(n))
}

func (c *counters) drop(r DropReason) { c.drops[r].Add(1) }
