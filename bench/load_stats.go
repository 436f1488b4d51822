package bench

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"time"
)

// The load harness's payload trailer: a 4-byte track id before the fan-out
// trailer (kind, counter, send time), so a subscriber tells every
// publisher's tracks and simulcast layers apart from the packet alone.
const loadTrailerLen = 4 + trailerLen

// loadTrackID names a published track: publisher (over the whole run),
// kind and simulcast layer.
func loadTrackID(pub int, kind byte, layer int) uint32 {
	return uint32(pub)*8 + uint32(kind)*4 + uint32(layer)
}

func splitTrackID(id uint32) (pub int, kind byte, layer int) {
	return int(id / 8), byte(id / 4 % 2), int(id % 4)
}

// putLoadTrailer writes the trailer into the last loadTrailerLen bytes of
// payload.
func putLoadTrailer(payload []byte, id uint32, kind byte, counter uint64, sentUnixNano int64) {
	binary.BigEndian.PutUint32(payload[len(payload)-loadTrailerLen:], id)
	putTrailer(payload, kind, counter, sentUnixNano)
}

// readLoadTrailer reads the trailer of a plain RTP packet in place.
func readLoadTrailer(pkt []byte) (id uint32, kind byte, counter uint64, sentUnixNano int64, ok bool) {
	off, end, ok := rtpPayload(pkt)
	if !ok || end-off < loadTrailerLen {
		return 0, 0, 0, 0, false
	}
	kind, counter, sentUnixNano, ok = readTrailer(pkt)
	if !ok {
		return 0, 0, 0, 0, false
	}
	id = binary.BigEndian.Uint32(pkt[end-loadTrailerLen:])
	if _, k, _ := splitTrackID(id); k != kind {
		return 0, 0, 0, 0, false
	}
	return id, kind, counter, sentUnixNano, true
}

// Session roles.
const (
	rolePub = "publisher"
	roleSub = "subscriber"
)

// loadSession is one session the parent asks a client process to set up.
type loadSession struct {
	ID     int       `json:"id"`
	Room   string    `json:"room"`
	Role   string    `json:"role"`
	Pub    int       `json:"pub,omitempty"`    // publishers: index over the run (names its tracks)
	Tracks int       `json:"tracks,omitempty"` // subscribers: publishers in the room
	At     time.Time `json:"at"`               // when to send the offer
}

// loadCmd is every request the parent sends a load client after the job.
type loadCmd struct {
	Cmd      string            `json:"cmd"` // start, stats, stop, report, close, quit
	Sessions []loadSession     `json:"sessions,omitempty"`
	Last     map[uint32]uint64 `json:"last,omitempty"` // report: each published track's last counter
}

// loadJoin is one join's outcome: offer to first media packet (received
// for a subscriber, sent for a publisher).
type loadJoin struct {
	Role  string    `json:"role"`
	Room  string    `json:"room"`
	At    time.Time `json:"at"` // the offer
	Ms    float64   `json:"ms"`
	Error string    `json:"error,omitempty"`
	T     float64   `json:"t"` // seconds since the run's start (set by the parent)
}

// loadTotals are a client's cumulative counters; they add up over clients.
type loadTotals struct {
	Up          int      `json:"up"` // sessions joined and not failed since
	Joined      int      `json:"joined"`
	Failed      int      `json:"failed"`
	SentPkts    uint64   `json:"sent_pkts"`
	SentBytes   uint64   `json:"sent_bytes"`
	RecvPkts    uint64   `json:"recv_pkts"` // counted once per counter; duplicates apart
	RecvBytes   uint64   `json:"recv_bytes"`
	Expected    uint64   `json:"expected"` // per received track: highest counter - first + 1
	Duplicates  uint64   `json:"duplicates"`
	Reordered   uint64   `json:"reordered"`
	Malformed   uint64   `json:"malformed"`
	Hist        []uint64 `json:"hist,omitempty"` // one-way latency, µs (see latBin)
	JitterSumUs float64  `json:"jitter_sum_us"`  // over received tracks, each's current RFC 3550 jitter
	JitterN     int      `json:"jitter_n"`
}

