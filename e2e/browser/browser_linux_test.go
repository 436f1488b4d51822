//go:build linux

package browser

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/oneport/oneport/sfu"
	"github.com/oneport/oneport/sfu/web"
)

const chromiumPath = "/usr/bin/chromium"

// Budgets. The driver's own deadline is the tightest; the process deadline
// leaves it room to report, and clean-up is bounded separately.
const (
	driverBudget  = 40 * time.Second
	processBudget = driverBudget + 15*time.Second
)

// What receiving a publisher means: more than a first keyframe, so that a
// stall after it fails the test. Fake camera at 20-30 fps and Opus at 50
// packets/s reach these in about half a second.
const (
	minFramesDecoded        = 10
	minAudioPacketsReceived = 25
)

// requireTools skips the test where it cannot run, naming what is missing,
// except under CI (CI set in the environment), where .ci/run installs all of
// it and a skip would hide a broken install: there it fails.
func requireTools(t *testing.T) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (for ip netns and veth)")
	}
	for _, bin := range []string{chromiumPath, "node", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	if _, err := os.Stat(filepath.Join("node_modules", "playwright-core", "package.json")); err != nil {
		missing = append(missing, "node_modules/playwright-core (run npm ci in e2e/browser)")
	}
	if len(missing) == 0 {
		return
	}
	msg := "browser e2e needs " + strings.Join(missing, ", ") +
		"; see e2e/browser/README.md (apt-get install -y chromium iproute2; npm ci in e2e/browser)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// server is one oneport node in the root namespace: the mux on the veth
// address for every media packet, and HTTP (demo page and sfu signaling).
type server struct {
	base  string         // http://host:port of the page and signaling
	media netip.AddrPort // the one UDP port
}

func startServer(t *testing.T, host netip.Addr) *server {
	t.Helper()
	logs := &cappedBuffer{limit: 1 << 20}
	logger := zerolog.New(logs).With().Timestamp().Logger().Level(zerolog.DebugLevel)

	m, media := listenMedia(t, host, logger)
	s, err := sfu.New(sfu.Config{UDPMux: m, Logger: logger})
	if err != nil {
		_ = m.Close()
		t.Fatalf("sfu.New: %v", err)
	}
	routes := http.NewServeMux()
	routes.Handle("/", web.Handler())
	for _, prefix := range []string{"/whip/", "/whep/", "/rooms/", "/api/"} {
		routes.Handle(prefix, s.Handler())
	}
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(host, 0).String())
	if err != nil {
		_ = s.Close()
		_ = m.Close()
		t.Fatal(err)
	}
	hs := &http.Server{Handler: routes, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()

	t.Cleanup(func() {
		// Event streams never go idle, so Shutdown is bounded and Close
		// ends what is left.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := hs.Shutdown(ctx); err != nil {
			_ = hs.Close()
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("http serve: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("sfu close: %v", err)
		}
		if err := m.Close(); err != nil {
			t.Errorf("mux close: %v", err)
		}
		if t.Failed() {
			t.Logf("server log (last %d bytes):\n%s", logs.limit, logs.String())
		}
	})
	return &server{base: "http://" + ln.Addr().String(), media: media}
}

// driverResult is what driver.js prints: window.oneportStats() of each page.
type driverResult struct {
	OK             bool                 `json:"ok"`
	Error          string               `json:"error"`
	Scenario       string               `json:"scenario"`
	BrowserVersion string               `json:"browserVersion"`
	Timings        map[string]int64     `json:"timings"`
	Pages          map[string]pageStats `json:"pages"`
}

type pageStats struct {
	Errors  []string      `json:"errors"`
	Room    string        `json:"room"`
	Mode    string        `json:"mode"`
	Events  string        `json:"events"`
	Publish *publishStats `json:"publish"`
	Remotes []remoteStats `json:"remotes"`
}

type publishStats struct {
	Participant   string       `json:"participant"`
	State         string       `json:"state"`
	Video         *mediaStats  `json:"video"`
	Audio         *mediaStats  `json:"audio"`
	CandidatePair *pairSummary `json:"candidatePair"`
	Layers        []layerStats `json:"layers"`
}

// layerStats is one outbound video encoding (one per simulcast rid).
type layerStats struct {
	RID        string  `json:"rid"`
	Width      int     `json:"width"`
	Height     int     `json:"height"`
	FPS        float64 `json:"fps"`
	BytesSent  int64   `json:"bytesSent"`
	Limitation string  `json:"limitation"`
}

type remoteStats struct {
	Publisher     string       `json:"publisher"`
	State         string       `json:"state"`
	Tracks        int          `json:"tracks"`
	Video         *mediaStats  `json:"video"`
	Audio         *mediaStats  `json:"audio"`
	CandidatePair *pairSummary `json:"candidatePair"`
}

type mediaStats struct {
	Codec           string  `json:"codec"`
	PacketsReceived int64   `json:"packetsReceived"`
	PacketsLost     int64   `json:"packetsLost"`
	PacketsSent     int64   `json:"packetsSent"`
	BytesReceived   int64   `json:"bytesReceived"`
	BytesSent       int64   `json:"bytesSent"`
	FramesDecoded   int64   `json:"framesDecoded"`
	FramesEncoded   int64   `json:"framesEncoded"`
	FrameWidth      int     `json:"frameWidth"`
	FrameHeight     int     `json:"frameHeight"`
	FramesPerSecond float64 `json:"framesPerSecond"`
}

type pairSummary struct {
	State  string `json:"state"`
	Local  string `json:"local"`
	Remote string `json:"remote"`
}

// runDriver runs driver.js in the namespace and returns its result. The
// driver and everything it starts are killed by PID when the process budget
// runs out, and again by the topology's clean-up.
func runDriver(t *testing.T, top *netnsTopology, srv *server, scenario, room string) driverResult {
	t.Helper()
	args := []string{"netns", "exec", top.name, "node", "driver.js",
		"--base", srv.base, "--room", room, "--scenario", scenario,
		"--user-data-dir", t.TempDir(), "--timeout-ms", strconv.Itoa(int(driverBudget.Milliseconds())),
		"--chromium", chromiumPath,
		"--min-frames", strconv.Itoa(minFramesDecoded),
		"--min-audio-packets", strconv.Itoa(minAudioPacketsReceived)}
	cmd := exec.Command("ip", args...)
	var stdout bytes.Buffer
	stderr := &cappedBuffer{limit: 256 << 10}
	cmd.Stdout = &stdout
	cmd.Stderr = stderr
	// ip netns exec becomes node (same PID). Chromium, which playwright starts
	// in a process group of its own, is found by the namespace clean-up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Bounds Wait if some descendant kept the output pipes open.
	cmd.WaitDelay = 2 * time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start driver: %v", err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-waited:
	case <-time.After(processBudget):
		// Terminate lets playwright close Chromium; the clean-up kills the rest.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case werr = <-waited:
		case <-time.After(3 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			werr = <-waited
		}
		werr = fmt.Errorf("driver exceeded %v: %w", processBudget, werr)
	}
	t.Logf("driver ran %v (exit: %v)", time.Since(start).Round(time.Millisecond), werr)
	t.Logf("driver stderr:\n%s", stderr.String())

	var res driverResult
	line := lastLine(stdout.Bytes())
	if err := json.Unmarshal(line, &res); err != nil {
		t.Fatalf("driver output %q: %v", stdout.String(), err)
	}
	if !res.OK {
		var pretty bytes.Buffer
		_ = json.Indent(&pretty, line, "", "  ")
		t.Fatalf("driver: %s (exit %v)\nresult:\n%s", res.Error, werr, pretty.String())
	}
	return res
}

