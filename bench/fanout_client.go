package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

// A fan-out client process holds pion peers against a WHIP/WHEP server: the
// publisher, or many subscribers. It knows nothing of the server but its
// base URL, so it serves any node (and the load harness) alike.

// fanoutClientJob starts a client process.
type fanoutClientJob struct {
	Base         string        `json:"base"` // http://127.0.0.1:port, loopback only
	Room         string        `json:"room"`
	Publish      *publishSpec  `json:"publish,omitempty"` // a publisher process; nil: subscribers
	JoinTimeout  time.Duration `json:"join_timeout"`      // one join: offer to first packet of each kind
	JoinParallel int           `json:"join_parallel"`
	Deadline     time.Time     `json:"deadline"`
}

// publishSpec is the publisher's synthetic media.
type publishSpec struct {
	FPS          int `json:"fps"`
	VideoPPS     int `json:"video_pps"`
	VideoPayload int `json:"video_payload"` // bytes per video packet, trailer included
	AudioPPS     int `json:"audio_pps"`
	AudioPayload int `json:"audio_payload"`
}

type clientReady struct {
	childMsg
	PID int `json:"pid"`
}

type clientAdded struct {
	childMsg
	OK     int      `json:"ok"`
	Failed int      `json:"failed"`
	Errors []string `json:"errors,omitempty"` // the first few
	Subs   int      `json:"subs"`             // subscribers now
}

// clientReport is one window as a client process saw it.
type clientReport struct {
	childMsg
	PID      int           `json:"pid"`
	AtStart  time.Time     `json:"at_start"`
	AtEnd    time.Time     `json:"at_end"`
	CPUStart time.Duration `json:"cpu_start"`
	CPUEnd   time.Duration `json:"cpu_end"`
	// KernelDrops is what the kernel discarded on this process's sockets
	// during the window (full receive buffers); -1 where unknown.
	KernelDrops int64 `json:"kernel_drops"`
	// Publisher: packets sent within the window, by kind; totals.
	Sent       [numKinds]uint64 `json:"sent"`
	SentTotal  [numKinds]uint64 `json:"sent_total"`
	SendErrors uint64           `json:"send_errors,omitempty"`
	Keyframes  uint64           `json:"keyframes,omitempty"` // PLI/FIR received
	// Subscribers: what they received of the window.
	Recv       windowFigures `json:"recv"`
	Reordered  uint64        `json:"reordered,omitempty"`  // a counter below the highest before it
	Duplicates uint64        `json:"duplicates,omitempty"` // the highest counter again
	Malformed  uint64        `json:"malformed,omitempty"`  // packets without a trailer
}

// maxJoinErrors bounds the join errors a client reports.
const maxJoinErrors = 5

type fanoutClient struct {
	job fanoutClientJob
	api *webrtc.API
	wc  whipClient
	ctx context.Context // cancelled on quit: ends joins in progress

	pub *fanPub

	mu   sync.Mutex // guards subs
	subs []*fanSub

	recvWin    atomic.Pointer[recvWindow]
	sentWin    atomic.Pointer[sentWindow]
	reordered  atomic.Uint64
	duplicates atomic.Uint64
	malformed  atomic.Uint64

	winMu sync.Mutex // guards the fields below
	win   *clientWindow
}

// clientWindow holds the CPU samples of a window, taken by timers.
type clientWindow struct {
	startT, endT       *time.Timer
	atStart, atEnd     time.Time
	cpuStart, cpuEnd   time.Duration
	dropsStart         int64 // -1: unknown
	dropsEnd           int64
	ended              chan struct{}
	recv               *recvWindow
	sent               *sentWindow
	startDone, endDone bool
}

func runFanoutClient(cio *childIO) error {
	var job fanoutClientJob
	if err := cio.next(&job); err != nil {
		return err
	}
	if err := exitAtDeadline(roleClient, job.Deadline); err != nil {
		return err
	}
	c, err := newFanoutClient(job)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.ctx = ctx
	defer func() {
		cancel()
		c.close()
	}()
	if job.Publish != nil {
		if c.pub, err = c.publish(ctx); err != nil {
			return err
		}
	}
	if err := cio.reply(clientReady{childMsg{Event: "ready"}, os.Getpid()}); err != nil {
		return err
	}
	for {
		var cmd childCmd
		if err := cio.next(&cmd); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		var reply any
		switch cmd.Cmd {
		case "quit":
			return nil
		case "add":
			reply = c.add(ctx, cmd.N)
		case "window":
			c.schedule(cmd)
			reply = childMsg{Event: "window"}
		case "report":
			if reply, err = c.report(); err != nil {
				return err
			}
		default:
			return fmt.Errorf("bench client: unknown command %q", cmd.Cmd)
		}
		if err := cio.reply(reply); err != nil {
			return err
		}
	}
}

