package mux

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"time"

	"github.com/rs/zerolog"
)

// Config tunes a Mux. The zero Config is valid: every field documents its
// zero-value default.
type Config struct {
	// Sockets is how many SO_REUSEPORT sockets share the port, each with its
	// own reader goroutine. Zero means one per CPU (at most 16). Platforms
	// without SO_REUSEPORT load balancing always use one.
	Sockets int

	// BatchSize is how many datagrams one recvmmsg/sendmmsg call moves.
	// Zero means 32.
	BatchSize int

	// MaxPacketSize is the largest datagram accepted; larger ones are
	// dropped as DropTruncated. Zero means 1600, above any WebRTC packet on
	// a 1500-byte MTU path.
	MaxPacketSize int

	// QueueLen bounds each session's receive queue, in datagrams. Zero means
	// 512. A full queue drops (DropQueueFull); the reader never blocks.
	QueueLen int

	// UnboundQueueLen bounds how many datagrams that reached a session by
	// ufrag alone (from an address not bound to it) may wait in its queue.
	// Zero means 16.
	UnboundQueueLen int

	// UnboundRate bounds, per session, how many datagrams per second may
	// reach it by ufrag alone (bursts up to UnboundQueueLen): the queue bound
	// limits memory, this limits the CPU a flood of spoofed checks for a live
	// ufrag makes its ICE agent spend on integrity checks. A client's own
	// checks from a new address are a few tens per second. Zero means 200;
	// negative, no limit. Over it: DropUnboundRate.
	UnboundRate int

	// MaxSessions bounds the live sessions; GetConn fails with
	// ErrTooManySessions beyond it. Zero means 100,000.
	MaxSessions int

	// MaxAddrsPerSession bounds the addresses bound to one session; binding
	// another evicts the one idle longest. Zero means 8.
	MaxAddrsPerSession int

	// MaxFlows bounds the flow table, tombstones included. Zero means
	// 2 * MaxSessions * MaxAddrsPerSession, capped at 4,000,000.
	MaxFlows int

	// IdleTimeout unbinds an address after this long without a datagram in
	// either direction. Zero means 30s: ICE consent checks (RFC 7675) come
	// every 5s, and consent itself expires after 30s.
	IdleTimeout time.Duration

	// TombstoneTTL is how long a closed session's ufrag and addresses absorb
	// late datagrams silently. Zero means 10s.
	TombstoneTTL time.Duration

	// SweepInterval is how often idle flows and tombstones are swept. Zero
	// means min(IdleTimeout, TombstoneTTL)/4, at least 10ms and at most 1s.
	SweepInterval time.Duration

	// WriteQueueLen bounds each socket's send queue, used only while another
	// goroutine is inside a send on that socket; when it is full, writers
	// wait for the socket. Zero means 1024.
	WriteQueueLen int

	// SocketBuffer is the requested SO_RCVBUF and SO_SNDBUF in bytes (as
	// root the rmem_max/wmem_max caps are bypassed). Zero means 8 MiB.
	SocketBuffer int

	// Advertise lists the addresses GetListenAddresses reports, which ICE
	// agents turn into host candidates: the public address (a load
	// balancer's VIP) and port. Empty means the bound address, or every
	// global unicast interface address when bound to a wildcard address.
	Advertise []netip.AddrPort

	// AdvertisePort replaces the port of the addresses GetListenAddresses
	// reports when Advertise is empty (a load balancer that forwards another
	// port to this one). Zero means the bound port.
	AdvertisePort uint16

	// Tag is this node's owner tag (TagLen ice-chars). Sessions whose
	// ufrag starts with UfragPrefix(Tag) are this node's; a check for a
	// ufrag with another member's tag is relayed to it. Empty: a single
	// node, ufrags are not routed by tag.
	Tag string

	// Relay is the address of the relay socket on the internal network
	// ("10.0.0.5:7947"). Empty: no relay, SetPeers fails.
	Relay string

	// RelayKey authenticates relay frames (HMAC-SHA256, truncated to 16
	// bytes). Nil: frames are accepted from members' relay addresses
	// without authentication, so the internal network must be trusted.
	RelayKey []byte

	// WhoHasInterval is the least time between two ownership queries for
	// one unknown client address (after a load balancer moved a live flow
	// here). Zero means 200ms.
	WhoHasInterval time.Duration

	// WhoHasRate bounds ownership queries per second per reader. Zero
	// means 2000.
	WhoHasRate int

	// Probe answers STUN Binding requests that carry no USERNAME (load
	// balancer health probes). Nil means they are dropped as DropProbe.
	Probe ProbeHandler

	// Logger receives lifecycle events, never per-packet ones. The zero
	// Logger discards.
	Logger zerolog.Logger
}

// DefaultMaxSessions is Config.MaxSessions's default.
const DefaultMaxSessions = 100_000

// ProbeHandler answers health probes on the media port. HandleProbe runs on
// a reader goroutine: it must not block, and must not keep req.
type ProbeHandler interface {
	HandleProbe(req []byte, from netip.AddrPort, w ProbeWriter)
}

