package sfu

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/oneport/oneport/internal/ratelimit"
)

// Server is an SFU node: rooms, their participants, the signaling handler.
type Server struct {
	cfg     Config
	log     zerolog.Logger
	epoch   time.Time
	ctx     context.Context
	cancel  context.CancelFunc
	handler http.Handler
	stats   counters
	fan     *fanout            // send workers
	limiter *ratelimit.Sources // signaling requests per client IP; nil when off
	// tokenHash is the SHA-256 of Config.Token, compared in constant time.
	tokenHash [sha256.Size]byte

	wg sync.WaitGroup // sweeper, detached removals, event streams

	mu        sync.Mutex // guards the fields below
	closed    bool
	rooms     map[string]*room
	resources map[string]*participant // by participant (resource) id
	joining   atomic.Int64            // joins between enterRoom and room.join/abandon (all rooms' pending)

	closeOnce sync.Once
}

// counters are the server-wide atomic counters behind Stats.
type counters struct {
	forwardedPackets  atomic.Uint64
	forwardedBytes    atomic.Uint64
	drops             atomic.Uint64
	writeErrors       atomic.Uint64
	badPackets        atomic.Uint64
	keyframeRequests  atomic.Uint64
	keyframeCoalesced atomic.Uint64
	subscriberPLIs    atomic.Uint64
	watcherDrops      atomic.Uint64
	late              atomic.Uint64
	retransmits       atomic.Uint64
	nackMisses        atomic.Uint64
	nackSuppressed    atomic.Uint64
	duplicates        atomic.Uint64
	refused           [numRefusals]atomic.Uint64
}

// refusal is why a signaling request was refused by a limit: a fixed set,
// so the counters (and metric labels) stay bounded.
type refusal int

const (
	refusedServerFull refusal = iota // MaxParticipants or the mux's MaxSessions (503)
	refusedRooms                     // MaxRooms (503)
	refusedRoomFull                  // MaxRoomParticipants (403)
	refusedWatchers                  // MaxWatchers (503)
	refusedRate                      // SignalingRate per client IP (429)
	refusedSDP                       // m-line and candidate limits (400)
	refusedBody                      // MaxBodyBytes (413)
	numRefusals
)

// Refusals counts signaling requests refused by a limit, by reason.
type Refusals struct {
	ServerFull  uint64 `json:"server_full"`  // MaxParticipants, or the mux's MaxSessions, reached: 503
	Rooms       uint64 `json:"rooms"`        // MaxRooms reached: 503
	RoomFull    uint64 `json:"room_full"`    // MaxRoomParticipants reached: 403
	Watchers    uint64 `json:"watchers"`     // MaxWatchers reached: 503
	RateLimited uint64 `json:"rate_limited"` // SignalingRate exceeded: 429
	SDPLimits   uint64 `json:"sdp_limits"`   // too many m-lines or candidates: 400
	BodyTooBig  uint64 `json:"body_too_big"` // MaxBodyBytes exceeded: 413
}

// RefusalReasons names Refusals' counters, in the order Counts returns
// them: the metrics' reason label values.
var RefusalReasons = [...]string{"server_full", "rooms", "room_full", "watchers", "rate_limited", "sdp_limits", "body_too_big"}

// Counts returns the counters in RefusalReasons' order.
func (r Refusals) Counts() [len(RefusalReasons)]uint64 {
	return [...]uint64{r.ServerFull, r.Rooms, r.RoomFull, r.Watchers, r.RateLimited, r.SDPLimits, r.BodyTooBig}
}

