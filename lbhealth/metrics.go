package lbhealth

import (
	"fmt"
	"runtime"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"
)

const metricNamespace = "oneport"

// directions label traffic; the index matches MediaStats.In (0) and Out (1).
var directions = [2]string{"in", "out"}

// otherDropReason collects drop reasons beyond MaxDropReasons and invalid ones.
const otherDropReason = "other"

// collector turns the stats sources into const metrics at scrape time, so the
// counters stay where they are kept (atomics in the mux and sfu) and a scrape
// costs one snapshot of each.
type collector struct {
	h     *Health
	descs []*prometheus.Desc

	buildInfo, draining, ready, readyCheck, sessions, maxSessions *prometheus.Desc
	probes, probeSources, probeEvicted, adminUnauthorized         *prometheus.Desc

	muxPackets, muxBytes, muxDrops, muxFlows *prometheus.Desc

	sfuRooms, sfuParticipants, sfuTracks, sfuSubscribers *prometheus.Desc
	sfuForwardedPackets, sfuForwardedBytes, sfuRefused   *prometheus.Desc
	sfuDrops, sfuRetransmits, sfuNACKMisses              *prometheus.Desc
	sfuNACKSuppressed, httpConns, httpRefused            *prometheus.Desc

	clusterJoined, clusterMembers, clusterDraining *prometheus.Desc
	relayPackets, relayBytes                       *prometheus.Desc
}