// ProbeWriter sends a datagram from the mux's port. An alias, so a handler
// declared in another package with the same method set satisfies
// ProbeHandler without importing this one.
type ProbeWriter = interface {
	WriteToAddrPort(b []byte, addr netip.AddrPort) (int, error)
}

// ErrInvalidConfig is wrapped by every configuration error.
var ErrInvalidConfig = errors.New("mux: invalid config")

// withDefaults returns c with every zero field set to its default, or an
// error wrapping ErrInvalidConfig.
func (c Config) withDefaults() (Config, error) {
	if c.Sockets == 0 {
		c.Sockets = min(runtime.NumCPU(), 16)
	}
	if c.BatchSize == 0 {
		c.BatchSize = 32
	}
	if c.MaxPacketSize == 0 {
		c.MaxPacketSize = 1600
	}
	if c.QueueLen == 0 {
		c.QueueLen = 512
	}
	if c.UnboundQueueLen == 0 {
		c.UnboundQueueLen = 16
	}
	if c.UnboundRate == 0 {
		c.UnboundRate = 200
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = DefaultMaxSessions
	}
	if c.MaxAddrsPerSession == 0 {
		c.MaxAddrsPerSession = 8
	}
	if c.MaxFlows == 0 {
		c.MaxFlows = min(2*c.MaxSessions*c.MaxAddrsPerSession, 4_000_000)
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 30 * time.Second
	}
	if c.TombstoneTTL == 0 {
		c.TombstoneTTL = 10 * time.Second
	}
	if c.SweepInterval == 0 {
		c.SweepInterval = min(c.IdleTimeout, c.TombstoneTTL) / 4
		c.SweepInterval = max(10*time.Millisecond, min(c.SweepInterval, time.Second))
	}
	if c.WriteQueueLen == 0 {
		c.WriteQueueLen = 1024
	}
	if c.SocketBuffer == 0 {
		c.SocketBuffer = 8 << 20
	}
	if c.WhoHasInterval == 0 {
		c.WhoHasInterval = 200 * time.Millisecond
	}
	if c.WhoHasRate == 0 {
		c.WhoHasRate = 2000
	}
	switch {
	case c.Sockets < 1 || c.Sockets > 256:
		return c, fmt.Errorf("%w: Sockets %d not in 1..256", ErrInvalidConfig, c.Sockets)
	case c.BatchSize < 1 || c.BatchSize > 1024:
		return c, fmt.Errorf("%w: BatchSize %d not in 1..1024", ErrInvalidConfig, c.BatchSize)
	case c.MaxPacketSize < 576 || c.MaxPacketSize > 65535:
		return c, fmt.Errorf("%w: MaxPacketSize %d not in 576..65535", ErrInvalidConfig, c.MaxPacketSize)
	case c.QueueLen < 1:
		return c, fmt.Errorf("%w: QueueLen %d < 1", ErrInvalidConfig, c.QueueLen)
	case c.UnboundQueueLen < 1 || c.UnboundQueueLen > c.QueueLen:
		return c, fmt.Errorf("%w: UnboundQueueLen %d not in 1..QueueLen", ErrInvalidConfig, c.UnboundQueueLen)
	case c.MaxSessions < 1:
		return c, fmt.Errorf("%w: MaxSessions %d < 1", ErrInvalidConfig, c.MaxSessions)
	case c.MaxAddrsPerSession < 1:
		return c, fmt.Errorf("%w: MaxAddrsPerSession %d < 1", ErrInvalidConfig, c.MaxAddrsPerSession)
	case c.MaxFlows < 1:
		return c, fmt.Errorf("%w: MaxFlows %d < 1", ErrInvalidConfig, c.MaxFlows)
	case c.IdleTimeout < 0 || c.TombstoneTTL < 0 || c.SweepInterval < 0:
		return c, fmt.Errorf("%w: negative duration", ErrInvalidConfig)
	case c.WriteQueueLen < 1:
		return c, fmt.Errorf("%w: WriteQueueLen %d < 1", ErrInvalidConfig, c.WriteQueueLen)
	case c.SocketBuffer < 0:
		return c, fmt.Errorf("%w: SocketBuffer %d < 0", ErrInvalidConfig, c.SocketBuffer)
	}
	if c.Tag != "" && (len(c.Tag) != TagLen || !IsIceChars(c.Tag)) {
		return c, fmt.Errorf("%w: Tag %q is not %d ice-chars", ErrInvalidConfig, c.Tag, TagLen)
	}
	if c.WhoHasInterval < 0 || c.WhoHasRate < 0 {
		return c, fmt.Errorf("%w: negative WhoHas limit", ErrInvalidConfig)
	}
	for _, a := range c.Advertise {
		if !a.IsValid() || a.Port() == 0 {
			return c, fmt.Errorf("%w: Advertise address %v needs an IP and a port", ErrInvalidConfig, a)
		}
	}
	return c, nil
}
