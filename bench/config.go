package bench

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"time"

	"github.com/rs/zerolog"

	"github.com/oneport/oneport/mux"
)

// Receiver names, in the order RunMux runs them by default.
const (
	ReceiverRaw     = "raw"     // UDP sockets read in batches, no demultiplexing: the ceiling
	ReceiverPion    = "pion"    // pion's ice.NewUDPMuxDefault
	ReceiverOneport = "oneport" // oneport's mux
)

// AllReceivers lists every receiver RunMux knows, in its default order.
var AllReceivers = []string{ReceiverRaw, ReceiverPion, ReceiverOneport}

// Bounds on MuxConfig, so a run always ends and stays within the machine's
// file descriptors.
const (
	MaxSessions       = 10_000
	MaxSenders        = 16
	MaxDuration       = 10 * time.Minute
	MaxSenderBatch    = 64
	MaxHostileSockets = 1024
	MinPacketSize     = 12 // an RTP header
	MaxPacketSize     = 1400
	MaxStalledPackets = 1_000_000
)

// MuxConfig configures RunMux. The zero MuxConfig is valid: every field
// documents its zero-value default.
type MuxConfig struct {
	// Sessions is how many sessions each receiver serves, one client socket
	// each. Zero means 1000; at most MaxSessions.
	Sessions int

	// Senders is how many sender processes share the client sockets. Zero
	// means 2; at most MaxSenders. One sender alone cannot saturate a
	// receiver on a small machine.
	Senders int

	// Duration is how long each measured run sends. Zero means 5s; at most
	// MaxDuration.
	Duration time.Duration

	// WarmUp is an unmeasured run before each receiver's measured runs.
	// Zero means 500ms; negative means none.
	WarmUp time.Duration

	// Sizes are the UDP payload sizes in bytes, one measured run each, RTP
	// header included. Nil means {100, 1200}; each in
	// MinPacketSize..MaxPacketSize.
	Sizes []int

	// Rate is the total packets per second all senders aim for together.
	// Zero means as fast as they can.
	Rate int

	// SenderNice is the nice value of the sender processes (Linux), 0..19.
	// Zero means 0: senders and receiver compete for the CPUs as equals,
	// the receiver falls behind and drops (saturated), and it reads large
	// batches. A positive value gives the receiver the CPU whenever it
	// wants it: it then rarely drops but wakes per packet, so its CPU per
	// packet rises; a small machine cannot saturate a receiver that way.
	SenderNice int

	// SenderBatch is how many packets one sendmmsg call sends, all from one
	// client socket. Zero means 8; at most MaxSenderBatch. Bigger batches
	// make the senders cheaper but the traffic burstier per source.
	SenderBatch int

	// Network is "udp4" (traffic to 127.0.0.1) or "udp6" (to ::1). Empty
	// means "udp4".
	Network string

	// Receivers names the receivers to run, in order (see AllReceivers).
	// Nil means all of them.
	Receivers []string

	// SocketBuffer is the SO_RCVBUF/SO_SNDBUF asked for each receiving
	// socket of every receiver, so they all get the same kernel buffer.
	// Zero means 8 MiB, the mux's own default.
	SocketBuffer int

	// RawSockets is how many SO_REUSEPORT sockets the raw receiver reads.
	// Zero means Mux.Sockets, or one per CPU (at most 16) as the mux does
	// by default.
	RawSockets int

	// RawBatch is how many datagrams one recvmmsg call of the raw receiver
	// reads. Zero means Mux.BatchSize, or 32 as the mux does by default.
	RawBatch int

	// StalledPackets is how many 100-byte packets are sent to a session
	// whose reader never reads, to measure the heap that costs pion's mux
	// and oneport's. Zero means 20,000; negative skips the measurement.
	StalledPackets int

	// HandshakeTimeout bounds the STUN exchange of all sessions with one
	// receiver. Zero means 10s.
	HandshakeTimeout time.Duration

	// Hostile adds one more run per receiver in which the senders mix
	// hostile traffic into the valid flows: STUN naming unknown ufrags,
	// junk bytes, and STUN (with a wrong MESSAGE-INTEGRITY) plus RTP
	// naming bound ufrags from addresses no session answered.
	Hostile bool

	// HostileRatio is the share of hostile packets among all packets sent
	// in the hostile run. Zero means 0.25; in (0, 0.95].
	HostileRatio float64

	// HostileSockets is how many client sockets, over all senders, send the
	// hostile traffic. Zero means 96; at most MaxHostileSockets.
	HostileSockets int

	// Mux configures oneport's mux; its zero value is valid (see
	// mux.Config). A zero Mux.SocketBuffer takes SocketBuffer.
	Mux mux.Config

	// Logger receives progress events, never per-packet ones. The zero
	// Logger discards.
	Logger zerolog.Logger
}

// ErrInvalidConfig is wrapped by every MuxConfig validation error.
var ErrInvalidConfig = errors.New("bench: invalid config")