// Stats is a snapshot of the server for metrics.
type Stats struct {
	Rooms        int `json:"rooms"`
	Participants int `json:"participants"`
	Publishers   int `json:"publishers"`
	Subscribers  int `json:"subscribers"`
	Tracks       int `json:"tracks"`

	ForwardedPackets  uint64 `json:"forwarded_packets"`  // RTP packets written to subscribers
	ForwardedBytes    uint64 `json:"forwarded_bytes"`    // their bytes (RTP, before SRTP)
	SubscriberDrops   uint64 `json:"subscriber_drops"`   // packets dropped for a subscriber: its queue was full, or the packet left the history while queued
	LateDrops         uint64 `json:"late_drops"`         // of SubscriberDrops, those that left the history while queued
	Retransmits       uint64 `json:"retransmits"`        // packets sent again for subscribers' NACKs
	NACKMisses        uint64 `json:"nack_misses"`        // NACKed packets no longer in the history, older than 2 s, or over the per-NACK bound
	NACKSuppressed    uint64 `json:"nack_suppressed"`    // NACKs not answered: the packet was resent to that subscriber within its RTT, or 3 times already
	Duplicates        uint64 `json:"duplicates"`         // publisher packets already held (a doubled retransmission): not forwarded
	WriteErrors       uint64 `json:"write_errors"`       // writes pion refused (closing or not yet connected)
	BadPackets        uint64 `json:"bad_packets"`        // unparsable RTP from publishers
	KeyframeRequests  uint64 `json:"keyframe_requests"`  // PLIs sent to publishers
	KeyframeCoalesced uint64 `json:"keyframe_coalesced"` // keyframe requests folded into a recent one
	SubscriberPLIs    uint64 `json:"subscriber_plis"`    // PLI/FIR received from subscribers
	WatcherDrops      uint64 `json:"watcher_drops"`      // event streams cut because they could not keep up

	Refused Refusals `json:"refused"`
}

// New returns a running Server. The caller serves Handler and calls Close.
func New(cfg Config) (*Server, error) {
	if err := cfg.applyDefaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger.With().Str("component", "sfu").Logger(),
		epoch:     time.Now(),
		ctx:       ctx,
		cancel:    cancel,
		rooms:     make(map[string]*room),
		resources: make(map[string]*participant),
	}
	s.tokenHash = sha256.Sum256([]byte(cfg.Token))
	if cfg.SignalingRate > 0 {
		s.limiter = ratelimit.NewSources(cfg.SignalingRate, cfg.SignalingBurst, cfg.MaxSignalingClients)
	}
	c, _ := cfg.UDPMux.(corker)
	s.fan = newFanout(cfg.SendWorkers, cfg.QueuePackets, c)
	for _, w := range s.fan.workers {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			w.run(ctx)
		}()
	}
	s.handler = s.routes()
	s.wg.Add(1)
	go s.sweepLoop()
	return s, nil
}

// Handler serves the signaling and API endpoints (see routes).
func (s *Server) Handler() http.Handler { return s.handler }

// mono is the monotonic time in ns since the server started (media timing).
func (s *Server) mono() int64 { return int64(time.Since(s.epoch)) }

// Close ends every session, waits for every goroutine the server started, and
// is idempotent. It does not close the UDPMux.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		ps := make([]*participant, 0, len(s.resources))
		for _, p := range s.resources {
			ps = append(ps, p)
		}
		s.mu.Unlock()
		s.cancel()
		var wg sync.WaitGroup
		for _, p := range ps {
			wg.Add(1)
			go func() { // bounded by the participant table size
				defer wg.Done()
				s.remove(p, "server closed")
			}()
		}
		wg.Wait()
		s.wg.Wait()
	})
	return nil
}

// goTracked runs f on a goroutine owned by s.wg, unless the server is closed.
func (s *Server) goTracked(f func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
	return true
}