func (a *loadTotals) add(b loadTotals) {
	a.Up += b.Up
	a.Joined += b.Joined
	a.Failed += b.Failed
	a.SentPkts += b.SentPkts
	a.SentBytes += b.SentBytes
	a.RecvPkts += b.RecvPkts
	a.RecvBytes += b.RecvBytes
	a.Expected += b.Expected
	a.Duplicates += b.Duplicates
	a.Reordered += b.Reordered
	a.Malformed += b.Malformed
	a.Hist = addHist(a.Hist, b.Hist)
	a.JitterSumUs += b.JitterSumUs
	a.JitterN += b.JitterN
}

func addHist(a, b []uint64) []uint64 {
	for len(a) < len(b) {
		a = append(a, 0)
	}
	for i, n := range b {
		a[i] += n
	}
	return a
}

func subHist(a, b []uint64) []uint64 {
	out := slices.Clone(a)
	for i := range min(len(a), len(b)) {
		out[i] -= b[i]
	}
	return out
}

// loadStats answers "stats": the totals and the joins since the last one.
type loadStats struct {
	childMsg
	loadTotals
	Joins []loadJoin `json:"joins,omitempty"`
}

// loadPubTrack is one published track's sending, at the stop.
type loadPubTrack struct {
	ID      uint32    `json:"id"`
	Room    string    `json:"room"`
	RID     string    `json:"rid,omitempty"`
	Sent    uint64    `json:"sent"`
	Bytes   uint64    `json:"bytes"`
	Last    uint64    `json:"last"` // the last counter sent (Sent-1 unless a write failed)
	First   time.Time `json:"first"`
	LastAt  time.Time `json:"last_at"`
	Errors  uint64    `json:"errors,omitempty"`
	Codec   string    `json:"codec"`
	Started bool      `json:"started"`
}

type loadStopped struct {
	childMsg
	Tracks []loadPubTrack `json:"tracks"`
}

// loadRecvTrack is what one client's subscribers received of one published
// track.
type loadRecvTrack struct {
	ID          uint32   `json:"id"`
	Subs        int      `json:"subs"`
	Received    uint64   `json:"received"`
	Bytes       uint64   `json:"bytes"`
	Expected    uint64   `json:"expected"` // per subscription: the publisher's last counter - first received + 1
	Duplicates  uint64   `json:"duplicates"`
	Reordered   uint64   `json:"reordered"`
	JitterSumUs float64  `json:"jitter_sum_us"`
	JitterMaxUs float64  `json:"jitter_max_us"`
	Hist        []uint64 `json:"hist,omitempty"`
}

type loadClientReport struct {
	childMsg
	Tracks    []loadRecvTrack `json:"tracks"`
	Malformed uint64          `json:"malformed"`
}

type loadClosed struct {
	childMsg
	Deleted int `json:"deleted"`
	Errors  int `json:"errors"`
}

// LoadReport is what RunLoad measured. Absolute figures belong to the
// machine in Host (the clients run there too).
type LoadReport struct {
	Started  time.Time        `json:"started"`
	Host     HostInfo         `json:"host"`
	CPUModel string           `json:"cpu_model,omitempty"`
	URL      string           `json:"url"`
	NodePID  int              `json:"node_pid,omitempty"` // the local node's, when the run started one
	Config   LoadReportConfig `json:"config"`

	Sessions LoadSessions  `json:"sessions"`
	Join     LoadJoinStats `json:"join"`
	// Steady is the received traffic while the whole load was held.
	Steady LoadSteady `json:"steady"`
	// Total counts every packet of the run, with the publishers' final
	// counters: loss includes packets never received by the end.
	Total  LoadTotal    `json:"total"`
	Tracks []LoadTrack  `json:"tracks"`
	Series []LoadSample `json:"series"`
	Joins  []loadJoin   `json:"joins"`

	Cleanup LoadCleanup `json:"cleanup"`
	// Leftover is how many participants the server still listed in the
	// run's rooms after the cleanup; -1 when its API did not answer.
	Leftover int    `json:"leftover"`
	Error    string `json:"error,omitempty"`

	published map[uint32]loadPubTrack
	received  map[uint32]*loadRecvTrack
	malformed uint64
}

