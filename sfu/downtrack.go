package sfu

import (
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

// maxPacket is the largest RTP packet forwarded (pion's receive MTU is 1460).
const maxPacket = 1500

// binding is what pion hands a downTrack when its sender starts.
type binding struct {
	ssrc      uint32
	pt        uint8
	clockRate uint32
	rtxSSRC   uint32 // 0: no RTX stream; retransmissions reuse the media SSRC
	rtxPT     uint8
	extOut    outIDs // the subscriber's ids of forwarded header extensions
	writer    webrtc.TrackLocalWriter
}

// downTrack is one published track as sent to one subscriber. It implements
// webrtc.TrackLocal. The atomics are shared with the publisher's readers and
// the API; w is owned by the subscriber's send worker.
type downTrack struct {
	id     string
	sub    *participant
	src    *pubTrack
	sender *webrtc.RTPSender

	bind    atomic.Pointer[binding]
	target  atomic.Int32 // layer the subscriber wants
	auto    atomic.Bool  // no explicit choice: follow the highest flowing layer
	current atomic.Int32 // layer being forwarded; -1 before the first keyframe. Written by the send worker only.

	packets      atomic.Uint64
	bytes        atomic.Uint64
	drops        atomic.Uint64
	fractionLost atomic.Uint32 // from the subscriber's last receiver report, /256
	rtt          atomic.Int64  // ns, from the subscriber's last receiver report; 0: not known

	w writerState
}

// writerState is the rewriting state, touched only by the send worker.
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
	rtxSeq  uint16
	rtx     [maxPacket + 2]byte // an RTX payload: original sequence number, then payload
	resent  *resendLog          // allocated on the first retransmission
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
	b := &binding{ssrc: uint32(ctx.SSRC()), pt: uint8(c.PayloadType), clockRate: c.ClockRate, writer: ctx.WriteStream(),
		extOut: newOutIDs(ctx.HeaderExtensions())}
	if rtx := uint32(ctx.SSRCRetransmission()); rtx != 0 {
		if pt, ok := rtxPayloadType(ctx.CodecParameters(), c.PayloadType); ok {
			b.rtxSSRC, b.rtxPT = rtx, pt
		}
	}
	d.bind.Store(b)
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

// write rewrites and sends packet gen of layer from its history slot, if
// this subscriber takes that layer. Its send worker only.
func (d *downTrack) write(s *histSlot, gen uint64, layer int32) {
	if !d.sub.connected.Load() {
		return
	}
	cur, target := d.current.Load(), d.target.Load()
	if layer != cur && layer != target {
		return
	}
	b := d.bind.Load()
	if b == nil {
		return
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.gen != gen { // overwritten while queued: far too late to send
		d.drops.Add(1)
		d.sub.s.stats.drops.Add(1)
		d.sub.s.stats.late.Add(1)
		return
	}
	w := &d.w
	if layer != cur {
		if layer != target || !s.kf {
			d.src.requestKeyframe(target) // rate-limited; usually a no-op
			return
		}
		d.current.Store(layer)
		cur = layer
		w.rebase = true
	} else if target != cur {
		d.src.requestKeyframe(target)
	}
	if !w.started || w.rebase || s.h.ssrc != w.srcSSRC {
		d.rebase(&s.h, s.at, b.clockRate)
	}
	if int16(s.h.seq-w.baseSeq) < 0 { // older than the switch point: would collide
		return
	}
	seq := s.h.seq + w.seqOff
	ts := s.h.ts + w.tsOff
	if int16(seq-w.lastSeq) > 0 {
		w.lastSeq, w.lastTS, w.lastAt = seq, ts, s.at
	}
	d.setExtensions(b, s)
	d.send(b, b.ssrc, b.pt, seq, ts, s.h.marker, s.payload())
}

// setExtensions carries slot's forwarded header extensions into the next
// header, renumbered for the subscriber; their payloads stay in the slot
// (read-locked until the write). Send worker only.
func (d *downTrack) setExtensions(b *binding, s *histSlot) {
	copyExtensions(&d.w.hdr, s.buf[:s.n], &s.h, d.src.extIn.Load(), &b.extOut)
}

// send writes one rewritten packet. Send worker only.
func (d *downTrack) send(b *binding, ssrc uint32, pt uint8, seq uint16, ts uint32, marker bool, payload []byte) {
	h := &d.w.hdr
	h.Version = 2
	h.Padding = false
	h.Marker = marker
	h.PayloadType = pt
	h.SequenceNumber = seq
	h.Timestamp = ts
	h.SSRC = ssrc
	n, err := b.writer.WriteRTP(h, payload)
	if err != nil {
		d.sub.s.stats.writeErrors.Add(1)
		return
	}
	d.packets.Add(1)
	d.bytes.Add(uint64(n))
	d.sub.s.stats.forwardedPackets.Add(1)
	d.sub.s.stats.forwardedBytes.Add(uint64(n))
}

// retransmit answers a subscriber's NACK, received at now, for its sequence
// number seq from the current layer's history: on the RTX stream when one
// was negotiated (RFC 4588: original sequence number, then the payload), else
// as the original packet. Packets from before the last switch of layer or
// source are gone from the subscriber's numbering, and packets older than
// maxRetransmitAge are past use: both count as misses. A repeat the resend
// policy refuses (see resendLog) counts as suppressed. Send worker only.
func (d *downTrack) retransmit(seq uint16, now int64) {
	b, w := d.bind.Load(), &d.w
	cur := d.current.Load()
	st := &d.sub.s.stats
	if b == nil || !w.started || cur < 0 {
		st.nackMisses.Add(1)
		return
	}
	src := seq - w.seqOff
	if int16(src-w.baseSeq) < 0 || int16(w.lastSeq-seq) < 0 {
		st.nackMisses.Add(1)
		return
	}
	if w.resent == nil {
		w.resent = new(resendLog)
	}
	m := w.resent.mark(seq, now)
	if !m.allow(now, d.rtt.Load()) {
		st.nackSuppressed.Add(1)
		return
	}
	s := d.src.layers[cur].hist.slot(src)
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.gen == 0 || s.h.seq != src || s.h.ssrc != w.srcSSRC || now-s.at > int64(maxRetransmitAge) {
		st.nackMisses.Add(1)
		return
	}
	m.at = now
	m.count++
	ts := s.h.ts + w.tsOff
	st.retransmits.Add(1)
	d.setExtensions(b, s)
	if b.rtxSSRC == 0 {
		d.send(b, b.ssrc, b.pt, seq, ts, s.h.marker, s.payload())
		return
	}
	w.rtx[0], w.rtx[1] = byte(seq>>8), byte(seq)
	n := copy(w.rtx[2:], s.payload())
	w.rtxSeq++
	d.send(b, b.rtxSSRC, b.rtxPT, w.rtxSeq, ts, s.h.marker, w.rtx[:2+n])
}

// rebase continues the subscriber's sequence and timestamp spaces across a
// change of source (layer switch, publisher SSRC change): the next packet is
// lastSeq+1, and its timestamp advances by the real time since the last one.
func (d *downTrack) rebase(h *rtpInfo, at int64, clockRate uint32) {
	w := &d.w
	if !w.started {
		w.seqOff, w.tsOff = 0, 0
		w.lastSeq, w.lastTS, w.lastAt = h.seq-1, h.ts, at
		w.started = true
	} else {
		w.seqOff = w.lastSeq + 1 - h.seq
		delta := uint32(1)
		if el := at - w.lastAt; el > 0 && clockRate > 0 {
			if dt := uint32(uint64(el) * uint64(clockRate) / 1e9); dt > 0 {
				delta = dt
			}
		}
		w.tsOff = w.lastTS + delta - h.ts
	}
	w.srcSSRC = h.ssrc
	w.baseSeq = h.seq
	w.rebase = false
}

// rtcpLoop reads the subscriber's RTCP for this track: keyframe requests go
// to the publisher, NACKs to the send worker, receiver reports give loss and
// round-trip time. pion's report interceptors see it as it passes.
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
			case *rtcp.TransportLayerNack:
				d.queueNACK(pk, d.sub.s.mono())
			case *rtcp.ReceiverReport:
				d.receiverReport(pk, time.Now())
			}
		}
	}
}

