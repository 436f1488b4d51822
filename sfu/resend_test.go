package sfu

import (
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
)

// forwardRun forwards n video packets, the first a keyframe, arriving 1 ms
// apart from 0, and returns the subscriber's first sequence number.
func forwardRun(t *testing.T, tr *pubTrack, sub *participant, w *fakeWriter, n int) uint16 {
	t.Helper()
	for i := range n {
		p := []byte{0x10, 0x11, 0x02, 0x00, byte(i)}
		if i == 0 {
			p[1] = 0x10
		}
		tr.forward(tr.layers[0], rtpPacket(uint16(100+i), uint32(i*3000), 77, p), int64(i)*int64(time.Millisecond))
		drain(sub)
	}
	if w.n != n {
		t.Fatalf("forwarded %d, want %d", w.n, n)
	}
	return w.hdrs[0].SequenceNumber
}

// One packet NACKed again and again is resent at most maxResends times, not
// twice within the resend interval (100 ms before the RTT is known, then
// the RTT, never under 10 ms), and not at all once older than
// maxRetransmitAge.
func TestResendPolicy(t *testing.T) {
	w := &fakeWriter{hdrs: []rtp.Header{}}
	tr, d, sub := newBareDown(t, nil, w)
	first := forwardRun(t, tr, sub, w, 200)
	st := &sub.s.stats
	ms := int64(time.Millisecond)
	seq := first + 150 // arrived at 150 ms

	steps := []struct {
		at   int64 // ms
		rtt  time.Duration
		sent bool
	}{
		{at: 300, sent: true},            // first resend
		{at: 350},                        // within the default 100 ms
		{at: 399},                        // still within
		{at: 400, sent: true},            // 100 ms later: second
		{at: 405, rtt: time.Millisecond}, // a 1 ms RTT: the 10 ms floor holds
		{at: 410, rtt: time.Millisecond, sent: true}, // third
		{at: 900, rtt: time.Millisecond},             // three already
		{at: 1900, rtt: 20 * time.Millisecond},       // still three
	}
	wantSent, wantSupp := 0, 0
	for i, s := range steps {
		d.rtt.Store(int64(s.rtt))
		d.retransmit(seq, s.at*ms)
		if s.sent {
			wantSent++
		} else {
			wantSupp++
		}
		if got := w.n - 200; got != wantSent || st.nackSuppressed.Load() != uint64(wantSupp) {
			t.Fatalf("step %d (%d ms): %d resent, %d suppressed; want %d and %d", i, s.at, got, st.nackSuppressed.Load(), wantSent, wantSupp)
		}
	}
	if st.retransmits.Load() != maxResends {
		t.Fatalf("retransmits %d, want %d", st.retransmits.Load(), maxResends)
	}

	// Another packet, too old for any resend: a miss, not a retransmission.
	old := first + 10 // arrived at 10 ms
	d.retransmit(old, 10*ms+int64(maxRetransmitAge)+ms)
	if st.nackMisses.Load() != 1 || w.n != 200+maxResends {
		t.Fatalf("too old: misses %d, sent %d", st.nackMisses.Load(), w.n-200)
	}
	// A packet just inside the age is resent.
	d.retransmit(first+199, 199*ms+int64(maxRetransmitAge))
	if w.n != 200+maxResends+1 {
		t.Fatalf("inside the age: not resent")
	}

	// A long measured RTT spaces resends by itself, not by the default.
	d.rtt.Store(int64(300 * time.Millisecond))
	for _, at := range []int64{1000, 1150, 1299, 1300} {
		d.retransmit(first+180, at*ms)
	}
	if w.n != 200+maxResends+3 {
		t.Fatalf("RTT 300 ms: %d resends at 1000, 1150, 1299, 1300 ms, want 2", w.n-200-maxResends-1)
	}
}

