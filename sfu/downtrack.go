package sfu

import (
	"fmt"
	"sync/atomic"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

// maxPacket is the largest RTP packet forwarded (pion's receive MTU is 1460).
const maxPacket = 1500

// queuedPacket is one packet waiting in a subscriber's send queue.
type queuedPacket struct {
	d     *downTrack
	layer int32
	kf    bool
	h     rtpInfo
	at    int64 // monotonic ns of arrival
	n     int
	buf   [maxPacket]byte
}

// sendQueue is a subscriber's bounded packet queue: buffers cycle between free
// and ready, so pushing and popping allocate nothing once warm. Buffers are
// allocated lazily up to the bound, so an idle subscriber costs little memory.
type sendQueue struct {
	free      chan *queuedPacket
	ready     chan *queuedPacket
	allocated atomic.Int64
	limit     int64
}

func newSendQueue(n int) *sendQueue {
	return &sendQueue{free: make(chan *queuedPacket, n), ready: make(chan *queuedPacket, n), limit: int64(n)}
}

// get returns an unused buffer, or nil when the queue is full.
func (q *sendQueue) get() *queuedPacket {
	select {
	case p := <-q.free:
		return p
	default:
	}
	if q.allocated.Add(1) <= q.limit {
		return new(queuedPacket)
	}
	q.allocated.Add(-1)
	return nil
}

// binding is what pion hands a downTrack when its sender starts.
type binding struct {
	ssrc      uint32
	pt        uint8
	clockRate uint32
	writer    webrtc.TrackLocalWriter
}

// downTrack is one published track as sent to one subscriber. It implements
// webrtc.TrackLocal. The atomics are shared with the publisher's readers and
// the API; w is owned by the subscriber's writer goroutine.
type downTrack struct {
	id     string
	sub    *participant
	src    *pubTrack
	sender *webrtc.RTPSender

	bind    atomic.Pointer[binding]
	target  atomic.Int32 // layer the subscriber wants
	auto    atomic.Bool  // no explicit choice: follow the highest flowing layer
	current atomic.Int32 // layer being forwarded; -1 before the first keyframe. Written by the writer only.

	packets      atomic.Uint64
	bytes        atomic.Uint64
	drops        atomic.Uint64
	fractionLost atomic.Uint32 // from the subscriber's last receiver report, /256

	w writerState
}

// writerState is the rewriting state, touched only by the writer goroutine.
type writerState struct {
	started bool
	rebase  bool
	srcSSRC uint32
	baseSeq uint16 // first source sequence number after the last rebase
	seqOff  uint16
	tsOff   uint32
	lastSeq uint16 // highest sequence number sent
	lastTS  uint32
	lastAt  int64
	hdr     rtp.Header
}

var _ webrtc.TrackLocal = (*downTrack)(nil)

func newDownTrack(sub *participant, src *pubTrack, target int32) *downTrack {
	d := &downTrack{id: src.id, sub: sub, src: src}
	d.target.Store(target)
	d.current.Store(-1)
	d.auto.Store(true)
	return d
}

// Bind picks the subscriber's payload type for the publisher's codec.
func (d *downTrack) Bind(ctx webrtc.TrackLocalContext) (webrtc.RTPCodecParameters, error) {
	c, ok := bestCodec(d.src.codec, ctx.CodecParameters())
	if !ok {
		return webrtc.RTPCodecParameters{}, fmt.Errorf("%w: subscriber cannot receive %s", ErrNoCommonCodec, d.src.codec.MimeType)
	}
	d.bind.Store(&binding{ssrc: uint32(ctx.SSRC()), pt: uint8(c.PayloadType), clockRate: c.ClockRate, writer: ctx.WriteStream()})
	return c, nil
}

// Unbind stops sending.
func (d *downTrack) Unbind(webrtc.TrackLocalContext) error {
	d.bind.Store(nil)
	return nil
}

func (d *downTrack) ID() string                { return d.src.id }
func (d *downTrack) RID() string               { return "" }
func (d *downTrack) StreamID() string          { return d.src.pub.id }
func (d *downTrack) Kind() webrtc.RTPCodecType { return d.src.kind }

// offer queues packet b of layer for this subscriber, or drops and counts it
// when the queue is full. Called from publisher reader goroutines; no locks.
func (d *downTrack) offer(layer int32, b []byte, h *rtpInfo, kf bool, now int64) {
	if !d.sub.connected.Load() || len(b) > maxPacket {
		return
	}
	if layer != d.current.Load() && layer != d.target.Load() {
		return
	}
	q := d.sub.queue
	p := q.get()
	if p == nil {
		d.drops.Add(1)
		d.sub.s.stats.drops.Add(1)
		return
	}
	p.d, p.layer, p.kf, p.h, p.at = d, layer, kf, *h, now
	p.n = copy(p.buf[:], b)
	q.ready <- p // never blocks: at most limit buffers exist
}

// write rewrites and sends one queued packet. Writer goroutine only.
func (d *downTrack) write(p *queuedPacket) {
	b := d.bind.Load()
	if b == nil {
		return
	}
	w := &d.w
	cur, target := d.current.Load(), d.target.Load()
	if p.layer != cur {
		if p.layer != target || !p.kf {
			d.src.requestKeyframe(target) // rate-limited; usually a no-op
			return
		}
		d.current.Store(p.layer)
		cur = p.layer
		w.rebase = true
	} else if target != cur {
		d.src.requestKeyframe(target)
	}
	if !w.started || w.rebase || p.h.ssrc != w.srcSSRC {
		d.rebase(p, b.clockRate)
	}
	if int16(p.h.seq-w.baseSeq) < 0 { // older than the switch point: would collide
		return
	}
	seq := p.h.seq + w.seqOff
	ts := p.h.ts + w.tsOff
	if int16(seq-w.lastSeq) > 0 {
		w.lastSeq, w.lastTS, w.lastAt = seq, ts, p.at
	}
	h := &w.hdr
	h.Version = 2
	h.Padding = false
	h.Extension = false
	h.Marker = p.h.marker
	h.PayloadType = b.pt
	h.SequenceNumber = seq
	h.Timestamp = ts
	h.SSRC = b.ssrc
	n, err := b.writer.WriteRTP(h, p.buf[p.h.payloadOff:p.h.payloadEnd])
	if err != nil {
		d.sub.s.stats.writeErrors.Add(1)
		return
	}
	d.packets.Add(1)
	d.bytes.Add(uint64(n))
	d.sub.s.stats.forwardedPackets.Add(1)
	d.sub.s.stats.forwardedBytes.Add(uint64(n))
}

// rebase continues the subscriber's sequence and timestamp spaces across a
// change of source (layer switch, publisher SSRC change): the next packet is
// lastSeq+1, and its timestamp advances by the real time since the last one.
func (d *downTrack) rebase(p *queuedPacket, clockRate uint32) {
	w := &d.w
	if !w.started {
		w.seqOff, w.tsOff = 0, 0
		w.lastSeq, w.lastTS, w.lastAt = p.h.seq-1, p.h.ts, p.at
		w.started = true
	} else {
		w.seqOff = w.lastSeq + 1 - p.h.seq
		delta := uint32(1)
		if el := p.at - w.lastAt; el > 0 && clockRate > 0 {
			if dt := uint32(uint64(el) * uint64(clockRate) / 1e9); dt > 0 {
				delta = dt
			}
		}
		w.tsOff = w.lastTS + delta - p.h.ts
	}
	w.srcSSRC = p.h.ssrc
	w.baseSeq = p.h.seq
	w.rebase = false
}

// rtcpLoop reads the subscriber's RTCP for this track (pion's NACK responder
// and report interceptors act on it as it passes) and relays keyframe requests
// to the publisher.
func (d *downTrack) rtcpLoop() {
	for {
		pkts, _, err := d.sender.ReadRTCP()
		if err != nil {
			return
		}
		for _, pkt := range pkts {
			switch pk := pkt.(type) {
			case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
				d.sub.s.stats.subscriberPLIs.Add(1)
				l := d.current.Load()
				if l < 0 {
					l = d.target.Load()
				}
				d.src.requestKeyframe(l)
			case *rtcp.ReceiverReport:
				for _, r := range pk.Reports {
					d.fractionLost.Store(uint32(r.FractionLost))
				}
			}
		}
	}
}