// Stats returns current counts and counters.
func (s *Server) Stats() Stats {
	st := Stats{
		ForwardedPackets:  s.stats.forwardedPackets.Load(),
		ForwardedBytes:    s.stats.forwardedBytes.Load(),
		SubscriberDrops:   s.stats.drops.Load(),
		LateDrops:         s.stats.late.Load(),
		Retransmits:       s.stats.retransmits.Load(),
		NACKMisses:        s.stats.nackMisses.Load(),
		NACKSuppressed:    s.stats.nackSuppressed.Load(),
		Duplicates:        s.stats.duplicates.Load(),
		WriteErrors:       s.stats.writeErrors.Load(),
		BadPackets:        s.stats.badPackets.Load(),
		KeyframeRequests:  s.stats.keyframeRequests.Load(),
		KeyframeCoalesced: s.stats.keyframeCoalesced.Load(),
		SubscriberPLIs:    s.stats.subscriberPLIs.Load(),
		WatcherDrops:      s.stats.watcherDrops.Load(),
		Refused: Refusals{
			ServerFull:  s.stats.refused[refusedServerFull].Load(),
			Rooms:       s.stats.refused[refusedRooms].Load(),
			RoomFull:    s.stats.refused[refusedRoomFull].Load(),
			Watchers:    s.stats.refused[refusedWatchers].Load(),
			RateLimited: s.stats.refused[refusedRate].Load(),
			SDPLimits:   s.stats.refused[refusedSDP].Load(),
			BodyTooBig:  s.stats.refused[refusedBody].Load(),
		},
	}
	s.mu.Lock()
	rooms := make([]*room, 0, len(s.rooms))
	for _, r := range s.rooms {
		rooms = append(rooms, r)
	}
	s.mu.Unlock()
	st.Rooms = len(rooms)
	for _, r := range rooms {
		r.mu.Lock()
		for _, p := range r.participants {
			st.Participants++
			if p.role == rolePublisher {
				st.Publishers++
			} else {
				st.Subscribers++
			}
		}
		st.Tracks += len(r.tracks)
		r.mu.Unlock()
	}
	return st
}

// enterRoom returns the room named name, creating it, with a pending join
// counted so that it cannot end before the join completes or is abandoned.
func (s *Server) enterRoom(name string) (*room, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	// Joins in progress count too, or concurrent requests would overshoot
	// (a registered participant still joining counts twice for a moment:
	// the bound errs on the safe side).
	if n := len(s.resources) + int(s.joining.Load()); n >= s.cfg.MaxParticipants {
		return nil, fmt.Errorf("%w: %d", ErrTooManyParticipants, n)
	}
	r := s.rooms[name]
	if r == nil {
		if len(s.rooms) >= s.cfg.MaxRooms {
			return nil, fmt.Errorf("%w: %d", ErrTooManyRooms, len(s.rooms))
		}
		r = newRoom(s, name)
		s.rooms[name] = r
		s.log.Info().Str("room", name).Msg("room created")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := len(r.participants) + r.pending; n >= s.cfg.MaxRoomParticipants {
		return nil, fmt.Errorf("%w: %q has %d participants, at most %d", ErrRoomFull, name, n, s.cfg.MaxRoomParticipants)
	}
	r.pending++
	s.joining.Add(1)
	return r, nil
}

// watchRoom registers an events stream on the room named name, creating it.
func (s *Server) watchRoom(name string) (*room, *watcher, [][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, nil, nil, ErrClosed
	}
	r := s.rooms[name]
	if r == nil {
		if len(s.rooms) >= s.cfg.MaxRooms {
			return nil, nil, nil, fmt.Errorf("%w: %d", ErrTooManyRooms, len(s.rooms))
		}
		r = newRoom(s, name)
		s.rooms[name] = r
	}
	w, initial, err := r.watch()
	return r, w, initial, err
}

// lookupRoom returns an existing room or nil.
func (s *Server) lookupRoom(name string) *room {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rooms[name]
}

// resource returns the participant with id in room, of the given role.
func (s *Server) resource(roomName, id string, role participantRole) (*participant, error) {
	s.mu.Lock()
	p := s.resources[id]
	s.mu.Unlock()
	if p == nil || p.room.name != roomName || p.role != role {
		return nil, fmt.Errorf("%w: resource %q", ErrNotFound, id)
	}
	return p, nil
}

// sweepLoop ends rooms empty for EmptyTimeout and measures layer bitrates.
func (s *Server) sweepLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.SweepInterval)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-s.ctx.Done():
			return
		case now := <-t.C:
			s.measure(now.Sub(last))
			last = now
			s.sweep(s.cfg.Clock.Now())
		}
	}
}

