package sfu

import (
	"context"
	"encoding/binary"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oneport/oneport/mux"
	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
)

// testEnv is a server on a real mux on 127.0.0.1 with its HTTP handler.
type testEnv struct {
	t    *testing.T
	mux  *mux.Mux
	srv  *Server
	http *httptest.Server
}

func newTestEnv(t *testing.T, adjust func(*Config)) *testEnv {
	t.Helper()
	return newTestEnvOn(t, mux.Config{}, adjust)
}

// newTestEnvOn is newTestEnv on a mux configured by mcfg.
func newTestEnvOn(t *testing.T, mcfg mux.Config, adjust func(*Config)) *testEnv {
	t.Helper()
	m, err := mux.Listen("127.0.0.1:0", mcfg)
	if err != nil {
		t.Fatalf("mux.Listen: %v", err)
	}
	cfg := Config{UDPMux: m, IncludeLoopback: true, KeyframeInterval: 50 * time.Millisecond}
	if adjust != nil {
		adjust(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		m.Close()
		t.Fatalf("New: %v", err)
	}
	e := &testEnv{t: t, mux: m, srv: s, http: httptest.NewServer(s.Handler())}
	t.Cleanup(func() {
		e.http.CloseClientConnections()
		e.http.Close()
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		m.Close()
	})
	return e
}

var _ ice.UDPMux = (*mux.Mux)(nil)

// newClientPC is a pion client on loopback (host candidates only).
func newClientPC(t *testing.T) *webrtc.PeerConnection {
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
	api := webrtc.NewAPI(webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(ir), webrtc.WithSettingEngine(se))
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.GracefulClose() })
	return pc
}

// completeOffer creates pc's offer and waits for its candidates.
func completeOffer(t *testing.T, pc *webrtc.PeerConnection) string {
	t.Helper()
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	done := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("gathering timed out")
	}
	return pc.LocalDescription().SDP
}

type httpResult struct {
	code int
	hdr  http.Header
	body string
}

func (e *testEnv) do(method, path, ctype, body string, hdr ...string) httpResult {
	e.t.Helper()
	req, err := http.NewRequest(method, e.http.URL+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := e.http.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return httpResult{code: resp.StatusCode, hdr: resp.Header, body: string(b)}
}

// signal posts pc's offer to path (/whip/r or /whep/r...), applies the answer
// and returns the resource Location.
func (e *testEnv) signal(pc *webrtc.PeerConnection, path string) string {
	e.t.Helper()
	res := e.do("POST", path, "application/sdp", completeOffer(e.t, pc))
	if res.code != http.StatusCreated {
		e.t.Fatalf("POST %s: %d %s", path, res.code, res.body)
	}
	if res.hdr.Get("ETag") == "" || res.hdr.Get("Content-Type") != "application/sdp" {
		e.t.Fatalf("POST %s: headers %v", path, res.hdr)
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: res.body}); err != nil {
		e.t.Fatalf("answer: %v", err)
	}
	return res.hdr.Get("Location")
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronization
	}
}

// Synthetic media. Payload (after the codec's own header):
// layer byte, counter uint64, send time unix ns int64.
const synthPayloadLen = 17

func vp8Payload(keyframe bool, layer byte, counter uint64) []byte {
	b := make([]byte, 0, 4+synthPayloadLen)
	b = append(b, 0x10) // descriptor: S=1, PID=0
	if keyframe {
		b = append(b, 0x10, 0x02, 0x00) // P=0: key frame
	} else {
		b = append(b, 0x11, 0x02, 0x00) // P=1
	}
	return appendSynth(b, layer, counter)
}

func appendSynth(b []byte, layer byte, counter uint64) []byte {
	b = append(b, layer)
	b = binary.BigEndian.AppendUint64(b, counter)
	return binary.BigEndian.AppendUint64(b, uint64(time.Now().UnixNano()))
}

// readSynth returns the layer and counter at the end of a synthetic payload.
func readSynth(p []byte) (byte, uint64, bool) {
	if len(p) < synthPayloadLen {
		return 0, 0, false
	}
	s := p[len(p)-synthPayloadLen:]
	return s[0], binary.BigEndian.Uint64(s[1:9]), true
}

