package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
)

// A load client process holds many publishers and subscribers of
// RunLoad, on any WHIP/WHEP server: it schedules the joins it is given,
// counts every packet by the trailer in its payload, and answers the
// parent's polls with cumulative counters.

const roleLoadClient = "load-client"

type loadClientJob struct {
	Base         string        `json:"base"`
	Token        string        `json:"token,omitempty"`
	JoinTimeout  time.Duration `json:"join_timeout"`
	JoinParallel int           `json:"join_parallel"`
	Deadline     time.Time     `json:"deadline"`
	AnyInterface bool          `json:"any_interface"` // gather on every interface (the server is not on loopback)
	Media        loadMedia     `json:"media"`
	Index        int           `json:"index"`
}

// simulcastLayers are the rids of a simulcast publisher, lowest first, and
// each one's share of the video bitrate.
var simulcastLayers = []struct {
	rid   string
	share float64
}{{"q", 0.25}, {"h", 0.5}, {"f", 1}}

type loadClient struct {
	job    loadClientJob
	api    *webrtc.API // publishers
	subAPI *webrtc.API // subscribers: no simulcast header extensions, tracks are told apart by SSRC
	wc     whipClient
	ctx    context.Context // cancelled on close: ends joins in progress
	cancel context.CancelFunc
	sem    chan struct{} // joins in flight
	video  *mediaFile    // nil: synthetic
	audio  *mediaFile
	joinWG sync.WaitGroup // scheduled joins

	mu     sync.Mutex // guards the fields below
	pubs   []*loadPub
	subs   []*loadSub
	joins  []loadJoin // not yet reported
	closed bool

	cnt loadCounters

	aggMu sync.Mutex // guards agg
	agg   map[uint32]*trackAgg
}

// loadCounters are the process's counters, updated per packet with atomic
// adds only.
type loadCounters struct {
	up, joined, failed                         atomic.Int64
	sent, sentBytes, recv, recvBytes           atomic.Uint64
	expected, duplicates, reordered, malformed atomic.Uint64
	hist                                       [latBins]atomic.Uint64
}

// trackAgg is one published track's latency histogram over this process's
// subscribers.
type trackAgg struct {
	hist [latBins]atomic.Uint64
}

func runLoadClient(cio *childIO) error {
	var job loadClientJob
	if err := cio.next(&job); err != nil {
		return err
	}
	if err := exitAtDeadline(roleLoadClient, job.Deadline); err != nil {
		return err
	}
	c, err := newLoadClient(job)
	if err != nil {
		return err
	}
	defer c.close()
	if err := cio.reply(childMsg{Event: "ready"}); err != nil {
		return err
	}
	for {
		var cmd loadCmd
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
		case "start":
			c.schedule(cmd.Sessions)
			reply = childMsg{Event: "started"}
		case "stats":
			reply = c.stats()
		case "stop":
			reply = c.stopPublishing()
		case "report":
			reply = c.report(cmd.Last)
		case "close":
			reply = c.close()
		default:
			return fmt.Errorf("bench load client: unknown command %q", cmd.Cmd)
		}
		if err := cio.reply(reply); err != nil {
			return err
		}
	}
}