// sweep removes rooms that have been empty (no participant, no watcher, no
// join in progress) for EmptyTimeout at time now. Nothing else ends a room.
func (s *Server) sweep(now time.Time) {
	var ended []string
	s.mu.Lock()
	for name, r := range s.rooms {
		r.mu.Lock()
		if r.emptyLocked() && !r.emptySince.IsZero() && now.Sub(r.emptySince) >= s.cfg.EmptyTimeout {
			r.ended = true
			delete(s.rooms, name)
			ended = append(ended, name)
			s.log.Info().Str("room", name).Msg("room ended: empty")
		}
		r.mu.Unlock()
	}
	s.mu.Unlock()
	for _, name := range ended {
		s.roomEnded(name)
	}
}

func (s *Server) roomEnded(name string) {
	if s.cfg.OnRoomEnded != nil {
		s.cfg.OnRoomEnded(name)
	}
}

// RoomEndedEvent is the data of the room-ended event, the last one an
// events stream gets when EndRoom ends its room.
type RoomEndedEvent struct {
	Room   string `json:"room"`
	Reason string `json:"reason"`
}

// EndRoom ends the room named name at once: its event streams get a
// room-ended event with reason and close, every participant is removed
// (their PeerConnections closed), joins in progress fail, and OnRoomEnded
// is called. A later request for the name creates a new room. ErrNotFound
// when there is no such room.
func (s *Server) EndRoom(name, reason string) error {
	s.mu.Lock()
	r := s.rooms[name]
	if r == nil {
		s.mu.Unlock()
		return fmt.Errorf("%w: room %q", ErrNotFound, name)
	}
	delete(s.rooms, name)
	r.mu.Lock()
	r.ended = true
	ps := append([]*participant(nil), r.participants...)
	msg := sseMessage("room-ended", RoomEndedEvent{Room: name, Reason: reason})
	for w := range r.watchers {
		select {
		case w.ch <- msg:
		default: // full: it is cut without the event, as a slow watcher would be
		}
		r.dropWatcherLocked(w)
	}
	r.mu.Unlock()
	s.mu.Unlock()
	s.log.Info().Str("room", name).Str("reason", reason).Int("participants", len(ps)).Msg("room ended")
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() { // bounded by the room's participants
			defer wg.Done()
			s.remove(p, "room ended: "+reason)
		}()
	}
	wg.Wait()
	s.roomEnded(name)
	return nil
}

// HasRoom reports whether the server holds a room named name.
func (s *Server) HasRoom(name string) bool { return s.lookupRoom(name) != nil }

// RoomNames lists the rooms the server holds, in no order.
func (s *Server) RoomNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.rooms))
	for name := range s.rooms {
		out = append(out, name)
	}
	return out
}

// measure updates every layer's bitrate from its byte counter.
func (s *Server) measure(elapsed time.Duration) {
	if elapsed <= 0 {
		return
	}
	s.mu.Lock()
	rooms := make([]*room, 0, len(s.rooms))
	for _, r := range s.rooms {
		rooms = append(rooms, r)
	}
	s.mu.Unlock()
	for _, r := range rooms {
		r.mu.Lock()
		for _, t := range r.tracks {
			for _, l := range t.layers {
				b := l.bytes.Load()
				l.bitrate.Store(uint64(float64(b-l.lastBytes) * 8 / elapsed.Seconds()))
				l.lastBytes = b
			}
			t.followFlowingLayerLocked()
		}
		r.mu.Unlock()
	}
}

// errorStatus maps an error to its HTTP status.
func errorStatus(err error) int {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrMalformedSDP), errors.Is(err, ErrBadFragment), errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, ErrNoCommonCodec):
		return http.StatusNotAcceptable
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrPrecondition):
		return http.StatusPreconditionFailed
	case errors.Is(err, ErrUnauthorized):
		return http.StatusUnauthorized
	case errors.Is(err, ErrSDPLimit):
		return http.StatusBadRequest
	case errors.Is(err, ErrRoomFull):
		return http.StatusForbidden
	case errors.Is(err, ErrClosed), errors.Is(err, ErrFull):
		return http.StatusServiceUnavailable
	case errors.Is(err, ErrNegotiation):
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}