// receiverReport takes the loss fraction and the round-trip time (RFC 3550
// §6.4.1: arrival minus LSR minus DLSR, from the sender reports pion's report
// interceptor sends) from the subscriber's report block for this track's
// media SSRC; blocks for other SSRCs (the RTX stream's) are ignored.
func (d *downTrack) receiverReport(rr *rtcp.ReceiverReport, now time.Time) {
	b := d.bind.Load()
	if b == nil {
		return
	}
	for _, r := range rr.Reports {
		if r.SSRC != b.ssrc {
			continue
		}
		d.fractionLost.Store(uint32(r.FractionLost))
		if rtt, ok := reportRTT(r, now); ok {
			d.rtt.Store(int64(rtt))
		}
	}
}

// reportRTT is the round-trip time a report block received at now gives,
// and whether it gives one: not before the receiver has had a sender report
// (LSR 0), nor when the result is negative or over maxRTT (clocks, or a
// report that lies).
func reportRTT(r rtcp.ReceptionReport, now time.Time) (time.Duration, bool) {
	if r.LastSenderReport == 0 {
		return 0, false
	}
	rtt := int32(ntpMiddle(now) - r.LastSenderReport - r.Delay) // 1/65536 s
	if rtt < 0 {
		return 0, false
	}
	d := time.Duration(int64(rtt) * int64(time.Second) >> 16)
	if d > maxRTT {
		return 0, false
	}
	return d, true
}

