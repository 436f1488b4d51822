package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// FanoutReport is what RunFanout measured. Ratios compare the servers
// within the one run; absolute figures belong to the machine in Host, whose
// load average before and after the run is recorded (other work on the
// machine takes CPU from every party).
type FanoutReport struct {
	Started      time.Time            `json:"started"`
	Host         HostInfo             `json:"host"`
	LoadAvgStart []float64            `json:"load_avg_start,omitempty"` // 1, 5, 15 min
	LoadAvgEnd   []float64            `json:"load_avg_end,omitempty"`
	Config       FanoutReportConfig   `json:"config"`
	Servers      []FanoutServerReport `json:"servers"`
	Comparison   *FanoutComparison    `json:"comparison,omitempty"`
}

// FanoutReportConfig is the FanoutConfig the run used, defaults applied.
type FanoutReportConfig struct {
	Muxes           []string `json:"muxes"`
	Steps           []int    `json:"steps"`
	StepSeconds     float64  `json:"step_s"`
	SettleSeconds   float64  `json:"settle_s"`
	GraceSeconds    float64  `json:"grace_s"`
	SliceSeconds    float64  `json:"slice_s"`
	Clients         int      `json:"clients"`
	JoinParallel    int      `json:"join_parallel"`
	VideoBitrate    int      `json:"video_bitrate"`
	VideoPPS        int      `json:"video_pps"`
	VideoPayload    int      `json:"video_payload_bytes"`
	FPS             int      `json:"fps"`
	AudioPPS        int      `json:"audio_pps"`
	AudioPayload    int      `json:"audio_payload_bytes"`
	MaxLoss         float64  `json:"max_loss"`
	MaxLatencySlope float64  `json:"max_latency_slope_ms_per_s"`
	MuxSockets      int      `json:"mux_sockets,omitempty"`
}

func fanoutReportConfig(c FanoutConfig) FanoutReportConfig {
	return FanoutReportConfig{
		Muxes: c.Muxes, Steps: c.Steps, StepSeconds: c.StepDuration.Seconds(), SettleSeconds: max(c.Settle, 0).Seconds(),
		GraceSeconds: c.Grace.Seconds(), SliceSeconds: c.Slice.Seconds(), Clients: c.Clients, JoinParallel: c.JoinParallel,
		VideoBitrate: c.VideoBitrate, VideoPPS: c.VideoPPS, VideoPayload: c.videoPayload(), FPS: c.FPS,
		AudioPPS: c.AudioPPS, AudioPayload: c.audioPayload(), MaxLoss: c.MaxLoss, MaxLatencySlope: c.MaxLatencySlope, MuxSockets: c.MuxSockets,
	}
}

// FanoutServerReport is one server's steps.
type FanoutServerReport struct {
	Mux       string `json:"mux"`
	ServerPID int    `json:"server_pid"`
	// MaxSubscribers is the largest N of a passing step (0: none passed).
	MaxSubscribers int          `json:"max_subscribers"`
	Steps          []FanoutStep `json:"steps"`
	Error          string       `json:"error,omitempty"`
}

// Best is the passing step with the most subscribers, if any.
func (s FanoutServerReport) Best() (FanoutStep, bool) {
	for i := len(s.Steps) - 1; i >= 0; i-- {
		if s.Steps[i].Pass {
			return s.Steps[i], true
		}
	}
	return FanoutStep{}, false
}

