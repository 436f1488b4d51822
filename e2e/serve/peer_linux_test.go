package serve

// Real pion WHIP publishers and WHEP subscribers against the process's HTTP
// API, after sfu/helpers_test.go: synthetic VP8 whose payload ends in a
// packet counter, a keyframe on every PLI.

import (
	"encoding/binary"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

// Client ICE timing: consent checks often enough that a live session never
// looks idle, and a session the node ended shows as disconnected quickly.
const (
	clientKeepalive    = 250 * time.Millisecond
	clientDisconnected = 3 * time.Second
	clientFailed       = 6 * time.Second
)

const (
	gatherBudget  = 10 * time.Second
	connectBudget = 20 * time.Second
	mediaBudget   = 20 * time.Second
)

// videoEvery paces the publisher: 200 packets/s.
const videoEvery = 5 * time.Millisecond

// peer is a client PeerConnection and the states it went through.
type peer struct {
	t        *testing.T
	pc       *webrtc.PeerConnection
	location string // the WHIP/WHEP resource, a path on the node

	mu     sync.Mutex
	states []webrtc.PeerConnectionState
}

// newPeer makes a client PeerConnection with host candidates on loopback.
func newPeer(t *testing.T) *peer { return newPeerOn(t, "lo") }

// newPeerOn makes a client PeerConnection with host candidates on iface
// only (eth0 in a test namespace).
func newPeerOn(t *testing.T, iface string) *peer {
	t.Helper()
	me := &webrtc.MediaEngine{}
	if err := me.RegisterDefaultCodecs(); err != nil {
		t.Fatal(err)
	}
	ir := &interceptor.Registry{}
	if err := webrtc.RegisterDefaultInterceptors(me, ir); err != nil {
		t.Fatal(err)
	}
	se := webrtc.SettingEngine{}
	se.SetIncludeLoopbackCandidate(true)
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetInterfaceFilter(func(name string) bool { return name == iface })
	se.SetICETimeouts(clientDisconnected, clientFailed, clientKeepalive)
	api := webrtc.NewAPI(webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(ir), webrtc.WithSettingEngine(se))
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	p := &peer{t: t, pc: pc}
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		p.mu.Lock()
		p.states = append(p.states, s)
		p.mu.Unlock()
	})
	return p
}

func (p *peer) state() webrtc.PeerConnectionState {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.states) == 0 {
		return webrtc.PeerConnectionStateNew
	}
	return p.states[len(p.states)-1]
}

// statesSince returns the states entered from the i-th change on.
func (p *peer) statesSince(i int) []webrtc.PeerConnectionState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.states[min(i, len(p.states)):])
}

func (p *peer) stateCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.states)
}

// signal posts the offer to path on n (/whip/room or /whep/room), applies
// the answer and keeps the resource's Location.
func (p *peer) signal(n *node, path string) {
	p.t.Helper()
	offer, err := p.pc.CreateOffer(nil)
	if err != nil {
		p.t.Fatal(err)
	}
	gathered := webrtc.GatheringCompletePromise(p.pc)
	if err := p.pc.SetLocalDescription(offer); err != nil {
		p.t.Fatal(err)
	}
	select {
	case <-gathered:
	case <-time.After(gatherBudget):
		p.t.Fatal("ICE gathering timed out")
	}
	code, hdr, body := n.do(n.base, http.MethodPost, path, p.pc.LocalDescription().SDP, "Content-Type", "application/sdp")
	if code != http.StatusCreated {
		p.t.Fatalf("POST %s: %d %s", path, code, body)
	}
	p.location = hdr.Get("Location")
	if !strings.HasPrefix(p.location, path+"/") {
		p.t.Fatalf("POST %s: Location %q", path, p.location)
	}
	if err := p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: body}); err != nil {
		p.t.Fatalf("POST %s: answer: %v", path, err)
	}
}

// id is the participant id: the last element of the Location.
func (p *peer) id() string { return p.location[strings.LastIndexByte(p.location, '/')+1:] }

