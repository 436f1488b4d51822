package sfu

import (
	"testing"
	"time"

	"github.com/pion/rtcp"
)

// A subscriber's NACK is answered from the layer's history: a real pion
// subscriber that NACKs a packet gets it again with the same contents and
// sequence number (sent on the RTX stream the pair negotiated, which pion
// repairs back into the media stream), and a NACK for a packet the server
// never sent is a miss, not a retransmission.
func TestSubscriberNACKAnswered(t *testing.T) {
	e := newTestEnv(t, nil)
	pub := newPublisher(t, e, "nack", nil, false)
	// pion hands a repaired packet to the reader before the next media
	// packet, so media keeps flowing throughout.
	pub.start(5*time.Millisecond, 100000)
	waitFor(t, "track published", 5*time.Second, func() bool { return e.srv.Stats().Tracks == 1 })
	sub := newSubscriber(t, e, "/whep/nack", true, false)
	waitFor(t, "media at subscriber", 10*time.Second, func() bool { return sub.video.len() >= 60 })

	sub.video.mu.Lock()
	n := len(sub.video.counters)
	i := n - 20
	seq, counter := sub.video.seqs[i], sub.video.counters[i]
	sub.video.mu.Unlock()
	if err := sub.pc.WriteRTCP([]rtcp.Packet{&rtcp.TransportLayerNack{MediaSSRC: sub.videoSSRC.Load(), Nacks: []rtcp.NackPair{
		{PacketID: seq},
		{PacketID: seq + 30000}, // never sent
	}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "retransmission at subscriber", 5*time.Second, func() bool {
		sub.video.mu.Lock()
		defer sub.video.mu.Unlock()
		for j := n; j < len(sub.video.seqs); j++ {
			if sub.video.seqs[j] == seq {
				if sub.video.counters[j] != counter {
					t.Fatalf("retransmitted seq %d carries counter %d, want %d", seq, sub.video.counters[j], counter)
				}
				return true
			}
		}
		return false
	})
	st := e.srv.Stats()
	if st.Retransmits != 1 || st.NACKMisses != 1 {
		t.Fatalf("retransmits %d, NACK misses %d; want 1 and 1", st.Retransmits, st.NACKMisses)
	}

	// The subscriber's receiver reports (after pion's sender reports, 1 s
	// apart) give its round-trip time, which spaces repeated resends.
	var rtt float64
	waitFor(t, "an RTT from the subscriber's receiver reports", 10*time.Second, func() bool {
		info, err := e.srv.RoomInfo("nack")
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range info.Participants {
			for _, s := range p.Subscriptions {
				rtt = s.RTTMs
			}
		}
		return rtt > 0
	})
	if rtt > 1000 {
		t.Fatalf("loopback RTT %.3f ms", rtt)
	}
	t.Logf("subscriber RTT %.3f ms", rtt)
	pub.stopSending()
}