// LoadReportConfig is the LoadConfig the run used, defaults applied.
type LoadReportConfig struct {
	Rooms        int     `json:"rooms"`
	Publishers   int     `json:"publishers_per_room"`
	Subscribers  int     `json:"subscribers_per_room"`
	VideoBitrate int     `json:"video_bitrate"`
	FPS          int     `json:"fps"`
	Audio        bool    `json:"audio"`
	Simulcast    bool    `json:"simulcast"`
	VideoFile    string  `json:"video_file,omitempty"`
	AudioFile    string  `json:"audio_file,omitempty"`
	Seconds      float64 `json:"duration_s"`
	Ramp         float64 `json:"ramp"`
	Clients      int     `json:"clients"`
	JoinTimeout  float64 `json:"join_timeout_s"`
	Grace        float64 `json:"grace_s"`
}

func loadReportConfig(c LoadConfig) LoadReportConfig {
	return LoadReportConfig{Rooms: c.Rooms, Publishers: c.Publishers, Subscribers: c.Subscribers, VideoBitrate: c.VideoBitrate,
		FPS: c.FPS, Audio: !c.NoAudio, Simulcast: c.Simulcast, VideoFile: c.VideoFile, AudioFile: c.AudioFile,
		Seconds: c.Duration.Seconds(), Ramp: c.Ramp, Clients: c.Clients, JoinTimeout: c.JoinTimeout.Seconds(), Grace: c.Grace.Seconds()}
}

// LoadSessions counts the sessions and why joins failed.
type LoadSessions struct {
	Planned     int            `json:"planned"`
	Joined      int            `json:"joined"`
	Failed      int            `json:"failed"`
	FailReasons map[string]int `json:"fail_reasons,omitempty"`
}