// ntpMiddle is the middle 32 bits of t's NTP timestamp (RFC 3550 §4): 16
// bits of seconds, 16 of fraction, the unit of LSR and DLSR.
func ntpMiddle(t time.Time) uint32 {
	const ntpEpochOffset = 2208988800 // 1900 to 1970, in seconds
	sec := uint64(t.Unix()) + ntpEpochOffset
	frac := uint64(t.Nanosecond()) << 32 / 1e9
	return uint32(sec<<16 | frac>>16)
}

// maxNACKPerPacket bounds the retransmissions one RTCP NACK can ask for (a
// single packet can name thousands); maxPendingNACKs bounds a subscriber's
// NACKed sequence numbers waiting on its send worker, so a subscriber that
// floods NACKs cannot fill the queue it shares with other subscribers' media.
// The rest count as misses.
const (
	maxNACKPerPacket = 128
	maxPendingNACKs  = 2 * maxNACKPerPacket
)

// queueNACK queues the sequence numbers a subscriber NACKed, at now, for its
// send worker, which alone knows how they map onto the source. RTCP reader
// goroutine.
func (d *downTrack) queueNACK(n *rtcp.TransportLayerNack, now int64) {
	budget := maxNACKPerPacket
	p := d.sub
	for _, pair := range n.Nacks {
		pair.Range(func(seq uint16) bool {
			if budget == 0 || p.nackPending.Load() >= maxPendingNACKs {
				p.s.stats.nackMisses.Add(1)
				return true
			}
			budget--
			p.nackPending.Add(1)
			p.worker.submit(fanJob{nack: d, seq: seq, at: now}, &p.s.stats)
			return true
		})
	}
}

// rtxPayloadType is the RTX payload type whose apt names pt, if negotiated.
func rtxPayloadType(codecs []webrtc.RTPCodecParameters, pt webrtc.PayloadType) (uint8, bool) {
	apt := strconv.Itoa(int(pt))
	for _, c := range codecs {
		if strings.EqualFold(c.MimeType, webrtc.MimeTypeRTX) && fmtpParam(c.SDPFmtpLine, "apt") == apt {
			return uint8(c.PayloadType), true
		}
	}
	return 0, false
}
