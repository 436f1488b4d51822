package lbhealth

import (
	"bytes"
	"fmt"
	"net/http"
	"net/netip"
	"runtime"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape GETs /metrics and parses it with the Prometheus text parser.
func scrape(t *testing.T, r *httpRig) map[string]*dto.MetricFamily {
	t.Helper()
	code, hdr, body := r.do(t, http.MethodGet, PathMetrics, "")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	if ct := hdr.Get("Content-Type"); !bytes.HasPrefix([]byte(ct), []byte("text/plain")) {
		t.Errorf("Content-Type %q", ct)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return fams
}

// value returns the value of the series of family name whose labels are
// exactly labels (name=value pairs), and whether it exists.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels)/2 {
			continue
		}
		for i, lp := range m.GetLabel() {
			if lp.GetName() != labels[2*i] || lp.GetValue() != labels[2*i+1] {
				continue next
			}
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

func wantValue(t *testing.T, fams map[string]*dto.MetricFamily, want float64, name string, labels ...string) {
	t.Helper()
	got, ok := value(fams, name, labels...)
	if !ok {
		t.Errorf("%s%v missing", name, labels)
	} else if got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

func TestMetricsFollowSources(t *testing.T) {
	verifyNoLeaks(t)
	h, f := newHealth(t, func(c *Config) { c.MaxSessions = 100 })
	r := startHTTP(t, h.Handler())

	set := func(k uint64) {
		f.sessions.Store(int64(3 * k))
		f.update(func(f *fakeNode) {
			f.media.In[ClassSTUN] = Traffic{Packets: 10 * k, Bytes: 1000 * k}
			f.media.Out[ClassRTP] = Traffic{Packets: 20 * k, Bytes: 2000 * k}
			f.media.Drops = []DropCount{{"no_session", 5 * k}, {"queue_full", k}}
			f.media.Flows = 4 * k
			f.sfu = SFUStats{Rooms: k, Participants: 2 * k, Tracks: 3 * k, Subscribers: 4 * k,
				Forwarded:   Traffic{Packets: 50 * k, Bytes: 5000 * k},
				Refused:     []DropCount{{Reason: "room_full", Packets: 6 * k}, {Reason: "rate_limited", Packets: 7 * k}},
				Drops:       []DropCount{{Reason: "queue_full", Packets: 8 * k}, {Reason: "late", Packets: 9 * k}},
				Retransmits: 10 * k, NACKMisses: 11 * k, NACKSuppressed: 12 * k,
				HTTPConns: 13 * k, HTTPRefused: []DropCount{{Reason: "max_per_ip", Packets: 14 * k}}}
			f.cluster = ClusterStats{Members: [NumMemberStates]uint64{MemberAlive: 3, MemberSuspect: k},
				Draining: 1, RelayIn: Traffic{Packets: 7 * k, Bytes: 700 * k}, RelayOut: Traffic{Packets: 8 * k}}
		})
	}
	check := func(fams map[string]*dto.MetricFamily, k float64) {
		t.Helper()
		wantValue(t, fams, 10*k, "oneport_mux_packets_total", "class", "stun", "direction", "in")
		wantValue(t, fams, 1000*k, "oneport_mux_bytes_total", "class", "stun", "direction", "in")
		wantValue(t, fams, 20*k, "oneport_mux_packets_total", "class", "rtp", "direction", "out")
		wantValue(t, fams, 0, "oneport_mux_packets_total", "class", "dtls", "direction", "in")
		wantValue(t, fams, 5*k, "oneport_mux_drops_total", "reason", "no_session")
		wantValue(t, fams, k, "oneport_mux_drops_total", "reason", "queue_full")
		wantValue(t, fams, 4*k, "oneport_mux_flows")
		wantValue(t, fams, 3*k, "oneport_sessions")
		wantValue(t, fams, 100, "oneport_max_sessions")
		wantValue(t, fams, k, "oneport_sfu_rooms")
		wantValue(t, fams, 2*k, "oneport_sfu_participants")
		wantValue(t, fams, 3*k, "oneport_sfu_tracks")
		wantValue(t, fams, 4*k, "oneport_sfu_subscribers")
		wantValue(t, fams, 50*k, "oneport_sfu_forwarded_packets_total")
		wantValue(t, fams, 6*k, "oneport_sfu_refused_total", "reason", "room_full")
		wantValue(t, fams, 7*k, "oneport_sfu_refused_total", "reason", "rate_limited")
		wantValue(t, fams, 8*k, "oneport_sfu_dropped_packets_total", "reason", "queue_full")
		wantValue(t, fams, 9*k, "oneport_sfu_dropped_packets_total", "reason", "late")
		wantValue(t, fams, 10*k, "oneport_sfu_retransmitted_packets_total")
		wantValue(t, fams, 11*k, "oneport_sfu_nack_misses_total")
		wantValue(t, fams, 12*k, "oneport_sfu_nack_suppressed_total")
		wantValue(t, fams, 13*k, "oneport_http_connections")
		wantValue(t, fams, 14*k, "oneport_http_refused_connections_total", "reason", "max_per_ip")
		wantValue(t, fams, 5000*k, "oneport_sfu_forwarded_bytes_total")
		wantValue(t, fams, 3, "oneport_cluster_members", "state", "alive")
		wantValue(t, fams, k, "oneport_cluster_members", "state", "suspect")
		wantValue(t, fams, 1, "oneport_cluster_members_draining")
		wantValue(t, fams, 7*k, "oneport_cluster_relay_packets_total", "direction", "in")
		wantValue(t, fams, 8*k, "oneport_cluster_relay_packets_total", "direction", "out")
		wantValue(t, fams, 700*k, "oneport_cluster_relay_bytes_total", "direction", "in")
		wantValue(t, fams, 1, "oneport_cluster_joined")
	}

	set(1)
	fams := scrape(t, r)
	check(fams, 1)
	wantValue(t, fams, 1, "oneport_build_info", "goversion", runtime.Version(), "revision", "abc123", "version", "v1.2.3")
	wantValue(t, fams, 0, "oneport_draining")
	wantValue(t, fams, 1, "oneport_ready")
	for _, c := range readyChecks {
		wantValue(t, fams, 1, "oneport_ready_check", "check", c)
	}
	if n := len(fams["oneport_mux_packets_total"].GetMetric()); n != 2*int(NumClasses) {
		t.Errorf("%d mux packet series, want %d", n, 2*NumClasses)
	}
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total"} {
		if fams[name] == nil {
			t.Errorf("%s missing", name)
		}
	}

	// The sources move; the next scrape follows, with no caching in between.
	set(3)
	h.Drainer().Drain("test")
	var w recordWriter
	h.HandleProbe(bindingRequest(t).Raw, netip.MustParseAddrPort("192.0.2.1:1"), &w)
	fams = scrape(t, r)
	check(fams, 3)
	wantValue(t, fams, 1, "oneport_draining")
	wantValue(t, fams, 0, "oneport_ready")
	wantValue(t, fams, 0, "oneport_ready_check", "check", CheckDraining)
	wantValue(t, fams, 1, "oneport_health_probes_total", "result", "not_ready")
	wantValue(t, fams, 0, "oneport_health_probes_total", "result", "answered")
}

// TestMetricsOptionalSources: without mux, sfu and cluster sources the page
// still parses and simply lacks their families.
func TestMetricsOptionalSources(t *testing.T) {
	verifyNoLeaks(t)
	f := &fakeNode{}
	h, err := New(Config{Sockets: f, Sessions: f})
	if err != nil {
		t.Fatal(err)
	}
	r := startHTTP(t, h.Handler())
	fams := scrape(t, r)
	for _, name := range []string{"oneport_mux_packets_total", "oneport_sfu_rooms", "oneport_cluster_members",
		"oneport_cluster_joined", "oneport_max_sessions"} {
		if fams[name] != nil {
			t.Errorf("%s present without its source", name)
		}
	}
	wantValue(t, fams, 1, "oneport_ready")
	wantValue(t, fams, 0, "oneport_sessions")
}

// TestDropReasonCardinality: reasons beyond MaxDropReasons, empty or invalid
// ones fold into "other", duplicates are summed, and no packet is lost.
func TestDropReasonCardinality(t *testing.T) {
	verifyNoLeaks(t)
	h, f := newHealth(t, nil)
	var drops []DropCount
	var total float64
	for i := range MaxDropReasons + 10 {
		drops = append(drops, DropCount{fmt.Sprintf("reason_%d", i), uint64(i + 1)})
		total += float64(i + 1)
	}
	drops = append(drops, DropCount{"reason_0", 100}, DropCount{"", 1}, DropCount{"bad\xff", 2})
	total += 103
	f.update(func(f *fakeNode) { f.media.Drops = drops })
	r := startHTTP(t, h.Handler())
	fams := scrape(t, r)
	series := fams["oneport_mux_drops_total"].GetMetric()
	if len(series) > MaxDropReasons+1 {
		t.Errorf("%d drop series, want at most %d", len(series), MaxDropReasons+1)
	}
	var sum float64
	for _, m := range series {
		sum += m.GetCounter().GetValue()
	}
	if sum != total {
		t.Errorf("drops sum %v, want %v", sum, total)
	}
	wantValue(t, fams, 101, "oneport_mux_drops_total", "reason", "reason_0")
	// The ten reasons past the cap, the empty one and the invalid one all
	// land in "other".
	other := 1.0 + 2.0
	for i := MaxDropReasons; i < MaxDropReasons+10; i++ {
		other += float64(i + 1)
	}
	wantValue(t, fams, other, "oneport_mux_drops_total", "reason", otherDropReason)
	if _, ok := value(fams, "oneport_mux_drops_total", "reason", fmt.Sprintf("reason_%d", MaxDropReasons)); ok {
		t.Errorf("reason beyond the cap exported under its own name")
	}
}
