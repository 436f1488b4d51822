package sfu

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/webrtc/v4"
)

type participantRole uint8

const (
	rolePublisher participantRole = iota
	roleSubscriber
)

func (r participantRole) String() string {
	if r == rolePublisher {
		return "publisher"
	}
	return "subscriber"
}

// participant is one WHIP (publisher) or WHEP (subscriber) resource: one
// PeerConnection on the shared mux.
type participant struct {
	s      *Server
	id     string
	role   participantRole
	room   *room
	pc     *webrtc.PeerConnection
	se     *webrtc.SettingEngine // pc's own (apiSettingEngine): ICE restarts set credentials there; nil if hidden
	joined time.Time
	ctx    context.Context
	cancel context.CancelFunc

	connected atomic.Bool
	closing   atomic.Bool
	done      chan struct{} // closed when removal is complete
	removed   bool          // guarded by room.mu

	sigMu sync.Mutex // serializes renegotiation (PATCH) of this resource

	mu     sync.Mutex // guards closed, etag, ufrag, tracks, downs and wg.Add
	closed bool
	etag   string
	ufrag  string // local ICE ufrag on the mux; a restart replaces it
	wg     sync.WaitGroup

	// Publisher.
	rids   map[string][]string  // mid -> simulcast rids offered (immutable)
	tracks map[string]*pubTrack // by mid

	// Subscriber.
	downs  []*downTrack
	worker *fanWorker // the send worker that writes to this subscriber
	// nackPending counts this subscriber's NACKed sequence numbers queued on
	// its worker, bounded by maxPendingNACKs.
	nackPending atomic.Int32
}

func (s *Server) newParticipant(r *room, role participantRole) (*participant, error) {
	ufrag, pwd := s.cfg.NewICECredentials()
	if !validICECredentials(ufrag, pwd) {
		return nil, fmt.Errorf("sfu: NewICECredentials returned invalid ICE credentials (ufrag %q)", ufrag)
	}
	pc, se, err := s.newPeerConnection(ufrag, pwd)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(s.ctx)
	p := &participant{
		s: s, id: s.cfg.NewID(), role: role, room: r, pc: pc, se: se, ufrag: ufrag,
		joined: s.cfg.Clock.Now(), ctx: ctx, cancel: cancel, done: make(chan struct{}),
		etag: newETag(), tracks: make(map[string]*pubTrack), rids: make(map[string][]string),
	}
	pc.OnConnectionStateChange(p.onConnectionState)
	return p, nil
}

// newPeerConnection builds a PeerConnection that uses only the mux: ICE-lite,
// UDP host candidates from the mux's listen addresses, no mDNS. It returns
// the PeerConnection's own SettingEngine too (nil if pion hides it), where
// an ICE restart sets new local credentials.
func (s *Server) newPeerConnection(ufrag, pwd string) (*webrtc.PeerConnection, *webrtc.SettingEngine, error) {
	me, err := newMediaEngine()
	if err != nil {
		return nil, nil, err
	}
	ir := &interceptor.Registry{}
	if err := registerInterceptors(me, ir); err != nil {
		return nil, nil, err
	}
	se := webrtc.SettingEngine{}
	se.SetICEUDPMux(s.cfg.UDPMux)
	se.SetLite(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4, webrtc.NetworkTypeUDP6})
	se.SetIncludeLoopbackCandidate(s.cfg.IncludeLoopback)
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetICECredentials(ufrag, pwd)
	se.SetICETimeouts(s.cfg.ICEDisconnectedTimeout, s.cfg.ICEFailedTimeout, s.cfg.ICEKeepaliveInterval)
	api := webrtc.NewAPI(webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(ir), webrtc.WithSettingEngine(se))
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, nil, fmt.Errorf("sfu: new peer connection: %w", err)
	}
	return pc, apiSettingEngine(api), nil
}

// spawn runs f on a goroutine owned by p.wg unless p is closed.
func (p *participant) spawn(f func()) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.spawnLocked(f)
}

func (p *participant) spawnLocked(f func()) bool {
	if p.closed {
		return false
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		f()
	}()
	return true
}

func (p *participant) onConnectionState(st webrtc.PeerConnectionState) {
	switch st {
	case webrtc.PeerConnectionStateConnected:
		if p.connected.Swap(true) {
			return
		}
		p.s.log.Debug().Str("participant", p.id).Str("role", p.role.String()).Msg("connected")
		// A new subscriber starts on a keyframe: ask for one.
		for _, d := range p.downList() {
			d.src.requestKeyframe(d.target.Load())
		}
	case webrtc.PeerConnectionStateFailed:
		p.s.removeAsync(p, "ice failed or consent expired")
	case webrtc.PeerConnectionStateClosed:
		p.s.removeAsync(p, "peer connection closed")
	}
}