func newLoadClient(job loadClientJob) (*loadClient, error) {
	wc, err := newWHIPClient(job.Base, job.Token, job.JoinParallel, job.JoinTimeout)
	if err != nil {
		return nil, err
	}
	api, err := newClientAPI(apiOptions{allCodecs: true, simulcast: job.Media.Simulcast, anyInterface: job.AnyInterface})
	if err != nil {
		return nil, err
	}
	subAPI, err := newClientAPI(apiOptions{allCodecs: true, anyInterface: job.AnyInterface})
	if err != nil {
		return nil, err
	}
	c := &loadClient{job: job, api: api, subAPI: subAPI, wc: wc, sem: make(chan struct{}, max(job.JoinParallel, 1)), agg: map[uint32]*trackAgg{}}
	if job.Media.VideoFile != "" {
		if c.video, err = readIVF(job.Media.VideoFile); err != nil {
			return nil, err
		}
	}
	if job.Media.AudioFile != "" {
		if c.audio, err = readOgg(job.Media.AudioFile); err != nil {
			return nil, err
		}
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

// schedule starts each session's join at its time, at most JoinParallel in
// flight.
func (c *loadClient) schedule(ss []loadSession) {
	for _, s := range ss {
		c.joinWG.Add(1)
		go func() {
			defer c.joinWG.Done()
			if sleepCtx(c.ctx, time.Until(s.At)) != nil {
				return
			}
			select {
			case c.sem <- struct{}{}:
			case <-c.ctx.Done():
				return
			}
			defer func() { <-c.sem }()
			start := time.Now()
			var err error
			if s.Role == rolePub {
				err = c.publish(s, start)
			} else {
				err = c.subscribe(s, start)
			}
			j := loadJoin{Role: s.Role, Room: s.Room, At: start, Ms: float64(time.Since(start)) / 1e6}
			if err != nil {
				j.Error = err.Error()
				c.cnt.failed.Add(1)
			} else {
				c.cnt.joined.Add(1)
				c.cnt.up.Add(1)
			}
			c.mu.Lock()
			c.joins = append(c.joins, j)
			c.mu.Unlock()
		}()
	}
}

// register adds a joined session, or reports that the client is closing.
func (c *loadClient) register(p *loadPub, s *loadSub) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	if p != nil {
		c.pubs = append(c.pubs, p)
	}
	if s != nil {
		c.subs = append(c.subs, s)
	}
	return true
}

func (c *loadClient) aggFor(id uint32) *trackAgg {
	c.aggMu.Lock()
	defer c.aggMu.Unlock()
	a := c.agg[id]
	if a == nil {
		a = &trackAgg{}
		c.agg[id] = a
	}
	return a
}

// ---- subscribers

type loadSub struct {
	pc       *webrtc.PeerConnection
	location string
	first    chan struct{}
	once     sync.Once

	mu     sync.Mutex // guards closed, wg.Add and tracks
	closed bool
	wg     sync.WaitGroup // track readers
	tracks []*subTrack
}

// subTrack is one published track as one subscriber receives it. The
// reader owns the plain fields; reports read the atomics.
type subTrack struct {
	id  uint32
	agg *trackAgg

	seen                  bool
	highest               uint64
	lowest                uint64 // the first counter received
	lastTransit           int64
	jitterUs              float64
	first                 atomic.Uint64
	received, bytes       atomic.Uint64
	duplicates, reordered atomic.Uint64
	early                 atomic.Uint64 // counters below the first received, arriving after it
	jitterBits            atomic.Uint64 // float64 µs, RFC 3550 interarrival jitter
	highestSeen           atomic.Uint64
}

func (c *loadClient) subscribe(s loadSession, start time.Time) (err error) {
	ctx, cancel := context.WithTimeout(c.ctx, c.job.JoinTimeout)
	defer cancel()
	pc, err := c.subAPI.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return fmt.Errorf("peer connection: %w", err)
	}
	sub := &loadSub{pc: pc, first: make(chan struct{})}
	defer func() {
		if err != nil {
			c.endSub(sub)
		}
	}()
	for range max(s.Tracks, 1) {
		for _, kind := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeVideo, webrtc.RTPCodecTypeAudio} {
			if kind == webrtc.RTPCodecTypeAudio && !c.job.Media.Audio {
				continue
			}
			if _, err := pc.AddTransceiverFromKind(kind, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
				return fmt.Errorf("transceiver: %w", err)
			}
		}
	}
	pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		sub.mu.Lock()
		defer sub.mu.Unlock()
		if sub.closed {
			return
		}
		sub.wg.Add(1)
		go func() {
			defer sub.wg.Done()
			c.readTrack(sub, tr)
		}()
	})
	if sub.location, err = c.wc.signal(ctx, pc, "/whep/"+url.PathEscape(s.Room)); err != nil {
		return err
	}
	select {
	case <-sub.first:
	case <-ctx.Done():
		return fmt.Errorf("no media within %v (connection %s)", c.job.JoinTimeout, pc.ConnectionState())
	}
	if !c.register(nil, sub) {
		return errors.New("closing")
	}
	c.watchFailure(pc)
	return nil
}

