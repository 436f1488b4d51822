package bench

import (
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/pion/rtp"
)

// TestReceivePathAllocs pins that the bench's own receive path (the raw
// socket readers, and a session reader behind oneport's mux) allocates
// nothing per RTP packet, so the CPU it measures is the receiver's. pion's
// figure is logged, not asserted: it is pion's.
func TestReceivePathAllocs(t *testing.T) {
	cfg, err := MuxConfig{Sessions: 1, Senders: 1}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		assert bool
	}{{ReceiverRaw, true}, {ReceiverPion, false}, {ReceiverOneport, true}} {
		t.Run(tc.name, func(t *testing.T) {
			specs := newSpecs(1)
			rcv, err := openReceiver(cfg, tc.name, specs, false)
			if err != nil {
				t.Fatal(err)
			}
			defer rcv.close()
			client, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(rcv.addr()))
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			if !(&clientSock{conn: client, spec: specs[0]}).check(time.Now().Add(5 * time.Second)) {
				t.Fatal("STUN check not answered")
			}
			pkt := make([]byte, 100)
			pt := rcv.nextRun()
			if _, err := (&rtp.Header{Version: 2, PayloadType: pt, SSRC: specs[0].SSRC}).MarshalTo(pkt); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(20 * time.Second)
			send := func() {
				want := rcv.counts().Delivered + 1
				if _, err := client.Write(pkt); err != nil {
					t.Fatal(err)
				}
				for rcv.counts().Delivered < want {
					if time.Now().After(deadline) {
						t.Fatal("packet not delivered in time")
					}
					runtime.Gosched()
				}
			}
			send() // warm the path: first-packet setup (flow binding, pools) is not per packet
			allocs := testing.AllocsPerRun(50, send)
			t.Logf("%s: %.2f allocations per packet", tc.name, allocs)
			if tc.assert && allocs != 0 {
				t.Errorf("%s: %.2f allocations per packet, want 0", tc.name, allocs)
			}
		})
	}
}