// waitConnected waits for the PeerConnection to connect.
func (p *peer) waitConnected() {
	p.t.Helper()
	waitFor(p.t, "peer connected", connectBudget, func() bool { return p.state() == webrtc.PeerConnectionStateConnected })
}

// leave DELETEs the resource, as a WHIP/WHEP client that hangs up does.
func (p *peer) leave(n *node) {
	p.t.Helper()
	if code, _, body := n.do(n.base, http.MethodDelete, p.location, ""); code != http.StatusOK {
		p.t.Fatalf("DELETE %s: %d %s", p.location, code, body)
	}
}

// publisher sends synthetic VP8 through WHIP.
type publisher struct {
	*peer
	track  *webrtc.TrackLocalStaticRTP
	sender *webrtc.RTPSender
	plis   atomic.Int64
	kf     atomic.Bool // send a keyframe next
	sent   atomic.Uint64

	sendDone chan struct{} // closed when sendLoop has returned

	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// newPublisher publishes to room on n and starts sending at videoEvery;
// closed at clean-up.
func newPublisher(t *testing.T, n *node, room string) *publisher {
	t.Helper()
	return newPublisherOn(t, n, room, "lo")
}

// newPublisherOn is newPublisher with its candidates on iface.
func newPublisherOn(t *testing.T, n *node, room, iface string) *publisher {
	t.Helper()
	p := &publisher{peer: newPeerOn(t, iface), stop: make(chan struct{}), sendDone: make(chan struct{})}
	t.Cleanup(p.close)
	tr, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8}, "video", "pub")
	if err != nil {
		t.Fatal(err)
	}
	p.track = tr
	s, err := p.pc.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
	if err != nil {
		t.Fatal(err)
	}
	p.sender = s.Sender()
	p.kf.Store(true)
	p.signal(n, "/whip/"+room)
	p.wg.Add(2)
	go p.rtcpLoop()
	go p.sendLoop()
	return p
}

func (p *publisher) rtcpLoop() {
	defer p.wg.Done()
	for {
		pkts, _, err := p.sender.ReadRTCP()
		if err != nil {
			return
		}
		for _, pk := range pkts {
			switch pk.(type) {
			case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
				p.plis.Add(1)
				p.kf.Store(true)
			}
		}
	}
}

// sendLoop writes one VP8 packet every videoEvery; the payload ends in the
// packet's counter.
func (p *publisher) sendLoop() {
	defer p.wg.Done()
	defer close(p.sendDone)
	tick := time.NewTicker(videoEvery)
	defer tick.Stop()
	for n := uint64(0); ; n++ {
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
		pkt := &rtp.Packet{
			Header:  rtp.Header{Version: 2, Marker: true, SequenceNumber: uint16(n), Timestamp: uint32(n * 450)},
			Payload: vp8Payload(p.kf.Swap(false), n),
		}
		if err := p.track.WriteRTP(pkt); err != nil {
			return
		}
		p.sent.Store(n + 1)
	}
}

func (p *publisher) stopSending() {
	p.stopOnce.Do(func() { close(p.stop) })
}

func (p *publisher) close() {
	p.stopSending()
	_ = p.pc.GracefulClose()
	p.wg.Wait()
}

// vp8Payload is a one-partition VP8 frame (key or delta) whose last 8 bytes
// are counter.
func vp8Payload(keyframe bool, counter uint64) []byte {
	b := []byte{0x10, 0x11, 0x02, 0x00} // descriptor S=1; P=1: delta frame
	if keyframe {
		b[1] = 0x10 // P=0: key frame
	}
	return binary.BigEndian.AppendUint64(b, counter)
}