// watchFailure takes a joined session out of the sessions up when its
// connection fails (consent lost, DTLS closed by the server).
func (c *loadClient) watchFailure(pc *webrtc.PeerConnection) {
	var once sync.Once
	pc.OnConnectionStateChange(func(st webrtc.PeerConnectionState) {
		if st == webrtc.PeerConnectionStateFailed {
			once.Do(func() { c.cnt.up.Add(-1) })
		}
	})
}

// readTrack reads one remote track until it ends: a read into a reused
// buffer, the trailer read in place, atomic counts.
func (c *loadClient) readTrack(sub *loadSub, tr *webrtc.TrackRemote) {
	buf := make([]byte, 1500)
	var cur *subTrack
	for {
		n, _, err := tr.Read(buf)
		if err != nil {
			return
		}
		now := time.Now().UnixNano()
		id, _, ctr, sent, ok := readLoadTrailer(buf[:n])
		if !ok {
			c.cnt.malformed.Add(1)
			continue
		}
		if cur == nil || cur.id != id { // a layer switch changes the id
			cur = sub.track(id, c)
		}
		c.count(cur, ctr, sent, now, n)
		sub.once.Do(func() { close(sub.first) })
	}
}

// track finds or adds the subscriber's state for published track id.
func (sub *loadSub) track(id uint32, c *loadClient) *subTrack {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	for _, t := range sub.tracks {
		if t.id == id {
			return t
		}
	}
	t := &subTrack{id: id, agg: c.aggFor(id)}
	sub.tracks = append(sub.tracks, t)
	return t
}

// count accounts one packet: expected advances with the highest counter,
// duplicates of the highest are not received, older counters are
// reordered (late) packets.
func (c *loadClient) count(t *subTrack, ctr uint64, sent, now int64, n int) {
	switch {
	case !t.seen:
		t.seen, t.highest, t.lowest = true, ctr, ctr
		t.first.Store(ctr)
		t.highestSeen.Store(ctr)
		c.cnt.expected.Add(1)
	case ctr == t.highest:
		t.duplicates.Add(1)
		c.cnt.duplicates.Add(1)
		return
	case ctr > t.highest:
		c.cnt.expected.Add(ctr - t.highest)
		t.highest = ctr
		t.highestSeen.Store(ctr)
	case ctr < t.lowest:
		// Sent before the first packet this subscriber got, and arrived
		// after it: outside its expected range, so neither expected nor
		// received (counting it would make received exceed expected).
		t.early.Add(1)
		c.cnt.reordered.Add(1)
		return
	default:
		t.reordered.Add(1)
		c.cnt.reordered.Add(1)
	}
	t.received.Add(1)
	t.bytes.Add(uint64(n))
	c.cnt.recv.Add(1)
	c.cnt.recvBytes.Add(uint64(n))
	transit := now - sent
	bin := latBin(uint64(max(transit, 0) / 1e3))
	c.cnt.hist[bin].Add(1)
	t.agg.hist[bin].Add(1)
	if t.lastTransit != 0 || t.jitterUs != 0 {
		d := math.Abs(float64(transit-t.lastTransit)) / 1e3
		t.jitterUs += (d - t.jitterUs) / 16
		t.jitterBits.Store(math.Float64bits(t.jitterUs))
	}
	t.lastTransit = transit
}

func (c *loadClient) endSub(sub *loadSub) {
	if sub.location != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = c.wc.deleteResource(ctx, sub.location)
		cancel()
	}
	sub.close()
}

func (sub *loadSub) close() {
	sub.mu.Lock()
	sub.closed = true
	sub.mu.Unlock()
	_ = sub.pc.Close()
	sub.wg.Wait()
}

// ---- publishers

