package serve

import (
	"slices"
	"strings"
	"testing"

	"github.com/oneport/oneport/internal/connlimit"
	"github.com/oneport/oneport/mux"
	"github.com/oneport/oneport/sfu"
)

// allowedLabels is every label a oneport_ series may carry, with the values
// it may take (nil: any value, for build_info's, which are one series).
func allowedLabels() map[string][]string {
	reasons := []string{"other"}
	for r := mux.DropReason(0); r < mux.NumDropReasons; r++ {
		reasons = append(reasons, r.String())
	}
	reasons = append(reasons, sfu.RefusalReasons[:]...)
	reasons = append(reasons, "late", "duplicate") // oneport_sfu_dropped_packets_total; queue_full is the mux's too
	reasons = append(reasons, connlimit.ReasonMaxConns, connlimit.ReasonMaxPerIP)
	return map[string][]string{
		"direction": {"in", "out"},
		"class":     {"stun", "dtls", "rtp", "other"},
		"reason":    reasons,
		"check":     {"draining", "sockets", "cluster", "sessions", "packet_rate", "cpu"},
		"result":    {"answered", "not_ready", "rate_limited", "malformed", "rejected", "write_error"},
		"state":     {"alive", "suspect", "dead", "left"},
		"version":   nil, "revision": nil, "goversion": nil,
	}
}

// checkCardinality asserts that every oneport_ label comes from its fixed
// set, and that nothing on the page names a room, a participant or an
// address the test used.
func checkCardinality(t *testing.T, mf families, forbidden []string) {
	t.Helper()
	allowed := allowedLabels()
	for name, fam := range mf {
		for _, m := range fam.GetMetric() {
			for _, lp := range m.GetLabel() {
				for _, f := range forbidden {
					if strings.Contains(lp.GetValue(), f) {
						t.Errorf("%s{%s=%q} names %q", name, lp.GetName(), lp.GetValue(), f)
					}
				}
				if !strings.HasPrefix(name, "oneport_") {
					continue
				}
				vals, ok := allowed[lp.GetName()]
				switch {
				case !ok:
					t.Errorf("%s has label %q outside the fixed set", name, lp.GetName())
				case lp.GetName() == "version" || lp.GetName() == "revision" || lp.GetName() == "goversion":
					if name != "oneport_build_info" {
						t.Errorf("%s has build label %q", name, lp.GetName())
					}
				case !slices.Contains(vals, lp.GetValue()):
					t.Errorf("%s{%s=%q}: value outside %v", name, lp.GetName(), lp.GetValue(), vals)
				}
			}
		}
	}
}

// withoutDrops drops the oneport_mux_drops_total series, which appear per
// reason once it is non-zero (from the fixed set checkCardinality enforces).
func withoutDrops(series []string) []string {
	return slices.DeleteFunc(series, func(s string) bool { return strings.HasPrefix(s, "oneport_mux_drops_total{") })
}

