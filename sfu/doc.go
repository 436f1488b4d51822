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
// it in place (header, keyframe start), stores it once in the layer's packet
// history (a ring by sequence number, history.go) and hands a reference to
// the send workers (fanout.go) that own its subscribers: one job per worker,
// not per subscriber. Each subscriber belongs to one worker, which rewrites
// SSRC, payload type, sequence number and timestamp for it and writes to
// pion, the worker's burst corked so oneport's mux sends it in sendmmsg
// batches. Subscribers' NACKs are answered by their worker from the same
// history. Queues are bounded; a full one drops and counts, and a packet
// overwritten while queued is dropped as late. Nothing on this path
// allocates once warm; a packet is copied once however many subscribers it
// goes to.
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
