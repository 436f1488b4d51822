// Package sfu is oneport's media plane: rooms, WHIP/WHEP signaling and RTP
// forwarding from publishers to subscribers, with every PeerConnection on one
// ice.UDPMux (ICE-lite, UDP only; the sfu opens no socket of its own).
//
// Model. A room holds participants. A WHIP resource is a publisher participant
// (one PeerConnection, its published tracks); a WHEP resource is a subscriber
// participant (one PeerConnection, one downTrack per subscribed track). A
// published track has up to three simulcast layers (rids).
//
// Data path. One goroutine per received layer reads decrypted RTP, classifies
// it in place (header, keyframe start), and offers it to the atomic snapshot of
// the track's downTracks; each subscriber has one bounded packet queue (a free
// list and a ready list of preallocated buffers) drained by its own writer
// goroutine, which rewrites SSRC, payload type, sequence number and timestamp
// and writes to pion. A full queue drops and counts; a slow subscriber never
// blocks the reader or other subscribers. Nothing on this path allocates or
// takes a lock shared with other subscribers.
//
// Invariants.
//   - Lock order: Server.mu, then room.mu, then participant.mu. No lock is held
//     while calling into pion except where noted.
//   - Every goroutine is owned: per-participant goroutines by participant.wg,
//     detached clean-ups and the sweeper by Server.wg. Close waits for both.
//   - A room exists while it has participants or event watchers, and ends only
//     after EmptyTimeout empty, or when EndRoom ends it (a cluster node that
//     lost the room to another). There is no age-based clean-up.
//   - A participant removed (DELETE, ICE failure or consent expiry, Close) has
//     its PeerConnection closed (which releases its ufrag on the mux), its
//     tracks unpublished, its downTracks unlinked and its goroutines ended.
package sfu
