package sfu

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"runtime"
	"time"

	"github.com/pion/ice/v4"
	"github.com/rs/zerolog"

	"github.com/oneport/oneport/mux"
)

// Clock is the time source for room life (empty timeout) and timestamps shown
// in the API. Tests inject one to simulate days; media timing always uses the
// real monotonic clock.
type Clock interface {
	Now() time.Time
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// Config configures a Server. Each field's comment gives its zero-value
// default; applyDefaults fills them in and validates.
type Config struct {
	// UDPMux carries every PeerConnection's ICE, DTLS and SRTP. Required. Its
	// GetListenAddresses decides the advertised host candidates (public IP and
	// port). The Server does not close it.
	UDPMux ice.UDPMux

	// NewICECredentials returns the local ICE ufrag and pwd of a new
	// PeerConnection. Default: crypto/rand, ufrag 16 ice-chars (96 bits), pwd
	// 32 ice-chars. Both must be ice-chars (A-Za-z0-9+/), ufrag >= 4 and pwd
	// >= 22 characters (RFC 8839).
	NewICECredentials func() (ufrag, pwd string)

	// NewID returns a resource (participant) id, used in URLs. Default:
	// crypto/rand, 128 bits base64url (22 characters). Must be URL-path safe
	// and unique.
	NewID func() string

	// EmptyTimeout is how long a room lives with no participant and no event
	// watcher. Default 30s.
	EmptyTimeout time.Duration

	// SweepInterval is how often rooms are checked for EmptyTimeout and layer
	// bitrates are computed. Default 1s.
	SweepInterval time.Duration

	// Token, if set, is the bearer token required to publish, subscribe,
	// modify or delete a resource and to select layers. Default: empty, off.
	Token string

	// MaxBodyBytes bounds signaling request bodies (413 beyond). Default 64 KiB.
	MaxBodyBytes int64

	// MaxParticipants bounds participants in the whole server (503 beyond).
	// Default 10000.
	MaxParticipants int

	// MaxRooms bounds the rooms of the server: a request that would create
	// one more gets 503 with Retry-After. Default 10000.
	MaxRooms int

	// MaxRoomParticipants bounds the publishers and subscribers of one room
	// (joins in progress included): one more gets 403 "room full", which a
	// retry will not fix until someone leaves. Default 1000.
	MaxRoomParticipants int

	// MaxWatchers bounds event-stream watchers per room (503 beyond). Default 256.
	MaxWatchers int

	// MaxMediaSections bounds the m-lines of an offer (400 beyond). Default 16.
	MaxMediaSections int

	// MaxCandidatesPerMedia and MaxCandidates bound the ICE candidates of an
	// offer per m-line and in all, and those of one trickle fragment (400
	// beyond). Defaults 64 and 256.
	MaxCandidatesPerMedia int
	MaxCandidates         int

	// SignalingRate and SignalingBurst bound signaling requests (POST, PATCH,
	// DELETE) per client IP: a token bucket refilled at SignalingRate per
	// second holding SignalingBurst; beyond it, 429 with Retry-After.
	// Defaults 20/s and twice the rate. A negative SignalingRate turns the
	// limit off.
	SignalingRate  float64
	SignalingBurst int

	// MaxSignalingClients bounds the per-client-IP bucket table; when full,
	// idle (full) buckets are forgotten first. Default 65536.
	MaxSignalingClients int

	// ClientIP returns the IP a signaling request is charged to. Default: the
	// connection's remote address; X-Forwarded-For from the public is never
	// trusted. A cluster node trusts it only on requests proxied by a member
	// (cluster.Node.ClientIP).
	ClientIP func(*http.Request) netip.Addr

	// SendWorkers is how many goroutines write media to subscribers; each
	// subscriber belongs to one (see fanout.go). Default: GOMAXPROCS.
	SendWorkers int

	// QueuePackets is each send worker's queue length, in packets (a packet
	// for all of that worker's subscribers of it is one entry); when it is
	// full a packet is dropped and counted for each of them. Default 4096.
	QueuePackets int

	// KeyframeInterval is the least time between two keyframe requests (PLI)
	// sent for one publisher layer; requests in between are coalesced.
	// Default 500ms.
	KeyframeInterval time.Duration

	// GatherTimeout bounds the wait for local candidates before answering.
	// Default 5s.
	GatherTimeout time.Duration

	// ICEDisconnectedTimeout, ICEFailedTimeout and ICEKeepaliveInterval are
	// pion's ICE timeouts. A participant is removed when ICE fails, so
	// disconnected+failed is the consent-expiry time (RFC 7675 says 30s).
	// Defaults 5s, 25s, 2s.
	ICEDisconnectedTimeout time.Duration
	ICEFailedTimeout       time.Duration
	ICEKeepaliveInterval   time.Duration

	// Logger receives the server's logs, with component "sfu". Default: the
	// zero zerolog.Logger, which discards.
	Logger zerolog.Logger

	// Clock is the room-life time source. Default: real time.
	Clock Clock

	// IncludeLoopback lets loopback addresses be ICE candidates (tests on
	// 127.0.0.1). Default false.
	IncludeLoopback bool

	// OnRoomEnded is called when a room ends (empty for EmptyTimeout, or
	// EndRoom), after it is gone from the server, with no lock held; a
	// cluster node releases its ownership there. It runs on the sweeper's
	// or EndRoom's caller's goroutine and should not block. Default: nil,
	// nothing is called.
	OnRoomEnded func(room string)
}

// ErrConfig is returned (wrapped) by New for an invalid Config.
var ErrConfig = errors.New("sfu: invalid config")

func (c *Config) applyDefaults() error {
	if c.UDPMux == nil {
		return fmt.Errorf("%w: UDPMux is required", ErrConfig)
	}
	if c.NewICECredentials == nil {
		c.NewICECredentials = RandomICECredentials
	}
	if c.NewID == nil {
		c.NewID = randomID
	}
	if c.EmptyTimeout == 0 {
		c.EmptyTimeout = 30 * time.Second
	}
	if c.SweepInterval == 0 {
		c.SweepInterval = time.Second
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 64 << 10
	}
	if c.MaxParticipants == 0 {
		c.MaxParticipants = 10000
	}
	if c.MaxWatchers == 0 {
		c.MaxWatchers = 256
	}
	if c.MaxRooms == 0 {
		c.MaxRooms = 10000
	}
	if c.MaxRoomParticipants == 0 {
		c.MaxRoomParticipants = 1000
	}
	if c.MaxMediaSections == 0 {
		c.MaxMediaSections = 16
	}
	if c.MaxCandidatesPerMedia == 0 {
		c.MaxCandidatesPerMedia = 64
	}
	if c.MaxCandidates == 0 {
		c.MaxCandidates = 256
	}
	if c.SignalingRate == 0 {
		c.SignalingRate = 20
	}
	if c.SignalingBurst == 0 {
		c.SignalingBurst = max(1, int(2*c.SignalingRate))
	}
	if c.MaxSignalingClients == 0 {
		c.MaxSignalingClients = 65536
	}
	if c.ClientIP == nil {
		c.ClientIP = RemoteIP
	}
	if c.SendWorkers == 0 {
		c.SendWorkers = runtime.GOMAXPROCS(0)
	}
	if c.QueuePackets == 0 {
		c.QueuePackets = 4096
	}
	if c.KeyframeInterval == 0 {
		c.KeyframeInterval = 500 * time.Millisecond
	}
	if c.GatherTimeout == 0 {
		c.GatherTimeout = 5 * time.Second
	}
	if c.ICEDisconnectedTimeout == 0 {
		c.ICEDisconnectedTimeout = 5 * time.Second
	}
	if c.ICEFailedTimeout == 0 {
		c.ICEFailedTimeout = 25 * time.Second
	}
	if c.ICEKeepaliveInterval == 0 {
		c.ICEKeepaliveInterval = 2 * time.Second
	}
	if c.Clock == nil {
		c.Clock = realClock{}
	}
	switch {
	case c.EmptyTimeout < 0, c.SweepInterval < 0, c.MaxBodyBytes < 0, c.MaxParticipants < 0,
		c.MaxWatchers < 0, c.QueuePackets < 0, c.SendWorkers < 0, c.KeyframeInterval < 0, c.GatherTimeout < 0,
		c.ICEDisconnectedTimeout < 0, c.ICEFailedTimeout < 0, c.ICEKeepaliveInterval < 0,
		c.MaxRooms < 0, c.MaxRoomParticipants < 0, c.MaxMediaSections < 0, c.MaxCandidatesPerMedia < 0,
		c.MaxCandidates < 0, c.SignalingBurst < 0, c.MaxSignalingClients < 0:
		return fmt.Errorf("%w: negative value", ErrConfig)
	}
	if math.IsNaN(c.SignalingRate) || math.IsInf(c.SignalingRate, 0) {
		return fmt.Errorf("%w: SignalingRate %v", ErrConfig, c.SignalingRate)
	}
	return nil
}

// limits returns the SDP limits of the config.
func (c *Config) sdpLimits() sdpLimits {
	return sdpLimits{media: c.MaxMediaSections, perMedia: c.MaxCandidatesPerMedia, total: c.MaxCandidates}
}

// RemoteIP is the default Config.ClientIP: the connection's address.
func RemoteIP(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// RandomICECredentials is the default Config.NewICECredentials: a 16-char ufrag
// (96 random bits) and a 32-char pwd (192 bits) of ice-chars from crypto/rand.
func RandomICECredentials() (ufrag, pwd string) {
	ufrag, _ = mux.NewUfrag("") // an empty prefix always fits
	return ufrag, mux.NewPassword()
}

func validICECredentials(ufrag, pwd string) bool {
	return len(ufrag) >= 4 && len(ufrag) <= 256 && len(pwd) >= 22 && len(pwd) <= 256 &&
		mux.IsIceChars(ufrag) && mux.IsIceChars(pwd)
}

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}