// publisher is a pion WHIP client sending synthetic VP8 (simulcast when rids
// are given) and Opus, with a keyframe on every PLI it receives.
type publisher struct {
	pc                   *webrtc.PeerConnection
	video                []*webrtc.TrackLocalStaticRTP // one per layer
	audio                *webrtc.TrackLocalStaticRTP
	sender               *webrtc.RTPSender
	rids                 []string
	mid                  string
	midID                uint8
	ridID                uint8
	plis                 atomic.Int64
	kfWanted             []atomic.Bool
	videoSent, audioSent atomic.Uint64
	location             string

	stop     chan struct{}
	sendDone chan struct{}
	wg       sync.WaitGroup
}

func newPublisher(t *testing.T, e *testEnv, room string, rids []string, withAudio bool) *publisher {
	t.Helper()
	p := &publisher{pc: newClientPC(t), rids: rids, stop: make(chan struct{})}
	layers := rids
	if len(layers) == 0 {
		layers = []string{""}
	}
	p.kfWanted = make([]atomic.Bool, len(layers))
	for i, rid := range layers {
		var opts []func(*webrtc.TrackLocalStaticRTP)
		if rid != "" {
			opts = append(opts, webrtc.WithRTPStreamID(rid))
		}
		tr, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8}, "video", "pub", opts...)
		if err != nil {
			t.Fatal(err)
		}
		p.video = append(p.video, tr)
		if i == 0 {
			s, err := p.pc.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
			if err != nil {
				t.Fatal(err)
			}
			p.sender = s.Sender()
			defer func() { p.mid = s.Mid() }()
		} else if err := p.sender.AddEncoding(tr); err != nil {
			t.Fatal(err)
		}
		p.kfWanted[i].Store(true)
	}
	if withAudio {
		a, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus}, "audio", "pub")
		if err != nil {
			t.Fatal(err)
		}
		p.audio = a
		as, err := p.pc.AddTransceiverFromTrack(a, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
		if err != nil {
			t.Fatal(err)
		}
		p.wg.Add(1)
		go func() { // drain audio RTCP for the interceptors
			defer p.wg.Done()
			for {
				if _, _, err := as.Sender().ReadRTCP(); err != nil {
					return
				}
			}
		}()
	}
	p.location = e.signal(p.pc, "/whip/"+room)
	for _, ext := range p.sender.GetParameters().HeaderExtensions {
		switch ext.URI {
		case sdp.SDESMidURI:
			p.midID = uint8(ext.ID)
		case sdp.SDESRTPStreamIDURI:
			p.ridID = uint8(ext.ID)
		}
	}
	if len(rids) == 0 {
		p.wg.Add(1)
		go p.rtcpLoop("")
	}
	for _, rid := range rids {
		p.wg.Add(1)
		go p.rtcpLoop(rid)
	}
	t.Cleanup(p.close)
	return p
}

// rtcpLoop reads one encoding's RTCP (all of it when rid is "").
func (p *publisher) rtcpLoop(rid string) {
	defer p.wg.Done()
	for {
		read := p.sender.ReadRTCP
		if rid != "" {
			read = func() ([]rtcp.Packet, interceptor.Attributes, error) { return p.sender.ReadSimulcastRTCP(rid) }
		}
		pkts, _, err := read()
		if err != nil {
			return
		}
		for _, pk := range pkts {
			var ssrc uint32
			switch x := pk.(type) {
			case *rtcp.PictureLossIndication:
				ssrc = x.MediaSSRC
			case *rtcp.FullIntraRequest:
				ssrc = x.MediaSSRC
			default:
				continue
			}
			p.plis.Add(1)
			for i, enc := range p.sender.GetParameters().Encodings {
				if uint32(enc.SSRC) == ssrc && i < len(p.kfWanted) {
					p.kfWanted[i].Store(true)
				}
			}
		}
	}
}