func lastLine(b []byte) []byte {
	var last []byte
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 8<<20)
	for sc.Scan() {
		if l := bytes.TrimSpace(sc.Bytes()); len(l) > 0 {
			last = append(last[:0], l...)
		}
	}
	return last
}

// checkReceiving asserts that page decoded video and received audio from
// publisher, over a path to the server's one media port.
func checkReceiving(t *testing.T, srv *server, pageName string, page pageStats, publisher string) {
	t.Helper()
	for _, r := range page.Remotes {
		if r.Publisher != publisher {
			continue
		}
		if r.Video == nil || r.Video.FramesDecoded < minFramesDecoded {
			t.Errorf("%s: fewer than %d video frames decoded from %s: %+v", pageName, minFramesDecoded, publisher, r.Video)
		}
		if r.Audio == nil || r.Audio.PacketsReceived < minAudioPacketsReceived {
			t.Errorf("%s: fewer than %d audio packets received from %s: %+v", pageName, minAudioPacketsReceived, publisher, r.Audio)
		}
		wantRemote := srv.media.String() + "/udp"
		if r.CandidatePair == nil || !strings.HasPrefix(r.CandidatePair.Remote, wantRemote+" ") {
			t.Errorf("%s: media path %+v, want remote %s", pageName, r.CandidatePair, wantRemote)
		}
		if r.Video != nil && r.Audio != nil {
			t.Logf("%s <- %s: %s %dx%d, %d frames decoded; %s, %d packets; path %s -> %s",
				pageName, publisher, r.Video.Codec, r.Video.FrameWidth, r.Video.FrameHeight,
				r.Video.FramesDecoded, r.Audio.Codec, r.Audio.PacketsReceived,
				r.CandidatePair.Local, r.CandidatePair.Remote)
		}
		return
	}
	t.Errorf("%s: not watching publisher %s; remotes %+v", pageName, publisher, page.Remotes)
}

