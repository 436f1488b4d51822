package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/oneport/oneport/mux"
)

// inProcessNode is the node under test in the test's own process: oneport's
// mux and the sfu with its signaling API on 127.0.0.1, as the fan-out
// server child builds it.
func inProcessNode(t *testing.T) (*fanoutServer, *mux.Mux) {
	t.Helper()
	s, err := openFanoutServer(fanoutServerJob{Mux: MuxOneport, Sockets: 1, Deadline: time.Now().Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	return s, s.closers[0].(*mux.Mux)
}

// runLoadShort runs a short load against an in-process node and checks that
// its figures are consistent with one another and with the counters, and
// that every session it made is gone from the node afterwards.
func runLoadShort(t *testing.T, cfg LoadConfig) LoadReport {
	t.Helper()
	pids := recordChildren(t)
	s, m := inProcessNode(t)
	cfg.URL = "http://" + s.hs.Addr
	cfg.Duration = 1500 * time.Millisecond
	cfg.Grace = 500 * time.Millisecond
	cfg.Ramp = 40
	cfg.JoinTimeout = 8 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	rep, err := RunLoad(ctx, cfg)
	if err != nil {
		t.Fatalf("RunLoad: %v", err)
	}
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", text.String())
	assertReaped(t, pids())
	if got := len(pids()); got != cfg.Clients {
		t.Errorf("started %d child processes, want %d clients", got, cfg.Clients)
	}

	// Sessions and joins.
	planned := cfg.Rooms * (cfg.Publishers + cfg.Subscribers)
	if rep.Sessions.Planned != planned || rep.Sessions.Joined != planned || rep.Sessions.Failed != 0 {
		t.Fatalf("sessions %+v, want %d joined", rep.Sessions, planned)
	}
	if len(rep.Joins) != planned {
		t.Errorf("%d join records, want %d", len(rep.Joins), planned)
	}
	for _, j := range rep.Joins {
		if j.Ms <= 0 || j.Error != "" || j.At.IsZero() {
			t.Errorf("join %+v", j)
		}
	}
	if rep.Join.P50Ms <= 0 || rep.Join.P95Ms < rep.Join.P50Ms || rep.Join.P99Ms < rep.Join.P95Ms || rep.Join.MaxMs < rep.Join.P99Ms || rep.Join.PerSecond <= 0 {
		t.Errorf("join figures %+v", rep.Join)
	}

	// Packets: received <= expected <= sent x subscribers, per track and in
	// total; loss is what the counters say.
	var sent, expected, received uint64
	wantTracks := cfg.Rooms * cfg.Publishers * cfg.tracksPerPublisher()
	if cfg.Simulcast {
		wantTracks += cfg.Rooms * cfg.Publishers * 2
	}
	if len(rep.Tracks) != wantTracks {
		t.Errorf("%d tracks, want %d", len(rep.Tracks), wantTracks)
	}
	for _, tr := range rep.Tracks {
		sent += tr.Sent
		expected += tr.Expected
		received += tr.Received
		if tr.Sent == 0 || tr.SendSeconds <= 0 {
			t.Errorf("track %s: sent %d in %.2fs", tr.Name, tr.Sent, tr.SendSeconds)
		}
		if tr.Received > tr.Expected || tr.Expected > tr.Sent*uint64(tr.Subscribers) {
			t.Errorf("track %s: received %d, expected %d, sent %d to %d subscribers", tr.Name, tr.Received, tr.Expected, tr.Sent, tr.Subscribers)
		}
		if tr.Lost != int64(tr.Expected)-int64(tr.Received) || math.Abs(tr.LossRatio-lossRatio(tr.Lost, tr.Expected)) > 1e-12 {
			t.Errorf("track %s: lost %d (%v) of %d expected, %d received", tr.Name, tr.Lost, tr.LossRatio, tr.Expected, tr.Received)
		}
		if tr.Subscribers > 0 && (tr.LatencyP50Ms <= 0 || tr.LatencyP99Ms < tr.LatencyP50Ms) {
			t.Errorf("track %s: latency p50 %v p99 %v", tr.Name, tr.LatencyP50Ms, tr.LatencyP99Ms)
		}
	}
	tot := rep.Total
	if tot.Sent != sent || tot.Expected != expected || tot.Received != received {
		t.Errorf("total %+v, tracks sum to sent %d expected %d received %d", tot, sent, expected, received)
	}
	if tot.Received == 0 || tot.Received > tot.Expected || tot.Lost != int64(tot.Expected)-int64(tot.Received) ||
		math.Abs(tot.LossRatio-float64(tot.Lost)/float64(tot.Expected)) > 1e-12 {
		t.Errorf("total: expected %d received %d lost %d ratio %v", tot.Expected, tot.Received, tot.Lost, tot.LossRatio)
	}
	if tot.Duplicates != 0 || tot.Malformed != 0 {
		t.Errorf("duplicates %d malformed %d", tot.Duplicates, tot.Malformed)
	}
	if tot.LatencyP50Ms <= 0 || tot.LatencyP99Ms < tot.LatencyP50Ms || tot.LatencyMaxMs < tot.LatencyP99Ms || tot.JitterMs < 0 {
		t.Errorf("latency %+v", tot)
	}
	if rep.Steady.Seconds < 1 || rep.Steady.PPS <= 0 || rep.Steady.SentPPS <= 0 || rep.Steady.Loss < 0 || rep.Steady.Loss > 1 {
		t.Errorf("steady %+v", rep.Steady)
	}
	if len(rep.Series) < 2 {
		t.Errorf("%d samples", len(rep.Series))
	}

	// Clean-up: every session deleted, and the node holds none.
	if rep.Cleanup.Deleted != planned || rep.Cleanup.DeleteErrors != 0 || rep.Leftover != 0 {
		t.Errorf("cleanup %+v, leftover %d; want %d deleted", rep.Cleanup, rep.Leftover, planned)
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.srv.Stats().Participants != 0 || m.Sessions() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("node holds %d participants and %d mux sessions after the run", s.srv.Stats().Participants, m.Sessions())
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back LoadReport
	if err := json.Unmarshal(b, &back); err != nil || back.Total != rep.Total || len(back.Tracks) != len(rep.Tracks) {
		t.Errorf("JSON round trip: %v", err)
	}
	return rep
}

func TestLoadShort(t *testing.T) {
	rep := runLoadShort(t, LoadConfig{Rooms: 2, Publishers: 1, Subscribers: 2, VideoBitrate: 300_000, FPS: 20, Clients: 2})
	checkHTML(t, rep)
}

func TestLoadSimulcast(t *testing.T) {
	rep := runLoadShort(t, LoadConfig{Rooms: 1, Publishers: 1, Subscribers: 1, VideoBitrate: 400_000, Simulcast: true, NoAudio: true, Clients: 1})
	// The subscriber gets one layer of the three.
	recv := 0
	for _, tr := range rep.Tracks {
		if tr.Received > 0 {
			recv++
		}
	}
	if recv != 1 {
		t.Errorf("%d simulcast layers received, want 1: %+v", recv, rep.Tracks)
	}
}

// TestLoadVideoFile replays an IVF file (VP8 frames this test writes) with
// the trailer on every packet.
func TestLoadVideoFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v.ivf")
	if err := os.WriteFile(path, testIVF(60, 30), 0o644); err != nil {
		t.Fatal(err)
	}
	rep := runLoadShort(t, LoadConfig{Rooms: 1, Publishers: 1, Subscribers: 1, VideoFile: path, Clients: 1})
	for _, tr := range rep.Tracks {
		if strings.HasSuffix(tr.Name, "/video") && (tr.Codec != "video/VP8" || tr.Received == 0) {
			t.Errorf("video track %+v", tr)
		}
	}
}

// testIVF is an IVF file of n VP8 frames at fps, a key frame every 30.
func testIVF(n, fps int) []byte {
	var b bytes.Buffer
	hdr := make([]byte, 32)
	copy(hdr, "DKIF")
	binary.LittleEndian.PutUint16(hdr[6:], 32)
	copy(hdr[8:], "VP80")
	binary.LittleEndian.PutUint16(hdr[12:], 320)
	binary.LittleEndian.PutUint16(hdr[14:], 240)
	binary.LittleEndian.PutUint32(hdr[16:], uint32(fps)) // timebase denominator
	binary.LittleEndian.PutUint32(hdr[20:], 1)
	binary.LittleEndian.PutUint32(hdr[24:], uint32(n))
	b.Write(hdr)
	for i := range n {
		frame := make([]byte, 1500+i%7*100)
		frame[0] = 0x01 // inter frame (P=1)
		if i%30 == 0 {
			frame[0] = 0x00
			copy(frame[3:], []byte{0x9d, 0x01, 0x2a})
		}
		fh := make([]byte, 12)
		binary.LittleEndian.PutUint32(fh, uint32(len(frame)))
		binary.LittleEndian.PutUint64(fh[4:], uint64(i))
		b.Write(fh)
		b.Write(frame)
	}
	return b.Bytes()
}

// checkHTML parses the HTML report and checks its charts have data points.
func checkHTML(t *testing.T, rep LoadReport) {
	t.Helper()
	var buf bytes.Buffer
	if err := rep.WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	doc, err := html.Parse(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	var svgs []*html.Node
	var scripts, external int
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode {
			switch n.Data {
			case "svg":
				svgs = append(svgs, n)
			case "script":
				scripts++
			}
			for _, a := range n.Attr {
				if (a.Key == "src" || a.Key == "href") && a.Val != "" {
					external++
				}
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	if scripts != 0 || external != 0 {
		t.Errorf("report has %d scripts and %d external references", scripts, external)
	}
	if len(svgs) != 5 {
		t.Fatalf("%d SVG charts, want 5", len(svgs))
	}
	// Every chart has its points; the packets chart's received line has one
	// vertex per sample, the join chart a dot per join.
	for i, svg := range svgs {
		n, _ := strconv.Atoi(attr(svg, "data-points"))
		var vertices, dots int
		var count func(*html.Node)
		count = func(n *html.Node) {
			if n.Type == html.ElementNode {
				switch n.Data {
				case "polyline":
					vertices += len(strings.Fields(attr(n, "points")))
				case "circle":
					dots++
				}
			}
			for c := n.FirstChild; c != nil; c = c.NextSibling {
				count(c)
			}
		}
		count(svg)
		if n == 0 || vertices+dots != n {
			t.Errorf("chart %d: %d points declared, %d vertices and %d dots drawn", i, n, vertices, dots)
		}
		if i == 0 && vertices != 2*len(rep.Series) {
			t.Errorf("packets chart: %d vertices for %d samples of 2 series", vertices, len(rep.Series))
		}
		if i == 4 && dots != len(rep.Joins) {
			t.Errorf("join chart: %d dots for %d joins", dots, len(rep.Joins))
		}
	}
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

// TestLoadIdleMemory sets up a few idle sessions on an in-process node and
// checks the node held them all while the heap was measured, and none
// after.
func TestLoadIdleMemory(t *testing.T) {
	pids := recordChildren(t)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	rep, err := RunIdleMemory(ctx, IdleConfig{Sessions: 8, Clients: 1, Ramp: 50})
	if err != nil {
		t.Fatal(err)
	}
	assertReaped(t, pids())
	if rep.Joined != 8 || rep.Failed != 0 || rep.MuxSessions != 8 || rep.Participants != 8 {
		t.Errorf("joined %d failed %d, node held %d mux sessions and %d participants; want 8", rep.Joined, rep.Failed, rep.MuxSessions, rep.Participants)
	}
	if rep.HeapBefore == 0 || rep.HeapWith == 0 || rep.BytesPerSession != (float64(rep.HeapWith)-float64(rep.HeapBefore))/8 {
		t.Errorf("heap %d -> %d, %.0f bytes per session", rep.HeapBefore, rep.HeapWith, rep.BytesPerSession)
	}
}

// TestLoadCountAllocs pins that a load subscriber's per-packet accounting
// (trailer read in place, counters, jitter, histograms) allocates nothing,
// and checks its arithmetic: expected follows the highest counter,
// duplicates are not received, late packets are.
func TestLoadCountAllocs(t *testing.T) {
	c := &loadClient{agg: map[uint32]*trackAgg{}}
	id := loadTrackID(3, kindVideo, 2)
	tr := &subTrack{id: id, agg: c.aggFor(id)}
	pkt := make([]byte, 12+100)
	pkt[0] = 0x80
	var ctr uint64
	now := time.Now().UnixNano()
	allocs := testing.AllocsPerRun(1000, func() {
		putLoadTrailer(pkt[12:], id, kindVideo, ctr, now)
		gotID, _, gotCtr, sent, ok := readLoadTrailer(pkt)
		if !ok || gotID != id || gotCtr != ctr {
			t.Fatalf("trailer read back %d %d %v", gotID, gotCtr, ok)
		}
		c.count(tr, gotCtr, sent, sent+1000, len(pkt))
		ctr++
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per packet", allocs)
	}
	c2 := &loadClient{agg: map[uint32]*trackAgg{}}
	t2 := &subTrack{id: 1, agg: c2.aggFor(1)}
	// A duplicate, a gap of 2, one late, one sent before the first.
	for _, k := range []uint64{10, 11, 11, 14, 12, 15, 9} {
		c2.count(t2, k, 0, 1000, 100)
	}
	if e, r := c2.cnt.expected.Load(), c2.cnt.recv.Load(); e != 6 || r != 5 || t2.duplicates.Load() != 1 || t2.reordered.Load() != 1 || t2.early.Load() != 1 {
		t.Errorf("expected %d received %d duplicates %d reordered %d early %d; want 6 5 1 1 1", e, r, t2.duplicates.Load(), t2.reordered.Load(), t2.early.Load())
	}
	// The final figures take the publisher's last counter: 16 was sent
	// last, so 10..16 were expected (7) and 5 arrived.
	c2.subs = []*loadSub{{tracks: []*subTrack{t2}}}
	rep := c2.report(map[uint32]uint64{1: 16})
	if len(rep.Tracks) != 1 || rep.Tracks[0].Expected != 7 || rep.Tracks[0].Received != 5 || rep.Tracks[0].Subs != 1 {
		t.Errorf("report %+v; want 7 expected, 5 received by 1 subscriber", rep.Tracks)
	}
}
