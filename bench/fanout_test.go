package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/rtp"

	"github.com/oneport/oneport/sfu"
)

// recordChildren collects the PIDs of the fan-out child processes a test
// starts.
func recordChildren(t testing.TB) func() []int {
	var mu sync.Mutex
	var pids []int
	testHookChildStarted = func(pid int) {
		mu.Lock()
		pids = append(pids, pid)
		mu.Unlock()
	}
	t.Cleanup(func() { testHookChildStarted = nil })
	return func() []int {
		mu.Lock()
		defer mu.Unlock()
		return append([]int(nil), pids...)
	}
}

// TestRunFanoutShort runs the whole benchmark small, on oneport's mux only,
// and checks that its figures are consistent with one another and with the
// counters they come from. Whether a step passes depends on the machine's
// load, so it is not asserted.
func TestRunFanoutShort(t *testing.T) {
	pids := recordChildren(t)
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Second)
	defer cancel()
	const clients = 2
	cfg := FanoutConfig{
		Muxes:        []string{MuxOneport},
		Steps:        []int{5, 10},
		StepDuration: 2 * time.Second,
		Settle:       300 * time.Millisecond,
		Grace:        500 * time.Millisecond,
		Clients:      clients,
		JoinParallel: 5,
		// Every step is measured: this checks accounting, not capacity.
		MaxLoss:         1,
		MaxLatencySlope: math.MaxFloat64,
	}
	rep, err := RunFanout(ctx, cfg)
	if err != nil {
		t.Fatalf("RunFanout: %v", err)
	}
	// A server, a publisher and the subscriber processes; all reaped.
	if got := len(pids()); got != 2+clients {
		t.Errorf("started %d child processes, want %d", got, 2+clients)
	}
	assertReaped(t, pids())

	if len(rep.Servers) != 1 || rep.Servers[0].Mux != MuxOneport {
		t.Fatalf("servers %+v, want one on %s", rep.Servers, MuxOneport)
	}
	sr := rep.Servers[0]
	if sr.Error != "" {
		t.Fatalf("server error: %s", sr.Error)
	}
	if len(sr.Steps) != 2 {
		t.Fatalf("%d steps, want 2", len(sr.Steps))
	}
	for i, st := range sr.Steps {
		checkStep(t, cfg.Steps[i], st)
	}
	if sr.MaxSubscribers != 10 {
		t.Errorf("MaxSubscribers %d, want 10 (loss and slope limits are off)", sr.MaxSubscribers)
	}

	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"oneport bench fanout", "pkts/s/core", "largest N 10"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, text.String())
		}
	}
	t.Logf("\n%s", text.String())
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back FanoutReport
	if err := json.Unmarshal(b, &back); err != nil || len(back.Servers) != 1 || len(back.Servers[0].Steps) != 2 {
		t.Errorf("JSON round trip: %v %+v", err, back.Servers)
	}
}