// FanoutStep is one step: N subscribers, one measured window.
type FanoutStep struct {
	Target      int      `json:"target"`      // subscribers asked for
	Subscribers int      `json:"subscribers"` // subscribers joined and measured
	JoinFailed  int      `json:"join_failed"`
	JoinErrors  []string `json:"join_errors,omitempty"` // the first few
	JoinSeconds float64  `json:"join_s"`                // joining this step's new subscribers
	Seconds     float64  `json:"seconds"`               // the window, of send time

	// What the publisher sent within the window, and what the subscribers
	// received of it: Expected is sent × subscribers, Lost is Expected -
	// Received.
	SentVideo uint64  `json:"sent_video"`
	SentAudio uint64  `json:"sent_audio"`
	Expected  uint64  `json:"expected"`
	Received  uint64  `json:"received"`
	Lost      int64   `json:"lost"`
	LossRatio float64 `json:"loss_ratio"`
	// WorstLossRatio is the loss of the subscriber that lost most;
	// Starved counts subscribers that received nothing of the window.
	WorstLossRatio float64 `json:"worst_loss_ratio"`
	Starved        int     `json:"starved"`
	// Excess counts packets a subscriber received beyond what was sent of
	// a kind within the window; Reordered counts packets whose counter was
	// below the highest before them, Duplicates those that repeated it,
	// Malformed those without a trailer (the last three over the clients'
	// lives so far). All should be 0.
	Excess     uint64 `json:"excess"`
	Reordered  uint64 `json:"reordered"`
	Duplicates uint64 `json:"duplicates"`
	Malformed  uint64 `json:"malformed"`

	// ForwardedPPS is Received over the window.
	ForwardedPPS float64 `json:"forwarded_pps"`

	// The server's own figures, sampled by the server at the window's
	// bounds: its forwarded-packet counter and user+system CPU.
	ServerSeconds      float64           `json:"server_s"`
	ServerForwarded    uint64            `json:"server_forwarded"`
	ServerForwardedPPS float64           `json:"server_forwarded_pps"`
	ServerCPUSeconds   float64           `json:"server_cpu_s"`
	ServerCPUCores     float64           `json:"server_cpu_cores"`
	ServerUsPerPacket  float64           `json:"server_us_per_packet"` // = ms of CPU per 1,000 forwarded packets
	PPSPerCore         float64           `json:"pps_per_core"`         // forwarded packets/s per core of server CPU
	ServerDrops        uint64            `json:"server_drops"`         // subscriber queues full
	ServerWriteErrors  uint64            `json:"server_write_errors"`
	MuxDrops           map[string]uint64 `json:"mux_drops,omitempty"`
	// MuxQueuedShare is the share of oneport's mux's sends that waited
	// behind another send and left in a sendmmsg batch.
	MuxQueuedShare    float64 `json:"mux_queued_share,omitempty"`
	ServerKernelDrops int64   `json:"server_kernel_drops"` // media port; -1: unknown
	Profile           string  `json:"profile,omitempty"`

	// The clients' cost: all subscriber processes together, and the
	// publisher's; the kernel's drops on the subscribers' sockets.
	ClientCPUCores    float64 `json:"client_cpu_cores"`
	PublisherCPUCores float64 `json:"publisher_cpu_cores"`
	ClientKernelDrops int64   `json:"client_kernel_drops"` // -1: unknown
	Keyframes         uint64  `json:"keyframes"`           // PLI/FIR the publisher got, so far

	// HostBusyCores is the whole machine's busy CPU over the window
	// (/proc/stat); OtherCores is the part of it neither the server nor
	// the clients used: other work on the machine, and kernel work charged
	// to no process. -1: unknown.
	HostBusyCores float64 `json:"host_busy_cores"`
	OtherCores    float64 `json:"other_cores"`

	// One-way latency from the publisher's send to a subscriber's read,
	// over every packet of the window, and the slope of the mean latency of
	// each send-time slice: ms of added lateness per s.
	LatencyP50Ms float64 `json:"latency_p50_ms"`
	LatencyP99Ms float64 `json:"latency_p99_ms"`
	LatencyMaxMs float64 `json:"latency_max_ms"`
	LatencySlope float64 `json:"latency_slope_ms_per_s"`

	Pass bool   `json:"pass"`
	Fail string `json:"fail,omitempty"` // why not
	// FirstFail is why a first window at this N failed, when a second one
	// was measured (these figures are the second's).
	FirstFail string `json:"first_fail,omitempty"`
}