func published(t *testing.T, pageName string, page pageStats) string {
	t.Helper()
	if page.Publish == nil || page.Publish.Participant == "" {
		t.Fatalf("%s: did not publish: %+v", pageName, page)
	}
	if v := page.Publish.Video; v == nil || v.FramesEncoded <= 0 {
		t.Errorf("%s: no video frames encoded: %+v", pageName, v)
	}
	if a := page.Publish.Audio; a == nil || a.PacketsSent <= 0 {
		t.Errorf("%s: no audio packets sent: %+v", pageName, a)
	}
	return page.Publish.Participant
}

func roomName(t *testing.T) string {
	return strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
}

// TestPublishWatch: one page publishes the fake camera and microphone
// through the demo page (WHIP); a second page watches the room, subscribes
// to the publisher when the events stream announces it (WHEP), decodes
// video frames and receives audio packets. Then the publisher leaves and the
// watcher drops its subscription.
func TestPublishWatch(t *testing.T) {
	requireTools(t)
	t.Cleanup(func() { goleak.VerifyNone(t) })
	top := newTopology(t)
	srv := startServer(t, top.hostAddr)

	res := runDriver(t, top, srv, "pubsub", roomName(t))
	t.Logf("chromium %s, timings (ms since driver start): %v", res.BrowserVersion, res.Timings)
	pub, watch := res.Pages["pub"], res.Pages["watch"]
	id := published(t, "pub", pub)
	checkReceiving(t, srv, "watch", watch, id)
	for _, r := range res.Pages["watchAfterLeave"].Remotes {
		if r.Publisher == id {
			t.Errorf("watcher still watches %s after it left: %+v", id, r)
		}
	}
	for name, p := range res.Pages {
		if len(p.Errors) > 0 {
			t.Errorf("%s: page errors: %q", name, p.Errors)
		}
	}
}

