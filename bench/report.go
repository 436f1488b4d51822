package bench

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// MuxReport is what RunMux measured. Ratios compare receivers within the
// one run; absolute figures belong to the machine in Host.
type MuxReport struct {
	Started   time.Time        `json:"started"`
	Host      HostInfo         `json:"host"`
	Config    ReportConfig     `json:"config"`
	Receivers []ReceiverReport `json:"receivers"`
	Stalled   []StalledReport  `json:"stalled,omitempty"`
}

// HostInfo labels the absolute figures.
type HostInfo struct {
	GOOS       string `json:"goos"`
	GOARCH     string `json:"goarch"`
	CPUs       int    `json:"cpus"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	GoVersion  string `json:"go_version"`
}

// ReportConfig is the MuxConfig the run used, defaults applied.
type ReportConfig struct {
	Sessions       int     `json:"sessions"`
	Senders        int     `json:"senders"`
	Seconds        float64 `json:"duration_s"`
	WarmUpSeconds  float64 `json:"warm_up_s"`
	Sizes          []int   `json:"sizes"`
	Rate           int     `json:"rate,omitempty"`
	SenderNice     int     `json:"sender_nice"`
	SenderBatch    int     `json:"sender_batch"`
	Network        string  `json:"network"`
	SocketBuffer   int     `json:"socket_buffer"`
	RawSockets     int     `json:"raw_sockets"`
	RawBatch       int     `json:"raw_batch"`
	StalledPackets int     `json:"stalled_packets"`
	Hostile        bool    `json:"hostile"`
	HostileRatio   float64 `json:"hostile_ratio,omitempty"`
	HostileSockets int     `json:"hostile_sockets,omitempty"`
}

// ReceiverReport is one receiver's share of the run.
type ReceiverReport struct {
	Name             string         `json:"name"`
	SessionsBound    int            `json:"sessions_bound"`  // sessions whose STUN check was answered
	SessionsFailed   int            `json:"sessions_failed"` // sessions whose check never was; they send nothing
	HandshakeSeconds float64        `json:"handshake_s"`
	HeapWarmBytes    uint64         `json:"heap_warm_bytes"` // HeapInuse after the warm-up run, after GC
	HeapEndBytes     uint64         `json:"heap_end_bytes"`  // HeapInuse after the last run, after GC
	Runs             []RunReport    `json:"runs"`
	Hostile          *HostileReport `json:"hostile,omitempty"`
}

// RunReport is one measured run: one receiver, one packet size.
type RunReport struct {
	Size int `json:"size_bytes"`
	// Seconds is the window: from the start command to the last packet
	// delivered (the senders' backlog drained).
	Seconds float64 `json:"seconds"`
	// Sent is what the senders' sendmmsg calls accepted.
	Sent uint64 `json:"sent"`
	// OfferedPPS is Sent over the senders' own sending time.
	OfferedPPS float64 `json:"offered_pps"`
	// Delivered is what the session readers counted (raw: the socket
	// readers): RTP with the session's own SSRC.
	Delivered    uint64  `json:"delivered"`
	DeliveredPPS float64 `json:"delivered_pps"`
	Lost         int64   `json:"lost"` // Sent - Delivered
	LossRatio    float64 `json:"loss_ratio"`
	Misrouted    uint64  `json:"misrouted"` // RTP a session read that carried another session's SSRC
	// Stale is RTP of an earlier run that the readers got during this one
	// (counted as lost in its own run).
	Stale uint64 `json:"stale"`
	// KernelDrops is how many datagrams the kernel discarded because the
	// receiver's socket buffers were full (/proc/net/udp; -1 where unknown).
	KernelDrops int64 `json:"kernel_drops"`
	// CPUSeconds is the receiving process's user+system CPU over the window
	// (getrusage RUSAGE_SELF; the senders are other processes).
	CPUSeconds        float64           `json:"cpu_s"`
	CPUCores          float64           `json:"cpu_cores"`         // CPUSeconds per second of window
	CPUPerMillion     float64           `json:"cpu_s_per_million"` // CPU seconds per million delivered
	CPUNsPerPacket    float64           `json:"cpu_ns_per_packet"`
	HeapPeakBytes     uint64            `json:"heap_peak_bytes"` // highest HeapInuse sampled (every 100ms)
	PPSvsRaw          float64           `json:"pps_vs_raw,omitempty"`
	CPUvsRaw          float64           `json:"cpu_vs_raw,omitempty"` // CPU per delivered packet, over raw's
	MuxDrops          map[string]uint64 `json:"mux_drops,omitempty"`
	SenderWriteErrors uint64            `json:"sender_write_errors,omitempty"`
	ReadErrors        uint64            `json:"read_errors,omitempty"`
}

// HostileReport is the hostile run: valid flows with hostile traffic mixed
// in, and where the hostile packets went.
type HostileReport struct {
	Ratio          float64 `json:"ratio"`
	Size           int     `json:"size_bytes"`
	Seconds        float64 `json:"seconds"`
	ValidSent      uint64  `json:"valid_sent"`
	ValidDelivered uint64  `json:"valid_delivered"`
	ValidLossRatio float64 `json:"valid_loss_ratio"`
	DeliveredPPS   float64 `json:"delivered_pps"`
	CPUNsPerPacket float64 `json:"cpu_ns_per_packet"` // per valid packet delivered
	// HostileSent counts the hostile packets sent, by kind.
	HostileSent HostileCounts `json:"hostile_sent"`
	// Reached counts what reached the session readers besides their valid
	// RTP (raw: the socket readers, which see everything).
	Reached HostileReached `json:"reached_sessions"`
	// MuxDrops is what the mux dropped, by reason (oneport only).
	MuxDrops map[string]uint64 `json:"mux_drops,omitempty"`
	// KernelDrops is what the kernel dropped, valid and hostile alike, on
	// full socket buffers (-1 where unknown).
	KernelDrops int64 `json:"kernel_drops"`
}

// HostileReached counts what the readers saw that was not their own RTP.
type HostileReached struct {
	STUNRejected uint64 `json:"stun_rejected"` // STUN that failed the session's checks (spoofed, or unknown ufrag at raw)
	SpoofedRTP   uint64 `json:"spoofed_rtp"`   // RTP from the spoofers' addresses
	Other        uint64 `json:"other"`         // neither RTP nor STUN (junk)
	Misrouted    uint64 `json:"misrouted"`     // RTP of another session
	STUNAnswered uint64 `json:"stun_answered"` // valid checks answered (should be 0: none are sent)
}

// StalledReport is the heap a session costs whose reader never reads.
type StalledReport struct {
	Receiver        string            `json:"receiver"`
	Packets         int               `json:"packets"`    // sent to the stalled session
	Dispatched      uint64            `json:"dispatched"` // read from the socket by the mux (queued or dropped)
	PacketSize      int               `json:"packet_size"`
	HeapBeforeBytes uint64            `json:"heap_before_bytes"`
	HeapAfterBytes  uint64            `json:"heap_after_bytes"`
	HeapGrowthBytes int64             `json:"heap_growth_bytes"`
	MuxDrops        map[string]uint64 `json:"mux_drops,omitempty"`
	Error           string            `json:"error,omitempty"`
}

// WriteText writes the report as aligned tables.
func (r MuxReport) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	c := r.Config
	ew.printf("oneport bench mux: %d sessions, %d sender processes (sendmmsg batch %d, nice %d), %gs per run, %s; %s/%s, %d CPUs, GOMAXPROCS %d, %s\n",
		c.Sessions, c.Senders, c.SenderBatch, c.SenderNice, c.Seconds, c.Network, r.Host.GOOS, r.Host.GOARCH, r.Host.CPUs, r.Host.GOMAXPROCS, r.Host.GoVersion)
	if c.Rate > 0 {
		ew.printf("target rate %d packets/s\n", c.Rate)
	}
	ew.printf("started %s\n\n", r.Started.Format(time.RFC3339))

	tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "receiver\tsize\toffered pkts/s\tsent\tdelivered\tloss\tkernel drops\tpkts/s\tx raw\tCPU cores\tCPU s/Mpkt\tx raw\theap peak\tmisrouted\tstale\t")
	for _, size := range c.Sizes {
		for _, rr := range r.Receivers {
			for _, run := range rr.Runs {
				if run.Size != size {
					continue
				}
				fmt.Fprintf(tw, "%s\t%d\t%.0f\t%d\t%d\t%.2f%%\t%s\t%.0f\t%s\t%.2f\t%.3f\t%s\t%s\t%d\t%d\t\n",
					rr.Name, run.Size, run.OfferedPPS, run.Sent, run.Delivered, 100*run.LossRatio, count(run.KernelDrops), run.DeliveredPPS, ratio(run.PPSvsRaw),
					run.CPUCores, run.CPUPerMillion, ratio(run.CPUvsRaw), mib(run.HeapPeakBytes), run.Misrouted, run.Stale)
			}
		}
	}
	_ = tw.Flush()

	ew.printf("\n")
	tw = tabwriter.NewWriter(ew, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "receiver\tsessions bound\tfailed\thandshake\tlive heap after warm-up\tat end\t")
	for _, rr := range r.Receivers {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.2fs\t%s\t%s\t\n", rr.Name, rr.SessionsBound, rr.SessionsFailed, rr.HandshakeSeconds, mib(rr.HeapWarmBytes), mib(rr.HeapEndBytes))
	}
	_ = tw.Flush()

	for _, rr := range r.Receivers {
		for _, run := range rr.Runs {
			if len(run.MuxDrops) > 0 {
				ew.printf("%s %d B drops: %s\n", rr.Name, run.Size, formatCounts(run.MuxDrops))
			}
		}
	}

	if c.Hostile {
		ew.printf("\nhostile run: %.0f%% of packets hostile, %d hostile sockets\n", 100*c.HostileRatio, c.HostileSockets)
		tw = tabwriter.NewWriter(ew, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "receiver\tvalid sent\tdelivered\tloss\tkernel drops\tpkts/s\tns/pkt\thostile sent\tunknown ufrag\tjunk\tspoofed STUN\tspoofed RTP\t| reached: STUN rejected\tspoofed RTP\tjunk\tmisrouted\t")
		for _, rr := range r.Receivers {
			h := rr.Hostile
			if h == nil {
				continue
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%.2f%%\t%s\t%.0f\t%.0f\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n",
				rr.Name, h.ValidSent, h.ValidDelivered, 100*h.ValidLossRatio, count(h.KernelDrops), h.DeliveredPPS, h.CPUNsPerPacket,
				h.HostileSent.Total(), h.HostileSent.UnknownUfrag, h.HostileSent.Junk, h.HostileSent.SpoofedSTUN, h.HostileSent.SpoofedRTP,
				h.Reached.STUNRejected, h.Reached.SpoofedRTP, h.Reached.Other, h.Reached.Misrouted)
		}
		_ = tw.Flush()
		for _, rr := range r.Receivers {
			if rr.Hostile != nil && len(rr.Hostile.MuxDrops) > 0 {
				ew.printf("%s hostile-run drops: %s\n", rr.Name, formatCounts(rr.Hostile.MuxDrops))
			}
		}
	}

	if len(r.Stalled) > 0 {
		ew.printf("\nstalled session: its reader never reads\n")
		tw = tabwriter.NewWriter(ew, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "receiver\tpackets\tsize\theap before\theap after\tgrowth\tdrops\t")
		for _, s := range r.Stalled {
			if s.Error != "" {
				fmt.Fprintf(tw, "%s\t%d\t%d\terror: %s\t\t\t\t\n", s.Receiver, s.Packets, s.PacketSize, s.Error)
				continue
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%+.1f MiB\t%s\t\n", s.Receiver, s.Packets, s.PacketSize,
				mib(s.HeapBeforeBytes), mib(s.HeapAfterBytes), float64(s.HeapGrowthBytes)/(1<<20), formatCounts(s.MuxDrops))
		}
		_ = tw.Flush()
	}
	return ew.err
}

func ratio(x float64) string {
	if x == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", x)
}

func count(n int64) string {
	if n < 0 {
		return "?"
	}
	return fmt.Sprint(n)
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func formatCounts(m map[string]uint64) string {
	if len(m) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

// errWriter keeps the first write error so WriteText can return it.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}

func (e *errWriter) printf(format string, a ...any) { fmt.Fprintf(e, format, a...) }