func newFanoutClient(job fanoutClientJob) (*fanoutClient, error) {
	wc, err := newWHIPClient(job.Base, "", job.JoinParallel, job.JoinTimeout)
	if err != nil {
		return nil, err
	}
	if !isLoopbackHost(wc.base.Hostname()) {
		return nil, fmt.Errorf("bench client: %s is not loopback", wc.base.Host)
	}
	api, err := newClientAPI(apiOptions{})
	if err != nil {
		return nil, err
	}
	return &fanoutClient{job: job, api: api, wc: wc}, nil
}

func isLoopbackHost(h string) bool {
	return h == "localhost" || strings.HasPrefix(h, "127.") || h == "::1"
}

func (c *fanoutClient) signal(ctx context.Context, pc *webrtc.PeerConnection, path string) (string, error) {
	return c.wc.signal(ctx, pc, path)
}

// deleteResource ends a WHIP or WHEP resource.
func (c *fanoutClient) deleteResource(ctx context.Context, loc string) {
	_ = c.wc.deleteResource(ctx, loc)
}

// fanSub is one subscriber: a PeerConnection with a video and an audio
// track, each read by its own goroutine.
type fanSub struct {
	pc       *webrtc.PeerConnection
	location string
	idx      atomic.Int32 // its place in the client's subs (and windows); -1 until joined
	first    [numKinds]chan struct{}
	once     [numKinds]sync.Once

	mu     sync.Mutex // guards closed and wg.Add
	closed bool
	wg     sync.WaitGroup // track readers
}

// add joins n subscribers, JoinParallel at a time, and reports how many
// made it (connected, and a packet of each kind received).
func (c *fanoutClient) add(ctx context.Context, n int) clientAdded {
	res := clientAdded{childMsg: childMsg{Event: "added"}}
	var mu sync.Mutex
	sem := make(chan struct{}, max(c.job.JoinParallel, 1))
	var wg sync.WaitGroup
	for range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := c.join(ctx)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Failed++
				if len(res.Errors) < maxJoinErrors {
					res.Errors = append(res.Errors, err.Error())
				}
				return
			}
			res.OK++
		}()
	}
	wg.Wait()
	c.mu.Lock()
	res.Subs = len(c.subs)
	c.mu.Unlock()
	return res
}

func (c *fanoutClient) join(ctx context.Context) (err error) {
	pc, err := c.api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return fmt.Errorf("peer connection: %w", err)
	}
	s := &fanSub{pc: pc}
	s.idx.Store(-1)
	for k := range s.first {
		s.first[k] = make(chan struct{})
	}
	defer func() {
		if err != nil {
			if s.location != "" {
				dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				c.deleteResource(dctx, s.location)
				cancel()
			}
			s.close()
		}
	}()
	for _, kind := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeVideo, webrtc.RTPCodecTypeAudio} {
		if _, err := pc.AddTransceiverFromKind(kind, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
			return fmt.Errorf("transceiver: %w", err)
		}
	}
	pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.closed {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			c.readTrack(s, tr)
		}()
	})
	if s.location, err = c.signal(ctx, pc, "/whep/"+url.PathEscape(c.job.Room)); err != nil {
		return err
	}
	t := time.NewTimer(c.job.JoinTimeout)
	defer t.Stop()
	for k, name := range []string{"video", "audio"} {
		select {
		case <-s.first[k]:
		case <-t.C:
			return fmt.Errorf("no %s within %v (connection %s)", name, c.job.JoinTimeout, pc.ConnectionState())
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c.mu.Lock()
	s.idx.Store(int32(len(c.subs)))
	c.subs = append(c.subs, s)
	c.mu.Unlock()
	return nil
}

// readTrack reads one track until it ends: per packet a read into a reused
// buffer, the trailer read in place, and atomic counts; no allocation.
func (c *fanoutClient) readTrack(s *fanSub, tr *webrtc.TrackRemote) {
	buf := make([]byte, 1500)
	var last [numKinds]uint64
	var seen [numKinds]bool
	for {
		n, _, err := tr.Read(buf)
		if err != nil {
			return
		}
		now := time.Now().UnixNano()
		kind, ctr, sent, ok := readTrailer(buf[:n])
		if !ok {
			c.malformed.Add(1)
			continue
		}
		switch {
		case !seen[kind]:
			s.once[kind].Do(func() { close(s.first[kind]) })
			last[kind], seen[kind] = ctr, true
		case ctr == last[kind]:
			c.duplicates.Add(1)
		case ctr < last[kind]:
			c.reordered.Add(1)
		default:
			last[kind] = ctr
		}
		if i := s.idx.Load(); i >= 0 {
			c.recvWin.Load().add(int(i), kind, sent, now)
		}
	}
}

// sampleOwnDrops is ownUDPDrops, -1 when unknown.
func sampleOwnDrops() int64 {
	if d, ok := ownUDPDrops(); ok {
		return int64(d)
	}
	return -1
}

func (s *fanSub) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	_ = s.pc.Close()
	s.wg.Wait()
}