// TestThreeParty: three pages in one room, each publishing and watching,
// each see the other two.
func TestThreeParty(t *testing.T) {
	requireTools(t)
	t.Cleanup(func() { goleak.VerifyNone(t) })
	top := newTopology(t)
	srv := startServer(t, top.hostAddr)

	res := runDriver(t, top, srv, "party", roomName(t))
	t.Logf("chromium %s, timings (ms since driver start): %v", res.BrowserVersion, res.Timings)
	names := []string{"p1", "p2", "p3"}
	ids := make([]string, len(names))
	for i, n := range names {
		ids[i] = published(t, n, res.Pages[n])
	}
	for i, n := range names {
		if got := len(res.Pages[n].Remotes); got != len(names)-1 {
			t.Errorf("%s watches %d publishers, want %d", n, got, len(names)-1)
		}
		for j, id := range ids {
			if i != j {
				checkReceiving(t, srv, n, res.Pages[n], id)
			}
		}
		if len(res.Pages[n].Errors) > 0 {
			t.Errorf("%s: page errors: %q", n, res.Pages[n].Errors)
		}
	}
}

// TestSimulcastLayer: the publisher page sends three simulcast layers; the
// watcher receives the full one, asks for the lowest through the page (the
// sfu's layer API) and then decodes frames of at most half the width.
func TestSimulcastLayer(t *testing.T) {
	requireTools(t)
	t.Cleanup(func() { goleak.VerifyNone(t) })
	top := newTopology(t)
	srv := startServer(t, top.hostAddr)

	res := runDriver(t, top, srv, "simulcast", roomName(t))
	t.Logf("chromium %s, timings (ms since driver start): %v", res.BrowserVersion, res.Timings)
	id := published(t, "pub", res.Pages["pub"])
	checkReceiving(t, srv, "watch", res.Pages["watch"], id)
	var full, low *remoteStats
	for i, r := range res.Pages["watch"].Remotes {
		if r.Publisher == id {
			full = &res.Pages["watch"].Remotes[i]
		}
	}
	for i, r := range res.Pages["watchLow"].Remotes {
		if r.Publisher == id {
			low = &res.Pages["watchLow"].Remotes[i]
		}
	}
	if full == nil || low == nil || full.Video == nil || low.Video == nil {
		t.Fatalf("watcher stats missing: full %+v, low %+v", full, low)
	}
	layers := res.Pages["pub"].Publish.Layers
	fullWidth := 0
	for _, l := range layers {
		fullWidth = max(fullWidth, l.Width)
	}
	if len(layers) != 3 || fullWidth == 0 {
		t.Errorf("publisher layers %+v, want three", layers)
	}
	if full.Video.FrameWidth < fullWidth || low.Video.FrameWidth <= 0 || low.Video.FrameWidth > fullWidth/2 {
		t.Errorf("frame width %d before and %d after selecting layer q, want the full %d then at most half",
			full.Video.FrameWidth, low.Video.FrameWidth, fullWidth)
	}
	if low.Video.FramesDecoded < full.Video.FramesDecoded+minFramesDecoded {
		t.Errorf("frames decoded %d -> %d across the switch, want %d more", full.Video.FramesDecoded,
			low.Video.FramesDecoded, minFramesDecoded)
	}
	t.Logf("layer switch: %dx%d -> %dx%d", full.Video.FrameWidth, full.Video.FrameHeight,
		low.Video.FrameWidth, low.Video.FrameHeight)
}

// cappedBuffer keeps the last limit bytes written to it; safe for concurrent
// writers (the logger and exec's copy goroutines).
type cappedBuffer struct {
	mu    sync.Mutex // guards buf
	buf   []byte
	limit int
}

func (c *cappedBuffer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf = append(c.buf, p...)
	if over := len(c.buf) - c.limit; over > 0 {
		c.buf = append(c.buf[:0], c.buf[over:]...)
	}
	return len(p), nil
}

func (c *cappedBuffer) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.buf)
}

var _ io.Writer = (*cappedBuffer)(nil)