type loadPub struct {
	pc        *webrtc.PeerConnection
	location  string
	room      string
	tracks    []*pubTrack
	sender    *webrtc.RTPSender // video
	videoTx   *webrtc.RTPTransceiver
	mid       string
	midID     uint8
	ridID     uint8
	firstSent chan struct{}
	once      sync.Once
	joined    atomic.Bool // counted in the sessions up
	stop      chan struct{}
	stopOnce  sync.Once
	sendWG    sync.WaitGroup // the tracks' senders
	wg        sync.WaitGroup // RTCP readers
}

// pubTrack is one published track (a simulcast layer is one).
type pubTrack struct {
	id       uint32
	kind     byte
	rid      string
	share    float64 // of the video bitrate
	track    *webrtc.TrackLocalStaticRTP
	keyframe atomic.Bool
	sent     atomic.Uint64
	bytes    atomic.Uint64
	errs     atomic.Uint64
	last     atomic.Uint64
	firstAt  atomic.Int64
	lastAt   atomic.Int64
}

func (c *loadClient) publish(s loadSession, start time.Time) (err error) {
	ctx, cancel := context.WithTimeout(c.ctx, c.job.JoinTimeout)
	defer cancel()
	pc, err := c.api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return fmt.Errorf("peer connection: %w", err)
	}
	p := &loadPub{pc: pc, room: s.Room, firstSent: make(chan struct{}), stop: make(chan struct{})}
	defer func() {
		if err != nil {
			c.endPub(p)
		}
	}()
	connected := make(chan struct{})
	var once sync.Once
	var failOnce sync.Once
	pc.OnConnectionStateChange(func(st webrtc.PeerConnectionState) {
		switch st {
		case webrtc.PeerConnectionStateConnected:
			once.Do(func() { close(connected) })
		case webrtc.PeerConnectionStateFailed:
			if p.joined.Load() {
				failOnce.Do(func() { c.cnt.up.Add(-1) })
			}
		}
	})
	if err := c.addPubTracks(p, s.Pub); err != nil {
		return err
	}
	if p.location, err = c.wc.signal(ctx, pc, "/whip/"+url.PathEscape(s.Room)); err != nil {
		return err
	}
	p.mid = p.videoTx.Mid() // set by the offer
	for _, ext := range p.sender.GetParameters().HeaderExtensions {
		switch ext.URI {
		case sdp.SDESMidURI:
			p.midID = uint8(ext.ID)
		case sdp.SDESRTPStreamIDURI:
			p.ridID = uint8(ext.ID)
		}
	}
	select {
	case <-connected:
	case <-ctx.Done():
		return fmt.Errorf("not connected within %v (connection %s)", c.job.JoinTimeout, pc.ConnectionState())
	}
	if c.job.Media.Idle {
		if !c.register(p, nil) {
			return errors.New("closing")
		}
		p.joined.Store(true)
		return nil
	}
	for _, t := range p.tracks {
		p.sendWG.Add(1)
		go func() {
			defer p.sendWG.Done()
			c.send(p, t)
		}()
	}
	select {
	case <-p.firstSent:
	case <-ctx.Done():
		return errors.New("no packet sent")
	}
	if !c.register(p, nil) {
		return errors.New("closing")
	}
	p.joined.Store(true)
	return nil
}

