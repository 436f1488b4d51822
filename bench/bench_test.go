package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/oneport/oneport/mux"
)

func TestMain(m *testing.M) {
	MaybeRunSender() // RunMux re-executes this test binary as its senders
	goleak.VerifyTestMain(m)
}

var (
	pidMu   sync.Mutex
	pidsNow []int
)

func recordPID(pid int) {
	pidMu.Lock()
	pidsNow = append(pidsNow, pid)
	pidMu.Unlock()
}

// recordSenders collects the PIDs of the sender processes a test starts.
func recordSenders(t testing.TB) func() []int {
	pidMu.Lock()
	pidsNow = nil
	pidMu.Unlock()
	testHookSenderStarted = recordPID
	t.Cleanup(func() { testHookSenderStarted = nil })
	return func() []int {
		pidMu.Lock()
		defer pidMu.Unlock()
		return append([]int(nil), pidsNow...)
	}
}

// TestRunMuxShort runs the whole comparison small and checks that its
// figures are consistent with one another and with the counters.
func TestRunMuxShort(t *testing.T) {
	pids := recordSenders(t)
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Second)
	defer cancel()
	const sessions, stalledPackets, queueLen = 50, 3000, 64
	cfg := MuxConfig{
		Sessions:       sessions,
		Senders:        2,
		Duration:       time.Second,
		WarmUp:         200 * time.Millisecond,
		Rate:           40_000, // well below saturation: this checks accounting, not speed
		StalledPackets: stalledPackets,
		Hostile:        true,
		HostileSockets: 12,
		Mux:            mux.Config{QueueLen: queueLen},
	}
	rep, err := RunMux(ctx, cfg)
	if err != nil {
		t.Fatalf("RunMux: %v", err)
	}
	if got := len(pids()); got != 3*cfg.Senders {
		t.Errorf("started %d sender processes, want %d", got, 3*cfg.Senders)
	}
	assertReaped(t, pids())

	if len(rep.Receivers) != len(AllReceivers) {
		t.Fatalf("got %d receivers, want %d", len(rep.Receivers), len(AllReceivers))
	}
	for i, rr := range rep.Receivers {
		if rr.Name != AllReceivers[i] {
			t.Errorf("receiver %d is %q, want %q", i, rr.Name, AllReceivers[i])
		}
		if rr.SessionsBound != sessions || rr.SessionsFailed != 0 {
			t.Errorf("%s: %d sessions bound, %d failed; want %d, 0", rr.Name, rr.SessionsBound, rr.SessionsFailed, sessions)
		}
		if len(rr.Runs) != 2 {
			t.Fatalf("%s: %d runs, want 2", rr.Name, len(rr.Runs))
		}
		for _, run := range rr.Runs {
			checkRun(t, rr.Name, run)
		}
		checkHostile(t, rr.Name, rr.Hostile)
	}

	if len(rep.Stalled) != 2 {
		t.Fatalf("got %d stalled measurements, want 2 (pion, oneport)", len(rep.Stalled))
	}
	for _, s := range rep.Stalled {
		if s.Error != "" {
			t.Errorf("%s stalled: %s", s.Receiver, s.Error)
			continue
		}
		// A STUN check the handshake retried may land after the count
		// starts: a datagram or two over, never under.
		if s.Dispatched < stalledPackets || s.Dispatched > stalledPackets+2 {
			t.Errorf("%s stalled: mux read %d datagrams, want %d (+2 late checks at most)", s.Receiver, s.Dispatched, stalledPackets)
		}
	}
	// oneport's queue holds QueueLen datagrams and drops the rest, counted.
	if s := rep.Stalled[1]; s.Receiver != ReceiverOneport || s.MuxDrops["queue_full"] != stalledPackets-queueLen {
		t.Errorf("oneport stalled: drops %v, want queue_full=%d", s.MuxDrops, stalledPackets-queueLen)
	}

	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range append([]string{"stalled session", "hostile run"}, AllReceivers...) {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q", want)
		}
	}
	js, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back MuxReport
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	if back.Receivers[2].Runs[1].Delivered != rep.Receivers[2].Runs[1].Delivered {
		t.Error("JSON round trip lost figures")
	}
	t.Logf("\n%s", text.String())
}

