package bench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/rs/zerolog"

	"github.com/oneport/oneport/cluster"
	"github.com/oneport/oneport/mux"
)

// RunRelay measures the cluster relay's overhead: three nodes (muxes with
// relays, joined by memberlist) on 127.0.0.1, .2 and .3 in this process;
// every session lives on the first. The same sessions get the same
// STUN-then-RTP load, in one run, first sent straight to the owner, then to
// the second node, which relays every datagram to the owner in a frame.
// CPU is this process's, so it is the whole cluster's: what relaying costs
// on top of delivering. The program must call MaybeRunSender first thing
// (the senders are child processes).

// RelayConfig configures RunRelay. Every field documents its zero-value
// default.
type RelayConfig struct {
	// Sessions on the owner node. Zero means 500.
	Sessions int
	// Senders is how many sender processes each path gets. Zero means 2.
	Senders int
	// Duration of each measured run. Zero means 3s.
	Duration time.Duration
	// Size of the RTP packets in bytes. Zero means 200.
	Size int
	// Rate is the packets/s the senders aim for together; the same for
	// both paths, so CPU per packet compares at one load. Zero means
	// 50,000; negative means as fast as they can (saturation).
	Rate int
	// Key authenticates relay frames (HMAC-SHA256) when set, as
	// `--cluster-key` does. Nil means none.
	Key []byte
	// Logger receives progress events. The zero Logger discards.
	Logger zerolog.Logger
}

// RelayReport compares the two paths.
type RelayReport struct {
	Started  time.Time `json:"started"`
	Host     HostInfo  `json:"host"`
	CPUModel string    `json:"cpu_model,omitempty"`
	Sessions int       `json:"sessions"`
	Keyed    bool      `json:"keyed"`
	Direct   RunReport `json:"direct"`
	Relayed  RunReport `json:"relayed"`
	// Bound counts the sessions whose check, sent on each path, was
	// answered.
	DirectBound  int `json:"direct_bound"`
	RelayedBound int `json:"relayed_bound"`
	// RelayFrames is how many frames the relay carried in the relayed run
	// (both directions, all nodes).
	RelayFrames uint64 `json:"relay_frames"`
	// CPURatio is relayed CPU per delivered packet over direct's; PPSRatio
	// relayed delivered packets/s over direct's.
	CPURatio float64 `json:"cpu_ratio"`
	PPSRatio float64 `json:"pps_ratio"`
}

type relayNode struct {
	m    *mux.Mux
	node *cluster.Node
	id   cluster.Identity
}

