package sfu

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"
)

// room is a set of participants and their published tracks.
type room struct {
	s       *Server
	name    string
	created time.Time

	mu           sync.Mutex     // guards the fields below
	participants []*participant // in join order
	tracks       []*pubTrack    // in publish order
	watchers     map[*watcher]struct{}
	pending      int       // joins in progress (the room must not end under them)
	emptySince   time.Time // when it last became empty (Clock time)
	ended        bool      // removed from Server.rooms
}

func newRoom(s *Server, name string) *room {
	now := s.cfg.Clock.Now()
	return &room{s: s, name: name, created: now, emptySince: now, watchers: make(map[*watcher]struct{})}
}

func (r *room) emptyLocked() bool {
	return len(r.participants) == 0 && len(r.watchers) == 0 && r.pending == 0
}

func (r *room) markEmptyLocked() {
	if r.emptyLocked() {
		r.emptySince = r.s.cfg.Clock.Now()
	}
}

// watcher is one events stream. ch is bounded; a watcher that falls behind
// is cut (closed) rather than slowing the room.
type watcher struct {
	ch     chan []byte
	closed bool // guarded by room.mu
}

const watcherQueue = 64

// Event payloads (JSON data of server-sent events).
type ParticipantEvent struct {
	Participant string `json:"participant"`
	Role        string `json:"role"`
}

type TrackEvent struct {
	Participant string   `json:"participant"`
	Track       string   `json:"track"`
	Kind        string   `json:"kind"`
	Codec       string   `json:"codec"`
	MID         string   `json:"mid"`
	RIDs        []string `json:"rids,omitempty"`
}

func trackEvent(t *pubTrack) TrackEvent {
	return TrackEvent{Participant: t.pub.id, Track: t.id, Kind: t.kind.String(), Codec: t.codec.MimeType, MID: t.mid, RIDs: t.rids()}
}

func sseMessage(event string, data any) []byte {
	b, _ := json.Marshal(data) // plain structs: cannot fail
	return []byte("event: " + event + "\ndata: " + string(b) + "\n\n")
}

// emitLocked sends an event to every watcher; r.mu is held.
func (r *room) emitLocked(event string, data any) {
	if len(r.watchers) == 0 {
		return
	}
	msg := sseMessage(event, data)
	for w := range r.watchers {
		select {
		case w.ch <- msg:
		default:
			r.s.stats.watcherDrops.Add(1)
			r.dropWatcherLocked(w)
		}
	}
}

func (r *room) dropWatcherLocked(w *watcher) {
	if !w.closed {
		w.closed = true
		close(w.ch)
	}
	delete(r.watchers, w)
	r.markEmptyLocked()
}

// watch registers an events stream and returns it with the room's current
// state as initial events.
func (r *room) watch() (*watcher, [][]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ended {
		return nil, nil, ErrClosed
	}
	if len(r.watchers) >= r.s.cfg.MaxWatchers {
		return nil, nil, fmt.Errorf("%w: %d", ErrTooManyWatchers, len(r.watchers))
	}
	w := &watcher{ch: make(chan []byte, watcherQueue)}
	r.watchers[w] = struct{}{}
	var initial [][]byte
	for _, p := range r.participants {
		initial = append(initial, sseMessage("participant-joined", ParticipantEvent{Participant: p.id, Role: p.role.String()}))
	}
	for _, t := range r.tracks {
		initial = append(initial, sseMessage("track-published", trackEvent(t)))
	}
	return w, initial, nil
}

func (r *room) unwatch(w *watcher) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dropWatcherLocked(w)
}

// join adds p to the room (its join was counted in pending); false when
// the room ended meanwhile (EndRoom), and p must be removed.
func (r *room) join(p *participant) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pending--
	r.s.joining.Add(-1)
	if r.ended {
		return false
	}
	if p.removed { // closed while joining
		r.markEmptyLocked()
		return true
	}
	r.participants = append(r.participants, p)
	r.emitLocked("participant-joined", ParticipantEvent{Participant: p.id, Role: p.role.String()})
	// A subscriber's downTracks start receiving now.
	for _, d := range p.downList() {
		if !d.src.unpublished {
			d.src.addDownLocked(d)
		}
	}
	return true
}

// abandon undoes a pending join that failed.
func (r *room) abandon() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pending--
	r.s.joining.Add(-1)
	r.markEmptyLocked()
}

// publish makes t visible to new subscribers and announces it.
func (r *room) publish(t *pubTrack) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t.pub.removed {
		return
	}
	r.tracks = append(r.tracks, t)
	r.emitLocked("track-published", trackEvent(t))
}

// leave removes p and everything it holds from the room.
func (r *room) leave(p *participant) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p.removed {
		return
	}
	p.removed = true
	joined := false
	for i, q := range r.participants {
		if q == p {
			r.participants = append(r.participants[:i:i], r.participants[i+1:]...)
			joined = true
			break
		}
	}
	kept := r.tracks[:0:0]
	for _, t := range r.tracks {
		if t.pub != p {
			kept = append(kept, t)
			continue
		}
		t.unpublished = true
		t.setDownsLocked(nil)
		r.emitLocked("track-unpublished", trackEvent(t))
	}
	r.tracks = kept
	for _, d := range p.downList() {
		d.src.removeDownLocked(d)
	}
	if joined {
		r.emitLocked("participant-left", ParticipantEvent{Participant: p.id, Role: p.role.String()})
	}
	r.markEmptyLocked()
}

// addDownLocked and removeDownLocked replace the track's subscriber snapshot;
// room.mu is held.
func (t *pubTrack) addDownLocked(d *downTrack) {
	old := *t.downs.Load()
	n := make([]*downTrack, 0, len(old)+1)
	t.setDownsLocked(append(append(n, old...), d))
}

// setDownsLocked publishes a new subscriber snapshot, and the same split by
// send worker for the forwarding path; room.mu is held (or t is new).
func (t *pubTrack) setDownsLocked(ds []*downTrack) {
	if ds == nil {
		ds = []*downTrack{}
	}
	by := make([][]*downTrack, len(t.pub.s.fan.workers))
	for _, d := range ds {
		by[d.sub.worker.idx] = append(by[d.sub.worker.idx], d)
	}
	t.byWorker.Store(&by)
	t.downs.Store(&ds)
}

func (t *pubTrack) removeDownLocked(d *downTrack) {
	old := *t.downs.Load()
	n := make([]*downTrack, 0, len(old))
	for _, x := range old {
		if x != d {
			n = append(n, x)
		}
	}
	t.setDownsLocked(n)
}

// tracksSnapshot returns the room's published tracks, optionally of one
// publisher; ok is false when that publisher is not in the room.
func (r *room) tracksSnapshot(publisher string) ([]*pubTrack, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if publisher != "" {
		found := false
		for _, p := range r.participants {
			if p.id == publisher && p.role == rolePublisher {
				found = true
			}
		}
		if !found {
			return nil, false
		}
	}
	var ts []*pubTrack
	for _, t := range r.tracks {
		if publisher == "" || t.pub.id == publisher {
			ts = append(ts, t)
		}
	}
	return ts, true
}
