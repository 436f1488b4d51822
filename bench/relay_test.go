package bench

import (
	"context"
	"testing"
	"time"
)

// TestRelayShort runs the relay comparison small and checks its accounting:
// the same sessions bound on both paths, every packet delivered or lost,
// and the relayed run carried by relay frames.
func TestRelayShort(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep, err := RunRelay(ctx, RelayConfig{Sessions: 20, Duration: time.Second, Rate: 5000, Key: []byte("bench key")})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("direct %.0f pkt/s %.0f ns/pkt; relayed %.0f pkt/s %.0f ns/pkt; %d frames", rep.Direct.DeliveredPPS, rep.Direct.CPUNsPerPacket,
		rep.Relayed.DeliveredPPS, rep.Relayed.CPUNsPerPacket, rep.RelayFrames)
	if rep.DirectBound != 20 || rep.RelayedBound != 20 {
		t.Errorf("bound %d direct, %d relayed; want 20", rep.DirectBound, rep.RelayedBound)
	}
	for name, r := range map[string]RunReport{"direct": rep.Direct, "relayed": rep.Relayed} {
		if r.Sent == 0 || r.Delivered == 0 || r.Delivered > r.Sent || r.Misrouted != 0 || r.Lost != int64(r.Sent)-int64(r.Delivered) {
			t.Errorf("%s: sent %d delivered %d lost %d misrouted %d", name, r.Sent, r.Delivered, r.Lost, r.Misrouted)
		}
	}
	if rep.RelayFrames < rep.Relayed.Delivered {
		t.Errorf("%d relay frames for %d relayed deliveries", rep.RelayFrames, rep.Relayed.Delivered)
	}
}