// addPubTracks adds the video track (with its simulcast layers) and the
// audio track, and the RTCP readers that turn PLI and FIR into keyframes.
func (c *loadClient) addPubTracks(p *loadPub, pub int) error {
	videoMime := webrtc.MimeTypeVP8
	if c.video != nil {
		videoMime = c.video.mime
	}
	layers := simulcastLayers[2:]
	if c.job.Media.Simulcast {
		layers = simulcastLayers
	}
	for i, l := range layers {
		var opts []func(*webrtc.TrackLocalStaticRTP)
		rid := ""
		if c.job.Media.Simulcast {
			rid = l.rid
			opts = append(opts, webrtc.WithRTPStreamID(rid))
		}
		tr, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: videoMime, ClockRate: 90000}, "video", fmt.Sprintf("load-%d", pub), opts...)
		if err != nil {
			return fmt.Errorf("track: %w", err)
		}
		t := &pubTrack{id: loadTrackID(pub, kindVideo, i), kind: kindVideo, rid: rid, share: l.share, track: tr}
		t.keyframe.Store(true)
		p.tracks = append(p.tracks, t)
		if i == 0 {
			tx, err := p.pc.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
			if err != nil {
				return fmt.Errorf("video: %w", err)
			}
			p.sender, p.videoTx = tx.Sender(), tx
		} else if err := p.sender.AddEncoding(tr); err != nil {
			return fmt.Errorf("simulcast layer: %w", err)
		}
	}
	for _, t := range p.tracks {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.readRTCP(t)
		}()
	}
	if !c.job.Media.Audio {
		return nil
	}
	tr, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "audio", fmt.Sprintf("load-%d", pub))
	if err != nil {
		return fmt.Errorf("track: %w", err)
	}
	tx, err := p.pc.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
	if err != nil {
		return fmt.Errorf("audio: %w", err)
	}
	p.tracks = append(p.tracks, &pubTrack{id: loadTrackID(pub, kindAudio, 0), kind: kindAudio, track: tr})
	p.wg.Add(1)
	go func() { // drained: nothing to do with audio RTCP
		defer p.wg.Done()
		for {
			if _, _, err := tx.Sender().ReadRTCP(); err != nil {
				return
			}
		}
	}()
	return nil
}

// readRTCP reads one video encoding's RTCP: PLI and FIR ask for a keyframe.
func (p *loadPub) readRTCP(t *pubTrack) {
	for {
		var pkts []rtcp.Packet
		var err error
		if t.rid != "" {
			pkts, _, err = p.sender.ReadSimulcastRTCP(t.rid)
		} else {
			pkts, _, err = p.sender.ReadRTCP()
		}
		if err != nil {
			return
		}
		for _, pk := range pkts {
			switch pk.(type) {
			case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
				t.keyframe.Store(true)
			}
		}
	}
}

// send sends one track until stop: synthetic frames paced by FPS (or 50
// audio packets a second), or a file's frames at their times, looping.
func (c *loadClient) send(p *loadPub, t *pubTrack) {
	pkt := &rtp.Packet{Header: rtp.Header{Version: 2}}
	if t.rid != "" {
		_ = pkt.Header.SetExtension(p.midID, []byte(p.mid))
		_ = pkt.Header.SetExtension(p.ridID, []byte(t.rid))
	}
	file := c.video
	if t.kind == kindAudio {
		file = c.audio
	}
	if file != nil {
		c.sendFile(p, t, pkt, file)
		return
	}
	var perFrame, size int
	var every time.Duration
	var tsStep uint32
	if t.kind == kindAudio {
		perFrame, size, every, tsStep = 1, synthAudioSize, time.Second/synthAudioPPS, 48000/synthAudioPPS
	} else {
		perFrame, size = synthVideoPlan(int(float64(c.job.Media.VideoBitrate)*t.share), c.job.Media.FPS)
		every, tsStep = time.Second/time.Duration(c.job.Media.FPS), uint32(90000/c.job.Media.FPS)
	}
	payload := make([]byte, size)
	tick := time.NewTicker(every)
	defer tick.Stop()
	var seq uint16
	var counter uint64
	for frame := uint32(0); ; frame++ {
		kf := t.keyframe.Swap(false)
		for i := range perFrame {
			clear(payload[:4])
			if t.kind == kindAudio {
				payload[0] = 0xfc // TOC: CELT fullband 20 ms, one frame
			} else if i == 0 {
				payload[0] = 0x10 // VP8 descriptor: S=1, PID=0
				payload[1] = 0x11 // VP8 header, P=1: inter frame
				if kf {
					payload[1] = 0x10 // P=0: key frame
				}
				payload[2] = 0x02
			}
			pkt.SequenceNumber = seq
			pkt.Timestamp = frame * tsStep
			pkt.Marker = i == perFrame-1
			pkt.Payload = payload
			c.write(p, t, pkt, counter)
			seq++
			counter++
		}
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
	}
}