// start sends video every videoEvery (per layer) and audio every 20 ms,
// until stop or maxPackets video packets per layer.
func (p *publisher) start(videoEvery time.Duration, maxPackets uint64) {
	p.sendDone = make(chan struct{})
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer close(p.sendDone)
		tick := time.NewTicker(videoEvery)
		defer tick.Stop()
		audioEvery := uint64(20 * time.Millisecond / videoEvery)
		if audioEvery == 0 {
			audioEvery = 1
		}
		var n uint64
		seq := make([]uint16, len(p.video))
		var aseq uint16
		for n < maxPackets {
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
			for i, tr := range p.video {
				kf := p.kfWanted[i].Swap(false)
				pkt := &rtp.Packet{Header: rtp.Header{Version: 2, Marker: true, SequenceNumber: seq[i], Timestamp: uint32(n * 3000)},
					Payload: vp8Payload(kf, byte(i), n)}
				seq[i]++
				if len(p.rids) > 0 {
					_ = pkt.Header.SetExtension(p.midID, []byte(p.mid))
					_ = pkt.Header.SetExtension(p.ridID, []byte(p.rids[i]))
				}
				if err := tr.WriteRTP(pkt); err != nil {
					return
				}
			}
			p.videoSent.Store(n + 1)
			if p.audio != nil && n%audioEvery == 0 {
				pkt := &rtp.Packet{Header: rtp.Header{Version: 2, SequenceNumber: aseq, Timestamp: uint32(aseq) * 960},
					Payload: appendSynth([]byte{0xfc}, 0, uint64(aseq))}
				aseq++
				if err := p.audio.WriteRTP(pkt); err != nil {
					return
				}
				p.audioSent.Store(uint64(aseq))
			}
			n++
		}
	}()
}

// stopSending stops the sender and waits for it: counters are then final.
func (p *publisher) stopSending() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	if p.sendDone != nil {
		<-p.sendDone
	}
}

func (p *publisher) close() {
	p.stopSending()
	_ = p.pc.GracefulClose()
	p.wg.Wait()
}

// received is what a subscriber got on one track.
type received struct {
	mu       sync.Mutex
	ssrcs    map[uint32]bool
	seqs     []uint16
	layers   []byte
	counters []uint64
	ts       []uint32
}

func (r *received) add(p *rtp.Packet) {
	layer, c, ok := readSynth(p.Payload)
	if !ok {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ssrcs == nil {
		r.ssrcs = map[uint32]bool{}
	}
	r.ssrcs[p.SSRC] = true
	r.seqs = append(r.seqs, p.SequenceNumber)
	r.layers = append(r.layers, layer)
	r.counters = append(r.counters, c)
	r.ts = append(r.ts, p.Timestamp)
}

func (r *received) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.counters)
}

func (r *received) last() (uint64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.counters) == 0 {
		return 0, false
	}
	return r.counters[len(r.counters)-1], true
}

// subscriber is a pion WHEP client recording what it receives per kind.
type subscriber struct {
	pc        *webrtc.PeerConnection
	location  string
	video     received
	audio     received
	videoSSRC atomic.Uint32
	wg        sync.WaitGroup
}

func newSubscriber(t *testing.T, e *testEnv, path string, video, audio bool) *subscriber {
	t.Helper()
	s := &subscriber{pc: newClientPC(t)}
	if video {
		if _, err := s.pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
			t.Fatal(err)
		}
	}
	if audio {
		if _, err := s.pc.AddTransceiverFromKind(webrtc.RTPCodecTypeAudio, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
			t.Fatal(err)
		}
	}
	s.pc.OnTrack(func(tr *webrtc.TrackRemote, recv *webrtc.RTPReceiver) {
		// pion's report interceptors see the server's sender reports only
		// as they are read (its receiver reports then carry LSR/DLSR).
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for {
				if _, _, err := recv.ReadRTCP(); err != nil {
					return
				}
			}
		}()
		rec := &s.audio
		if tr.Kind() == webrtc.RTPCodecTypeVideo {
			rec = &s.video
			s.videoSSRC.Store(uint32(tr.SSRC()))
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for {
				p, _, err := tr.ReadRTP()
				if err != nil {
					return
				}
				rec.add(p)
			}
		}()
	})
	s.location = e.signal(s.pc, path)
	t.Cleanup(s.close)
	return s
}

func (s *subscriber) close() {
	_ = s.pc.GracefulClose()
	s.wg.Wait()
}

// checkInOrder asserts consecutive counters and RTP sequence numbers from the
// first packet received on, and one SSRC.
func checkInOrder(t *testing.T, name string, r *received) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.ssrcs) != 1 {
		t.Errorf("%s: %d SSRCs, want 1", name, len(r.ssrcs))
	}
	for i := 1; i < len(r.counters); i++ {
		if r.counters[i] != r.counters[i-1]+1 {
			t.Fatalf("%s: packet %d has counter %d after %d (loss or reorder)", name, i, r.counters[i], r.counters[i-1])
		}
		if r.seqs[i] != r.seqs[i-1]+1 {
			t.Fatalf("%s: packet %d has seq %d after %d", name, i, r.seqs[i], r.seqs[i-1])
		}
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
