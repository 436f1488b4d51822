package sfu

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v4"
)

// pubTrack is one published media track (one m-section of a WHIP offer) with
// up to three simulcast layers. Fields are immutable after creation except
// the atomics; downs is replaced (copy on write) under room.mu.
type pubTrack struct {
	id     string
	pub    *participant
	mid    string
	kind   webrtc.RTPCodecType
	codec  webrtc.RTPCodecCapability
	ck     codecKind
	layers []*layer

	downs       atomic.Pointer[[]*downTrack]
	byWorker    atomic.Pointer[[][]*downTrack] // downs split by send worker; replaced with downs
	extIn       atomic.Pointer[extMap]         // the publisher's ids of forwarded header extensions
	unpublished bool                           // guarded by room.mu
}

// layer is one simulcast encoding (rid) of a pubTrack, or its only encoding.
type layer struct {
	rid     string
	idx     int32
	ssrc    atomic.Uint32
	active  atomic.Bool
	packets atomic.Uint64
	bytes   atomic.Uint64
	bitrate atomic.Uint64 // bits/s, computed by the sweeper
	lastPLI atomic.Int64  // monotonic ns of the last keyframe request sent
	hist    *history      // recent packets: subscriber queues and NACK answers

	gen       uint64 // packets stored in hist; reader goroutine only
	lastBytes uint64 // sweeper only
}

func newPubTrack(p *participant, mid string, kind webrtc.RTPCodecType, codec webrtc.RTPCodecCapability, rids []string) *pubTrack {
	t := &pubTrack{id: p.id + "-" + mid, pub: p, mid: mid, kind: kind, codec: codec, ck: codecKindOf(codec.MimeType)}
	if len(rids) == 0 {
		rids = []string{""}
	}
	size := historyVideo
	if kind == webrtc.RTPCodecTypeAudio {
		size = historyAudio
	}
	for i, rid := range rids {
		t.layers = append(t.layers, &layer{rid: rid, idx: int32(i), hist: newHistory(size)})
	}
	t.setDownsLocked(nil)
	return t
}

func (t *pubTrack) layerByRID(rid string) *layer {
	for _, l := range t.layers {
		if l.rid == rid {
			return l
		}
	}
	return nil
}

func (t *pubTrack) rids() []string {
	if len(t.layers) == 1 && t.layers[0].rid == "" {
		return nil
	}
	r := make([]string, len(t.layers))
	for i, l := range t.layers {
		r[i] = l.rid
	}
	return r
}

// Common rid naming schemes, lowest quality first.
var ridSchemes = [][]string{{"q", "h", "f"}, {"l", "m", "h"}}

// highestLayer is the default layer of a new subscriber: the one with the
// highest measured bitrate when every layer has been measured and one is
// highest, else the best
// by a common naming scheme (q<h<f, l<m<h, numbers), else the last offered.
func (t *pubTrack) highestLayer() int32 {
	if len(t.layers) == 1 {
		return 0
	}
	best, bestRate, all, tie := int32(0), uint64(0), true, false
	for _, l := range t.layers {
		r := l.bitrate.Load()
		if r == 0 {
			all = false
		}
		switch {
		case r > bestRate:
			best, bestRate, tie = l.idx, r, false
		case r == bestRate:
			tie = true
		}
	}
	if all && !tie { // equal rates say nothing: rank by name below
		return best
	}
	for _, scheme := range ridSchemes {
		rank := func(rid string) int {
			for i, s := range scheme {
				if s == rid {
					return i
				}
			}
			return -1
		}
		ok, best, bestRank := true, int32(0), -1
		for _, l := range t.layers {
			r := rank(l.rid)
			if r < 0 {
				ok = false
				break
			}
			if r > bestRank {
				best, bestRank = l.idx, r
			}
		}
		if ok {
			return best
		}
	}
	numeric, best, bestN := true, int32(0), -1
	for _, l := range t.layers {
		n, err := strconv.Atoi(l.rid)
		if err != nil {
			numeric = false
			break
		}
		if n > bestN {
			best, bestN = l.idx, n
		}
	}
	if numeric {
		return best
	}
	return int32(len(t.layers) - 1)
}