// A subscriber flooding NACKs for everything it was sent gets at most
// maxResends copies of each packet: the retransmitted bytes are bounded by
// maxResends times the media, however many NACKs it sends. (Unbounded, each
// NACK packet bought up to maxNACKPerPacket full packets.)
func TestNACKFloodBounded(t *testing.T) {
	w := &fakeWriter{hdrs: []rtp.Header{}}
	tr, d, sub := newBareDown(t, nil, w)
	sub.s.fan = newFanout(1, 2*maxNACKPerPacket, nil) // room for a whole NACK's jobs
	sub.worker = sub.s.fan.assign()
	const sent = 400
	base := forwardRun(t, tr, sub, w, sent)
	// 1,500 NACK packets, 1 ms apart, each naming 128 sent packets (8
	// pairs of 16), cycling over all of them, all within maxRetransmitAge.
	const nacks = 1500
	asked := 0
	for i := range nacks {
		var pairs []rtcp.NackPair
		for k := range 8 {
			pairs = append(pairs, rtcp.NackPair{PacketID: base + uint16((i*128+k*16)%(sent-16)), LostPackets: 0x7fff})
		}
		asked += 128
		d.queueNACK(&rtcp.TransportLayerNack{Nacks: pairs}, int64(sent+i)*int64(time.Millisecond))
		drain(sub)
	}
	st := &sub.s.stats
	resent := w.n - sent
	t.Logf("%d NACK packets asked for %d retransmissions: %d sent (%.2f per packet sent), %d suppressed, %d misses",
		nacks, asked, resent, float64(resent)/sent, st.nackSuppressed.Load(), st.nackMisses.Load())
	if resent > maxResends*sent {
		t.Fatalf("%d retransmissions of %d packets: more than %d each", resent, sent, maxResends)
	}
	if resent < sent-1 { // the first NACK of each packet named is answered
		t.Fatalf("only %d retransmissions of %d NACKed packets", resent, sent)
	}
	if got := uint64(resent) + st.nackSuppressed.Load() + st.nackMisses.Load(); got != uint64(asked) {
		t.Fatalf("accounted %d of %d NACKed sequence numbers", got, asked)
	}
}

// The RTT from a report block: arrival minus LSR minus DLSR, in 1/65536 s.
func TestReportRTT(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	sr := now.Add(-70 * time.Millisecond) // the sender report left 70 ms ago
	dlsr := uint32(20 * 65536 / 1000)     // and waited 20 ms at the receiver
	r := rtcp.ReceptionReport{LastSenderReport: ntpMiddle(sr), Delay: dlsr}
	rtt, ok := reportRTT(r, now)
	if !ok || rtt < 49*time.Millisecond || rtt > 51*time.Millisecond {
		t.Fatalf("rtt %v %v, want 50ms", rtt, ok)
	}
	for name, r := range map[string]rtcp.ReceptionReport{
		"no sender report yet": {},
		"negative":             {LastSenderReport: ntpMiddle(now.Add(time.Second))},
		"over maxRTT":          {LastSenderReport: ntpMiddle(now.Add(-maxRTT - time.Second))},
	} {
		if rtt, ok := reportRTT(r, now); ok {
			t.Errorf("%s: rtt %v", name, rtt)
		}
	}
	// The middle 32 bits: 16 of seconds since 1900, 16 of fraction.
	if got := ntpMiddle(time.Unix(0, int64(time.Second/2))); got != uint32(2208988800&0xffff)<<16|0x8000 {
		t.Fatalf("ntpMiddle(1970+0.5s) = %#x", got)
	}
}

// A subscriber's NACKed sequence numbers wait on its send worker at most
// maxPendingNACKs at a time: a NACK flood cannot fill the queue the worker
// shares with other subscribers' media. The excess counts as misses.
func TestPendingNACKsBounded(t *testing.T) {
	w := &fakeWriter{hdrs: []rtp.Header{}}
	tr, d, sub := newBareDown(t, nil, w)
	sub.s.fan = newFanout(1, 4096, nil)
	sub.worker = sub.s.fan.assign()
	first := forwardRun(t, tr, sub, w, 300)
	nack := &rtcp.TransportLayerNack{}
	for k := range maxNACKPerPacket / 16 {
		nack.Nacks = append(nack.Nacks, rtcp.NackPair{PacketID: first + uint16(k*16), LostPackets: 0x7fff})
	}
	for range 3 {
		d.queueNACK(nack, 0)
	}
	st := &sub.s.stats
	if q, p := len(sub.worker.jobs), sub.nackPending.Load(); q != maxPendingNACKs || p != maxPendingNACKs {
		t.Fatalf("queued %d, pending %d; want %d", q, p, maxPendingNACKs)
	}
	if st.nackMisses.Load() != 3*maxNACKPerPacket-maxPendingNACKs {
		t.Fatalf("misses %d", st.nackMisses.Load())
	}
	drain(sub)
	if p := sub.nackPending.Load(); p != 0 {
		t.Fatalf("pending %d after the worker ran", p)
	}
	// Once the worker has run them, the subscriber may ask again.
	d.queueNACK(nack, 0)
	if q := len(sub.worker.jobs); q != maxNACKPerPacket {
		t.Fatalf("queued %d after draining, want %d", q, maxNACKPerPacket)
	}
}