// withDefaults returns c with every zero field set to its default, or an
// error wrapping ErrInvalidConfig.
func (c MuxConfig) withDefaults() (MuxConfig, error) {
	if c.Sessions == 0 {
		c.Sessions = 1000
	}
	if c.Senders == 0 {
		c.Senders = 2
	}
	if c.Duration == 0 {
		c.Duration = 5 * time.Second
	}
	if c.WarmUp == 0 {
		c.WarmUp = 500 * time.Millisecond
	}
	if c.Sizes == nil {
		c.Sizes = []int{100, 1200}
	} else {
		c.Sizes = slices.Clone(c.Sizes)
	}
	if c.SenderBatch == 0 {
		c.SenderBatch = 8
	}
	if c.Network == "" {
		c.Network = "udp4"
	}
	if c.Receivers == nil {
		c.Receivers = slices.Clone(AllReceivers)
	} else {
		c.Receivers = slices.Clone(c.Receivers)
	}
	if c.SocketBuffer == 0 {
		c.SocketBuffer = 8 << 20
	}
	if c.Mux.SocketBuffer == 0 {
		c.Mux.SocketBuffer = c.SocketBuffer
	}
	if c.RawSockets == 0 {
		c.RawSockets = c.Mux.Sockets
	}
	if c.RawSockets == 0 {
		c.RawSockets = min(runtime.NumCPU(), 16)
	}
	if c.RawBatch == 0 {
		c.RawBatch = c.Mux.BatchSize
	}
	if c.RawBatch == 0 {
		c.RawBatch = 32
	}
	if c.StalledPackets == 0 {
		c.StalledPackets = 20_000
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.HostileRatio == 0 {
		c.HostileRatio = 0.25
	}
	if c.HostileSockets == 0 {
		c.HostileSockets = 96
	}
	switch {
	case c.Sessions < 1 || c.Sessions > MaxSessions:
		return c, fmt.Errorf("%w: Sessions %d not in 1..%d", ErrInvalidConfig, c.Sessions, MaxSessions)
	case c.Senders < 1 || c.Senders > MaxSenders:
		return c, fmt.Errorf("%w: Senders %d not in 1..%d", ErrInvalidConfig, c.Senders, MaxSenders)
	case c.Senders > c.Sessions:
		return c, fmt.Errorf("%w: Senders %d > Sessions %d", ErrInvalidConfig, c.Senders, c.Sessions)
	case c.Duration < 10*time.Millisecond || c.Duration > MaxDuration:
		return c, fmt.Errorf("%w: Duration %v not in 10ms..%v", ErrInvalidConfig, c.Duration, MaxDuration)
	case c.WarmUp > MaxDuration:
		return c, fmt.Errorf("%w: WarmUp %v > %v", ErrInvalidConfig, c.WarmUp, MaxDuration)
	case len(c.Sizes) == 0:
		return c, fmt.Errorf("%w: no Sizes", ErrInvalidConfig)
	case c.Rate < 0:
		return c, fmt.Errorf("%w: Rate %d < 0", ErrInvalidConfig, c.Rate)
	case c.SenderNice < 0 || c.SenderNice > 19:
		return c, fmt.Errorf("%w: SenderNice %d not in 0..19", ErrInvalidConfig, c.SenderNice)
	case c.SenderBatch < 1 || c.SenderBatch > MaxSenderBatch:
		return c, fmt.Errorf("%w: SenderBatch %d not in 1..%d", ErrInvalidConfig, c.SenderBatch, MaxSenderBatch)
	case c.Network != "udp4" && c.Network != "udp6":
		return c, fmt.Errorf("%w: Network %q is neither udp4 nor udp6", ErrInvalidConfig, c.Network)
	case len(c.Receivers) == 0:
		return c, fmt.Errorf("%w: no Receivers", ErrInvalidConfig)
	case c.SocketBuffer < 0:
		return c, fmt.Errorf("%w: SocketBuffer %d < 0", ErrInvalidConfig, c.SocketBuffer)
	case c.RawSockets < 1 || c.RawSockets > 256:
		return c, fmt.Errorf("%w: RawSockets %d not in 1..256", ErrInvalidConfig, c.RawSockets)
	case c.RawBatch < 1 || c.RawBatch > 1024:
		return c, fmt.Errorf("%w: RawBatch %d not in 1..1024", ErrInvalidConfig, c.RawBatch)
	case c.StalledPackets > MaxStalledPackets:
		return c, fmt.Errorf("%w: StalledPackets %d > %d", ErrInvalidConfig, c.StalledPackets, MaxStalledPackets)
	case c.HandshakeTimeout < 0 || c.HandshakeTimeout > MaxDuration:
		return c, fmt.Errorf("%w: HandshakeTimeout %v not in 0..%v", ErrInvalidConfig, c.HandshakeTimeout, MaxDuration)
	case c.HostileRatio <= 0 || c.HostileRatio > 0.95:
		return c, fmt.Errorf("%w: HostileRatio %v not in (0, 0.95]", ErrInvalidConfig, c.HostileRatio)
	case c.HostileSockets < 3 || c.HostileSockets > MaxHostileSockets:
		return c, fmt.Errorf("%w: HostileSockets %d not in 3..%d", ErrInvalidConfig, c.HostileSockets, MaxHostileSockets)
	}
	for _, s := range c.Sizes {
		if s < MinPacketSize || s > MaxPacketSize {
			return c, fmt.Errorf("%w: size %d not in %d..%d", ErrInvalidConfig, s, MinPacketSize, MaxPacketSize)
		}
	}
	seen := map[string]bool{}
	for _, r := range c.Receivers {
		if !slices.Contains(AllReceivers, r) {
			return c, fmt.Errorf("%w: unknown receiver %q (want one of %v)", ErrInvalidConfig, r, AllReceivers)
		}
		if seen[r] {
			return c, fmt.Errorf("%w: receiver %q named twice", ErrInvalidConfig, r)
		}
		seen[r] = true
	}
	return c, nil
}