// subscriber receives through WHEP and records the publisher's counters.
type subscriber struct {
	*peer
	wg sync.WaitGroup

	mu        sync.Mutex
	count     int                // packets received
	last      uint64             // counter of the last one
	backwards int                // packets whose counter did not increase
	lost      uint64             // counters skipped
	recovered int                // of the backwards ones, counters skipped before (a NACK's retransmission)
	seen      [seenWindow]uint64 // counter+1 of the packets received, by counter mod seenWindow
	lastAt    time.Time          // arrival of the last one
	readErr   error              // why the track's reader stopped
	gaps      []gap              // the latest inter-arrival gaps of at least minGap, at most maxGaps

	ssrc    atomic.Uint32 // the video track's SSRC, once it arrived
	lastSeq atomic.Uint32 // sequence number of the latest packet read
}

// seenWindow is how many of the latest counters a subscriber remembers, to
// tell a late retransmission from a duplicate.
const seenWindow = 4096

// Gaps kept per subscriber: enough to find the one a re-hash or a node
// failure made among a few seconds of media.
const (
	minGap  = 50 * time.Millisecond
	maxGaps = 256
)

// gap is a pause in a subscriber's media: no packet arrived from End-Len to
// End.
type gap struct {
	End time.Time
	Len time.Duration
}

func newSubscriber(t *testing.T, n *node, room string) *subscriber {
	t.Helper()
	return newSubscriberOn(t, n, room, "lo")
}

// newSubscriberOn is newSubscriber with its candidates on iface.
func newSubscriberOn(t *testing.T, n *node, room, iface string) *subscriber {
	t.Helper()
	s := &subscriber{peer: newPeerOn(t, iface)}
	t.Cleanup(s.close)
	if _, err := s.pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
		t.Fatal(err)
	}
	s.pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		s.ssrc.Store(uint32(tr.SSRC()))
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for {
				pkt, _, err := tr.ReadRTP()
				if err != nil {
					s.mu.Lock()
					s.readErr = err
					s.mu.Unlock()
					return
				}
				s.lastSeq.Store(uint32(pkt.SequenceNumber))
				s.add(pkt.Payload)
			}
		}()
	})
	s.signal(n, "/whep/"+room)
	return s
}

func (s *subscriber) add(payload []byte) {
	if len(payload) < 12 {
		return
	}
	c := binary.BigEndian.Uint64(payload[len(payload)-8:])
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.count > 0 {
		if d := now.Sub(s.lastAt); d >= minGap {
			if len(s.gaps) == maxGaps {
				s.gaps = slices.Delete(s.gaps, 0, 1)
			}
			s.gaps = append(s.gaps, gap{End: now, Len: d})
		}
	}
	s.lastAt = now
	switch {
	case s.count == 0:
	case c <= s.last:
		s.backwards++
		if s.last-c < seenWindow && s.seen[c%seenWindow] != c+1 {
			s.recovered++
			s.seen[c%seenWindow] = c + 1
		}
		return
	default:
		s.lost += c - s.last - 1
	}
	s.count++
	s.last = c
	s.seen[c%seenWindow] = c + 1
}

// stopped returns the error that ended the track's reader, or nil.
func (s *subscriber) stopped() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.readErr
}

// late returns how many packets came after a higher counter, and how many
// of those filled a counter skipped before (retransmissions after a NACK)
// rather than repeating one received.
func (s *subscriber) late() (backwards, recovered int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.backwards, s.recovered
}

// received returns the packets received, the last counter, and how many
// counters were skipped or came backwards.
func (s *subscriber) received() (count int, last, lost uint64, backwards int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count, s.last, s.lost, s.backwards
}

// gapsSoFar returns the gaps recorded so far, oldest first.
func (s *subscriber) gapsSoFar() []gap {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.gaps)
}

// waitCounter waits until the subscriber has received a counter of at least
// c.
func (s *subscriber) waitCounter(c uint64, d time.Duration) {
	s.t.Helper()
	waitFor(s.t, "media at the subscriber", d, func() bool {
		n, last, _, _ := s.received()
		return n > 0 && last >= c
	})
}

func (s *subscriber) close() {
	_ = s.pc.GracefulClose()
	s.wg.Wait()
}