// FuzzSubscriberRTCP feeds a subscriber's RTCP, as pion hands it to the
// downTrack's reader (a compound packet, parsed by pion/rtcp), to the NACK
// and receiver-report handling, at fuzzed times: whatever it says, each
// packet is resent at most maxResends times, every NACKed sequence number is
// accounted for, and the RTT taken is within [0, maxRTT].
func FuzzSubscriberRTCP(f *testing.F) {
	nack, _ := (&rtcp.TransportLayerNack{MediaSSRC: 4242, Nacks: []rtcp.NackPair{{PacketID: 5, LostPackets: 0xffff}}}).Marshal()
	rr, _ := (&rtcp.ReceiverReport{Reports: []rtcp.ReceptionReport{{SSRC: 4242, LastSenderReport: 1, Delay: 2}}}).Marshal()
	f.Add(append(nack, rr...), uint16(3), uint32(0))
	f.Add(nack, uint16(0xfff0), uint32(7))
	f.Fuzz(func(t *testing.T, raw []byte, first uint16, step uint32) {
		pkts, err := rtcp.Unmarshal(raw)
		if err != nil || len(pkts) > 64 {
			return
		}
		w := &fakeWriter{}
		tr, d, sub := newBareDown(t, nil, w)
		sub.s.fan = newFanout(1, 4096, nil)
		sub.worker = sub.s.fan.assign()
		const sent = 64
		for i := range sent {
			p := []byte{0x10, 0x11, 0x02, 0x00, byte(i)}
			if i == 0 {
				p[1] = 0x10
			}
			tr.forward(tr.layers[0], rtpPacket(first+uint16(i), uint32(i*3000), 77, p), int64(i)*int64(time.Millisecond))
			drain(sub)
		}
		st := &sub.s.stats
		named := uint64(0)
		now := int64(sent) * int64(time.Millisecond)
		wall := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
		for round := range 4 { // the same RTCP again, as a repeating receiver would
			for _, p := range pkts {
				switch pk := p.(type) {
				case *rtcp.TransportLayerNack:
					before := st.retransmits.Load() + st.nackSuppressed.Load() + st.nackMisses.Load()
					d.queueNACK(pk, now)
					drain(sub)
					n := uint64(0)
					for _, pair := range pk.Nacks {
						pair.Range(func(uint16) bool { n++; return true })
					}
					named += n
					if got := st.retransmits.Load() + st.nackSuppressed.Load() + st.nackMisses.Load() - before; got != n {
						t.Fatalf("round %d: %d outcomes for the %d sequence numbers a NACK named", round, got, n)
					}
				case *rtcp.ReceiverReport:
					d.receiverReport(pk, wall)
					if rtt := time.Duration(d.rtt.Load()); rtt < 0 || rtt > maxRTT {
						t.Fatalf("rtt %v", rtt)
					}
				}
			}
			now += int64(step)
			wall = wall.Add(time.Duration(step))
		}
		if got := st.retransmits.Load() + st.nackSuppressed.Load() + st.nackMisses.Load(); got != named {
			t.Fatalf("%d outcomes for %d sequence numbers named", got, named)
		}
		if r := st.retransmits.Load(); r > maxResends*sent {
			t.Fatalf("%d retransmissions of %d packets", r, sent)
		}
		if p := sub.nackPending.Load(); p != 0 {
			t.Fatalf("%d NACKs pending after the worker ran", p)
		}
	})
}