// judge fills the step's figures from the window's reports and decides
// whether it passed.
func (st *FanoutStep) judge(cfg FanoutConfig, srv fanoutServerReport, pub clientReport, clients []clientReport) {
	st.Seconds = cfg.StepDuration.Seconds()
	st.SentVideo, st.SentAudio = pub.Sent[kindVideo], pub.Sent[kindAudio]
	st.Keyframes = pub.Keyframes
	sent := [numKinds]uint64{st.SentVideo, st.SentAudio}
	perSub := st.SentVideo + st.SentAudio

	var recv windowFigures
	st.ClientKernelDrops = 0
	for _, c := range clients {
		mergeFigures(&recv, c.Recv)
		st.Reordered += c.Reordered
		st.Duplicates += c.Duplicates
		st.Malformed += c.Malformed
		st.ClientCPUCores += cores(c.CPUEnd-c.CPUStart, c.AtEnd.Sub(c.AtStart))
		if c.KernelDrops < 0 || st.ClientKernelDrops < 0 {
			st.ClientKernelDrops = -1
		} else {
			st.ClientKernelDrops += c.KernelDrops
		}
	}
	st.PublisherCPUCores = cores(pub.CPUEnd-pub.CPUStart, pub.AtEnd.Sub(pub.AtStart))
	for _, got := range recv.PerSub {
		var n uint64
		for k := range numKinds {
			n += got[k]
			if got[k] > sent[k] {
				st.Excess += got[k] - sent[k]
			}
		}
		st.Received += n
		if n == 0 {
			st.Starved++
		}
		if perSub > 0 {
			st.WorstLossRatio = max(st.WorstLossRatio, 1-float64(n)/float64(perSub))
		}
	}
	st.Expected = perSub * uint64(len(recv.PerSub))
	st.Lost = int64(st.Expected) - int64(st.Received)
	if st.Expected > 0 {
		st.LossRatio = float64(st.Lost) / float64(st.Expected)
	}
	st.ForwardedPPS = float64(st.Received) / st.Seconds
	st.LatencyP50Ms = latQuantile(recv.Hist, 0.50) / 1e3
	st.LatencyP99Ms = latQuantile(recv.Hist, 0.99) / 1e3
	st.LatencyMaxMs = float64(recv.MaxUs) / 1e3
	st.LatencySlope = latencySlope(recv.Slices, cfg.Slice)

	s0, s1 := srv.Start, srv.End
	dt := s1.At.Sub(s0.At)
	cpu := s1.CPU - s0.CPU
	st.ServerSeconds = dt.Seconds()
	st.ServerForwarded = s1.SFU.ForwardedPackets - s0.SFU.ForwardedPackets
	st.ServerCPUSeconds = cpu.Seconds()
	st.ServerCPUCores = cores(cpu, dt)
	if dt > 0 {
		st.ServerForwardedPPS = float64(st.ServerForwarded) / dt.Seconds()
	}
	if st.ServerForwarded > 0 {
		st.ServerUsPerPacket = float64(cpu.Microseconds()) / float64(st.ServerForwarded)
	}
	if cpu > 0 {
		st.PPSPerCore = float64(st.ServerForwarded) / cpu.Seconds()
	}
	st.ServerDrops = s1.SFU.SubscriberDrops - s0.SFU.SubscriberDrops
	st.ServerWriteErrors = s1.SFU.WriteErrors - s0.SFU.WriteErrors
	st.MuxDrops = subCounts(s1.MuxDrops, s0.MuxDrops)
	if len(st.MuxDrops) == 0 {
		st.MuxDrops = nil
	}
	if out := s1.MuxOut - s0.MuxOut; out > 0 {
		st.MuxQueuedShare = float64(s1.MuxQueued-s0.MuxQueued) / float64(out)
	}
	st.ServerKernelDrops = -1
	if s0.KernelDrops >= 0 && s1.KernelDrops >= 0 {
		st.ServerKernelDrops = s1.KernelDrops - s0.KernelDrops
	}
	st.Profile = srv.Profile

	var fails []string
	switch {
	case perSub == 0:
		fails = append(fails, "publisher sent nothing")
	case len(recv.PerSub) != st.Subscribers:
		fails = append(fails, fmt.Sprintf("%d subscribers measured of %d", len(recv.PerSub), st.Subscribers))
	}
	if st.JoinFailed > 0 {
		fails = append(fails, fmt.Sprintf("%d joins failed", st.JoinFailed))
	}
	if st.Starved > 0 {
		fails = append(fails, fmt.Sprintf("%d subscribers got nothing", st.Starved))
	}
	if st.LossRatio >= cfg.MaxLoss {
		fails = append(fails, fmt.Sprintf("loss %.2f%%", 100*st.LossRatio))
	}
	if st.LatencySlope > cfg.MaxLatencySlope {
		fails = append(fails, fmt.Sprintf("latency grows %.1f ms/s", st.LatencySlope))
	}
	st.Fail = strings.Join(fails, "; ")
	st.Pass = len(fails) == 0
}

