package sfu

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

func rtpPacket(seq uint16, ts, ssrc uint32, payload []byte) []byte {
	h := rtp.Header{Version: 2, SequenceNumber: seq, Timestamp: ts, SSRC: ssrc, PayloadType: 96}
	b, _ := (&rtp.Packet{Header: h, Payload: payload}).Marshal()
	return b
}

func TestParseRTP(t *testing.T) {
	h := rtp.Header{Version: 2, Padding: true, Marker: true, PayloadType: 111, SequenceNumber: 65535, Timestamp: 7, SSRC: 9, CSRC: []uint32{1, 2}}
	_ = h.SetExtension(1, []byte{1, 2, 3})
	b, err := (&rtp.Packet{Header: h, Payload: []byte{0xaa, 0xbb}, PaddingSize: 3}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	info, ok := parseRTP(b)
	if !ok || info.seq != 65535 || info.ts != 7 || info.ssrc != 9 || info.pt != 111 || !info.marker ||
		string(b[info.payloadOff:info.payloadEnd]) != "\xaa\xbb" {
		t.Fatalf("parseRTP = %+v %v", info, ok)
	}
	for _, bad := range [][]byte{nil, b[:11], {0x80 | 0x0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, {0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}} {
		if _, ok := parseRTP(bad); ok {
			t.Errorf("parseRTP(%x) accepted", bad)
		}
	}
}

func TestKeyframeDetection(t *testing.T) {
	cases := []struct {
		name string
		c    codecKind
		p    []byte
		want bool
	}{
		{"vp8 key", codecVP8, []byte{0x10, 0x10, 0x02, 0x00}, true},
		{"vp8 inter", codecVP8, []byte{0x10, 0x11, 0x02, 0x00}, false},
		{"vp8 not start", codecVP8, []byte{0x00, 0x10}, false},
		{"vp8 key with picture id 15 bits and tl0", codecVP8, []byte{0x90, 0xc0, 0x81, 0x23, 0x05, 0x10}, true},
		{"vp8 truncated", codecVP8, []byte{0x90, 0x80}, false},
		{"vp9 key", codecVP9, []byte{0x08}, true},
		{"vp9 inter", codecVP9, []byte{0x48}, false},
		{"vp9 key spatial 1", codecVP9, []byte{0xa8, 0x01, 0x02}, false},
		{"vp9 key spatial 0 with pid", codecVP9, []byte{0xa8, 0x01, 0x00}, true},
		{"h264 idr", codecH264, []byte{0x65, 0x88}, true},
		{"h264 sps", codecH264, []byte{0x67, 0x42}, true},
		{"h264 p slice", codecH264, []byte{0x41, 0x9a}, false},
		{"h264 stap-a with sps", codecH264, []byte{0x18, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce}, true},
		{"h264 stap-a without", codecH264, []byte{0x18, 0x00, 0x02, 0x41, 0x42}, false},
		{"h264 fu-a idr start", codecH264, []byte{0x7c, 0x85, 0x00}, true},
		{"h264 fu-a idr middle", codecH264, []byte{0x7c, 0x05, 0x00}, false},
		{"av1 new sequence", codecAV1, []byte{0x18, 0x00}, true},
		{"av1 continuation", codecAV1, []byte{0x98, 0x00}, false},
		{"av1 plain", codecAV1, []byte{0x10, 0x00}, false},
		{"empty", codecVP8, nil, false},
	}
	for _, c := range cases {
		if got := isKeyframeStart(c.c, c.p); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// fakeWriter records what a downTrack writes.
type fakeWriter struct {
	hdrs []rtp.Header
	n    int
}

func (f *fakeWriter) WriteRTP(h *rtp.Header, p []byte) (int, error) {
	if f.hdrs != nil || f.n < 0 {
		f.hdrs = append(f.hdrs, *h)
	}
	f.n++
	return 12 + len(p), nil
}
func (f *fakeWriter) Write(b []byte) (int, error) { return len(b), nil }

// newBareDown builds a pubTrack with layers and one bound downTrack, without
// PeerConnections, to drive the forwarding path directly.
func newBareDown(t testing.TB, layers []string, w *fakeWriter) (*pubTrack, *downTrack, *participant) {
	cfg := Config{UDPMux: nil}
	cfg.KeyframeInterval = time.Hour
	cfg.QueuePackets = 64
	s := &Server{cfg: cfg, epoch: time.Now(), fan: newFanout(2, cfg.QueuePackets, nil)}
	pub := &participant{s: s, id: "pub"}
	sub := &participant{s: s, id: "sub", worker: s.fan.assign()}
	sub.connected.Store(true)
	tr := newPubTrack(pub, "0", webrtc.RTPCodecTypeVideo, webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}, layers)
	d := newDownTrack(sub, tr, tr.highestLayer())
	d.bind.Store(&binding{ssrc: 4242, pt: 100, clockRate: 90000, writer: w})
	tr.addDownLocked(d)
	return tr, d, sub
}

// drain runs every queued job, as the send workers do.
func drain(sub *participant) { sub.s.fan.drain() }

// The per-packet path (classify, store, fan out, queue, rewrite, write)
// allocates nothing once the history is warm.
func TestForwardAllocs(t *testing.T) {
	w := &fakeWriter{}
	tr, _, sub := newBareDown(t, nil, w)
	key := rtpPacket(1000, 0, 77, []byte{0x10, 0x10, 0x02, 0x00, 1, 2, 3})
	inter := rtpPacket(1001, 3000, 77, []byte{0x10, 0x11, 0x02, 0x00, 1, 2, 3})
	tr.forward(tr.layers[0], key, 1)
	drain(sub)
	seq := uint16(1001)
	for range historyVideo { // every history slot gets its buffer
		binary.BigEndian.PutUint16(inter[2:], seq)
		seq++
		tr.forward(tr.layers[0], inter, 2)
		drain(sub)
	}
	w.n = 1
	allocs := testing.AllocsPerRun(1000, func() {
		binary.BigEndian.PutUint16(inter[2:], seq)
		seq++
		tr.forward(tr.layers[0], inter, 2)
		drain(sub)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per forwarded packet, want 0", allocs)
	}
	if w.n != 1002 {
		t.Fatalf("wrote %d packets, want 1002", w.n)
	}
}

// Sequence numbers and timestamps continue across a layer switch and a
// publisher SSRC change; packets older than a switch are not sent.
func TestRewriteAcrossSwitches(t *testing.T) {
	w := &fakeWriter{hdrs: []rtp.Header{}}
	tr, d, sub := newBareDown(t, []string{"q", "h", "f"}, w)
	if d.target.Load() != 2 {
		t.Fatalf("default layer %d, want 2 (f)", d.target.Load())
	}
	kf := []byte{0x10, 0x10, 0x02, 0x00, 9}
	nk := []byte{0x10, 0x11, 0x02, 0x00, 9}
	send := func(layer int, seq uint16, ts, ssrc uint32, p []byte, at int64) {
		tr.forward(tr.layers[layer], rtpPacket(seq, ts, ssrc, p), at)
		drain(sub)
	}
	send(2, 500, 9000, 3, nk, 0)  // not a keyframe: waits
	send(2, 501, 12000, 3, kf, 1) // starts
	send(2, 502, 15000, 3, nk, 2)
	send(0, 100, 1000, 1, kf, 3) // layer q not wanted yet: filtered
	d.target.Store(0)
	send(0, 101, 4000, 1, nk, int64(10*time.Millisecond)) // not a keyframe: stays on f
	send(2, 503, 18000, 3, nk, int64(11*time.Millisecond))
	send(0, 102, 7000, 1, kf, int64(44*time.Millisecond)) // switch: 33 ms after the last f packet
	send(0, 103, 10000, 1, nk, int64(45*time.Millisecond))
	send(0, 101, 4000, 1, nk, int64(46*time.Millisecond))  // late, older than the switch: dropped
	send(0, 104, 13000, 9, kf, int64(60*time.Millisecond)) // publisher restarted the layer with a new SSRC
	var seqs []uint16
	var tss []uint32
	for _, h := range w.hdrs {
		if h.SSRC != 4242 || h.PayloadType != 100 {
			t.Fatalf("header %+v: want SSRC 4242 and PT 100", h)
		}
		seqs = append(seqs, h.SequenceNumber)
		tss = append(tss, h.Timestamp)
	}
	wantSeq := []uint16{501, 502, 503, 504, 505, 506}
	if len(seqs) != len(wantSeq) {
		t.Fatalf("sent seqs %v, want %v", seqs, wantSeq)
	}
	for i := range wantSeq {
		if seqs[i] != wantSeq[i] {
			t.Fatalf("sent seqs %v, want %v", seqs, wantSeq)
		}
	}
	// f: 12000, 15000, 18000; switch 33 ms later at 90 kHz = +2970; then q's own spacing.
	wantTS := []uint32{12000, 15000, 18000, 20970, 23970, 23970 + 1350}
	for i := range wantTS {
		if tss[i] != wantTS[i] {
			t.Fatalf("sent timestamps %v, want %v", tss, wantTS)
		}
	}
}

// A NACK is answered from the layer's history with the subscriber's own
// numbering: on the RTX stream when one is bound (original sequence number
// first), else as the original packet. Packets no longer in the history, not
// yet sent, or from before a layer switch are misses.
func TestNACKFromHistory(t *testing.T) {
	for _, rtx := range []bool{false, true} {
		w := &fakeWriter{hdrs: []rtp.Header{}}
		var payloads [][]byte
		tr, d, sub := newBareDown(t, nil, w)
		if rtx {
			d.bind.Store(&binding{ssrc: 4242, pt: 100, clockRate: 90000, rtxSSRC: 4343, rtxPT: 101, writer: &recordWriter{w, &payloads}})
		} else {
			d.bind.Store(&binding{ssrc: 4242, pt: 100, clockRate: 90000, writer: &recordWriter{w, &payloads}})
		}
		for i := range 600 {
			p := []byte{0x10, 0x11, 0x02, 0x00, byte(i)}
			if i == 0 {
				p[1] = 0x10
			}
			tr.forward(tr.layers[0], rtpPacket(uint16(7000+i), uint32(i*3000), 77, p), int64(i))
			drain(sub)
		}
		if w.n != 600 {
			t.Fatalf("rtx=%v: forwarded %d, want 600", rtx, w.n)
		}
		first := w.hdrs[0].SequenceNumber
		want := first + 590 // in the history
		d.queueNACK(&rtcp.TransportLayerNack{Nacks: []rtcp.NackPair{
			{PacketID: want, LostPackets: 0b1}, // want and want+1
			{PacketID: first + 5},              // overwritten: 512 slots
			{PacketID: first + 700},            // never sent
		}}, sub.s.mono())
		drain(sub)
		got := w.hdrs[600:]
		if len(got) != 2 {
			t.Fatalf("rtx=%v: %d retransmissions, want 2", rtx, len(got))
		}
		for i, h := range got {
			seq := want + uint16(i)
			pl := payloads[600+i]
			if rtx {
				if h.SSRC != 4343 || h.PayloadType != 101 || binary.BigEndian.Uint16(pl) != seq || pl[len(pl)-1] != byte(590+i) {
					t.Fatalf("rtx retransmission %d: %+v payload %x, want SSRC 4343 PT 101 OSN %d", i, h, pl, seq)
				}
			} else if h.SSRC != 4242 || h.SequenceNumber != seq || h.Timestamp != w.hdrs[590+i].Timestamp || pl[len(pl)-1] != byte(590+i) {
				t.Fatalf("retransmission %d: %+v, want the original packet %+v", i, h, w.hdrs[590+i])
			}
		}
		st := &sub.s.stats
		if st.retransmits.Load() != 2 || st.nackMisses.Load() != 2 {
			t.Fatalf("rtx=%v: retransmits %d misses %d, want 2 and 2", rtx, st.retransmits.Load(), st.nackMisses.Load())
		}
	}
}

// A reference whose slot was overwritten while it waited in a full queue is
// dropped and counted, not sent with another packet's contents.
func TestLateReferenceDropped(t *testing.T) {
	w := &fakeWriter{hdrs: []rtp.Header{}}
	tr, _, sub := newBareDown(t, nil, w)
	sub.s.fan = newFanout(1, historyVideo+10, nil)
	sub.worker = sub.s.fan.assign()
	for i := range historyVideo + 10 {
		p := []byte{0x10, 0x10, 0x02, 0x00, byte(i)} // every one a keyframe: the first ones are lost
		tr.forward(tr.layers[0], rtpPacket(uint16(i), uint32(i*3000), 77, p), int64(i))
	}
	drain(sub)
	st := &sub.s.stats
	if w.n != historyVideo || st.late.Load() != 10 || st.drops.Load() != 10 {
		t.Fatalf("sent %d late %d drops %d, want %d, 10, 10", w.n, st.late.Load(), st.drops.Load(), historyVideo)
	}
	for i, h := range w.hdrs {
		if h.Timestamp != w.hdrs[0].Timestamp+uint32((i)*3000) {
			t.Fatalf("packet %d has timestamp %d: another packet's contents", i, h.Timestamp)
		}
	}
}

// recordWriter is a fakeWriter that also keeps each payload.
type recordWriter struct {
	*fakeWriter
	payloads *[][]byte
}

func (r *recordWriter) WriteRTP(h *rtp.Header, p []byte) (int, error) {
	*r.payloads = append(*r.payloads, append([]byte(nil), p...))
	return r.fakeWriter.WriteRTP(h, p)
}

func BenchmarkForward(b *testing.B) {
	w := &fakeWriter{}
	tr, _, sub := newBareDown(b, nil, w)
	pkt := rtpPacket(0, 0, 77, append([]byte{0x10, 0x10, 0x02, 0x00}, make([]byte, 1100)...))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		binary.BigEndian.PutUint16(pkt[2:], uint16(i))
		tr.forward(tr.layers[0], pkt, int64(i))
		drain(sub)
	}
}

// A subscriber with no explicit layer follows the best flowing layer when the
// highest stops, and returns when it resumes; an explicit choice is kept.
func TestAutoLayerFollowsFlow(t *testing.T) {
	tr, d, _ := newBareDown(t, []string{"q", "h", "f"}, &fakeWriter{})
	set := func(q, h, f uint64) {
		for i, r := range []uint64{q, h, f} {
			tr.layers[i].bitrate.Store(r)
		}
		tr.followFlowingLayerLocked()
	}
	set(100e3, 500e3, 0) // f stopped
	if got := d.target.Load(); got != 1 {
		t.Fatalf("target %d with f stopped, want 1 (h)", got)
	}
	set(100e3, 500e3, 2e6)
	if got := d.target.Load(); got != 2 {
		t.Fatalf("target %d with f back, want 2", got)
	}
	d.auto.Store(false)
	d.target.Store(0)
	set(100e3, 500e3, 0)
	if got := d.target.Load(); got != 0 {
		t.Fatalf("explicit target moved to %d", got)
	}
}

// A packet the history already holds (a retransmission the publisher sent
// twice) is not forwarded again; a lost one that arrives late is.
func TestDuplicateNotForwarded(t *testing.T) {
	w := &fakeWriter{hdrs: []rtp.Header{}}
	tr, _, sub := newBareDown(t, nil, w)
	kf := []byte{0x10, 0x10, 0x02, 0x00, 9}
	for _, seq := range []uint16{1, 2, 4, 2, 3, 3, 5} {
		tr.forward(tr.layers[0], rtpPacket(seq, uint32(seq)*3000, 77, kf), int64(seq))
		drain(sub)
	}
	var seqs []uint16
	for _, h := range w.hdrs {
		seqs = append(seqs, h.SequenceNumber)
	}
	if fmt.Sprint(seqs) != "[1 2 4 3 5]" || sub.s.stats.duplicates.Load() != 2 {
		t.Fatalf("sent %v with %d duplicates, want [1 2 4 3 5] and 2", seqs, sub.s.stats.duplicates.Load())
	}
}

// The default layer is the highest measured bitrate; equal rates (or none
// measured yet) fall back to the rid naming scheme.
func TestHighestLayer(t *testing.T) {
	tr, _, _ := newBareDown(t, []string{"q", "h", "f"}, &fakeWriter{})
	for _, c := range []struct {
		rates []uint64
		want  int32
	}{
		{[]uint64{0, 0, 0}, 2},
		{[]uint64{500, 500, 500}, 2},
		{[]uint64{100e3, 900e3, 500e3}, 1},
		{[]uint64{100e3, 0, 500e3}, 2},
	} {
		for i, r := range c.rates {
			tr.layers[i].bitrate.Store(r)
		}
		if got := tr.highestLayer(); got != c.want {
			t.Errorf("rates %v: layer %d, want %d", c.rates, got, c.want)
		}
	}
}
