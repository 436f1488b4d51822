package cluster

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/rs/zerolog"
)

// The room directory: which node owns each room.
//
// Each node is the only writer of its own rooms (a roomSet with a version
// it bumps on every change). It spreads changes as claim and release
// broadcasts (re-gossiped by every node that learns something new from
// one) and its whole view in memberlist's push/pull exchanges: the
// sender's own set, which replaces what the receiver had of it, then the
// sets it knows of others, taken when their version is newer (so a node
// that joins learns every room from the one node it joins through).
//
// A room may be claimed by two nodes at once (each created it before
// hearing of the other). The owner is the earliest claim, ties going to the
// smaller node name: every node computes the same answer from the same
// claims. A node that learns a claim beating its own gives the room up
// (release, then OnRoomLost ends its sessions); one that learns a claim its
// own beats re-broadcasts its own, so the loser hears of it quickly.
//
// A departed owner's rooms leave the directory at once (memberlist's
// NotifyLeave, on death or leave). Messages from an owner that has left,
// still being re-gossiped, are ignored: its id is remembered for goneTTL.
// Nothing else removes a room: not age, not draining.

// ErrTooManyRooms is returned by Claim when this node owns MaxRooms rooms.
var ErrTooManyRooms = errors.New("cluster: room limit of this node reached")

const (
	// goneTTL is how long a departed owner's messages are ignored: far
	// longer than memberlist re-gossips a message.
	goneTTL = 2 * time.Minute
	maxGone = 4096
	// maxQueued bounds the broadcast queue; the oldest go first (push/pull
	// repairs what they would have told).
	maxQueued = 4096
)

// roomSet is one owner's rooms.
type roomSet struct {
	id      string           // the owner's node id (its process)
	version uint64           // the owner's newest change known here
	rooms   map[string]int64 // room -> created, unix ns at the owner
	// Broadcasts arrive out of order (newest first, re-gossiped by
	// others): a change applies when it is newer than the set it was built
	// from (base) and than the last change applied to the same room.
	base    uint64
	changed map[string]uint64 // room -> version of its last change applied; at most 2 × MaxRooms
}

// claim is one owner's claim on a room; the earliest wins.
type claim struct {
	owner   string
	created int64
}

func (a claim) beats(b claim) bool {
	if a.created != b.created {
		return a.created < b.created
	}
	return a.owner < b.owner
}

// DirectoryStats counts directory events and dropped messages by reason.
type DirectoryStats struct {
	Claims        uint64 `json:"claims"`         // rooms this node claimed
	Releases      uint64 `json:"releases"`       // rooms this node released
	Lost          uint64 `json:"lost"`           // rooms this node gave up to an earlier claim
	BadMessages   uint64 `json:"bad_messages"`   // undecodable or invalid messages
	Stale         uint64 `json:"stale"`          // messages older than what was known
	FromGone      uint64 `json:"from_gone"`      // messages about departed owners or old incarnations
	OverLimit     uint64 `json:"over_limit"`     // claims beyond an owner's MaxRooms
	QueueOverflow uint64 `json:"queue_overflow"` // broadcasts pruned from a full queue
}

type dirCounters struct {
	claims, releases, lost, bad, stale, gone, overLimit, overflow atomic.Uint64
}

// directory is the Node's room directory. Its memberlist callbacks
// (applyMsg, localState, mergeState, memberUp, memberDown) take mu briefly
// and never block; OnRoomLost runs on the Node's own goroutine (see lostC).
type directory struct {
	self   string // this node's name
	selfID string
	max    int
	log    zerolog.Logger
	queue  *memberlist.TransmitLimitedQueue
	nodes  atomic.Int32  // live members, self included: the queue's NumNodes
	lostC  chan struct{} // capacity 1: rooms were lost
	stats  dirCounters
	// now is the Node's Clock: claim times and departed owners' ages.
	// Set before the directory is shared.
	now func() time.Time

	mu    sync.RWMutex
	sets  map[string]*roomSet  // by owner name, this node's included; guarded by mu
	live  map[string]string    // other members alive or suspect: name -> id; guarded by mu
	gone  map[string]time.Time // ids of departed members -> when; guarded by mu
	lost  map[string]string    // rooms this node lost -> reason, for OnRoomLost; guarded by mu
	clock int64                // the last created handed out; guarded by mu
}