func cores(cpu, wall time.Duration) float64 {
	if wall <= 0 {
		return 0
	}
	return cpu.Seconds() / wall.Seconds()
}

// FanoutComparison sets one server against another (oneport's mux against
// pion's): at every N both measured, and at each one's largest passing N.
type FanoutComparison struct {
	Base  string `json:"base"`  // MuxPion
	Other string `json:"other"` // MuxOneport
	// SameN compares the servers step by step; a ratio over 1 favours Other.
	SameN []FanoutSameN `json:"same_n"`
	// MaxSubscribersRatio is Other's largest passing N over Base's.
	MaxSubscribersRatio float64 `json:"max_subscribers_ratio,omitempty"`
	// PPSPerCoreAtMaxRatio is Other's forwarded packets/s per server core
	// at its largest passing N over Base's at its own.
	PPSPerCoreAtMaxRatio float64 `json:"pps_per_core_at_max_ratio,omitempty"`
}

// FanoutSameN is one N both servers measured.
type FanoutSameN struct {
	Subscribers     int     `json:"subscribers"`
	BaseUsPerPacket float64 `json:"base_us_per_packet"`
	UsPerPacket     float64 `json:"us_per_packet"`
	PPSPerCoreRatio float64 `json:"pps_per_core_ratio"` // Other's over Base's
	BasePass        bool    `json:"base_pass"`
	Pass            bool    `json:"pass"`
}

// compare fills Comparison when both muxes were measured.
func (r *FanoutReport) compare() {
	var base, other *FanoutServerReport
	for i := range r.Servers {
		switch r.Servers[i].Mux {
		case MuxPion:
			base = &r.Servers[i]
		case MuxOneport:
			other = &r.Servers[i]
		}
	}
	if base == nil || other == nil {
		return
	}
	c := &FanoutComparison{Base: base.Mux, Other: other.Mux}
	for _, b := range base.Steps {
		for _, o := range other.Steps {
			if o.Target != b.Target || b.PPSPerCore == 0 {
				continue
			}
			c.SameN = append(c.SameN, FanoutSameN{Subscribers: o.Target, BaseUsPerPacket: b.ServerUsPerPacket, UsPerPacket: o.ServerUsPerPacket,
				PPSPerCoreRatio: o.PPSPerCore / b.PPSPerCore, BasePass: b.Pass, Pass: o.Pass})
		}
	}
	if base.MaxSubscribers > 0 {
		c.MaxSubscribersRatio = float64(other.MaxSubscribers) / float64(base.MaxSubscribers)
	}
	bb, okb := base.Best()
	ob, oko := other.Best()
	if okb && oko && bb.PPSPerCore > 0 {
		c.PPSPerCoreAtMaxRatio = ob.PPSPerCore / bb.PPSPerCore
	}
	r.Comparison = c
}

