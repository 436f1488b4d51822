// Package mux serves every WebRTC session of a node through one UDP port.
//
// A Mux opens several SO_REUSEPORT sockets on the same address (one per CPU
// by default; the kernel spreads client flows over them by 4-tuple hash) and
// reads them in batches (recvmmsg on Linux). Every datagram is demultiplexed
// to a session:
//
//  1. by its source address (a netip.AddrPort, unmapped) in the flow table;
//  2. on a miss, if it is a STUN Binding request, by the local ufrag (the
//     USERNAME text before ':'), read in place without decoding the message;
//  3. anything else from an unknown address is dropped and counted.
//
// Invariants:
//   - An address is bound to a session only when that session writes to it
//     (its ICE agent answered a check it validated), never because a packet
//     named a ufrag: a spoofed STUN request cannot steal or divert a flow.
//     Packets that reach a session by ufrag alone share a small per-session
//     budget, so a flood of them cannot crowd out a bound flow.
//   - The read path allocates nothing per packet and takes no exclusive lock
//     for a lookup: flows live in read-locked shards, ufrags under an RWMutex.
//   - Everything is bounded: per-session receive queue, addresses per
//     session, sessions, flows, the write queue. When full, the packet is
//     dropped and counted by reason; nothing is logged per packet.
//   - A closed session leaves tombstones (its ufrag and its addresses) for
//     Config.TombstoneTTL so its late packets are absorbed silently.
//   - Close is idempotent, closes the sockets and waits for every goroutine.
//
// *Mux implements pion's ice.UDPMux, so webrtc.SettingEngine.SetICEUDPMux
// takes it in place of ice.NewUDPMuxDefault; the conns it returns implement
// ice.AddrPortReaderWriter. GetConn is reference counted per ufrag as pion's
// is: every call for a live ufrag shares one session until the last conn is
// closed or RemoveConnByUfrag is called.
//
// The flow table maps an address to a route; today every route is a local
// session. The cluster relay adds routes to a remote owner node without
// changing the read path's shape (see route in table.go).
package mux