// fanPub is the publisher: synthetic VP8 (keyframe on PLI or FIR) and Opus.
type fanPub struct {
	pc         *webrtc.PeerConnection
	location   string
	video      *webrtc.TrackLocalStaticRTP
	audio      *webrtc.TrackLocalStaticRTP
	keyframe   atomic.Bool
	keyframes  atomic.Uint64
	sent       [numKinds]atomic.Uint64
	sendErrors atomic.Uint64
	stop       chan struct{}
	wg         sync.WaitGroup
}

func (c *fanoutClient) publish(ctx context.Context) (_ *fanPub, err error) {
	pc, err := c.api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, fmt.Errorf("bench client: publisher: %w", err)
	}
	p := &fanPub{pc: pc, stop: make(chan struct{})}
	defer func() {
		if err != nil {
			p.close(c)
		}
	}()
	connected := make(chan struct{})
	var once sync.Once
	pc.OnConnectionStateChange(func(st webrtc.PeerConnectionState) {
		if st == webrtc.PeerConnectionStateConnected {
			once.Do(func() { close(connected) })
		}
	})
	if p.video, err = webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}, "video", "bench"); err != nil {
		return p, err
	}
	if p.audio, err = webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "audio", "bench"); err != nil {
		return p, err
	}
	var senders []*webrtc.RTPSender
	for _, tr := range []*webrtc.TrackLocalStaticRTP{p.video, p.audio} {
		t, err := pc.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
		if err != nil {
			return p, fmt.Errorf("bench client: publisher track: %w", err)
		}
		senders = append(senders, t.Sender())
	}
	for i, snd := range senders {
		p.wg.Add(1)
		go func() { // RTCP: keyframe requests on video, drained on audio
			defer p.wg.Done()
			for {
				pkts, _, err := snd.ReadRTCP()
				if err != nil {
					return
				}
				for _, pk := range pkts {
					switch pk.(type) {
					case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
						if i == 0 {
							p.keyframes.Add(1)
							p.keyframe.Store(true)
						}
					}
				}
			}
		}()
	}
	if p.location, err = c.signal(ctx, pc, "/whip/"+url.PathEscape(c.job.Room)); err != nil {
		return p, fmt.Errorf("bench client: publish: %w", err)
	}
	t := time.NewTimer(c.job.JoinTimeout)
	defer t.Stop()
	select {
	case <-connected:
	case <-t.C:
		return p, fmt.Errorf("bench client: publisher not connected within %v", c.job.JoinTimeout)
	case <-ctx.Done():
		return p, ctx.Err()
	}
	spec := *c.job.Publish
	p.keyframe.Store(true)
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		p.sendVideo(c, spec)
	}()
	go func() {
		defer p.wg.Done()
		p.sendAudio(c, spec)
	}()
	return p, nil
}

// sendVideo sends FPS frames a second of VideoPPS/FPS packets each, back to
// back as an encoder's packetizer would; the first packet of a frame
// carries the VP8 payload header (key frame when one was asked for).
func (p *fanPub) sendVideo(c *fanoutClient, spec publishSpec) {
	perFrame := max(spec.VideoPPS/spec.FPS, 1)
	payload := make([]byte, spec.VideoPayload)
	pkt := &rtp.Packet{Header: rtp.Header{Version: 2}}
	tick := time.NewTicker(time.Second / time.Duration(spec.FPS))
	defer tick.Stop()
	var seq uint16
	var counter uint64
	for frame := uint32(0); ; frame++ {
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
		kf := p.keyframe.Swap(false)
		for i := range perFrame {
			clear(payload[:4])
			if i == 0 {
				payload[0] = 0x10 // descriptor: S=1, PID=0
				payload[1] = 0x11 // VP8 header, P=1: inter frame
				if kf {
					payload[1] = 0x10 // P=0: key frame
				}
				payload[2] = 0x02
			}
			pkt.SequenceNumber = seq
			pkt.Timestamp = frame * uint32(90000/spec.FPS)
			pkt.Marker = i == perFrame-1
			pkt.Payload = payload
			p.write(c, p.video, pkt, kindVideo, counter)
			seq++
			counter++
		}
	}
}

// sendAudio sends AudioPPS Opus packets a second.
func (p *fanPub) sendAudio(c *fanoutClient, spec publishSpec) {
	payload := make([]byte, spec.AudioPayload)
	payload[0] = 0xfc // TOC: CELT fullband 20 ms, one frame
	pkt := &rtp.Packet{Header: rtp.Header{Version: 2}}
	tick := time.NewTicker(time.Second / time.Duration(spec.AudioPPS))
	defer tick.Stop()
	for n := uint64(0); ; n++ {
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
		pkt.SequenceNumber = uint16(n)
		pkt.Timestamp = uint32(n) * uint32(48000/spec.AudioPPS)
		pkt.Payload = payload
		p.write(c, p.audio, pkt, kindAudio, n)
	}
}