func checkStep(t *testing.T, n int, st FanoutStep) {
	t.Helper()
	if st.Target != n || st.Subscribers != n || st.JoinFailed != 0 {
		t.Errorf("N=%d: %d of %d subscribers joined, %d failed: %v", n, st.Subscribers, st.Target, st.JoinFailed, st.JoinErrors)
	}
	if st.SentVideo == 0 || st.SentAudio == 0 {
		t.Errorf("N=%d: publisher sent %d video, %d audio packets in the window", n, st.SentVideo, st.SentAudio)
	}
	// Every subscriber received packets; none received more of a kind than
	// was sent; loss is what the counters say.
	if st.Starved != 0 {
		t.Errorf("N=%d: %d subscribers received nothing", n, st.Starved)
	}
	if st.Excess != 0 || st.Duplicates != 0 || st.Malformed != 0 {
		t.Errorf("N=%d: excess %d, duplicates %d, malformed %d", n, st.Excess, st.Duplicates, st.Malformed)
	}
	if st.Expected != (st.SentVideo+st.SentAudio)*uint64(n) {
		t.Errorf("N=%d: expected %d, want (%d+%d)*%d", n, st.Expected, st.SentVideo, st.SentAudio, n)
	}
	if st.Received > st.Expected || st.Received == 0 {
		t.Errorf("N=%d: received %d of %d", n, st.Received, st.Expected)
	}
	if st.Lost != int64(st.Expected)-int64(st.Received) || math.Abs(st.LossRatio-float64(st.Lost)/float64(st.Expected)) > 1e-12 {
		t.Errorf("N=%d: lost %d (%.4f) from %d expected, %d received", n, st.Lost, st.LossRatio, st.Expected, st.Received)
	}
	if st.WorstLossRatio < st.LossRatio || st.WorstLossRatio >= 1 {
		t.Errorf("N=%d: worst subscriber loss %.4f, overall %.4f", n, st.WorstLossRatio, st.LossRatio)
	}
	if want := float64(st.Received) / st.Seconds; math.Abs(st.ForwardedPPS-want) > 1e-6 {
		t.Errorf("N=%d: forwarded %.1f pkts/s, want %.1f", n, st.ForwardedPPS, want)
	}
	// The server's own counters and CPU over its window.
	if st.ServerForwarded == 0 || st.ServerCPUSeconds <= 0 || st.ServerSeconds <= 0 {
		t.Errorf("N=%d: server forwarded %d with %.3fs CPU in %.3fs", n, st.ServerForwarded, st.ServerCPUSeconds, st.ServerSeconds)
	} else if got := st.ServerCPUSeconds * 1e6 / float64(st.ServerForwarded); math.Abs(got-st.ServerUsPerPacket) > 0.01*got+0.01 {
		t.Errorf("N=%d: %.2f us per packet, counters say %.2f", n, st.ServerUsPerPacket, got)
	}
	if st.ServerDrops != 0 || st.ServerWriteErrors != 0 {
		t.Errorf("N=%d: server dropped %d, write errors %d", n, st.ServerDrops, st.ServerWriteErrors)
	}
	if st.ClientCPUCores <= 0 || st.PublisherCPUCores <= 0 {
		t.Errorf("N=%d: client CPU %.3f cores, publisher %.3f", n, st.ClientCPUCores, st.PublisherCPUCores)
	}
	if st.LatencyP50Ms <= 0 || st.LatencyP99Ms < st.LatencyP50Ms || st.LatencyMaxMs < st.LatencyP99Ms*0.875 {
		t.Errorf("N=%d: latency p50 %.3f p99 %.3f max %.3f ms", n, st.LatencyP50Ms, st.LatencyP99Ms, st.LatencyMaxMs)
	}
	if !st.Pass || st.Fail != "" {
		t.Errorf("N=%d: failed with the limits off: %s", n, st.Fail)
	}
}