// WriteText writes the report as aligned tables.
func (r FanoutReport) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	c := r.Config
	ew.printf("oneport bench fanout: 1 publisher (VP8 %d pkts/s of %d B in %d fps, Opus %d pkts/s of %d B) to N subscribers in %d client processes; %gs windows, settle %gs, grace %gs\n",
		c.VideoPPS, c.VideoPayload, c.FPS, c.AudioPPS, c.AudioPayload, c.Clients, c.StepSeconds, c.SettleSeconds, c.GraceSeconds)
	ew.printf("pass: loss < %.2g%% and latency slope <= %g ms/s; %s/%s, %d CPUs, %s; load average %s at start, %s at end\n",
		100*c.MaxLoss, c.MaxLatencySlope, r.Host.GOOS, r.Host.GOARCH, r.Host.CPUs, r.Host.GoVersion, fmtLoad(r.LoadAvgStart), fmtLoad(r.LoadAvgEnd))
	ew.printf("started %s\n\n", r.Started.Format(time.RFC3339))

	tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mux\tN\tfwd pkts/s\tserver cores\tus/pkt\tpkts/s/core\tclient cores\tother cores\tloss\tp50 ms\tp99 ms\tslope ms/s\tdrops srv/mux/kern/cli\tjoin s\tresult\t")
	for _, s := range r.Servers {
		for _, st := range s.Steps {
			res := "ok"
			if !st.Pass {
				res = "FAIL: " + st.Fail
			}
			if st.FirstFail != "" {
				res += " (2nd window; 1st: " + st.FirstFail + ")"
			}
			fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.2f\t%.1f\t%.0f\t%.2f\t%s\t%.2f%%\t%.2f\t%.1f\t%+.2f\t%d/%d/%s/%s\t%.1f\t%s\t\n",
				s.Mux, st.Subscribers, st.ForwardedPPS, st.ServerCPUCores, st.ServerUsPerPacket, st.PPSPerCore, st.ClientCPUCores, fmtCores(st.OtherCores),
				100*st.LossRatio, st.LatencyP50Ms, st.LatencyP99Ms, st.LatencySlope,
				st.ServerDrops, sumCounts(st.MuxDrops), count(st.ServerKernelDrops), count(st.ClientKernelDrops), st.JoinSeconds, res)
		}
	}
	_ = tw.Flush()

	ew.printf("\n")
	for _, s := range r.Servers {
		if s.Error != "" {
			ew.printf("%s: error: %s\n", s.Mux, s.Error)
		}
		b, ok := s.Best()
		if !ok {
			ew.printf("%s: no step passed\n", s.Mux)
			continue
		}
		ew.printf("%s: largest N %d: %.0f forwarded pkts/s, server %.2f cores, %.1f us (%.1f ms per 1,000 forwarded packets), %.0f pkts/s per server core\n",
			s.Mux, b.Subscribers, b.ForwardedPPS, b.ServerCPUCores, b.ServerUsPerPacket, b.ServerUsPerPacket, b.PPSPerCore)
		if b.MuxQueuedShare > 0 {
			ew.printf("%s: at N=%d, %.0f%% of the mux's sends waited behind another and left in sendmmsg batches\n", s.Mux, b.Subscribers, 100*b.MuxQueuedShare)
		}
		for _, st := range s.Steps {
			if len(st.JoinErrors) > 0 {
				ew.printf("%s N=%d join errors: %s\n", s.Mux, st.Target, strings.Join(st.JoinErrors, "; "))
			}
			if st.Excess+st.Reordered+st.Duplicates+st.Malformed > 0 {
				ew.printf("%s N=%d: excess %d, reordered %d, duplicates %d, malformed %d (clients' totals so far)\n",
					s.Mux, st.Target, st.Excess, st.Reordered, st.Duplicates, st.Malformed)
			}
		}
	}
	if cmp := r.Comparison; cmp != nil {
		ew.printf("\n%s vs %s, forwarded pkts/s per server core:", cmp.Other, cmp.Base)
		for _, n := range cmp.SameN {
			ew.printf(" N=%d x%.2f", n.Subscribers, n.PPSPerCoreRatio)
		}
		ew.printf("\n")
		if cmp.PPSPerCoreAtMaxRatio > 0 {
			ew.printf("at each one's largest N: x%.2f pkts/s per core, x%.2f subscribers\n", cmp.PPSPerCoreAtMaxRatio, cmp.MaxSubscribersRatio)
		}
	}
	return ew.err
}

func fmtLoad(l []float64) string {
	if len(l) < 3 {
		return "unknown"
	}
	return fmt.Sprintf("%.2f %.2f %.2f", l[0], l[1], l[2])
}

func sumCounts(m map[string]uint64) (n uint64) {
	for _, v := range m {
		n += v
	}
	return n
}

func fmtCores(c float64) string {
	if c < 0 {
		return "?"
	}
	return fmt.Sprintf("%.2f", c)
}