func (p *fanPub) write(c *fanoutClient, tr *webrtc.TrackLocalStaticRTP, pkt *rtp.Packet, kind byte, counter uint64) {
	sent := time.Now().UnixNano()
	putTrailer(pkt.Payload, kind, counter, sent)
	if err := tr.WriteRTP(pkt); err != nil {
		p.sendErrors.Add(1)
		return
	}
	p.sent[kind].Add(1)
	c.sentWin.Load().add(kind, sent)
}

func (p *fanPub) close(c *fanoutClient) {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	if p.location != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c.deleteResource(ctx, p.location)
		cancel()
	}
	_ = p.pc.Close()
	p.wg.Wait()
}

// schedule starts counting a window now (by send time, so packets count
// whenever they arrive) and arms CPU samples at its bounds.
func (c *fanoutClient) schedule(cmd childCmd) {
	c.mu.Lock()
	subs := len(c.subs)
	c.mu.Unlock()
	w := &clientWindow{ended: make(chan struct{}), recv: newRecvWindow(cmd.Start, cmd.End, time.Duration(cmd.Slice), subs),
		sent: &sentWindow{start: cmd.Start.UnixNano(), end: cmd.End.UnixNano()}}
	c.recvWin.Store(w.recv)
	c.sentWin.Store(w.sent)
	c.winMu.Lock()
	defer c.winMu.Unlock()
	if c.win != nil {
		c.win.startT.Stop()
		c.win.endT.Stop()
	}
	c.win = w
	w.startT = time.AfterFunc(time.Until(cmd.Start), func() {
		cpu, _ := cpuTime()
		drops := sampleOwnDrops()
		c.winMu.Lock()
		defer c.winMu.Unlock()
		w.atStart, w.cpuStart, w.dropsStart, w.startDone = time.Now(), cpu, drops, true
	})
	w.endT = time.AfterFunc(time.Until(cmd.End), func() {
		cpu, _ := cpuTime()
		drops := sampleOwnDrops()
		c.winMu.Lock()
		defer c.winMu.Unlock()
		w.atEnd, w.cpuEnd, w.dropsEnd, w.endDone = time.Now(), cpu, drops, true
		close(w.ended)
	})
}

// report gives the current window's figures once its end has passed.
func (c *fanoutClient) report() (clientReport, error) {
	c.winMu.Lock()
	w := c.win
	c.winMu.Unlock()
	if w == nil {
		return clientReport{}, errors.New("bench client: report before any window")
	}
	t := time.NewTimer(runReplySlack)
	defer t.Stop()
	select {
	case <-w.ended:
	case <-t.C:
		return clientReport{}, errors.New("bench client: window never ended")
	}
	c.winMu.Lock()
	rep := clientReport{childMsg: childMsg{Event: "report"}, PID: os.Getpid(),
		AtStart: w.atStart, AtEnd: w.atEnd, CPUStart: w.cpuStart, CPUEnd: w.cpuEnd, KernelDrops: -1}
	if w.dropsStart >= 0 && w.dropsEnd >= 0 {
		rep.KernelDrops = w.dropsEnd - w.dropsStart
	}
	ok := w.startDone
	c.winMu.Unlock()
	if !ok {
		return rep, errors.New("bench client: window ended before it started")
	}
	for k := range numKinds {
		rep.Sent[k] = w.sent.sent[k].Load()
	}
	if c.pub != nil {
		for k := range numKinds {
			rep.SentTotal[k] = c.pub.sent[k].Load()
		}
		rep.SendErrors = c.pub.sendErrors.Load()
		rep.Keyframes = c.pub.keyframes.Load()
	}
	rep.Recv = w.recv.figures()
	rep.Reordered = c.reordered.Load()
	rep.Duplicates = c.duplicates.Load()
	rep.Malformed = c.malformed.Load()
	return rep, nil
}

// close ends the publisher and every subscriber, deleting their resources
// first (a bounded wait), JoinParallel at a time.
func (c *fanoutClient) close() {
	c.winMu.Lock()
	if c.win != nil {
		c.win.startT.Stop()
		c.win.endT.Stop()
	}
	c.winMu.Unlock()
	c.mu.Lock()
	subs := c.subs
	c.subs = nil
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sem := make(chan struct{}, max(c.job.JoinParallel, 1))
	var wg sync.WaitGroup
	for _, s := range subs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c.deleteResource(ctx, s.location)
			s.close()
		}()
	}
	wg.Wait()
	if c.pub != nil {
		c.pub.close(c)
	}
	c.wc.close()
}