// TestRunMuxIPv6 runs every receiver briefly over ::1.
func TestRunMuxIPv6(t *testing.T) {
	if c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback}); err != nil {
		t.Skipf("no ::1: %v", err)
	} else {
		c.Close()
	}
	pids := recordSenders(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep, err := RunMux(ctx, MuxConfig{
		Network: "udp6", Sessions: 10, Duration: 300 * time.Millisecond, WarmUp: -1,
		Sizes: []int{100}, Rate: 20_000, StalledPackets: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	assertReaped(t, pids())
	for _, rr := range rep.Receivers {
		if rr.SessionsBound != 10 {
			t.Errorf("%s: %d sessions bound over IPv6, want 10", rr.Name, rr.SessionsBound)
		}
		checkRun(t, rr.Name, rr.Runs[0])
	}
}

// TestRunMuxCancel cancels RunMux in the middle of a run: it must return
// the context's error with every sender process killed and reaped.
func TestRunMuxCancel(t *testing.T) {
	pids := recordSenders(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var once sync.Once
	testHookSenderStarted = func(pid int) {
		recordPID(pid)
		once.Do(func() { time.AfterFunc(time.Second, cancel) })
	}
	_, err := RunMux(ctx, MuxConfig{Sessions: 20, Duration: MaxDuration, WarmUp: -1, Receivers: []string{ReceiverOneport}})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("RunMux: %v, want context.Canceled", err)
	}
	if len(pids()) != 2 {
		t.Errorf("%d senders started, want 2", len(pids()))
	}
	assertReaped(t, pids())
}

func checkRun(t *testing.T, name string, run RunReport) {
	t.Helper()
	switch {
	case run.Sent == 0 || run.Delivered == 0:
		t.Errorf("%s %d B: sent %d, delivered %d: no traffic", name, run.Size, run.Sent, run.Delivered)
	case run.Delivered > run.Sent:
		t.Errorf("%s %d B: delivered %d > sent %d", name, run.Size, run.Delivered, run.Sent)
	case run.Lost != int64(run.Sent)-int64(run.Delivered):
		t.Errorf("%s %d B: lost %d != sent %d - delivered %d", name, run.Size, run.Lost, run.Sent, run.Delivered)
	case math.Abs(run.LossRatio-float64(run.Lost)/float64(run.Sent)) > 1e-12:
		t.Errorf("%s %d B: loss ratio %v, want %v", name, run.Size, run.LossRatio, float64(run.Lost)/float64(run.Sent))
	case run.Misrouted != 0:
		t.Errorf("%s %d B: %d packets reached the wrong session", name, run.Size, run.Misrouted)
	case run.CPUSeconds <= 0 || run.DeliveredPPS <= 0 || run.Seconds <= 0:
		t.Errorf("%s %d B: cpu %vs, %v pkts/s over %vs", name, run.Size, run.CPUSeconds, run.DeliveredPPS, run.Seconds)
	case name != ReceiverRaw && (run.PPSvsRaw <= 0 || run.CPUvsRaw <= 0):
		t.Errorf("%s %d B: ratios vs raw %v, %v", name, run.Size, run.PPSvsRaw, run.CPUvsRaw)
	}
}

func checkHostile(t *testing.T, name string, h *HostileReport) {
	t.Helper()
	if h == nil {
		t.Errorf("%s: no hostile run", name)
		return
	}
	hs := h.HostileSent
	if hs.UnknownUfrag == 0 || hs.Junk == 0 || hs.SpoofedSTUN == 0 || hs.SpoofedRTP == 0 {
		t.Errorf("%s hostile: sent %+v, want every kind", name, hs)
	}
	if h.ValidDelivered == 0 || h.ValidDelivered > h.ValidSent {
		t.Errorf("%s hostile: valid delivered %d of %d", name, h.ValidDelivered, h.ValidSent)
	}
	if name == ReceiverRaw {
		return // no demultiplexing: everything reaches the readers
	}
	// Neither mux may hand a spoofer's RTP, or another session's, to a
	// session, and no spoofed check may pass.
	if r := h.Reached; r.SpoofedRTP != 0 || r.Misrouted != 0 || r.STUNAnswered != 0 || r.Other != 0 {
		t.Errorf("%s hostile: reached sessions %+v", name, r)
	}
	if h.Reached.STUNRejected > hs.SpoofedSTUN {
		t.Errorf("%s hostile: %d STUN rejected by sessions, only %d spoofed sent", name, h.Reached.STUNRejected, hs.SpoofedSTUN)
	}
	if name == ReceiverPion && h.KernelDrops == 0 && h.Reached.STUNRejected != hs.SpoofedSTUN {
		t.Errorf("pion hostile: %d spoofed STUN reached sessions, %d sent, none lost", h.Reached.STUNRejected, hs.SpoofedSTUN)
	}
	if name != ReceiverOneport {
		return
	}
	d := h.MuxDrops
	if d["unknown_ufrag"] == 0 || d["junk"]+d["unknown_address"] == 0 {
		t.Errorf("oneport hostile: drops %v, want unknown_ufrag, junk and unknown_address", d)
	}
	if h.KernelDrops != 0 {
		t.Logf("oneport hostile: kernel dropped %d datagrams; exact accounting skipped", h.KernelDrops)
		return
	}
	// Nothing lost in the kernel: every hostile datagram is accounted for.
	if d["unknown_ufrag"] != hs.UnknownUfrag {
		t.Errorf("oneport hostile: %d unknown_ufrag drops, %d sent", d["unknown_ufrag"], hs.UnknownUfrag)
	}
	if d["junk"]+d["unknown_address"]+d["not_request"] != hs.Junk+hs.SpoofedRTP {
		t.Errorf("oneport hostile: junk+unknown_address+not_request drops %d, want junk+spoofed RTP sent %d",
			d["junk"]+d["unknown_address"]+d["not_request"], hs.Junk+hs.SpoofedRTP)
	}
	// Spoofed checks reach the session, or are dropped for the unbound
	// budget, or (a session's queue full: its reader starved on a loaded
	// machine) as queue_full, with the valid packets that met a full queue.
	counted := h.Reached.STUNRejected + d["unbound_limit"] + d["unbound_rate"]
	if counted > hs.SpoofedSTUN {
		t.Errorf("oneport hostile: spoofed STUN reached %d + unbound_limit %d + unbound_rate %d, over the %d sent",
			h.Reached.STUNRejected, d["unbound_limit"], d["unbound_rate"], hs.SpoofedSTUN)
	} else if want := (h.ValidSent - h.ValidDelivered) + (hs.SpoofedSTUN - counted); d["queue_full"] != want {
		t.Errorf("oneport hostile: queue_full %d; want the valid packets lost (%d) plus the spoofed checks not otherwise counted (%d of %d: reached %d, unbound_limit %d, unbound_rate %d)",
			d["queue_full"], h.ValidSent-h.ValidDelivered, hs.SpoofedSTUN-counted, hs.SpoofedSTUN,
			h.Reached.STUNRejected, d["unbound_limit"], d["unbound_rate"])
	}
}

func TestMuxConfigDefaults(t *testing.T) {
	c, err := MuxConfig{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.Sessions != 1000 || c.Senders != 2 || c.Duration != 5*time.Second || len(c.Sizes) != 2 ||
		c.Network != "udp4" || len(c.Receivers) != 3 || c.StalledPackets != 20_000 || c.Mux.SocketBuffer != c.SocketBuffer {
		t.Errorf("defaults: %+v", c)
	}
	for _, bad := range []MuxConfig{
		{Sessions: MaxSessions + 1},
		{Senders: -1},
		{Sessions: 2, Senders: 3},
		{Duration: time.Hour},
		{Sizes: []int{}},
		{Sizes: []int{5}},
		{Network: "udp"},
		{Receivers: []string{"nginx"}},
		{Receivers: []string{"raw", "raw"}},
		{HostileRatio: 1},
		{SenderBatch: 1000},
		{Rate: -1},
	} {
		if _, err := bad.withDefaults(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: err %v, want ErrInvalidConfig", bad, err)
		}
	}
}

// TestAnswerBinding checks the sessions' ICE check handling that decides
// what the hostile run counts as rejected.
func TestAnswerBinding(t *testing.T) {
	spec := newSpecs(1)[0]
	from := loopbackAddrPort(t)
	pwdOf := func(u string) (string, bool) { return spec.ServerPwd, u == spec.ServerUfrag }
	tid := [12]byte{1, 2, 3}
	for _, tc := range []struct {
		name      string
		ufrag     string
		pwd       string
		wantReply bool
	}{
		{"valid", spec.ServerUfrag, spec.ServerPwd, true},
		{"wrong password", spec.ServerUfrag, newPassword(), false},
		{"other ufrag", newUfrag(), spec.ServerPwd, false},
	} {
		req, err := bindingRequest(tid, tc.ufrag, "client", tc.pwd)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := answerBinding(req, from, pwdOf)
		if (err == nil) != tc.wantReply {
			t.Errorf("%s: err %v", tc.name, err)
			continue
		}
		if tc.wantReply && !checkBindingResponse(resp, tid, spec.ServerPwd) {
			t.Errorf("%s: response does not verify", tc.name)
		}
	}
	if _, err := answerBinding([]byte{0, 1, 0, 0}, from, pwdOf); err == nil {
		t.Error("truncated STUN answered")
	}
}

func FuzzAnswerBinding(f *testing.F) {
	spec := newSpecs(1)[0]
	req, err := bindingRequest([12]byte{9}, spec.ServerUfrag, "c", spec.ServerPwd)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(req)
	f.Add(req[:20])
	f.Add([]byte{0x80, 0x60, 0, 1})
	pwdOf := func(u string) (string, bool) { return spec.ServerPwd, u == spec.ServerUfrag }
	f.Fuzz(func(t *testing.T, b []byte) {
		if !isSTUN(b) {
			return
		}
		resp, err := answerBinding(b, loopbackAddrPort(t), pwdOf)
		if err != nil {
			return
		}
		// Only a request signed with the password gets an answer, and the
		// answer is the signed response to that very request.
		if !checkBindingResponse(resp, [12]byte(b[8:20]), spec.ServerPwd) {
			t.Errorf("answer to %x does not verify", b)
		}
	})
}

func loopbackAddrPort(testing.TB) netip.AddrPort {
	return netip.AddrPortFrom(loopback("udp4"), 40000)
}

var (
	muxReport    = flag.String("muxreport", "", "BenchmarkMuxReceivers writes its text report to this file (and the JSON to the file plus .json)")
	muxHostile   = flag.Bool("muxhostile", false, "BenchmarkMuxReceivers adds the hostile run")
	muxReceivers = flag.String("muxreceivers", "", "BenchmarkMuxReceivers runs only these receivers (comma-separated), e.g. to profile one")
)

// BenchmarkMuxReceivers runs the full comparison once (defaults: 1,000
// sessions, 2 sender processes, 5 s per packet size; -short: 200 sessions,
// 1 s) and reports each receiver's delivered packets/s, CPU ns per
// delivered packet and loss, and the stalled session's heap growth. Run it
// with -benchtime=1x on a quiet machine; -muxreport keeps the whole report
// (the benchmark log shows only its first lines):
//
//	go test ./bench -run '^$' -bench MuxReceivers -benchtime 1x -muxreport /tmp/mux.txt
func BenchmarkMuxReceivers(b *testing.B) {
	cfg := MuxConfig{Hostile: *muxHostile}
	if *muxReceivers != "" {
		cfg.Receivers = strings.Split(*muxReceivers, ",")
	}
	if testing.Short() {
		cfg.Sessions, cfg.Duration = 200, time.Second
	}
	pids := recordSenders(b)
	var rep MuxReport
	for b.Loop() {
		var err error
		if rep, err = RunMux(context.Background(), cfg); err != nil {
			b.Fatal(err)
		}
	}
	assertReaped(b, pids())
	for _, rr := range rep.Receivers {
		for _, run := range rr.Runs {
			prefix := fmt.Sprintf("%s-%dB-", rr.Name, run.Size)
			b.ReportMetric(run.DeliveredPPS, prefix+"pkts/s")
			b.ReportMetric(run.CPUNsPerPacket, prefix+"cpu-ns/pkt")
			b.ReportMetric(100*run.LossRatio, prefix+"loss-%")
		}
	}
	for _, s := range rep.Stalled {
		b.ReportMetric(float64(s.HeapGrowthBytes)/(1<<20), s.Receiver+"-stalled-heap-MiB")
	}
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		b.Fatal(err)
	}
	b.Logf("\n%s", text.String())
	if *muxReport != "" {
		js, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			b.Fatal(err)
		}
		if err := errors.Join(os.WriteFile(*muxReport, text.Bytes(), 0o644), os.WriteFile(*muxReport+".json", js, 0o644)); err != nil {
			b.Fatal(err)
		}
	}
}