// judge computes loss from the counters in the reports, per subscriber and
// in total, and fails a step for each criterion.
func TestFanoutJudge(t *testing.T) {
	cfg, err := FanoutConfig{StepDuration: 2 * time.Second}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1000, 0)
	srv := fanoutServerReport{
		Start: serverSample{At: at, CPU: time.Second, SFU: sfu.Stats{ForwardedPackets: 100}},
		End:   serverSample{At: at.Add(2 * time.Second), CPU: 2 * time.Second, SFU: sfu.Stats{ForwardedPackets: 2100, SubscriberDrops: 3}},
	}
	pub := clientReport{AtStart: at, AtEnd: at.Add(2 * time.Second), CPUEnd: 100 * time.Millisecond, Sent: [numKinds]uint64{400, 100}}
	slices := []sliceFigures{{10, 10_000}, {10, 10_000}, {10, 10_000}, {10, 10_000}}
	clients := []clientReport{
		{AtStart: at, AtEnd: at.Add(2 * time.Second), CPUStart: time.Second, CPUEnd: 2 * time.Second,
			Recv: windowFigures{PerSub: [][numKinds]uint64{{400, 100}, {390, 100}}, Slices: slices, Hist: []uint64{0, 0, 5}, MaxUs: 2}},
		{AtStart: at, AtEnd: at.Add(2 * time.Second), CPUEnd: time.Second,
			Recv: windowFigures{PerSub: [][numKinds]uint64{{400, 95}}, Slices: slices, Hist: []uint64{0, 0, 5}, MaxUs: 2}},
	}
	st := FanoutStep{Target: 3, Subscribers: 3}
	st.judge(cfg, srv, pub, clients)
	if st.Expected != 1500 || st.Received != 1485 || st.Lost != 15 || st.LossRatio != 0.01 {
		t.Errorf("expected %d received %d lost %d ratio %v; want 1500 1485 15 0.01", st.Expected, st.Received, st.Lost, st.LossRatio)
	}
	if math.Abs(st.WorstLossRatio-0.02) > 1e-12 || st.Starved != 0 || st.Excess != 0 {
		t.Errorf("worst %v starved %d excess %d", st.WorstLossRatio, st.Starved, st.Excess)
	}
	if st.ServerForwarded != 2000 || st.ServerCPUCores != 0.5 || st.ServerUsPerPacket != 500 || st.PPSPerCore != 2000 || st.ServerDrops != 3 {
		t.Errorf("server: forwarded %d cores %v us/pkt %v pps/core %v drops %d", st.ServerForwarded, st.ServerCPUCores, st.ServerUsPerPacket, st.PPSPerCore, st.ServerDrops)
	}
	if st.ClientCPUCores != 1 || st.PublisherCPUCores != 0.05 {
		t.Errorf("client cores %v publisher %v", st.ClientCPUCores, st.PublisherCPUCores)
	}
	if st.LatencySlope != 0 || st.LatencyP50Ms != 0.002 {
		t.Errorf("slope %v p50 %v", st.LatencySlope, st.LatencyP50Ms)
	}
	if st.Pass || st.Fail != "loss 1.00%" {
		t.Errorf("pass %v fail %q, want a fail on loss 1.00%%", st.Pass, st.Fail)
	}

	// Growing latency, a starved subscriber, one received twice.
	clients[0].Recv.Slices = []sliceFigures{{10, 10_000}, {10, 20_000}, {10, 30_000}, {10, 40_000}} // 1, 2, 3, 4 ms
	clients[1].Recv.Slices = clients[0].Recv.Slices
	clients[1].Recv.PerSub = [][numKinds]uint64{{0, 0}, {401, 100}}
	st = FanoutStep{Target: 4, Subscribers: 4}
	st.judge(cfg, srv, pub, clients)
	if st.Starved != 1 || st.Excess != 1 || st.WorstLossRatio != 1 {
		t.Errorf("starved %d excess %d worst %v", st.Starved, st.Excess, st.WorstLossRatio)
	}
	if math.Abs(st.LatencySlope-4) > 1e-9 { // 1 ms per 250 ms slice
		t.Errorf("slope %v ms/s, want 4", st.LatencySlope)
	}
	for _, want := range []string{"1 subscribers got nothing", "loss", "latency grows 4.0 ms/s"} {
		if !strings.Contains(st.Fail, want) {
			t.Errorf("fail %q lacks %q", st.Fail, want)
		}
	}
}

func TestLatencyBins(t *testing.T) {
	prev := -1
	for us := uint64(0); us < 1<<27; us = us*9/8 + 1 {
		i := latBin(us)
		if i < prev || i >= latBins {
			t.Fatalf("latBin(%d) = %d after %d", us, i, prev)
		}
		prev = i
		if lo := latBinLow(i); lo > us || (i+1 < latBins && latBinLow(i+1) <= us) {
			t.Fatalf("%d us in bin %d of [%d, %d)", us, i, lo, latBinLow(i+1))
		}
		if i >= 8 && i < latBins-1 && float64(latBinLow(i+1)-latBinLow(i)) > 0.125*float64(latBinLow(i))+1e-9 {
			t.Fatalf("bin %d wider than 12.5%%", i)
		}
	}
	if latBin(math.MaxUint64) != latBins-1 {
		t.Errorf("huge latency not in the last bin")
	}
	// 90 packets at 100 us, 10 at 10 ms.
	h := make([]uint64, latBins)
	h[latBin(100)] = 90
	h[latBin(10_000)] = 10
	for _, c := range []struct{ q, want float64 }{{0.5, 100}, {0.9, 100}, {0.91, 10_000}, {0.99, 10_000}} {
		if got := latQuantile(h, c.q); math.Abs(got-c.want) > 0.07*c.want {
			t.Errorf("q%.2f = %.0f us, want about %.0f", c.q, got, c.want)
		}
	}
	if latQuantile(nil, 0.5) != 0 {
		t.Errorf("quantile of nothing")
	}
}

func TestSlope(t *testing.T) {
	xs := []float64{0, 1, 2, 3}
	if s := slope(xs, []float64{1, 3, 5, 7}); s != 2 {
		t.Errorf("slope %v, want 2", s)
	}
	if s := slope(xs, []float64{5, 5, 5, 5}); s != 0 {
		t.Errorf("flat slope %v", s)
	}
	if s := slope([]float64{1}, []float64{1}); s != 0 {
		t.Errorf("one point: slope %v", s)
	}
}