// followFlowingLayerLocked moves subscribers that made no explicit choice
// off a layer that stopped (a browser drops its top layers when bandwidth is
// short) to the best layer still flowing, and back when it resumes. Called by
// the sweeper after measuring bitrates; room.mu is held.
func (t *pubTrack) followFlowingLayerLocked() {
	if len(t.layers) < 2 {
		return
	}
	choice := t.highestLayer()
	if t.layers[choice].bitrate.Load() == 0 {
		best := uint64(0)
		for _, l := range t.layers {
			if r := l.bitrate.Load(); r > best {
				choice, best = l.idx, r
			}
		}
		if best == 0 {
			return // nothing flows: keep the choice
		}
	}
	for _, d := range *t.downs.Load() {
		if d.auto.Load() && d.target.Load() != choice {
			d.target.Store(choice)
			t.requestKeyframe(choice)
		}
	}
}

// duplicateWindow is how recent a held packet with the same sequence number
// must be to make a new one its duplicate: far below the 16-bit sequence
// wrap (5 minutes at 200 packets/s), far above any retransmission.
const duplicateWindow = int64(10 * time.Second)

// forward classifies one packet of layer l in place, stores it once in the
// layer's history and hands it to the send workers of its subscribers. It runs on the layer's
// reader goroutine and allocates nothing once the history is warm.
func (t *pubTrack) forward(l *layer, b []byte, now int64) {
	h, ok := parseRTP(b)
	if !ok {
		t.pub.s.stats.badPackets.Add(1)
		return
	}
	l.packets.Add(1)
	l.bytes.Add(uint64(len(b)))
	if h.payloadEnd == h.payloadOff { // padding-only (bandwidth probe): nothing to forward
		return
	}
	if len(b) > maxPacket {
		t.pub.s.stats.badPackets.Add(1)
		return
	}
	// A packet the ring already holds is a duplicate: the publisher
	// answered our NACK more than once, or the network doubled it. Sending
	// it again would give subscribers a copy they have. This goroutine is
	// the ring's only writer, so it reads its own slots without the lock.
	if old := l.hist.slot(h.seq); old.gen != 0 && old.h.seq == h.seq && old.h.ssrc == h.ssrc && now-old.at < duplicateWindow {
		t.pub.s.stats.duplicates.Add(1)
		return
	}
	kf := t.kind == webrtc.RTPCodecTypeAudio || isKeyframeStart(t.ck, b[h.payloadOff:h.payloadEnd])
	l.gen++
	slot := l.hist.put(b, &h, kf, now, l.gen)
	s := t.pub.s
	for i, ds := range *t.byWorker.Load() {
		if len(ds) > 0 {
			s.fan.workers[i].submit(fanJob{downs: ds, slot: slot, gen: l.gen, layer: l.idx}, &s.stats)
		}
	}
}

// requestKeyframe sends a PLI for layer idx to the publisher, at most one per
// KeyframeInterval per layer; requests in between are coalesced into it.
func (t *pubTrack) requestKeyframe(idx int32) {
	if t.kind != webrtc.RTPCodecTypeVideo || idx < 0 || int(idx) >= len(t.layers) {
		return
	}
	s := t.pub.s
	l := t.layers[idx]
	ssrc := l.ssrc.Load()
	if ssrc == 0 {
		return
	}
	now := s.mono()
	last := l.lastPLI.Load()
	if last != 0 && now-last < int64(s.cfg.KeyframeInterval) || !l.lastPLI.CompareAndSwap(last, now) {
		s.stats.keyframeCoalesced.Add(1)
		return
	}
	if err := t.pub.pc.WriteRTCP([]rtcp.Packet{&rtcp.PictureLossIndication{MediaSSRC: ssrc}}); err == nil {
		s.stats.keyframeRequests.Add(1)
	}
}

// readLoop reads layer l of the track until the PeerConnection closes.
func (t *pubTrack) readLoop(l *layer, tr *webrtc.TrackRemote) {
	s := t.pub.s
	buf := make([]byte, 1500)
	for {
		n, _, err := tr.Read(buf)
		if err != nil {
			return
		}
		t.forward(l, buf[:n], s.mono())
	}
}

// rtcpLoop drains the publisher's RTCP for one layer so pion's interceptors
// (receiver reports, NACK generation) see sender reports; ends on close.
func (t *pubTrack) rtcpLoop(recv *webrtc.RTPReceiver, rid string) {
	for {
		var err error
		if rid == "" {
			_, _, err = recv.ReadRTCP()
		} else {
			_, _, err = recv.ReadSimulcastRTCP(rid)
		}
		if err != nil {
			return
		}
	}
}