// TestMetricsMoveWithTraffic scrapes /metrics before, during and after real
// media: the mux's packet counters by class, the SFU's forwarded counter and
// the session and room gauges move as the traffic says, counters never go
// back, and a second room adds no series (no per-room, per-session or
// per-address label values).
func TestMetricsMoveWithTraffic(t *testing.T) {
	n := startNode(t)
	before := n.scrape()
	for _, name := range []string{"oneport_sessions", "oneport_sfu_rooms", "oneport_sfu_participants",
		"oneport_sfu_forwarded_packets_total", "oneport_mux_flows"} {
		if v := before.value(t, name); v != 0 {
			t.Errorf("%s = %v on an idle node", name, v)
		}
	}
	for _, dir := range []string{"in", "out"} {
		if v := before.value(t, "oneport_mux_packets_total", "direction", dir, "class", "rtp"); v != 0 {
			t.Errorf("rtp %s = %v on an idle node", dir, v)
		}
	}

	pub, sub := joinRoom(t, n, "metrics-room-a")
	waitPackets(t, sub, 200)
	received, _, _, _ := sub.received() // before the scrape: a lower bound
	during := n.scrape()
	sent := pub.sent.Load() // after the scrape: an upper bound

	// Every packet the subscriber got came in as RTP from the publisher, was
	// forwarded once (one subscriber) and went out as RTP; the node cannot
	// forward more than was sent. RTCP counts as class rtp too (RFC 7983).
	delta := func(name string, labels ...string) float64 {
		return during.value(t, name, labels...) - before.value(t, name, labels...)
	}
	fwd := delta("oneport_sfu_forwarded_packets_total")
	if fwd < float64(received) || fwd > float64(sent) {
		t.Errorf("forwarded %v packets; the subscriber got %d, the publisher sent %d", fwd, received, sent)
	}
	for _, dir := range []string{"in", "out"} {
		p := delta("oneport_mux_packets_total", "direction", dir, "class", "rtp")
		b := delta("oneport_mux_bytes_total", "direction", dir, "class", "rtp")
		if p < float64(received) {
			t.Errorf("rtp %s: %v packets, fewer than the %d the subscriber got", dir, p, received)
		}
		if b < 12*p {
			t.Errorf("rtp %s: %v bytes for %v packets (an RTP header alone is 12)", dir, b, p)
		}
		for _, class := range []string{"stun", "dtls"} {
			if v := delta("oneport_mux_packets_total", "direction", dir, "class", class); v <= 0 {
				t.Errorf("%s %s: %v packets after two sessions connected", class, dir, v)
			}
		}
	}
	if f := delta("oneport_sfu_forwarded_bytes_total"); f < 12*fwd {
		t.Errorf("forwarded %v bytes for %v packets", f, fwd)
	}
	for _, g := range []struct {
		name string
		want float64
	}{{"oneport_sessions", 2}, {"oneport_sfu_rooms", 1}, {"oneport_sfu_participants", 2},
		{"oneport_sfu_tracks", 1}, {"oneport_sfu_subscribers", 1}} {
		if v := during.value(t, g.name); v != g.want {
			t.Errorf("%s = %v with one room of a publisher and a subscriber, want %v", g.name, v, g.want)
		}
	}
	if v := during.value(t, "oneport_mux_flows"); v < 2 {
		t.Errorf("oneport_mux_flows = %v with two connected sessions", v)
	}

	// A second room: the gauges count it, and the page has the same series.
	pub2, sub2 := joinRoom(t, n, "metrics-room-b")
	two := n.scrape()
	if v := two.value(t, "oneport_sessions"); v != 4 {
		t.Errorf("oneport_sessions = %v with two rooms, want 4", v)
	}
	if v := two.value(t, "oneport_sfu_rooms"); v != 2 {
		t.Errorf("oneport_sfu_rooms = %v, want 2", v)
	}
	base := withoutDrops(before.series("oneport_"))
	for _, s := range []struct {
		name string
		mf   families
	}{{"one room", during}, {"two rooms", two}} {
		if got := withoutDrops(s.mf.series("oneport_")); !slices.Equal(got, base) {
			t.Errorf("series with %s differ from the idle node's:\n%v\nwant\n%v", s.name, got, base)
		}
	}
	forbidden := []string{"metrics-room", "127.0.0.1", n.udp.String()}
	for _, p := range []*peer{pub.peer, sub.peer, pub2.peer, sub2.peer} {
		forbidden = append(forbidden, p.id())
	}
	for _, mf := range []families{before, during, two} {
		checkCardinality(t, mf, forbidden)
	}
	t.Logf("%d oneport_ series on every page; forwarded %v packets, rtp in %v, out %v",
		len(base), fwd, delta("oneport_mux_packets_total", "direction", "in", "class", "rtp"),
		delta("oneport_mux_packets_total", "direction", "out", "class", "rtp"))

	// Everyone leaves: the gauges go back to zero, the counters stay.
	for _, p := range []*publisher{pub, pub2} {
		p.stopSending()
	}
	for _, p := range []*peer{sub.peer, sub2.peer, pub.peer, pub2.peer} {
		p.leave(n)
	}
	var after families
	waitFor(t, "sessions back to 0", mediaBudget, func() bool {
		after = n.scrape()
		return after.value(t, "oneport_sessions") == 0
	})
	if v := after.value(t, "oneport_sfu_participants"); v != 0 {
		t.Errorf("oneport_sfu_participants = %v after everyone left", v)
	}
	for _, c := range []struct {
		name   string
		labels []string
	}{
		{"oneport_sfu_forwarded_packets_total", nil},
		{"oneport_mux_packets_total", []string{"direction", "in", "class", "rtp"}},
		{"oneport_mux_packets_total", []string{"direction", "out", "class", "rtp"}},
	} {
		if a, d := after.value(t, c.name, c.labels...), two.value(t, c.name, c.labels...); a < d {
			t.Errorf("%s%v went back from %v to %v", c.name, c.labels, d, a)
		}
	}
	checkCardinality(t, after, forbidden)
}