func newDirectory(self, selfID string, maxRooms, retransmitMult int, log zerolog.Logger) *directory {
	d := &directory{
		self: self, selfID: selfID, max: maxRooms, log: log,
		lostC: make(chan struct{}, 1),
		// Version 1 is the empty set; every change adds one.
		sets: map[string]*roomSet{self: {id: selfID, version: 1, rooms: map[string]int64{}}},
		live: map[string]string{},
		gone: map[string]time.Time{},
		lost: map[string]string{},
		now:  time.Now,
	}
	d.nodes.Store(1)
	d.queue = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return int(d.nodes.Load()) },
		RetransmitMult: retransmitMult,
	}
	return d
}

// ownerLocked returns the winning claim on room; mu is held.
func (d *directory) ownerLocked(room string) (claim, bool) {
	var best claim
	found := false
	for name, s := range d.sets {
		if c, ok := s.rooms[room]; ok {
			if cl := (claim{name, c}); !found || cl.beats(best) {
				best, found = cl, true
			}
		}
	}
	return best, found
}

// owner returns the name of the node that owns room.
func (d *directory) owner(room string) (string, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	c, ok := d.ownerLocked(room)
	return c.owner, ok
}

// claim makes this node the owner of room unless someone already is; it
// returns the owner.
func (d *directory) claim(room string) (string, error) {
	if !ValidRoomName(room) {
		return "", fmt.Errorf("%w: room name %q", ErrInvalidConfig, room)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if c, ok := d.ownerLocked(room); ok {
		return c.owner, nil
	}
	mine := d.sets[d.self]
	if len(mine.rooms) >= d.max {
		return "", fmt.Errorf("%w: %d rooms", ErrTooManyRooms, len(mine.rooms))
	}
	d.clock = max(d.clock+1, d.now().UnixNano())
	mine.rooms[room] = d.clock
	delete(d.lost, room)
	d.stats.claims.Add(1)
	d.changeLocked(kindClaim, room, d.clock)
	return d.self, nil
}

// release gives up this node's claim on room, if it has one.
func (d *directory) release(room string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	created, ok := d.sets[d.self].rooms[room]
	if !ok {
		return false
	}
	delete(d.sets[d.self].rooms, room)
	d.stats.releases.Add(1)
	d.changeLocked(kindRelease, room, created)
	return true
}

// changeLocked bumps this node's version and broadcasts the change.
func (d *directory) changeLocked(kind byte, room string, created int64) {
	mine := d.sets[d.self]
	mine.version++
	d.queueLocked(encodeMsg(dirMsg{kind: kind, owner: d.self, id: d.selfID, version: mine.version, room: room, created: created}), d.self, room)
}

// queueLocked queues a broadcast; a newer one about the same owner and room
// replaces it.
func (d *directory) queueLocked(msg []byte, owner, room string) {
	d.queue.QueueBroadcast(&dirBroadcast{name: owner + "\x00" + room, msg: msg})
	if n := d.queue.NumQueued(); n > maxQueued {
		d.queue.Prune(maxQueued)
		d.stats.overflow.Add(uint64(n - maxQueued))
	}
}

// loseLocked gives room up to winner and schedules OnRoomLost.
func (d *directory) loseLocked(room string, winner claim) {
	created := d.sets[d.self].rooms[room]
	delete(d.sets[d.self].rooms, room)
	d.changeLocked(kindRelease, room, created)
	d.stats.lost.Add(1)
	if len(d.lost) < d.max {
		d.lost[room] = fmt.Sprintf("room %q was created first on node %s", room, winner.owner)
	}
	d.log.Warn().Str("room", room).Str("winner", winner.owner).Msg("room claimed earlier by another node; ending it here")
	select {
	case d.lostC <- struct{}{}:
	default:
	}
}

// conflictLocked settles owner's claim on room against this node's.
func (d *directory) conflictLocked(owner, room string, created int64) {
	mine, ok := d.sets[d.self].rooms[room]
	if !ok || owner == d.self {
		return
	}
	if other := (claim{owner, created}); other.beats(claim{d.self, mine}) {
		d.loseLocked(room, other)
		return
	}
	// Ours is earlier: tell the other node again, so it gives up soon.
	d.queueLocked(encodeMsg(dirMsg{kind: kindClaim, owner: d.self, id: d.selfID, version: d.sets[d.self].version, room: room, created: mine}), d.self, room)
}

// acceptLocked reports whether messages about owner's incarnation id count.
func (d *directory) acceptLocked(owner, id string) bool {
	if _, gone := d.gone[id]; gone {
		return false
	}
	cur, known := d.live[owner]
	return !known || cur == id
}

// applyMsg applies a claim or release broadcast (memberlist's NotifyMsg).
// A message that taught this node something is re-gossiped.
func (d *directory) applyMsg(b []byte) {
	m, err := decodeMsg(b)
	if err != nil {
		d.stats.bad.Add(1)
		return
	}
	if m.owner == d.self {
		return // our own, echoed; we are the authority on it
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.acceptLocked(m.owner, m.id) {
		d.stats.gone.Add(1)
		return
	}
	s := d.sets[m.owner]
	if s == nil || s.id != m.id {
		s = &roomSet{id: m.id, rooms: map[string]int64{}, changed: map[string]uint64{}}
		d.sets[m.owner] = s
	}
	if m.version <= s.base || m.version <= s.changed[m.room] {
		d.stats.stale.Add(1)
		return
	}
	if len(s.changed) >= 2*d.max {
		// Bounded: forget per-room history; the set counts as built at
		// its newest change. The owner's next full set repairs any error.
		clear(s.changed)
		s.base = s.version
	}
	s.changed[m.room] = m.version
	s.version = max(s.version, m.version)
	changed := false
	switch m.kind {
	case kindClaim:
		if c, ok := s.rooms[m.room]; ok && c == m.created {
			break
		}
		if _, ok := s.rooms[m.room]; !ok && len(s.rooms) >= d.max {
			d.stats.overLimit.Add(1)
			return
		}
		s.rooms[m.room] = m.created
		changed = true
		d.conflictLocked(m.owner, m.room, m.created)
	case kindRelease:
		if c, ok := s.rooms[m.room]; ok && c == m.created {
			delete(s.rooms, m.room)
			changed = true
		}
	}
	if changed {
		d.queueLocked(b, m.owner, m.room)
	}
}

// localState encodes this node's view: its own rooms first.
func (d *directory) localState() []byte {
	d.mu.RLock()
	defer d.mu.RUnlock()
	secs := make([]stateSection, 0, len(d.sets))
	secs = append(secs, d.sectionLocked(d.self))
	for name, s := range d.sets {
		if name != d.self && s.version > 0 {
			secs = append(secs, d.sectionLocked(name))
		}
	}
	return encodeState(secs)
}

func (d *directory) sectionLocked(name string) stateSection {
	s := d.sets[name]
	sec := stateSection{owner: name, id: s.id, version: s.version, rooms: make([]roomEntry, 0, len(s.rooms))}
	for r, c := range s.rooms {
		sec.rooms = append(sec.rooms, roomEntry{r, c})
	}
	return sec
}

// mergeState takes a remote view: each owner's set replaces ours when it is
// newer (the sender's own set also when it is as new).
func (d *directory) mergeState(b []byte) {
	secs, err := decodeState(b, d.max)
	if err != nil {
		d.stats.bad.Add(1)
		d.log.Debug().Err(err).Msg("directory state")
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, sec := range secs {
		if sec.owner == d.self {
			continue
		}
		if !d.acceptLocked(sec.owner, sec.id) {
			d.stats.gone.Add(1)
			continue
		}
		if s := d.sets[sec.owner]; s != nil && s.id == sec.id &&
			(sec.version < s.version || sec.version == s.version && i > 0) {
			d.stats.stale.Add(1)
			continue
		}
		s := &roomSet{id: sec.id, version: sec.version, base: sec.version, rooms: make(map[string]int64, len(sec.rooms)), changed: map[string]uint64{}}
		for _, e := range sec.rooms {
			s.rooms[e.room] = e.created
		}
		d.sets[sec.owner] = s
		for _, e := range sec.rooms {
			d.conflictLocked(sec.owner, e.room, e.created)
		}
	}
}

// memberUp records a live member's incarnation; rooms of an older one go.
func (d *directory) memberUp(name, id string) {
	if name == d.self || id == "" {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if s := d.sets[name]; s != nil && s.id != id {
		delete(d.sets, name)
	}
	d.live[name] = id
	delete(d.gone, id)
	d.nodes.Store(int32(len(d.live) + 1))
}

// memberDown removes a departed member and its rooms.
func (d *directory) memberDown(name, id string) {
	if name == d.self {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	if s := d.sets[name]; s != nil {
		n = len(s.rooms)
		if id == "" {
			id = s.id
		}
	}
	delete(d.sets, name)
	delete(d.live, name)
	now := d.now()
	for g, t := range d.gone {
		if now.Sub(t) > goneTTL || len(d.gone) >= maxGone {
			delete(d.gone, g)
		}
	}
	if id != "" {
		d.gone[id] = now
	}
	d.nodes.Store(int32(len(d.live) + 1))
	if n > 0 {
		d.log.Info().Str("node", name).Int("rooms", n).Msg("member gone: its rooms left the directory")
	}
}

// takeLost returns and forgets the rooms lost since the last call.
func (d *directory) takeLost() map[string]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.lost) == 0 {
		return nil
	}
	l := d.lost
	d.lost = map[string]string{}
	return l
}

// owned returns this node's rooms and when it claimed them.
func (d *directory) owned() map[string]int64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make(map[string]int64, len(d.sets[d.self].rooms))
	for r, c := range d.sets[d.self].rooms {
		out[r] = c
	}
	return out
}

// roomsByOwner lists the rooms each node owns (the winning claims only),
// sorted.
func (d *directory) roomsByOwner() map[string][]string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := map[string][]string{}
	for name, s := range d.sets {
		for r := range s.rooms {
			if c, _ := d.ownerLocked(r); c.owner == name {
				out[name] = append(out[name], r)
			}
		}
	}
	for _, rs := range out {
		slices.Sort(rs)
	}
	return out
}

func (d *directory) statsSnapshot() DirectoryStats {
	return DirectoryStats{
		Claims: d.stats.claims.Load(), Releases: d.stats.releases.Load(), Lost: d.stats.lost.Load(),
		BadMessages: d.stats.bad.Load(), Stale: d.stats.stale.Load(), FromGone: d.stats.gone.Load(),
		OverLimit: d.stats.overLimit.Load(), QueueOverflow: d.stats.overflow.Load(),
	}
}

// dirBroadcast is one queued message; a newer one with the same name (owner
// and room) invalidates it.
type dirBroadcast struct {
	name string
	msg  []byte
}

var _ memberlist.NamedBroadcast = (*dirBroadcast)(nil)

func (b *dirBroadcast) Invalidates(o memberlist.Broadcast) bool {
	ob, ok := o.(*dirBroadcast)
	return ok && ob.name == b.name
}
func (b *dirBroadcast) Name() string    { return b.name }
func (b *dirBroadcast) Message() []byte { return b.msg }
func (b *dirBroadcast) Finished()       {}
