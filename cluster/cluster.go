package cluster

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/rs/zerolog"

	"github.com/oneport/oneport/mux"
)

// Relay is what the cluster drives in the mux: the set of other nodes.
type Relay interface {
	SetPeers([]mux.Peer) error
}

// Config configures a Node. Every field documents its zero-value default.
type Config struct {
	// Identity is this node's id and tag; the mux must have been opened
	// with Identity.Tag. Required.
	Identity Identity

	// NodeName is this node's unique name. Empty means the hostname.
	NodeName string

	// Gossip is the memberlist listen address (TCP and UDP). Empty means
	// ":7946".
	Gossip string

	// Advertise is the address other nodes reach this one at, for gossip,
	// relay and HTTP. Empty means the Gossip address's IP when it is
	// specific, else memberlist's choice of a private address.
	Advertise string

	// Join lists members to join ("host:port"); a DNS name joins every
	// address it resolves to (a Kubernetes headless Service). Empty: a
	// cluster of one until others join it.
	Join []string

	// Key is the cluster key. Three keys are derived from it, one per
	// purpose: gossip is encrypted and authenticated (memberlist's
	// keyring), relay frames carry a MAC (RelayKey, given to the mux), and
	// signaling requests proxied to another node are signed
	// (ForwardedAuthHeader). Nil: gossip is in the clear, and a request is
	// taken as proxied by a member when it carries ForwardedHeader from a
	// member's IP; the internal network must be trusted.
	Key []byte

	// Relay is the mux whose peers the cluster sets. Required.
	Relay Relay

	// RelayPort is the port of this node's relay socket, announced with the
	// advertise address. Required.
	RelayPort int

	// HTTP is this node's signaling address ("host:port") as other nodes
	// should reach it. Empty means the advertise address with port 8080.
	HTTP string

	// Load reports this node's load; it is announced every LoadInterval
	// when it changed. Nil reports zero.
	Load func() Load

	// LoadInterval is how often load is re-announced. Zero means 2s.
	LoadInterval time.Duration

	// ReconnectInterval is how often the node tries to join again the
	// members it saw fail and the Join addresses that are not alive
	// members. memberlist alone never contacts a member it declared dead,
	// so without this two sides of a healed partition stay apart. Zero
	// means 10s; negative turns it off.
	ReconnectInterval time.Duration

	// ReconnectTimeout is how long a failed member is tried again. Zero
	// means 1h.
	ReconnectTimeout time.Duration

	// Profile picks memberlist's timing: "lan" (default) or "local"
	// (fast failure detection, for tests on one host).
	Profile string

	// Build is announced in the meta. Empty means none.
	Build string

	// Logger receives cluster events. The zero Logger discards.
	Logger zerolog.Logger

	// MaxRooms bounds the rooms this node owns (Claim fails beyond) and
	// the rooms it accepts from any other owner. Zero means 10000.
	MaxRooms int

	// OnRoomLost is called when this node gave a room up to an earlier
	// claim by another node (two nodes created it at once): the sessions
	// it holds for the room must end, with reason. It runs on a goroutine
	// of the Node, one call at a time. Nil: nothing is called.
	OnRoomLost func(room, reason string)

	// LocalRooms lists the rooms this node's sfu holds. When set, the
	// directory is reconciled with it every ReconcileInterval: a room
	// claimed more than ClaimGrace ago that the sfu does not hold is
	// released (a request that claimed it failed), and a room the sfu
	// holds that this node does not own is claimed, or handed to
	// OnRoomLost when another node owns it. Nil: no reconciliation.
	LocalRooms func() []string

	// ReconcileInterval is how often LocalRooms is checked. Zero means 2s.
	ReconcileInterval time.Duration

	// ClaimGrace is how long a claimed room may be absent from LocalRooms
	// (the request that claimed it is still being served). Zero means 30s.
	ClaimGrace time.Duration

	// ProxyTimeout bounds connecting to the owner of a room and waiting
	// for its response headers when proxying signaling. Zero means 30s
	// (an answer waits for candidate gathering).
	ProxyTimeout time.Duration

	// Clock is where the directory (claim times, the reconciliation's
	// ClaimGrace, how long departed owners are remembered) and the
	// signaling proxy (the forwarded-request signature's timestamp and its
	// skew window) read the time. It supplies timestamps only: the periodic
	// work still runs on real tickers, and memberlist keeps its own time.
	// Nil means the system clock.
	Clock Clock
}

// Clock is a source of the current time; tests inject one to simulate
// days of operation.
type Clock interface {
	Now() time.Time
}