// sendFile sends a file's frames at their presentation times, each
// packetized by the codec's payloader with the trailer appended to every
// packet (the server forwards payloads as they are).
func (c *loadClient) sendFile(p *loadPub, t *pubTrack, pkt *rtp.Packet, f *mediaFile) {
	pay := payloaderFor(f.mime)
	var seq uint16
	var counter uint64
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for loop := time.Duration(0); ; loop += f.length {
		for _, fr := range f.frames {
			at := loop + fr.pts
			timer.Reset(time.Until(start.Add(at)))
			select {
			case <-p.stop:
				return
			case <-timer.C:
			}
			parts := pay.Payload(loadMTU, fr.data)
			for i, part := range parts {
				pkt.SequenceNumber = seq
				pkt.Timestamp = uint32(at * time.Duration(f.clock) / time.Second)
				pkt.Marker = i == len(parts)-1
				pkt.Payload = append(part, make([]byte, loadTrailerLen)...)
				c.write(p, t, pkt, counter)
				seq++
				counter++
			}
		}
	}
}

func (c *loadClient) write(p *loadPub, t *pubTrack, pkt *rtp.Packet, counter uint64) {
	now := time.Now().UnixNano()
	putLoadTrailer(pkt.Payload, t.id, t.kind, counter, now)
	if err := t.track.WriteRTP(pkt); err != nil {
		t.errs.Add(1)
		return
	}
	n := uint64(pkt.MarshalSize())
	if t.sent.Add(1) == 1 {
		t.firstAt.Store(now)
	}
	t.bytes.Add(n)
	t.last.Store(counter)
	t.lastAt.Store(now)
	c.cnt.sent.Add(1)
	c.cnt.sentBytes.Add(n)
	p.once.Do(func() { close(p.firstSent) })
}

// stopSending stops the senders and waits for them: the counters are then
// final (a frame in progress would otherwise send past the last counter
// reported).
func (p *loadPub) stopSending() {
	p.stopOnce.Do(func() { close(p.stop) })
	p.sendWG.Wait()
}

func (c *loadClient) endPub(p *loadPub) {
	p.stopSending()
	if p.location != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = c.wc.deleteResource(ctx, p.location)
		cancel()
	}
	_ = p.pc.Close()
	p.wg.Wait()
}

// ---- answers

func (c *loadClient) stats() loadStats {
	st := loadStats{childMsg: childMsg{Event: "stats"}}
	c.mu.Lock()
	st.Joins, c.joins = c.joins, nil
	subs := c.subs
	c.mu.Unlock()
	t := &st.loadTotals
	t.Up, t.Joined, t.Failed = int(c.cnt.up.Load()), int(c.cnt.joined.Load()), int(c.cnt.failed.Load())
	t.SentPkts, t.SentBytes = c.cnt.sent.Load(), c.cnt.sentBytes.Load()
	t.RecvPkts, t.RecvBytes = c.cnt.recv.Load(), c.cnt.recvBytes.Load()
	t.Expected, t.Duplicates = c.cnt.expected.Load(), c.cnt.duplicates.Load()
	t.Reordered, t.Malformed = c.cnt.reordered.Load(), c.cnt.malformed.Load()
	t.Hist = loadHist(&c.cnt.hist)
	for _, s := range subs {
		s.mu.Lock()
		for _, tr := range s.tracks {
			t.JitterSumUs += math.Float64frombits(tr.jitterBits.Load())
			t.JitterN++
		}
		s.mu.Unlock()
	}
	return st
}

// loadHist is a histogram's counts, trailing empty bins cut.
func loadHist(h *[latBins]atomic.Uint64) []uint64 {
	out := make([]uint64, latBins)
	last := -1
	for i := range h {
		if out[i] = h[i].Load(); out[i] > 0 {
			last = i
		}
	}
	return out[:last+1]
}