func (p *participant) downList() []*downTrack {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.downs
}

func (p *participant) currentETag() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.etag
}

func newETag() string { return `"` + randomID() + `"` }

// onTrack publishes a publisher's track on its first layer and starts a
// reader per layer.
func (p *participant) onTrack(tr *webrtc.TrackRemote, recv *webrtc.RTPReceiver) {
	mid := tr.ID()
	if tx := recv.RTPTransceiver(); tx != nil && tx.Mid() != "" {
		mid = tx.Mid()
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	t, created := p.tracks[mid], false
	if t == nil {
		t = newPubTrack(p, mid, tr.Kind(), tr.Codec().RTPCodecCapability, p.rids[mid])
		t.extIn.Store(newExtMap(recv.GetParameters().HeaderExtensions))
		p.tracks[mid] = t
		created = true
	}
	l := t.layerByRID(tr.RID())
	if l == nil || l.active.Load() {
		p.mu.Unlock()
		p.s.log.Warn().Str("participant", p.id).Str("rid", tr.RID()).Msg("track for an undeclared or duplicate rid ignored")
		return
	}
	l.ssrc.Store(uint32(tr.SSRC()))
	l.active.Store(true)
	p.spawnLocked(func() { t.readLoop(l, tr) })
	p.spawnLocked(func() { t.rtcpLoop(recv, tr.RID()) })
	p.mu.Unlock()
	if created {
		p.room.publish(t)
	}
	if len(*t.downs.Load()) > 0 {
		t.requestKeyframe(l.idx)
	}
}

// negotiate applies offer, lets between add tracks, answers and waits for
// the mux's candidates (the answer is complete: no server-side trickle).
func (p *participant) negotiate(offer string, between func() error) (string, error) {
	if err := p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		return "", fmt.Errorf("%w: %w", ErrNegotiation, err)
	}
	if between != nil {
		if err := between(); err != nil {
			return "", err
		}
	}
	answer, err := p.pc.CreateAnswer(nil)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrNegotiation, err)
	}
	gathered := webrtc.GatheringCompletePromise(p.pc)
	if err := p.pc.SetLocalDescription(answer); err != nil {
		return "", fmt.Errorf("%w: %w", ErrNegotiation, err)
	}
	if err := awaitGathering(p.pc, gathered, p.s.cfg.GatherTimeout, p.s.ctx.Done()); err != nil {
		return "", err
	}
	local := p.pc.LocalDescription().SDP
	if !strings.Contains(local, "a=candidate:") {
		// An ICE-lite answer without a candidate can never connect: the
		// media port refused the session (mux MaxSessions, --max-sessions).
		return "", ErrMediaPortFull
	}
	return local, nil
}

// register adds p to the resource table; false once the server is closed.
func (s *Server) register(p *participant) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.resources[p.id] = p
	return true
}

// publish handles a WHIP offer.
func (s *Server) publish(roomName, offer string) (*participant, string, error) {
	info, err := parseOffer(offer, true, s.cfg.sdpLimits())
	if err != nil {
		return nil, "", err
	}
	r, err := s.enterRoom(roomName)
	if err != nil {
		return nil, "", err
	}
	p, err := s.newParticipant(r, rolePublisher)
	if err != nil {
		r.abandon()
		return nil, "", err
	}
	for _, m := range info.media {
		if len(m.rids) > 0 {
			p.rids[m.mid] = m.rids
		}
	}
	p.pc.OnTrack(p.onTrack)
	answer, err := p.negotiate(offer, nil)
	if err == nil && !s.register(p) {
		err = ErrClosed
	}
	if err != nil {
		s.discard(p)
		return nil, "", err
	}
	if !r.join(p) {
		s.remove(p, "room ended while joining")
		return nil, "", fmt.Errorf("%w: room %q ended while joining", ErrClosed, roomName)
	}
	s.log.Info().Str("room", roomName).Str("participant", p.id).Msg("publisher joined")
	return p, answer, nil
}

// discard undoes a participant whose signaling failed before it joined.
func (s *Server) discard(p *participant) {
	s.remove(p, "signaling failed")
	p.room.abandon()
}

// subscribe handles a WHEP offer: the room's tracks (or one publisher's) are
// matched to the offer's receiving m-sections in order, per kind.
func (s *Server) subscribe(roomName, offer, publisher string) (*participant, string, error) {
	info, err := parseOffer(offer, false, s.cfg.sdpLimits())
	if err != nil {
		return nil, "", err
	}
	r, err := s.enterRoom(roomName)
	if err != nil {
		return nil, "", err
	}
	tracks, ok := r.tracksSnapshot(publisher)
	if !ok {
		r.abandon()
		return nil, "", fmt.Errorf("%w: publisher %q in room %q", ErrNotFound, publisher, roomName)
	}
	assigned, err := assignTracks(info, tracks)
	if err != nil {
		r.abandon()
		return nil, "", err
	}
	p, err := s.newParticipant(r, roleSubscriber)
	if err != nil {
		r.abandon()
		return nil, "", err
	}
	p.worker = s.fan.assign()
	answer, err := p.negotiate(offer, func() error {
		for _, t := range assigned {
			d := newDownTrack(p, t, t.highestLayer())
			sender, err := p.pc.AddTrack(d)
			if err != nil {
				return fmt.Errorf("%w: add track: %w", ErrNegotiation, err)
			}
			d.sender = sender
			p.mu.Lock()
			p.downs = append(p.downs, d)
			p.spawnLocked(d.rtcpLoop)
			p.mu.Unlock()
		}
		return nil
	})
	if err == nil && !s.register(p) {
		err = ErrClosed
	}
	if err != nil {
		s.discard(p)
		return nil, "", err
	}
	if !r.join(p) {
		s.remove(p, "room ended while joining")
		return nil, "", fmt.Errorf("%w: room %q ended while joining", ErrClosed, roomName)
	}
	s.log.Info().Str("room", roomName).Str("participant", p.id).Int("tracks", len(assigned)).Msg("subscriber joined")
	return p, answer, nil
}

// assignTracks pairs tracks with the offer's m-sections the way pion's
// AddTrack will use them: per kind, in order, each m-section taking the next
// track it can decode. It fails only when tracks exist that no m-section can
// receive for lack of a codec.
func assignTracks(info *offerInfo, tracks []*pubTrack) ([]*pubTrack, error) {
	var out []*pubTrack
	used := make([]bool, len(tracks))
	for _, kind := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeAudio, webrtc.RTPCodecTypeVideo} {
		for i := range info.media {
			m := &info.media[i]
			if m.kind != kind.String() {
				continue
			}
			if !m.active || !m.receives() {
				break // pion would hand the next track to this section
			}
			found := -1
			for j, t := range tracks {
				if !used[j] && t.kind == kind && m.canReceive(t.codec) {
					found = j
					break
				}
			}
			if found < 0 {
				break
			}
			used[found] = true
			out = append(out, tracks[found])
		}
	}
	if len(out) == 0 && len(tracks) > 0 {
		var have []string
		for _, t := range tracks {
			have = append(have, t.codec.MimeType)
		}
		for _, m := range info.media {
			for _, t := range tracks {
				if m.active && m.kind == t.kind.String() && !m.canReceive(t.codec) {
					return nil, fmt.Errorf("%w: the room's tracks are [%s], the offer receives none of them",
						ErrNoCommonCodec, strings.Join(have, " "))
				}
			}
		}
	}
	return out, nil
}

// remove ends p completely: resource table, room (tracks, subscriptions,
// events), PeerConnection (which releases its ufrag on the mux), goroutines.
// Concurrent calls wait for the first.
func (s *Server) remove(p *participant, reason string) {
	if !p.closing.CompareAndSwap(false, true) {
		<-p.done
		return
	}
	defer close(p.done)
	s.mu.Lock()
	if s.resources[p.id] == p {
		delete(s.resources, p.id)
	}
	s.mu.Unlock()
	p.room.leave(p)
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	if err := p.pc.GracefulClose(); err != nil {
		s.log.Debug().Err(err).Str("participant", p.id).Msg("close peer connection")
	}
	p.wg.Wait()
	if p.worker != nil {
		s.fan.release(p.worker)
	}
	s.log.Info().Str("room", p.room.name).Str("participant", p.id).Str("role", p.role.String()).Str("reason", reason).Msg("participant left")
}

// removeAsync removes p from a goroutine of its own: pion callbacks must not
// close their own PeerConnection.
func (s *Server) removeAsync(p *participant, reason string) {
	if p.closing.Load() {
		return
	}
	s.goTracked(func() { s.remove(p, reason) })
}

// patch applies a trickle-ice-sdpfrag: remote candidates, or an ICE restart
// when it carries new remote credentials (RFC 9725 §4.3). It returns the
// server's fragment for a restart ("" otherwise) and the resource's ETag,
// which a restart replaces.
func (p *participant) patch(frag *trickleFragment, ifMatch string) (string, string, error) {
	p.sigMu.Lock()
	defer p.sigMu.Unlock()
	etag := p.currentETag()
	if ifMatch != "" && ifMatch != "*" && ifMatch != etag {
		return "", etag, fmt.Errorf("%w: If-Match %s, resource is %s", ErrPrecondition, ifMatch, etag)
	}
	rd := p.pc.RemoteDescription()
	if rd == nil {
		return "", etag, ErrNotFound
	}
	body := ""
	if ufrag, pwd := iceCredentials(rd.SDP); frag.ufrag != "" && (frag.ufrag != ufrag || frag.pwd != pwd) {
		var err error
		if body, err = p.restartICE(rd.SDP, frag); err != nil {
			return "", etag, err
		}
		etag = p.currentETag()
	}
	for _, c := range frag.candidates {
		mid, ml := c.mid, c.mline
		init := webrtc.ICECandidateInit{Candidate: c.candidate, SDPMLineIndex: &ml}
		if mid != "" {
			init.SDPMid = &mid
		}
		if err := p.pc.AddICECandidate(init); err != nil {
			return "", etag, fmt.Errorf("%w: %w", ErrBadFragment, err)
		}
	}
	return body, etag, nil
}

// errRestartUnsupported: the pion in use hides the SettingEngine an ICE
// restart must change (see apiSettingEngine). A 500, and the session goes on
// with its current ICE credentials.
var errRestartUnsupported = errors.New("sfu: ICE restart unsupported with this pion version")

// restartICE restarts ICE with the client's new credentials and fresh local
// ones from Config.NewICECredentials (96+ random bits, and a cluster node's
// owner tag, so the relay still routes the new ufrag to this node), then
// renews the ETag. Called with sigMu held; the caller adds the fragment's
// candidates.
//
// pion restarts an answering agent inside SetRemoteDescription of an offer
// whose remote credentials changed, with the credentials of the
// PeerConnection's SettingEngine: so the fresh ones are set there first. The
// agent's Restart releases the old ufrag on the mux at once (pion drops the
// selected pair and every candidate: media pauses until the client's checks
// with the new credentials succeed) and registers the new one when it
// gathers again. DTLS and SRTP go on over the new pair; no new handshake.
func (p *participant) restartICE(remote string, frag *trickleFragment) (string, error) {
	if p.se == nil {
		return "", errRestartUnsupported
	}
	ufrag, pwd := p.s.cfg.NewICECredentials()
	if !validICECredentials(ufrag, pwd) {
		return "", fmt.Errorf("sfu: NewICECredentials returned invalid ICE credentials (ufrag %q)", ufrag)
	}
	offer, err := restartOffer(remote, frag.ufrag, frag.pwd)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrNegotiation, err)
	}
	p.se.SetICECredentials(ufrag, pwd)
	local, err := p.negotiate(offer, nil)
	if err != nil {
		// If pion restarted the agent before failing, the client cannot
		// complete ICE: it fails, and the participant is removed then.
		return "", err
	}
	if u, _ := iceCredentials(local); u != ufrag {
		// pion restarted the agent with other credentials than the
		// SettingEngine's (a pion change; TestICERestartAPISettingEngine
		// fails): the answer's are the ones that work now.
		p.s.log.Error().Str("participant", p.id).Str("ufrag", u).Msg("ICE restart did not take the new credentials")
		ufrag = u
	}
	body, err := localFragment(local)
	if err != nil {
		return "", err
	}
	p.mu.Lock()
	p.ufrag = ufrag
	p.etag = newETag()
	p.mu.Unlock()
	p.s.log.Debug().Str("participant", p.id).Str("ufrag", ufrag).Msg("ICE restarted")
	return body, nil
}

// localUfrag is the participant's current ICE ufrag on the mux.
func (p *participant) localUfrag() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ufrag
}

// apiSettingEngine returns the SettingEngine api's PeerConnections use: the
// copy WithSettingEngine made, which pion keeps in an unexported field. An
// answering PeerConnection's ICE restart (ICETransport.restart, from
// SetRemoteDescription) takes the local credentials from it, and pion v4
// has no other way to give a restart chosen credentials; the field is read,
// never written, here: SetICECredentials on the result is pion's own API.
// Nil when the field is gone (a pion upgrade; TestICERestartAPISettingEngine fails).
func apiSettingEngine(api *webrtc.API) *webrtc.SettingEngine {
	v := reflect.ValueOf(api).Elem().FieldByName("settingEngine")
	if !v.IsValid() || v.Type() != reflect.TypeFor[*webrtc.SettingEngine]() || v.IsNil() {
		return nil
	}
	return (*webrtc.SettingEngine)(v.UnsafePointer())
}