// systemClock is the default Clock.
type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

var (
	// ErrDuplicateTag is returned by New when a live member already has
	// this node's tag.
	ErrDuplicateTag = errors.New("cluster: another live node has this node's tag")
	// ErrInvalidConfig wraps every configuration error.
	ErrInvalidConfig = errors.New("cluster: invalid config")
)

func (c Config) withDefaults() (Config, error) {
	if c.NodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return c, fmt.Errorf("%w: no node name and no hostname: %w", ErrInvalidConfig, err)
		}
		c.NodeName = h
	}
	if c.Gossip == "" {
		c.Gossip = ":7946"
	}
	if c.LoadInterval == 0 {
		c.LoadInterval = 2 * time.Second
	}
	if c.ReconnectInterval == 0 {
		c.ReconnectInterval = 10 * time.Second
	}
	if c.ReconnectTimeout == 0 {
		c.ReconnectTimeout = time.Hour
	}
	if c.Load == nil {
		c.Load = func() Load { return Load{} }
	}
	if c.Profile == "" {
		c.Profile = "lan"
	}
	if c.MaxRooms == 0 {
		c.MaxRooms = 10000
	}
	if c.ReconcileInterval == 0 {
		c.ReconcileInterval = 2 * time.Second
	}
	if c.ClaimGrace == 0 {
		c.ClaimGrace = 30 * time.Second
	}
	if c.ProxyTimeout == 0 {
		c.ProxyTimeout = 30 * time.Second
	}
	if c.Clock == nil {
		c.Clock = systemClock{}
	}
	switch {
	case c.Relay == nil:
		return c, fmt.Errorf("%w: Relay is required", ErrInvalidConfig)
	case c.RelayPort <= 0 || c.RelayPort > 65535:
		return c, fmt.Errorf("%w: RelayPort %d", ErrInvalidConfig, c.RelayPort)
	case len(c.Identity.Tag) != mux.TagLen || !mux.IsIceChars(c.Identity.Tag) || c.Identity.ID == "":
		return c, fmt.Errorf("%w: Identity %+v", ErrInvalidConfig, c.Identity)
	case c.Profile != "lan" && c.Profile != "local":
		return c, fmt.Errorf("%w: Profile %q", ErrInvalidConfig, c.Profile)
	case c.LoadInterval < 0, c.MaxRooms < 0, c.ReconcileInterval < 0, c.ClaimGrace < 0, c.ProxyTimeout < 0, c.ReconnectTimeout < 0:
		return c, fmt.Errorf("%w: negative value", ErrInvalidConfig)
	}
	return c, nil
}

// Node is this process's membership in the cluster.
type Node struct {
	left    atomic.Bool // Leave was called: stop reconnecting
	cfg     Config
	log     zerolog.Logger
	ml      *memberlist.Memberlist
	dir     *directory      // the room directory (directory.go)
	members memberTable     // what memberlist's events said (members.go)
	proxy   *http.Transport // signaling to other nodes (signaling.go)
	fwdKey  []byte          // signs and verifies ForwardedAuthHeader; nil without a cluster key
	fwdBad  atomic.Uint64   // requests whose forwarded headers did not verify
	proxied atomic.Uint64   // requests proxied to another node

	mu       sync.Mutex
	meta     Meta // guarded by mu: what NodeMeta announces
	draining bool // guarded by mu

	changed   chan struct{} // capacity 1: membership changed
	closing   chan struct{}
	closeOnce sync.Once // Close: leave, then shutdown
	shutOnce  sync.Once // shutdown
	shutErr   error
	wg        sync.WaitGroup
}

