package cluster

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"

	"github.com/oneport/oneport/cluster"
	"github.com/oneport/oneport/mux"
	"github.com/oneport/oneport/sfu"
)

// node is one in-process oneport node, wired as cmd/oneport serve wires it.
type node struct {
	id   cluster.Identity
	mux  *mux.Mux
	srv  *sfu.Server
	cl   *cluster.Node
	hs   *http.Server
	url  string
	once sync.Once
}

func startNode(t *testing.T, ip string, join ...string) *node {
	t.Helper()
	n := &node{id: cluster.NewIdentity()}
	var err error
	if n.mux, err = mux.Listen(ip+":0", mux.Config{Sockets: 1, Tag: n.id.Tag, Relay: ip + ":0"}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	var owner atomic.Pointer[cluster.Node]
	n.srv, err = sfu.New(sfu.Config{
		UDPMux: n.mux, IncludeLoopback: true, KeyframeInterval: 50 * time.Millisecond,
		NewICECredentials: func() (string, string) {
			u, _ := mux.NewUfrag(mux.UfragPrefix(n.id.Tag))
			return u, mux.NewPassword()
		},
		NewID: func() string { return cluster.NewResourceID(n.id.Tag) },
		OnRoomEnded: func(room string) {
			if c := owner.Load(); c != nil {
				c.Release(room)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	n.cl, err = cluster.New(cluster.Config{
		Identity: n.id, NodeName: "node-" + ip, Gossip: ip + ":0", Join: join,
		Relay: n.mux, RelayPort: n.mux.RelayAddr().(*net.UDPAddr).Port, HTTP: ln.Addr().String(),
		Profile: "local", LocalRooms: n.srv.RoomNames,
		OnRoomLost: func(room, reason string) { _ = n.srv.EndRoom(room, reason) },
		Load: func() cluster.Load {
			st := n.srv.Stats()
			return cluster.Load{Sessions: n.mux.Sessions(), Rooms: st.Rooms}
		},
		LoadInterval: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	owner.Store(n.cl)
	n.hs = sfu.NewHTTPServer(ln.Addr().String(), n.srv.RateLimit(n.cl.Signaling(n.srv.Handler())))
	n.url = "http://" + ln.Addr().String()
	go n.hs.Serve(ln)
	t.Cleanup(n.close)
	return n
}

// close stops the node: signaling, membership (leaving), sessions, media.
func (n *node) close() {
	n.once.Do(func() {
		n.hs.Close()
		n.cl.Close()
		n.srv.Close()
		n.mux.Close()
	})
}

type result struct {
	code int
	hdr  http.Header
	body string
}

var client = &http.Client{Timeout: 30 * time.Second}

func do(t *testing.T, method, url, ctype, body string, hdr ...string) result {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return result{resp.StatusCode, resp.Header, string(b)}
}

func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronization
	}
}

// newPC is a pion client on loopback.
func newPC(t *testing.T) *webrtc.PeerConnection {
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
	pc, err := webrtc.NewAPI(webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(ir), webrtc.WithSettingEngine(se)).
		NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.GracefulClose() })
	return pc
}

// signal posts pc's complete offer to url and applies the answer; it
// returns the resource URL path.
func signal(t *testing.T, pc *webrtc.PeerConnection, url string) string {
	t.Helper()
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	done := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-done
	res := do(t, "POST", url, "application/sdp", pc.LocalDescription().SDP)
	if res.code != http.StatusCreated {
		t.Fatalf("POST %s: %d %s", url, res.code, res.body)
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: res.body}); err != nil {
		t.Fatal(err)
	}
	return res.hdr.Get("Location")
}

// publisher sends VP8 packets carrying a counter until stopped.
type publisher struct {
	pc       *webrtc.PeerConnection
	location string
	stop     chan struct{}
	wg       sync.WaitGroup
}

func publish(t *testing.T, url string) *publisher {
	t.Helper()
	p := &publisher{pc: newPC(t), stop: make(chan struct{})}
	tr, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8}, "video", "pub")
	if err != nil {
		t.Fatal(err)
	}
	sender, err := p.pc.AddTrack(tr)
	if err != nil {
		t.Fatal(err)
	}
	p.location = signal(t, p.pc, url)
	p.wg.Add(2)
	go func() { // RTCP for the interceptors
		defer p.wg.Done()
		for {
			if _, _, err := sender.ReadRTCP(); err != nil {
				return
			}
		}
	}()
	go func() {
		defer p.wg.Done()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for seq := uint16(0); ; seq++ {
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
			// Every packet a keyframe start: a subscriber may start anywhere.
			pkt := &rtp.Packet{Header: rtp.Header{Version: 2, Marker: true, SequenceNumber: seq, Timestamp: uint32(seq) * 3000},
				Payload: []byte{0x10, 0x10, 0x02, 0x00, byte(seq >> 8), byte(seq)}}
			if err := tr.WriteRTP(pkt); err != nil && !errors.Is(err, io.ErrClosedPipe) {
				return
			}
		}
	}()
	t.Cleanup(p.close)
	return p
}

func (p *publisher) close() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	_ = p.pc.GracefulClose()
	p.wg.Wait()
}

// subscriber counts the video packets it receives.
type subscriber struct {
	pc       *webrtc.PeerConnection
	location string
	packets  atomic.Int64
	wg       sync.WaitGroup
}

func subscribe(t *testing.T, url string) *subscriber {
	t.Helper()
	s := &subscriber{pc: newPC(t)}
	if _, err := s.pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo,
		webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
		t.Fatal(err)
	}
	s.pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for {
				if _, _, err := tr.ReadRTP(); err != nil {
					return
				}
				s.packets.Add(1)
			}
		}()
	})
	s.location = signal(t, s.pc, url)
	t.Cleanup(s.close)
	return s
}

func (s *subscriber) close() {
	_ = s.pc.GracefulClose()
	s.wg.Wait()
}

type sseEvent struct {
	name string
	data map[string]any
}

// events streams url's server-sent events until the test ends.
func events(t *testing.T, url string, hdr ...string) <-chan sseEvent {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("events %s: %d %s", url, resp.StatusCode, b)
	}
	ch := make(chan sseEvent, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				ev.name = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				_ = json.Unmarshal([]byte(line[len("data: "):]), &ev.data)
			case line == "" && ev.name != "":
				ch <- ev
				ev = sseEvent{}
			}
		}
	}()
	t.Cleanup(func() {
		resp.Body.Close()
		<-done
	})
	return ch
}

// waitEvent returns the next event named name, skipping others.
func waitEvent(t *testing.T, ch <-chan sseEvent, name string) sseEvent {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("event stream ended before %s", name)
			}
			if ev.name == name {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %s event", name)
		}
	}
}