func TestReadTrailer(t *testing.T) {
	payload := make([]byte, 100)
	putTrailer(payload, kindAudio, 42, 123456789)
	withExt := rtp.Header{Version: 2}
	if err := withExt.SetExtension(3, []byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	for _, h := range []rtp.Header{
		{Version: 2, SequenceNumber: 7},
		{Version: 2, CSRC: []uint32{1, 2}},
		withExt,
		{Version: 2, Padding: true, PaddingSize: 4},
	} {
		b, err := (&rtp.Packet{Header: h, Payload: payload}).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		kind, ctr, sent, ok := readTrailer(b)
		if !ok || kind != kindAudio || ctr != 42 || sent != 123456789 {
			t.Errorf("header %+v: %d %d %d %v", h, kind, ctr, sent, ok)
		}
	}
	for _, b := range [][]byte{nil, make([]byte, 20), append([]byte{0x80, 0}, make([]byte, 20)...)} {
		if _, _, _, ok := readTrailer(b); ok {
			t.Errorf("%x read as a trailer", b)
		}
	}
}

// The subscriber's per-packet work allocates nothing.
func TestRecvPathAllocs(t *testing.T) {
	payload := make([]byte, 1200)
	putTrailer(payload, kindVideo, 1, time.Now().UnixNano())
	b, err := (&rtp.Packet{Header: rtp.Header{Version: 2}, Payload: payload}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	w := newRecvWindow(time.Now().Add(-time.Second), time.Now().Add(time.Minute), 250*time.Millisecond, 4)
	allocs := testing.AllocsPerRun(1000, func() {
		kind, _, sent, ok := readTrailer(b)
		if ok {
			w.add(2, kind, sent, time.Now().UnixNano())
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per packet", allocs)
	}
	if f := w.figures(); f.PerSub[2][kindVideo] == 0 {
		t.Errorf("nothing counted: %+v", f.PerSub)
	}
}

func TestFanoutConfigInvalid(t *testing.T) {
	for _, c := range []FanoutConfig{
		{Muxes: []string{"nginx"}},
		{Muxes: []string{MuxPion, MuxPion}},
		{Steps: []int{10, 5}},
		{Steps: []int{2000}, MaxSubscribers: 1000},
		{MaxSubscribers: MaxFanoutSubscribers + 1},
		{StepDuration: time.Millisecond},
		{Clients: MaxFanoutClients + 1},
		{FPS: 300},
		{VideoBitrate: 100},
		{MaxLoss: 2},
		{Slice: time.Hour},
	} {
		if _, err := c.withDefaults(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: %v, want ErrInvalidConfig", c, err)
		}
	}
	c, err := FanoutConfig{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.videoPayload() != 1250 || c.audioPayload() != 80 || c.Steps[len(c.Steps)-1] != 1000 {
		t.Errorf("defaults: video %d B, audio %d B, steps %v", c.videoPayload(), c.audioPayload(), c.Steps)
	}
}

// FuzzReadTrailer: any bytes the server forwards are read without panic,
// and what is read as a trailer is the end of the payload pion sees.
func FuzzReadTrailer(f *testing.F) {
	payload := make([]byte, 40)
	putTrailer(payload, kindVideo, 9, 99)
	for _, h := range []rtp.Header{{Version: 2}, {Version: 2, Padding: true, PaddingSize: 3}, {Version: 2, CSRC: []uint32{5}}} {
		b, err := (&rtp.Packet{Header: h, Payload: payload}).Marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		kind, ctr, sent, ok := readTrailer(b)
		if !ok {
			return
		}
		var p rtp.Packet
		if err := p.Unmarshal(b); err != nil {
			return // pion is stricter about extensions and padding
		}
		if len(p.Payload) < trailerLen {
			t.Fatalf("trailer read from a %d-byte payload", len(p.Payload))
		}
		want := make([]byte, trailerLen)
		putTrailer(want, kind, ctr, sent)
		if !bytes.Equal(p.Payload[len(p.Payload)-trailerLen:], want) {
			t.Fatalf("trailer %x, payload ends %x", want, p.Payload[len(p.Payload)-trailerLen:])
		}
	})
}
