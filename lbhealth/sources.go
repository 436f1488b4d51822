package lbhealth

// The interfaces below are what lbhealth needs from the rest of the node.
// Each has one method so that an adapter in cmd/oneport is a line or a
// func literal wrapped in the matching Func type.

// Sockets reports whether the media sockets are bound and being read.
// Bound returns nil when they are, or an error whose text /healthz and
// /readyz show as the reason. It is called on every probe and health request,
// so it should be a load of a flag, not a system call.
type Sockets interface {
	Bound() error
}

// SessionCounter reports how many sessions (ICE/DTLS peer connections) this
// node holds. Readiness compares it with Config.MaxSessions; a drain waits for
// it to reach zero.
type SessionCounter interface {
	Sessions() int
}

// Membership reports whether this node has joined the cluster. Joined returns
// nil when it has, or an error giving the reason (e.g. no seed reachable).
type Membership interface {
	Joined() error
}

// MediaSource snapshots the mux counters at scrape time.
type MediaSource interface {
	MediaStats() MediaStats
}

// SFUSource snapshots the SFU counters at scrape time.
type SFUSource interface {
	SFUStats() SFUStats
}

// ClusterSource snapshots the cluster counters at scrape time.
type ClusterSource interface {
	ClusterStats() ClusterStats
}

// Func adapters, in the manner of http.HandlerFunc.
type (
	SocketsFunc        func() error
	SessionCounterFunc func() int
	MembershipFunc     func() error
	MediaSourceFunc    func() MediaStats
	SFUSourceFunc      func() SFUStats
	ClusterSourceFunc  func() ClusterStats
)

func (f SocketsFunc) Bound() error                     { return f() }
func (f SessionCounterFunc) Sessions() int             { return f() }
func (f MembershipFunc) Joined() error                 { return f() }
func (f MediaSourceFunc) MediaStats() MediaStats       { return f() }
func (f SFUSourceFunc) SFUStats() SFUStats             { return f() }
func (f ClusterSourceFunc) ClusterStats() ClusterStats { return f() }

var (
	_ Sockets        = SocketsFunc(nil)
	_ SessionCounter = SessionCounterFunc(nil)
	_ Membership     = MembershipFunc(nil)
	_ MediaSource    = MediaSourceFunc(nil)
	_ SFUSource      = SFUSourceFunc(nil)
	_ ClusterSource  = ClusterSourceFunc(nil)
)

// Class is a packet class as the mux sorts them (RFC 7983 first-byte ranges).
type Class int

const (
	ClassSTUN  Class = iota // first byte 0-3
	ClassDTLS               // 20-63
	ClassRTP                // 128-191: RTP and RTCP
	ClassOther              // everything else
	NumClasses
)

var classNames = [NumClasses]string{"stun", "dtls", "rtp", "other"}

// String returns the metric label value of c.
func (c Class) String() string {
	if c < 0 || c >= NumClasses {
		return "invalid"
	}
	return classNames[c]
}

// Traffic is a packet and byte count.
type Traffic struct {
	Packets uint64
	Bytes   uint64
}

// DropCount is the number of packets the mux dropped for one reason. Reason
// must come from the mux's fixed set of reasons (its String names): it becomes
// a label value.
type DropCount struct {
	Reason  string
	Packets uint64
}

// MaxDropReasons bounds the distinct drop reasons exported; further reasons
// are added to the "other" reason so the label set stays bounded.
const MaxDropReasons = 32

// MediaStats is a snapshot of the mux. Counters only grow; Flows is a
// current value.
type MediaStats struct {
	In  [NumClasses]Traffic // received, by class
	Out [NumClasses]Traffic // sent, by class
	// Drops by reason. Duplicated reasons are summed.
	Drops []DropCount
	// Flows is the number of client addresses bound to a session, local or
	// relayed. (Sessions come from Config.Sessions.)
	Flows uint64
}

// packets returns the packets in and out over all classes.
func (s *MediaStats) packets() uint64 {
	var n uint64
	for c := range NumClasses {
		n += s.In[c].Packets + s.Out[c].Packets
	}
	return n
}

// SFUStats is a snapshot of the SFU. Forwarded is a counter; the rest are
// current values.
type SFUStats struct {
	Rooms        uint64
	Participants uint64
	Tracks       uint64 // published tracks
	Subscribers  uint64 // subscriptions (one per track per receiving peer)
	Forwarded    Traffic
	// Refused counts signaling requests refused by a limit, by reason (a
	// small fixed set, such as "room_full" or "rate_limited").
	Refused []DropCount
	// Drops counts media packets not sent to a subscriber, by reason (a
	// small fixed set: "queue_full", "late", "duplicate").
	Drops []DropCount
	// Retransmits counts packets sent again for subscribers' NACKs;
	// NACKMisses, NACKed packets no longer held (or too old to help);
	// NACKSuppressed, repeats the resend policy refused (within the
	// subscriber's RTT of the last resend, or resent 3 times already).
	Retransmits, NACKMisses, NACKSuppressed uint64
	// HTTPConns is the signaling listener's open connections; HTTPRefused
	// counts connections it closed at accept, by reason ("max_conns",
	// "max_per_ip").
	HTTPConns   uint64
	HTTPRefused []DropCount
}

// MemberState is the state of a cluster member as gossip sees it.
type MemberState int

const (
	MemberAlive MemberState = iota
	MemberSuspect
	MemberDead
	MemberLeft
	NumMemberStates
)

var memberStateNames = [NumMemberStates]string{"alive", "suspect", "dead", "left"}

// String returns the metric label value of s.
func (s MemberState) String() string {
	if s < 0 || s >= NumMemberStates {
		return "invalid"
	}
	return memberStateNames[s]
}

// ClusterStats is a snapshot of the cluster. Members and Draining are current
// values; the relay counters only grow.
type ClusterStats struct {
	Members  [NumMemberStates]uint64
	Draining uint64 // alive members whose meta says draining, this node included
	RelayIn  Traffic
	RelayOut Traffic
}