// LoadJoinStats is offer to first media packet, over the joins that made it.
type LoadJoinStats struct {
	P50Ms float64 `json:"p50_ms"`
	P95Ms float64 `json:"p95_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
	// PerSecond is sessions joined per second of joining: over each role's
	// span from its first offer to its last join's first packet (the
	// publishers join first, then the subscribers), at most the ramp.
	PerSecond float64 `json:"per_second"`
}

// LoadSteady is the received traffic over the steady window.
type LoadSteady struct {
	Seconds      float64 `json:"seconds"`
	SentPPS      float64 `json:"sent_pps"`
	PPS          float64 `json:"pps"`
	Mbps         float64 `json:"mbps"`
	Loss         float64 `json:"loss"` // 1 - received/expected by the counters' advance
	LatencyP50Ms float64 `json:"latency_p50_ms"`
	LatencyP99Ms float64 `json:"latency_p99_ms"`
}

// LoadTotal is the run's totals.
type LoadTotal struct {
	Sent         uint64  `json:"sent"`     // packets the publishers sent
	Expected     uint64  `json:"expected"` // packets the subscribers should have received
	Received     uint64  `json:"received"`
	Lost         int64   `json:"lost"`
	LossRatio    float64 `json:"loss_ratio"`
	Duplicates   uint64  `json:"duplicates"`
	Reordered    uint64  `json:"reordered"`
	Malformed    uint64  `json:"malformed"`
	JitterMs     float64 `json:"jitter_ms"` // mean over subscriptions of the final RFC 3550 jitter
	LatencyP50Ms float64 `json:"latency_p50_ms"`
	LatencyP95Ms float64 `json:"latency_p95_ms"`
	LatencyP99Ms float64 `json:"latency_p99_ms"`
	LatencyMaxMs float64 `json:"latency_max_ms"`
}

// LoadTrack is one published track, over all its subscribers.
type LoadTrack struct {
	Name        string  `json:"name"` // room/p<publisher>/<kind>[/<rid>]
	Codec       string  `json:"codec"`
	Sent        uint64  `json:"sent"`
	SendErrors  uint64  `json:"send_errors,omitempty"`
	SendSeconds float64 `json:"send_s"`
	Subscribers int     `json:"subscribers"`
	Received    uint64  `json:"received"`
	Expected    uint64  `json:"expected"`
	Lost        int64   `json:"lost"`
	LossRatio   float64 `json:"loss_ratio"`
	// PPS and Mbps are per subscriber, over the track's send time.
	PPS          float64 `json:"pps"`
	Mbps         float64 `json:"mbps"`
	JitterMs     float64 `json:"jitter_ms"`
	JitterMaxMs  float64 `json:"jitter_max_ms"`
	LatencyP50Ms float64 `json:"latency_p50_ms"`
	LatencyP99Ms float64 `json:"latency_p99_ms"`
}

// LoadSample is one second of the run.
type LoadSample struct {
	T            float64 `json:"t"` // seconds since the first join was scheduled
	Up           int     `json:"up"`
	Failed       int     `json:"failed"`
	SentPPS      float64 `json:"sent_pps"`
	PPS          float64 `json:"pps"`
	Mbps         float64 `json:"mbps"`
	Loss         float64 `json:"loss"`
	LatencyP50Ms float64 `json:"latency_p50_ms"`
	LatencyP99Ms float64 `json:"latency_p99_ms"`
	JitterMs     float64 `json:"jitter_ms"`
}

// LoadCleanup is the DELETEs of the sessions the run made.
type LoadCleanup struct {
	Deleted      int    `json:"deleted"`
	DeleteErrors int    `json:"delete_errors"`
	Error        string `json:"error,omitempty"`
}

// sampleOf is the interval between two totals.
func sampleOf(prev, cur loadTotals, dt time.Duration) LoadSample {
	s := LoadSample{Up: cur.Up, Failed: cur.Failed}
	sec := dt.Seconds()
	if sec <= 0 {
		return s
	}
	s.SentPPS = float64(cur.SentPkts-prev.SentPkts) / sec
	s.PPS = float64(cur.RecvPkts-prev.RecvPkts) / sec
	s.Mbps = float64(cur.RecvBytes-prev.RecvBytes) * 8 / sec / 1e6
	s.Loss = lossOf(cur.Expected-prev.Expected, cur.RecvPkts-prev.RecvPkts)
	h := subHist(cur.Hist, prev.Hist)
	s.LatencyP50Ms = latQuantile(h, 0.5) / 1e3
	s.LatencyP99Ms = latQuantile(h, 0.99) / 1e3
	if cur.JitterN > 0 {
		s.JitterMs = cur.JitterSumUs / float64(cur.JitterN) / 1e3
	}
	return s
}

// lossOf is 1 - received/expected, clamped at 0 (late packets of an earlier
// interval can arrive in this one); 0 when nothing was expected.
func lossOf(expected, received uint64) float64 {
	if expected == 0 || received >= expected {
		return 0
	}
	return 1 - float64(received)/float64(expected)
}

func steadyFigures(from, to loadTotals, dt time.Duration) LoadSteady {
	s := sampleOf(from, to, dt)
	return LoadSteady{Seconds: dt.Seconds(), SentPPS: s.SentPPS, PPS: s.PPS, Mbps: s.Mbps, Loss: s.Loss,
		LatencyP50Ms: s.LatencyP50Ms, LatencyP99Ms: s.LatencyP99Ms}
}

// maxFailReasons bounds the distinct failure reasons kept.
const maxFailReasons = 32

func (r *LoadReport) addJoin(j loadJoin) {
	r.Joins = append(r.Joins, j)
	if j.Error == "" {
		r.Sessions.Joined++
		return
	}
	r.Sessions.Failed++
	if r.Sessions.FailReasons == nil {
		r.Sessions.FailReasons = map[string]int{}
	}
	reason := j.Role + ": " + j.Error
	if _, ok := r.Sessions.FailReasons[reason]; !ok && len(r.Sessions.FailReasons) >= maxFailReasons {
		reason = "other"
	}
	r.Sessions.FailReasons[reason]++
}

func (r *LoadReport) addPublished(t loadPubTrack) {
	if r.published == nil {
		r.published = map[uint32]loadPubTrack{}
	}
	r.published[t.ID] = t
}

func (r *LoadReport) addReceived(cr loadClientReport) {
	if r.received == nil {
		r.received = map[uint32]*loadRecvTrack{}
	}
	r.malformed += cr.Malformed
	for _, t := range cr.Tracks {
		a := r.received[t.ID]
		if a == nil {
			a = &loadRecvTrack{ID: t.ID}
			r.received[t.ID] = a
		}
		a.Subs += t.Subs
		a.Received += t.Received
		a.Bytes += t.Bytes
		a.Expected += t.Expected
		a.Duplicates += t.Duplicates
		a.Reordered += t.Reordered
		a.JitterSumUs += t.JitterSumUs
		a.JitterMaxUs = max(a.JitterMaxUs, t.JitterMaxUs)
		a.Hist = addHist(a.Hist, t.Hist)
	}
}

// finish computes the report's figures from what was added.
func (r *LoadReport) finish() {
	r.Sessions.Planned = r.Config.Rooms * (r.Config.Publishers + r.Config.Subscribers)
	// Joins. The rate is over each role's span (first offer to last first
	// packet), publishers and subscribers joining in turn, summed.
	var ms []float64
	first, last := map[string]time.Time{}, map[string]time.Time{}
	for _, j := range r.Joins {
		if j.Error != "" {
			continue
		}
		ms = append(ms, j.Ms)
		end := j.At.Add(time.Duration(j.Ms * float64(time.Millisecond)))
		if f, ok := first[j.Role]; !ok || j.At.Before(f) {
			first[j.Role] = j.At
		}
		if end.After(last[j.Role]) {
			last[j.Role] = end
		}
	}
	slices.Sort(ms)
	r.Join.P50Ms, r.Join.P95Ms, r.Join.P99Ms = quantile(ms, 0.5), quantile(ms, 0.95), quantile(ms, 0.99)
	if len(ms) > 0 {
		r.Join.MaxMs = ms[len(ms)-1]
	}
	var span float64
	for role, f := range first {
		span += last[role].Sub(f).Seconds()
	}
	if span > 0 {
		r.Join.PerSecond = float64(len(ms)) / span
	}
	// Tracks and totals.
	var hist []uint64
	var jitterSum float64
	var subs int
	ids := make([]uint32, 0, len(r.published))
	for id := range r.published {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	r.Tracks = r.Tracks[:0]
	for _, id := range ids {
		p := r.published[id]
		pub, kind, _ := splitTrackID(id)
		name := fmt.Sprintf("%s/p%d/%s", p.Room, pub, kindName(kind))
		if p.RID != "" {
			name += "/" + p.RID
		}
		t := LoadTrack{Name: name, Codec: p.Codec, Sent: p.Sent, SendErrors: p.Errors, SendSeconds: p.LastAt.Sub(p.First).Seconds()}
		r.Total.Sent += p.Sent
		if rt := r.received[id]; rt != nil {
			t.Subscribers, t.Received, t.Expected = rt.Subs, rt.Received, rt.Expected
			t.Lost = int64(rt.Expected) - int64(rt.Received)
			t.LossRatio = lossRatio(t.Lost, rt.Expected)
			if t.SendSeconds > 0 && rt.Subs > 0 {
				t.PPS = float64(rt.Received) / float64(rt.Subs) / t.SendSeconds
				t.Mbps = float64(rt.Bytes) * 8 / float64(rt.Subs) / t.SendSeconds / 1e6
			}
			if rt.Subs > 0 {
				t.JitterMs = rt.JitterSumUs / float64(rt.Subs) / 1e3
			}
			t.JitterMaxMs = rt.JitterMaxUs / 1e3
			t.LatencyP50Ms, t.LatencyP99Ms = latQuantile(rt.Hist, 0.5)/1e3, latQuantile(rt.Hist, 0.99)/1e3
			r.Total.Expected += rt.Expected
			r.Total.Received += rt.Received
			r.Total.Duplicates += rt.Duplicates
			r.Total.Reordered += rt.Reordered
			jitterSum += rt.JitterSumUs
			subs += rt.Subs
			hist = addHist(hist, rt.Hist)
		}
		r.Tracks = append(r.Tracks, t)
	}
	r.Total.Malformed = r.malformed
	r.Total.Lost = int64(r.Total.Expected) - int64(r.Total.Received)
	r.Total.LossRatio = lossRatio(r.Total.Lost, r.Total.Expected)
	if subs > 0 {
		r.Total.JitterMs = jitterSum / float64(subs) / 1e3
	}
	r.Total.LatencyP50Ms = latQuantile(hist, 0.5) / 1e3
	r.Total.LatencyP95Ms = latQuantile(hist, 0.95) / 1e3
	r.Total.LatencyP99Ms = latQuantile(hist, 0.99) / 1e3
	r.Total.LatencyMaxMs = latQuantile(hist, 1) / 1e3
}

func lossRatio(lost int64, expected uint64) float64 {
	if expected == 0 {
		return 0
	}
	return float64(lost) / float64(expected)
}

func kindName(k byte) string {
	if k == kindAudio {
		return "audio"
	}
	return "video"
}

// quantile is the q-quantile of sorted xs (nearest rank); 0 when empty.
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(xs)))) - 1
	return xs[min(max(i, 0), len(xs)-1)]
}

// WriteText writes the summary table.
func (r LoadReport) WriteText(w io.Writer) error {
	e := &errWriter{w: w}
	e.printf("oneport bench load  %s  against %s\n", r.Started.Format(time.RFC3339), r.URL)
	e.printf("machine: %s, %d CPUs, %s/%s, %s\n", orUnknown(r.CPUModel), r.Host.CPUs, r.Host.GOOS, r.Host.GOARCH, r.Host.GoVersion)
	c := r.Config
	e.printf("load: %d rooms x (%d publishers + %d subscribers), video %d bit/s at %d fps, audio %v, simulcast %v, ramp %.0f/s, held %.0fs\n",
		c.Rooms, c.Publishers, c.Subscribers, c.VideoBitrate, c.FPS, c.Audio, c.Simulcast, c.Ramp, c.Seconds)
	e.printf("\nsessions: %d planned, %d joined, %d failed\n", r.Sessions.Planned, r.Sessions.Joined, r.Sessions.Failed)
	for _, k := range sortedKeys(r.Sessions.FailReasons) {
		e.printf("  %4d × %s\n", r.Sessions.FailReasons[k], k)
	}
	e.printf("join (offer to first media packet): p50 %.0f ms, p95 %.0f ms, p99 %.0f ms, max %.0f ms; %.1f sessions/s\n",
		r.Join.P50Ms, r.Join.P95Ms, r.Join.P99Ms, r.Join.MaxMs, r.Join.PerSecond)
	s := r.Steady
	e.printf("steady (%.1fs, all joined): received %.0f pkt/s, %.2f Mbit/s (sent %.0f pkt/s); loss %.3f%%; latency p50 %.2f ms, p99 %.2f ms\n",
		s.Seconds, s.PPS, s.Mbps, s.SentPPS, 100*s.Loss, s.LatencyP50Ms, s.LatencyP99Ms)
	t := r.Total
	e.printf("total: sent %d, expected %d, received %d, lost %d (%.3f%%); dup %d, reordered %d, malformed %d\n",
		t.Sent, t.Expected, t.Received, t.Lost, 100*t.LossRatio, t.Duplicates, t.Reordered, t.Malformed)
	e.printf("       jitter %.2f ms; latency p50 %.2f, p95 %.2f, p99 %.2f, max %.2f ms\n\n",
		t.JitterMs, t.LatencyP50Ms, t.LatencyP95Ms, t.LatencyP99Ms, t.LatencyMaxMs)
	if len(r.Tracks) > 0 {
		writeTrackTable(e, r.Tracks)
	}
	leftover := "unknown (API did not answer)"
	if r.Leftover >= 0 {
		leftover = fmt.Sprint(r.Leftover)
	}
	e.printf("\ncleanup: %d sessions deleted, %d errors; participants left in the run's rooms: %s\n", r.Cleanup.Deleted, r.Cleanup.DeleteErrors, leftover)
	if r.Error != "" {
		e.printf("error: %s\n", r.Error)
	}
	return e.err
}

func writeTrackTable(e *errWriter, tracks []LoadTrack) {
	tw := newTable(e)
	fmt.Fprintln(tw, "track\tcodec\tsent\tsubs\treceived\tloss\tpkt/s/sub\tMbit/s/sub\tjitter ms\tp50 ms\tp99 ms\t")
	for _, tr := range tracks {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%.3f%%\t%.1f\t%.3f\t%.2f\t%.2f\t%.2f\t\n", tr.Name, tr.Codec, tr.Sent, tr.Subscribers,
			tr.Received, 100*tr.LossRatio, tr.PPS, tr.Mbps, tr.JitterMs, tr.LatencyP50Ms, tr.LatencyP99Ms)
	}
	_ = tw.Flush()
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown CPU"
	}
	return s
}

// cpuModel is the first "model name" of /proc/cpuinfo; "" elsewhere.
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func jsonDecode(r io.Reader, v any) error { return json.NewDecoder(r).Decode(v) }