// New starts gossip, joins the cluster (when Join lists anyone), checks the
// tag is unique and starts keeping the mux's peers current.
func New(cfg Config) (*Node, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	n := &Node{
		cfg:     cfg,
		log:     cfg.Logger.With().Str("component", "cluster").Logger(),
		changed: make(chan struct{}, 1),
		closing: make(chan struct{}),
	}
	mc, err := n.memberlistConfig()
	if err != nil {
		return nil, err
	}
	n.dir = newDirectory(cfg.NodeName, cfg.Identity.ID, cfg.MaxRooms, mc.RetransmitMult, n.log)
	n.dir.now = cfg.Clock.Now
	if len(cfg.Key) > 0 {
		n.fwdKey = deriveKey(cfg.Key, "forwarded")
	}
	n.proxy = newProxyTransport(cfg.ProxyTimeout)
	if n.ml, err = memberlist.Create(mc); err != nil {
		return nil, fmt.Errorf("cluster: start gossip on %s: %w", cfg.Gossip, err)
	}
	// The first meta went out from inside Create, before the advertise
	// address (and so the relay address) was known: announce it again.
	n.announce()
	self := n.ml.LocalNode()
	n.log.Info().Str("node", cfg.NodeName).Str("tag", cfg.Identity.Tag).
		Str("gossip", net.JoinHostPort(self.Addr.String(), strconv.Itoa(int(self.Port)))).
		Bool("encrypted", len(cfg.Key) > 0).Msg("gossip started")
	if len(cfg.Key) == 0 {
		n.log.Warn().Msg("no --cluster-key: gossip and relay are not authenticated; the internal network must be trusted")
	}
	if len(cfg.Join) > 0 {
		joined, err := n.ml.Join(resolveJoin(cfg.Join, n.log))
		if err != nil && joined == 0 {
			n.shutdown()
			return nil, fmt.Errorf("cluster: join %v: %w", cfg.Join, err)
		}
		n.log.Info().Int("contacted", joined).Int("members", n.ml.NumMembers()).Msg("joined")
	}
	if err := n.checkTag(); err != nil {
		n.shutdown()
		return nil, err
	}
	if err := n.syncPeers(); err != nil {
		n.shutdown()
		return nil, err
	}
	n.wg.Add(2)
	go n.run()
	go n.runDirectory()
	if cfg.ReconnectInterval > 0 {
		n.wg.Add(1)
		go n.reconnectLoop()
	}
	return n, nil
}

func (n *Node) memberlistConfig() (*memberlist.Config, error) {
	var mc *memberlist.Config
	if n.cfg.Profile == "local" {
		mc = memberlist.DefaultLocalConfig()
	} else {
		mc = memberlist.DefaultLANConfig()
	}
	mc.Name = n.cfg.NodeName
	host, port, err := splitHostPort(n.cfg.Gossip)
	if err != nil {
		return nil, fmt.Errorf("%w: Gossip %q: %w", ErrInvalidConfig, n.cfg.Gossip, err)
	}
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertisePort = port
	if n.cfg.Advertise != "" {
		mc.AdvertiseAddr = n.cfg.Advertise
	} else if ip, err := netip.ParseAddr(host); err == nil && !ip.IsUnspecified() {
		mc.AdvertiseAddr = host
	}
	if len(n.cfg.Key) > 0 {
		mc.SecretKey = deriveKey(n.cfg.Key, "gossip")
	}
	mc.Delegate = (*delegate)(n)
	mc.Events = (*events)(n)
	mc.Logger = log.New(memberlistLog{n.log}, "", 0)
	n.meta = Meta{Version: metaVersion, ID: n.cfg.Identity.ID, Tag: n.cfg.Identity.Tag, Build: n.cfg.Build}
	return mc, nil
}

func splitHostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	if h == "" {
		h = "0.0.0.0"
	}
	return h, port, nil
}

// resolveJoin expands DNS names to every address they resolve to, so a
// headless Service name joins all its pods.
func resolveJoin(join []string, log zerolog.Logger) []string {
	var out []string
	for _, j := range join {
		h, p, err := net.SplitHostPort(j)
		if err != nil {
			h, p = j, "7946"
		}
		if _, err := netip.ParseAddr(h); err == nil {
			out = append(out, net.JoinHostPort(h, p))
			continue
		}
		ips, err := net.LookupHost(h)
		if err != nil {
			log.Warn().Err(err).Str("join", j).Msg("cannot resolve")
			continue
		}
		for _, ip := range ips {
			out = append(out, net.JoinHostPort(ip, p))
		}
	}
	return out
}

// advertiseAddr is the address other nodes reach this one at.
func (n *Node) advertiseAddr() netip.Addr {
	a, _ := netip.AddrFromSlice(n.ml.LocalNode().Addr)
	return a.Unmap()
}

// checkTag fails when another live member announces this node's tag.
func (n *Node) checkTag() error {
	for _, m := range n.members.list() {
		if m.name == n.cfg.NodeName || m.state != memberlist.StateAlive {
			continue
		}
		if meta, err := decodeMeta(m.meta); err == nil && meta.Tag == n.cfg.Identity.Tag {
			return fmt.Errorf("%w: %q (node %s)", ErrDuplicateTag, meta.Tag, m.name)
		}
	}
	return nil
}

// Member is another node as this one sees it.
type Member struct {
	Name  string
	Addr  netip.Addr
	State string // alive, suspect, dead, left
	Meta  Meta
	Self  bool
}