func newCollector(h *Health) *collector {
	c := &collector{h: h}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		desc := prometheus.NewDesc(metricNamespace+"_"+name, help, labels, nil)
		c.descs = append(c.descs, desc)
		return desc
	}
	c.buildInfo = d("build_info", "Always 1; labels give the build.", "version", "revision", "goversion")
	c.draining = d("draining", "1 while the node is draining or shutting down.")
	c.ready = d("ready", "1 while /readyz answers 200.")
	c.readyCheck = d("ready_check", "1 while the named readiness check passes.", "check")
	c.sessions = d("sessions", "Sessions held by this node.")
	c.maxSessions = d("max_sessions", "Session limit above which the node is not ready (absent when unlimited).")
	c.probes = d("health_probes_total", "STUN health probes on the media port, by result.", "result")
	c.probeSources = d("health_probe_sources", "Source addresses in the probe rate-limit table.")
	c.probeEvicted = d("health_probe_sources_evicted_total", "Active probe sources forgotten because the table was full.")
	c.adminUnauthorized = d("admin_unauthorized_total", "Admin requests refused for a missing or wrong token.")

	c.muxPackets = d("mux_packets_total", "Packets through the media port, by direction and class.", "direction", "class")
	c.muxBytes = d("mux_bytes_total", "Bytes through the media port, by direction and class.", "direction", "class")
	c.muxDrops = d("mux_drops_total", "Packets the mux dropped, by reason.", "reason")
	c.muxFlows = d("mux_flows", "Client addresses bound to a session.")

	c.sfuRooms = d("sfu_rooms", "Rooms owned by this node.")
	c.sfuParticipants = d("sfu_participants", "Participants in rooms on this node.")
	c.sfuTracks = d("sfu_tracks", "Published tracks on this node.")
	c.sfuSubscribers = d("sfu_subscribers", "Track subscriptions on this node.")
	c.sfuForwardedPackets = d("sfu_forwarded_packets_total", "Media packets the SFU forwarded.")
	c.sfuForwardedBytes = d("sfu_forwarded_bytes_total", "Media bytes the SFU forwarded.")
	c.sfuRefused = d("sfu_refused_total", "Signaling requests refused by a limit, by reason.", "reason")
	c.sfuDrops = d("sfu_dropped_packets_total", "Media packets not sent to a subscriber, by reason.", "reason")
	c.sfuRetransmits = d("sfu_retransmitted_packets_total", "Packets sent again for subscribers' NACKs.")
	c.sfuNACKMisses = d("sfu_nack_misses_total", "NACKed packets no longer in the packet history, or too old to help.")
	c.httpConns = d("http_connections", "Open connections on the signaling listener.")
	c.httpRefused = d("http_refused_connections_total", "Signaling connections closed at accept, by reason (max_conns, max_per_ip).", "reason")
	c.sfuNACKSuppressed = d("sfu_nack_suppressed_total", "NACKed packets not resent: resent to that subscriber within its RTT, or 3 times already.")

	c.clusterJoined = d("cluster_joined", "1 while the node is a cluster member (absent without --join).")
	c.clusterMembers = d("cluster_members", "Cluster members by gossip state.", "state")
	c.clusterDraining = d("cluster_members_draining", "Alive members announcing draining.")
	c.relayPackets = d("cluster_relay_packets_total", "Client packets relayed between nodes, by direction.", "direction")
	c.relayBytes = d("cluster_relay_bytes_total", "Client bytes relayed between nodes, by direction.", "direction")
	return c
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	h := c.h
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}

	gauge(c.buildInfo, 1, h.cfg.Version, h.cfg.Revision, runtime.Version())
	gauge(c.draining, b2f(h.drain.Draining()))
	rep := h.Ready()
	gauge(c.ready, b2f(rep.OK()))
	for _, chk := range rep.Checks {
		gauge(c.readyCheck, b2f(chk.OK), chk.Name)
	}
	gauge(c.sessions, float64(h.cfg.Sessions.Sessions()))
	if h.cfg.MaxSessions > 0 {
		gauge(c.maxSessions, float64(h.cfg.MaxSessions))
	}
	for r, n := range h.ProbeStats() {
		counter(c.probes, n, ProbeResult(r).String())
	}
	gauge(c.probeSources, float64(h.sources.Len()))
	counter(c.probeEvicted, h.sources.Evicted())
	counter(c.adminUnauthorized, h.unauthorized.Load())

	if h.cfg.Media != nil {
		st := h.cfg.Media.MediaStats()
		for dir, byClass := range [2]*[NumClasses]Traffic{&st.In, &st.Out} {
			for cl, t := range byClass {
				counter(c.muxPackets, t.Packets, directions[dir], Class(cl).String())
				counter(c.muxBytes, t.Bytes, directions[dir], Class(cl).String())
			}
		}
		for _, dc := range mergeDrops(st.Drops) {
			counter(c.muxDrops, dc.Packets, dc.Reason)
		}
		gauge(c.muxFlows, float64(st.Flows))
	}
	if h.cfg.SFU != nil {
		st := h.cfg.SFU.SFUStats()
		gauge(c.sfuRooms, float64(st.Rooms))
		gauge(c.sfuParticipants, float64(st.Participants))
		gauge(c.sfuTracks, float64(st.Tracks))
		gauge(c.sfuSubscribers, float64(st.Subscribers))
		counter(c.sfuForwardedPackets, st.Forwarded.Packets)
		counter(c.sfuForwardedBytes, st.Forwarded.Bytes)
		for _, r := range mergeDrops(st.Refused) {
			counter(c.sfuRefused, r.Packets, r.Reason)
		}
		for _, r := range mergeDrops(st.Drops) {
			counter(c.sfuDrops, r.Packets, r.Reason)
		}
		counter(c.sfuRetransmits, st.Retransmits)
		counter(c.sfuNACKMisses, st.NACKMisses)
		counter(c.sfuNACKSuppressed, st.NACKSuppressed)
		gauge(c.httpConns, float64(st.HTTPConns))
		for _, r := range mergeDrops(st.HTTPRefused) {
			counter(c.httpRefused, r.Packets, r.Reason)
		}
	}
	if h.cfg.Cluster != nil {
		gauge(c.clusterJoined, b2f(h.cfg.Cluster.Joined() == nil))
	}
	if h.cfg.ClusterStats != nil {
		st := h.cfg.ClusterStats.ClusterStats()
		for s, n := range st.Members {
			gauge(c.clusterMembers, float64(n), MemberState(s).String())
		}
		gauge(c.clusterDraining, float64(st.Draining))
		for dir, t := range [2]Traffic{st.RelayIn, st.RelayOut} {
			counter(c.relayPackets, t.Packets, directions[dir])
			counter(c.relayBytes, t.Bytes, directions[dir])
		}
	}
}

// mergeDrops sums duplicated reasons and folds invalid reasons, and those
// beyond the first MaxDropReasons, into "other": at most MaxDropReasons+1
// series, and never two with one label value (which would fail the scrape).
func mergeDrops(in []DropCount) []DropCount {
	out := make([]DropCount, 0, min(len(in), MaxDropReasons+1))
	add := func(reason string, n uint64) bool {
		for i := range out {
			if out[i].Reason == reason {
				out[i].Packets += n
				return true
			}
		}
		return false
	}
	distinct := 0
	for _, d := range in {
		r := d.Reason
		if r == "" || !utf8.ValidString(r) {
			r = otherDropReason
		}
		if add(r, d.Packets) {
			continue
		}
		if distinct >= MaxDropReasons {
			r = otherDropReason
			if add(r, d.Packets) {
				continue
			}
		}
		distinct++
		out = append(out, DropCount{Reason: r, Packets: d.Packets})
	}
	return out
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func newRegistry(h *Health) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	for _, col := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newCollector(h),
	} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("lbhealth: register metrics: %w", err)
		}
	}
	return reg, nil
}

// promLog adapts zerolog to promhttp's error log.
type promLog struct{ log zerolog.Logger }

func (l promLog) Println(v ...any) { l.log.Error().Msg(fmt.Sprint(v...)) }