// RunRelay runs the comparison (see above).
func RunRelay(ctx context.Context, cfg RelayConfig) (rep RelayReport, err error) {
	mc := MuxConfig{Sessions: cfg.Sessions, Senders: cfg.Senders, Duration: cfg.Duration, Sizes: []int{cfg.Size}, Rate: cfg.Rate, StalledPackets: -1}
	if mc.Sessions == 0 {
		mc.Sessions = 500
	}
	if mc.Sizes[0] == 0 {
		mc.Sizes[0] = 200
	}
	switch {
	case mc.Rate == 0:
		mc.Rate = 50_000
	case mc.Rate < 0:
		mc.Rate = 0
	}
	if mc, err = mc.withDefaults(); err != nil {
		return rep, err
	}
	log := cfg.Logger.With().Str("component", "bench").Logger()
	rep = RelayReport{Started: time.Now(), Host: hostInfo(), CPUModel: cpuModel(), Sessions: mc.Sessions, Keyed: cfg.Key != nil}

	gossipPort, err := freePort()
	if err != nil {
		return rep, err
	}
	var nodes []*relayNode
	defer func() {
		for i := len(nodes) - 1; i >= 0; i-- {
			_ = nodes[i].node.Close()
			_ = nodes[i].m.Close() // idempotent: the receiver closes the owner's too
		}
	}()
	for i := 1; i <= 3; i++ {
		ip := fmt.Sprintf("127.0.0.%d", i)
		n := &relayNode{id: cluster.NewIdentity()}
		var rk []byte
		if cfg.Key != nil {
			rk = cluster.RelayKey(cfg.Key)
		}
		if n.m, err = mux.Listen(ip+":0", mux.Config{Tag: n.id.Tag, Relay: ip + ":0", RelayKey: rk, Logger: log}); err != nil {
			return rep, err
		}
		var join []string
		if i > 1 {
			join = []string{fmt.Sprintf("127.0.0.1:%d", gossipPort)}
		}
		n.node, err = cluster.New(cluster.Config{Identity: n.id, NodeName: fmt.Sprintf("bench-relay-%d", i), Gossip: fmt.Sprintf("%s:%d", ip, gossipPort),
			Join: join, Key: cfg.Key, Relay: n.m, RelayPort: n.m.RelayAddr().(*net.UDPAddr).Port, Profile: "local", Logger: log})
		if err != nil {
			_ = n.m.Close()
			return rep, fmt.Errorf("bench: relay node %d: %w", i, err)
		}
		nodes = append(nodes, n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, n := range nodes {
		for n.m.Stats().Peers != 2 {
			if time.Now().After(deadline) {
				return rep, fmt.Errorf("bench: relay: node sees %d peers, want 2", n.m.Stats().Peers)
			}
			if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
				return rep, err
			}
		}
	}
	owner, ingress := nodes[0], nodes[1]

	specs := newSpecs(mc.Sessions)
	for i := range specs {
		if specs[i].ServerUfrag, err = mux.NewUfrag(mux.UfragPrefix(owner.id.Tag)); err != nil {
			return rep, err
		}
	}
	rcv, err := newMuxReceiver(owner.m, specs, false)
	if err != nil {
		return rep, err
	}
	defer func() { _ = rcv.close() }()
	rcv.drops = func() map[string]uint64 { return dropsOf(owner.m, ingress.m) }

	run := func(name string, target netip.AddrPort, source string) (RunReport, int, error) {
		procs, err := startSenders(mc, target, source, specs)
		defer func() { stopSenders(procs, err == nil) }()
		if err != nil {
			return RunReport{}, 0, err
		}
		bound := 0
		for _, p := range procs {
			ev, err := p.next(ctx, "ready", mc.HandshakeTimeout+senderStartSlack)
			if err != nil {
				return RunReport{}, 0, err
			}
			bound += ev.Bound
		}
		if bound == 0 {
			return RunReport{}, 0, fmt.Errorf("bench: relay %s: %w", name, ErrNoSessions)
		}
		if mc.WarmUp > 0 {
			if _, err := measure(ctx, mc, rcv, procs, mc.Sizes[0], mc.WarmUp, 0, log); err != nil {
				return RunReport{}, bound, err
			}
		}
		m, err := measure(ctx, mc, rcv, procs, mc.Sizes[0], mc.Duration, 0, log)
		if err != nil {
			return RunReport{}, bound, err
		}
		r := m.runReport(mc.Sizes[0])
		log.Info().Str("path", name).Float64("pps", r.DeliveredPPS).Float64("ns_per_pkt", r.CPUNsPerPacket).Msg("relay: run done")
		return r, bound, nil
	}
	if rep.Direct, rep.DirectBound, err = run("direct", owner.m.LocalAddr().(*net.UDPAddr).AddrPort(), ""); err != nil {
		return rep, err
	}
	frames0 := relayFrames(nodes)
	// The relayed run's clients come from another address: the owner still
	// holds the direct run's bindings (the same sessions, alive), and a
	// client port the kernel hands out again would reach the session bound
	// to it instead of the one its check names.
	if rep.Relayed, rep.RelayedBound, err = run("relayed", ingress.m.LocalAddr().(*net.UDPAddr).AddrPort(), relayedSource(mc.Network)); err != nil {
		return rep, err
	}
	rep.RelayFrames = relayFrames(nodes) - frames0
	if rep.Direct.CPUNsPerPacket > 0 {
		rep.CPURatio = rep.Relayed.CPUNsPerPacket / rep.Direct.CPUNsPerPacket
	}
	if rep.Direct.DeliveredPPS > 0 {
		rep.PPSRatio = rep.Relayed.DeliveredPPS / rep.Direct.DeliveredPPS
	}
	return rep, nil
}

func relayFrames(nodes []*relayNode) (n uint64) {
	for _, nd := range nodes {
		st := nd.m.Stats()
		n += st.RelayFramesIn
	}
	return n
}

// dropsOf sums the drop counters of the muxes by reason.
func dropsOf(ms ...*mux.Mux) map[string]uint64 {
	d := map[string]uint64{}
	for _, m := range ms {
		st := m.Stats()
		for i, n := range st.Drops {
			if n > 0 {
				d[mux.DropReason(i).String()] += n
			}
		}
	}
	return d
}

// freePort is a TCP and UDP port free on 127.0.0.1 a moment ago (the
// relay nodes bind it on their own addresses, .1 to .3).
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("bench: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// relayedSource is the relayed run's client address: another loopback
// address for IPv4; IPv6 has only ::1.
func relayedSource(network string) string {
	if network == "udp6" {
		return ""
	}
	return "127.0.0.9"
}
