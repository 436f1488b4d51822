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

func newPeer(t *testing.T) *peer {
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
	se.SetInterfaceFilter(func(name string) bool { return name == "lo" })
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

	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// newPublisher publishes to room on n and starts sending at videoEvery;
// closed at clean-up.
func newPublisher(t *testing.T, n *node, room string) *publisher {
	t.Helper()
	p := &publisher{peer: newPeer(t), stop: make(chan struct{})}
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
	count     int    // packets received
	last      uint64 // counter of the last one
	backwards int    // packets whose counter did not increase
	lost      uint64 // counters skipped
}

func newSubscriber(t *testing.T, n *node, room string) *subscriber {
	t.Helper()
	s := &subscriber{peer: newPeer(t)}
	t.Cleanup(s.close)
	if _, err := s.pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
		t.Fatal(err)
	}
	s.pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for {
				pkt, _, err := tr.ReadRTP()
				if err != nil {
					return
				}
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
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.count == 0:
	case c <= s.last:
		s.backwards++
		return
	default:
		s.lost += c - s.last - 1
	}
	s.count++
	s.last = c
}

// received returns the packets received, the last counter, and how many
// counters were skipped or came backwards.
func (s *subscriber) received() (count int, last, lost uint64, backwards int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count, s.last, s.lost, s.backwards
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