// stopPublishing stops every publisher's sending and reports its tracks.
func (c *loadClient) stopPublishing() loadStopped {
	c.mu.Lock()
	pubs := c.pubs
	c.mu.Unlock()
	rep := loadStopped{childMsg: childMsg{Event: "stopped"}, Tracks: []loadPubTrack{}}
	for _, p := range pubs {
		p.stopSending()
	}
	for _, p := range pubs {
		for _, t := range p.tracks {
			pt := loadPubTrack{ID: t.id, Room: p.room, RID: t.rid, Sent: t.sent.Load(), Bytes: t.bytes.Load(), Last: t.last.Load(),
				Errors: t.errs.Load(), Codec: t.track.Codec().MimeType, Started: t.sent.Load() > 0}
			if pt.Started {
				pt.First, pt.LastAt = time.Unix(0, t.firstAt.Load()), time.Unix(0, t.lastAt.Load())
			}
			rep.Tracks = append(rep.Tracks, pt)
		}
	}
	return rep
}

// report sums, per published track, what this process's subscribers
// received; last holds each track's last counter sent.
func (c *loadClient) report(last map[uint32]uint64) loadClientReport {
	c.mu.Lock()
	subs := c.subs
	c.mu.Unlock()
	byID := map[uint32]*loadRecvTrack{}
	var order []uint32
	for _, s := range subs {
		s.mu.Lock()
		tracks := s.tracks
		s.mu.Unlock()
		for _, t := range tracks {
			r := byID[t.id]
			if r == nil {
				r = &loadRecvTrack{ID: t.id}
				byID[t.id] = r
				order = append(order, t.id)
			}
			first := t.first.Load()
			end, ok := last[t.id]
			if !ok || end < first {
				end = t.highestSeen.Load()
			}
			r.Subs++
			r.Received += t.received.Load()
			r.Bytes += t.bytes.Load()
			r.Expected += end - first + 1
			r.Duplicates += t.duplicates.Load()
			r.Reordered += t.reordered.Load() + t.early.Load()
			j := math.Float64frombits(t.jitterBits.Load())
			r.JitterSumUs += j
			r.JitterMaxUs = max(r.JitterMaxUs, j)
		}
	}
	rep := loadClientReport{childMsg: childMsg{Event: "report"}, Malformed: c.cnt.malformed.Load(), Tracks: []loadRecvTrack{}}
	for _, id := range order {
		r := byID[id]
		r.Hist = loadHist(&c.aggFor(id).hist)
		rep.Tracks = append(rep.Tracks, *r)
	}
	return rep
}

// close cancels joins in progress, then deletes and closes every session,
// JoinParallel at a time. Idempotent: a second call deletes nothing.
func (c *loadClient) close() loadClosed {
	res := loadClosed{childMsg: childMsg{Event: "closed"}}
	c.cancel()
	c.joinWG.Wait() // failed joins delete their own resources
	c.mu.Lock()
	c.closed = true
	pubs, subs := c.pubs, c.subs
	c.pubs, c.subs = nil, nil
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout(len(pubs)+len(subs)))
	defer cancel()
	var mu sync.Mutex
	sem := make(chan struct{}, max(c.job.JoinParallel, 1))
	var wg sync.WaitGroup
	del := func(loc string, end func()) {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := c.wc.deleteResource(ctx, loc)
			end()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Errors++
			} else {
				res.Deleted++
			}
		}()
	}
	// Subscribers first, so none is left watching a publisher that went.
	for _, s := range subs {
		del(s.location, s.close)
	}
	wg.Wait()
	for _, p := range pubs {
		del(p.location, func() {
			p.stopSending()
			_ = p.pc.Close()
			p.wg.Wait()
		})
	}
	wg.Wait()
	c.wc.close()
	return res
}

// closeTimeout bounds the deletion of n sessions: a server's signaling
// rate limit (sfu's default is 20 requests/s per client IP) may pace them.
func closeTimeout(n int) time.Duration {
	return min(10*time.Second+time.Duration(n)*60*time.Millisecond, 10*time.Minute)
}

// newTable is the summary tables' tab writer.
func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }
