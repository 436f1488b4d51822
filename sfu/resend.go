package sfu

import "time"

// Resend policy. A NACK costs the subscriber a few bytes and the server a
// full packet, and one RTCP packet can name hundreds: answered without
// limit, a subscriber could make the server send thousands of times the
// bytes it sends, and a pion receiver, whose NACK generator never sees the
// RTX repair, asks for each repaired packet again every 100 ms until it
// leaves its log. As mediasoup and LiveKit do, each subscriber sequence
// number is resent at most maxResends times, not again within the
// subscriber's round-trip time (the earlier copy may still be on its way),
// and not at all once older than maxRetransmitAge. Retransmissions to a
// subscriber are then at most maxResends times what it was sent.
const (
	// maxResends is how many times one packet is resent to one subscriber.
	maxResends = 3
	// maxRetransmitAge: a video packet older than this is past any jitter
	// buffer; resending it only adds load (mediasoup uses 2 s for video).
	maxRetransmitAge = 2 * time.Second
	// defaultResendInterval separates resends of one packet while the
	// subscriber's RTT is not known (no receiver report with LSR yet).
	defaultResendInterval = 100 * time.Millisecond
	// minResendInterval is the floor under a measured RTT: a loopback or
	// LAN RTT, or a report that lies, must not let the maxResends copies
	// leave back to back.
	minResendInterval = 10 * time.Millisecond
	// maxRTT bounds a believable round-trip time from a receiver report.
	maxRTT = 10 * time.Second
)

// resendMark is the retransmission record of one subscriber sequence number.
type resendMark struct {
	at    int64 // monotonic ns of the last resend
	seq   uint16
	count uint8
}

// resendLog records a downTrack's recent resends, indexed like the history
// by sequence number (the subscriber's). It belongs to the send worker.
type resendLog [historyVideo]resendMark

// mark is seq's record, reset if it belonged to another packet or to an
// earlier pass of the sequence space (older than any resend allowed).
func (l *resendLog) mark(seq uint16, now int64) *resendMark {
	m := &l[seq&(historyVideo-1)]
	if m.seq != seq || now-m.at > int64(maxRetransmitAge) {
		*m = resendMark{seq: seq}
	}
	return m
}

// allow reports whether the packet may be resent at now, given the
// subscriber's round-trip time (0: unknown).
func (m *resendMark) allow(now, rtt int64) bool {
	if m.count == 0 {
		return true
	}
	if m.count >= maxResends {
		return false
	}
	gap := int64(defaultResendInterval)
	if rtt > 0 {
		gap = max(rtt, int64(minResendInterval))
	}
	return now-m.at >= gap
}