// Members lists every node memberlist knows, this one included.
func (n *Node) Members() []Member {
	var out []Member
	for _, m := range n.members.list() {
		meta, _ := decodeMeta(m.meta)
		out = append(out, Member{Name: m.name, Addr: m.addr, State: stateName(m.state), Meta: meta, Self: m.name == n.cfg.NodeName})
	}
	return out
}

func stateName(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return "alive"
	case memberlist.StateSuspect:
		return "suspect"
	case memberlist.StateDead:
		return "dead"
	case memberlist.StateLeft:
		return "left"
	}
	return "unknown"
}

// Joined reports whether this node sees at least one other live member.
func (n *Node) Joined() error {
	if n.ml.NumMembers() > 1 {
		return nil
	}
	return errors.New("cluster: no other live member")
}

// SetDraining announces that this node takes no new rooms (or takes them
// again).
func (n *Node) SetDraining(d bool) {
	n.mu.Lock()
	changed := n.draining != d
	n.draining = d
	n.meta.Draining = d
	n.mu.Unlock()
	if changed {
		n.announce()
	}
}

// announce gossips the current meta.
func (n *Node) announce() {
	if err := n.ml.UpdateNode(5 * time.Second); err != nil {
		n.log.Warn().Err(err).Msg("announce meta")
	}
}

// run keeps the mux's peers current and re-announces load.
func (n *Node) run() {
	defer n.wg.Done()
	t := time.NewTicker(n.cfg.LoadInterval)
	defer t.Stop()
	for {
		select {
		case <-n.closing:
			return
		case <-n.changed:
			if err := n.syncPeers(); err != nil {
				n.log.Error().Err(err).Msg("update relay peers")
			}
		case <-t.C:
			l := n.cfg.Load()
			n.mu.Lock()
			moved := l != n.meta.Load
			n.meta.Load = l
			n.mu.Unlock()
			if moved {
				n.announce()
			}
		}
	}
}

// syncPeers hands the live members (not this node) to the mux.
func (n *Node) syncPeers() error {
	var peers []mux.Peer
	seen := map[string]bool{n.cfg.Identity.Tag: true}
	for _, m := range n.members.list() {
		if m.name == n.cfg.NodeName || m.state != memberlist.StateAlive {
			continue
		}
		meta, err := decodeMeta(m.meta)
		if err != nil {
			n.log.Warn().Err(err).Str("node", m.name).Msg("ignoring member")
			continue
		}
		if seen[meta.Tag] {
			n.log.Error().Str("node", m.name).Str("tag", meta.Tag).Msg("member repeats a tag; not routing to it")
			continue
		}
		seen[meta.Tag] = true
		peers = append(peers, mux.Peer{Name: m.name, Tag: meta.Tag, Relay: meta.Relay})
	}
	return n.cfg.Relay.SetPeers(peers)
}

// signal tells run the membership changed; it never blocks.
func (n *Node) signal() {
	select {
	case n.changed <- struct{}{}:
	default:
	}
}

// Leave tells the others this node is going, waiting up to timeout for the
// message to spread.
func (n *Node) Leave(timeout time.Duration) error {
	n.left.Store(true) // no reconnecting after a deliberate leave
	return n.ml.Leave(timeout)
}

// Close leaves the cluster, stops gossip and waits for the Node's
// goroutines. It is idempotent.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		select {
		case <-n.closing: // already shut down: nothing to leave
			return
		default:
		}
		if err := n.Leave(2 * time.Second); err != nil {
			n.log.Warn().Err(err).Msg("leave")
		}
	})
	return n.shutdown()
}

// shutdown stops gossip without leaving (the others will detect the
// failure) and waits for the Node's goroutines.
func (n *Node) shutdown() error {
	n.shutOnce.Do(func() {
		close(n.closing)
		n.shutErr = n.ml.Shutdown()
		n.wg.Wait()
		n.proxy.CloseIdleConnections()
	})
	return n.shutErr
}

// memberlistLog sends memberlist's log lines to zerolog at debug level
// (its [WARN]/[ERR] lines at warn).
type memberlistLog struct{ log zerolog.Logger }

var _ io.Writer = memberlistLog{}

func (l memberlistLog) Write(p []byte) (int, error) {
	msg := string(p)
	for len(msg) > 0 && msg[len(msg)-1] == '\n' {
		msg = msg[:len(msg)-1]
	}
	ev := l.log.Debug()
	if len(msg) > 6 && (msg[:6] == "[WARN]" || msg[:5] == "[ERR]") {
		ev = l.log.Warn()
	}
	ev.Msg(msg)
	return len(p), nil
}
