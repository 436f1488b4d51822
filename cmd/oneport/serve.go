package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pion/ice/v4"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/oneport/oneport/cluster"
	"github.com/oneport/oneport/internal/connlimit"
	"github.com/oneport/oneport/lbhealth"
	"github.com/oneport/oneport/mux"
	"github.com/oneport/oneport/sfu"
	"github.com/oneport/oneport/sfu/web"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run a node",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "udp", Value: ":3478", EnvVars: env("udp"),
				Usage: "the media port: every WebRTC packet of this node goes through it"},
			&cli.StringFlag{Name: "public-ip", EnvVars: env("public-ip"),
				Usage: "the address clients reach the media port at, such as the load balancer's VIP (default: the node's addresses)"},
			&cli.UintFlag{Name: "public-port", EnvVars: env("public-port"),
				Usage: "the port clients reach the media port at (default: the listen port)"},
			&cli.IntFlag{Name: "sockets", EnvVars: env("sockets"),
				Usage: "SO_REUSEPORT sockets on the media port (default: one per CPU)"},
			&cli.IntFlag{Name: "max-sessions", EnvVars: env("max-sessions"),
				Usage: "WebRTC sessions this node holds; readiness fails at the limit (default 100000)"},
			&cli.IntFlag{Name: "queue-len", EnvVars: env("queue-len"),
				Usage: "each session's receive queue in packets (default 512)"},
			&cli.StringFlag{Name: "http", Value: ":8080", EnvVars: env("http"),
				Usage: "WHIP, WHEP, events, JSON API, health, metrics and the demo page"},
			&cli.StringFlag{Name: "health", EnvVars: env("health"),
				Usage: "an extra listener with only /healthz, /readyz, /metrics and the admin endpoints, for private probes"},
			&cli.DurationFlag{Name: "empty-timeout", EnvVars: env("empty-timeout"),
				Usage: "how long an empty room lives (default 30s); rooms are never cleaned up by age"},
			&cli.StringFlag{Name: "token", EnvVars: env("token"),
				Usage: "bearer token required to publish and subscribe (default: none, open)"},
			&cli.IntFlag{Name: "max-participants", EnvVars: env("max-participants"),
				Usage: "publishers and subscribers this node accepts (default 10000)"},
			&cli.IntFlag{Name: "max-rooms", EnvVars: env("max-rooms"),
				Usage: "rooms this node holds; a request creating one more gets 503 with Retry-After (default 10000)"},
			&cli.IntFlag{Name: "max-room-participants", EnvVars: env("max-room-participants"),
				Usage: "publishers and subscribers in one room; one more gets 403 room full (default 1000)"},
			&cli.Float64Flag{Name: "signaling-rate", EnvVars: env("signaling-rate"),
				Usage: "WHIP/WHEP POST, PATCH and DELETE requests per second per client IP, burst twice that; beyond, 429 with Retry-After (default 20; negative: off)"},
			&cli.IntFlag{Name: "max-http-conns", EnvVars: env("max-http-conns"),
				Usage: "open connections on the --http listener; more are closed at accept (default 16384)"},
			&cli.IntFlag{Name: "max-http-conns-per-ip", EnvVars: env("max-http-conns-per-ip"),
				Usage: "open --http connections per client IP (IPv6: per /64), cluster members exempt; more are closed at accept (default 512)"},
			&cli.StringFlag{Name: "admin-token", EnvVars: env("admin-token"),
				Usage: "bearer token for POST /admin/drain and /admin/undrain (default: none, admin endpoints off)"},
			&cli.DurationFlag{Name: "drain-timeout", Value: 10 * time.Minute, EnvVars: env("drain-timeout"),
				Usage: "how long a drain waits for sessions to end before closing them"},
			&cli.Float64Flag{Name: "max-cpu", EnvVars: env("max-cpu"),
				Usage: "readiness fails above this share of all CPUs, 0..1 (default: no limit)"},
			&cli.Float64Flag{Name: "max-packet-rate", EnvVars: env("max-packet-rate"),
				Usage: "readiness fails above this many media packets/s in (default: no limit)"},
			&cli.StringFlag{Name: "node-name", EnvVars: env("node-name"),
				Usage: "this node's unique name in the cluster (default: the hostname)"},
			&cli.StringFlag{Name: "gossip", Value: ":7946", EnvVars: env("gossip"),
				Usage: "memberlist gossip address (TCP and UDP), on the internal network"},
			&cli.StringFlag{Name: "relay", Value: ":7947", EnvVars: env("relay"),
				Usage: "UDP address of the relay that carries client packets between nodes, on the internal network"},
			&cli.StringFlag{Name: "advertise", EnvVars: env("advertise"),
				Usage: "the internal IP other nodes reach this one at for gossip, relay and HTTP (default: a private address of this host)"},
			&cli.StringSliceFlag{Name: "join", EnvVars: env("join"),
				Usage: "members to join, host:port; a DNS name joins every address it resolves to (default: none, a cluster of one)"},
			&cli.StringFlag{Name: "cluster-key", EnvVars: env("cluster-key"),
				Usage: "shared secret: gossip encrypted and authenticated, relay frames authenticated (default: none; trust the internal network)"},
			// Benchmarks only: the same server on pion's ice.NewUDPMuxDefault.
			&cli.StringFlag{Name: "mux", Value: "oneport", EnvVars: env("mux"), Hidden: true,
				Usage: "oneport, or pion (ice.NewUDPMuxDefault on one socket) for comparisons"},
		},
		Action: serve,
	}
}

// muxConfig maps the serve flags onto mux.Config; zero values keep the
// mux's defaults.
func muxConfig(c *cli.Context, listen *net.UDPAddr) (mux.Config, error) {
	cfg := mux.Config{
		Sockets:     c.Int("sockets"),
		MaxSessions: c.Int("max-sessions"),
		QueueLen:    c.Int("queue-len"),
	}
	port := c.Uint("public-port")
	if port > 65535 {
		return cfg, fmt.Errorf("--public-port %d out of range", port)
	}
	cfg.AdvertisePort = uint16(port)
	if ipStr := c.String("public-ip"); ipStr != "" {
		ip, err := netip.ParseAddr(ipStr)
		if err != nil {
			return cfg, fmt.Errorf("--public-ip: %w", err)
		}
		if port == 0 {
			port = uint(listen.Port)
		}
		cfg.Advertise = []netip.AddrPort{netip.AddrPortFrom(ip.Unmap(), uint16(port))}
	}
	return cfg, nil
}

// probe forwards the mux's health probes to lbhealth, which is built after
// the mux it reports on.
type probe struct {
	h atomic.Pointer[lbhealth.Health]
}

func (p *probe) HandleProbe(req []byte, from netip.AddrPort, w mux.ProbeWriter) {
	if h := p.h.Load(); h != nil {
		h.HandleProbe(req, from, w)
	}
}

func serve(c *cli.Context) error {
	log, err := newLogger(c)
	if err != nil {
		return err
	}
	listen, err := net.ResolveUDPAddr("udp", c.String("udp"))
	if err != nil {
		return fmt.Errorf("--udp: %w", err)
	}
	cfg, err := muxConfig(c, listen)
	if err != nil {
		return err
	}
	var pr probe
	id := cluster.NewIdentity()
	clusterKey := []byte(c.String("cluster-key"))
	cfg.Logger, cfg.Probe = log, &pr
	cfg.Tag, cfg.Relay, cfg.RelayKey = id.Tag, c.String("relay"), cluster.RelayKey(clusterKey)
	m, err := mux.Listen(c.String("udp"), cfg)
	if err != nil {
		return err
	}
	defer m.Close()
	var udpMux ice.UDPMux = m
	switch c.String("mux") {
	case "oneport":
	case "pion":
		pm, err := pionMux(m, log)
		if err != nil {
			return err
		}
		defer pm.Close()
		udpMux = pm
	default:
		return fmt.Errorf("--mux %q: want oneport or pion", c.String("mux"))
	}

	var owner roomOwner // the cluster node, once it exists
	srv, err := sfu.New(sfu.Config{
		UDPMux: udpMux,
		// Resource ids carry the tag too: PATCH and DELETE find their node.
		NewID:       func() string { return cluster.NewResourceID(id.Tag) },
		OnRoomEnded: owner.release,
		// Every ufrag carries this node's tag, so any node routes to it.
		NewICECredentials: func() (string, string) {
			u, _ := mux.NewUfrag(mux.UfragPrefix(id.Tag)) // a valid tag always fits
			return u, mux.NewPassword()
		},
		EmptyTimeout:        c.Duration("empty-timeout"),
		Token:               c.String("token"),
		MaxParticipants:     c.Int("max-participants"),
		MaxRooms:            c.Int("max-rooms"),
		MaxRoomParticipants: c.Int("max-room-participants"),
		SignalingRate:       c.Float64("signaling-rate"),
		// Proxied requests are charged to the client the member saw, once
		// the node exists; before, to the connection.
		ClientIP: func(r *http.Request) netip.Addr {
			if n := owner.node.Load(); n != nil {
				return n.ClientIP(r)
			}
			return sfu.RemoteIP(r)
		},
		Logger:          log,
		IncludeLoopback: isLoopback(m.LocalAddr()),
	})
	if err != nil {
		return err
	}
	defer srv.Close()

	advertise := c.String("advertise")
	if advertise == "" {
		advertise = defaultAdvertise(listen)
	}
	// The signaling listener, bounded in connections: members proxy many
	// clients' requests, so only the total bounds them. Opened before the
	// cluster node, which announces its port (--http :0 included).
	httpLn, err := listenHTTP(c.String("http"), connlimit.Config{
		MaxConns: c.Int("max-http-conns"),
		MaxPerIP: c.Int("max-http-conns-per-ip"),
		Exempt: func(ip netip.Addr) bool {
			n := owner.node.Load()
			return n != nil && n.IsMemberIP(ip)
		},
	})
	if err != nil {
		return fmt.Errorf("--http: %w", err)
	}
	defer httpLn.Close() // a no-op once the server has it: it closes its listeners
	httpPort := strconv.Itoa(httpLn.Addr().(*net.TCPAddr).Port)
	node, err := cluster.New(cluster.Config{
		Identity:  id,
		NodeName:  c.String("node-name"),
		Gossip:    c.String("gossip"),
		Advertise: advertise,
		Join:      c.StringSlice("join"),
		Key:       clusterKey,
		Relay:     m,
		RelayPort: m.RelayAddr().(*net.UDPAddr).Port,
		HTTP:      net.JoinHostPort(advertise, httpPort),
		Load: func() cluster.Load {
			st := srv.Stats()
			return cluster.Load{Sessions: m.Sessions(), Rooms: st.Rooms}
		},
		Build:      buildVersion(),
		Logger:     log,
		OnRoomLost: endLostRoom(srv, log),
		LocalRooms: srv.RoomNames,
	})
	if err != nil {
		return err
	}
	defer node.Close()
	owner.set(node)
	var membership lbhealth.Membership
	if len(c.StringSlice("join")) > 0 {
		membership = lbhealth.MembershipFunc(node.Joined)
	}

	var servers []*http.Server
	health, err := lbhealth.New(lbhealth.Config{
		Cluster:  membership,
		Sockets:  lbhealth.SocketsFunc(m.Bound),
		Sessions: lbhealth.SessionCounterFunc(m.Sessions),
		Media:    lbhealth.MediaSourceFunc(func() lbhealth.MediaStats { return mediaStats(m.Stats()) }),
		SFU: lbhealth.SFUSourceFunc(func() lbhealth.SFUStats {
			return withHTTPStats(sfuStats(srv.Stats()), httpLn.Stats())
		}),
		ClusterStats: lbhealth.ClusterSourceFunc(func() lbhealth.ClusterStats {
			return clusterStats(node.Members(), m.Stats())
		}),
		MaxSessions:   cmp.Or(c.Int("max-sessions"), mux.DefaultMaxSessions),
		MaxCPU:        c.Float64("max-cpu"),
		MaxPacketRate: c.Float64("max-packet-rate"),
		AdminToken:    c.String("admin-token"),
		Drain: lbhealth.DrainConfig{
			Timeout: c.Duration("drain-timeout"),
			Hooks: []lbhealth.Hook{
				{Name: "leave cluster", Run: func(context.Context) error { return node.Close() }},
				{Name: "close signaling", Run: func(ctx context.Context) error { return shutdownHTTP(ctx, servers) }},
				{Name: "close sessions", Run: func(context.Context) error { return srv.Close() }},
				{Name: "close media port", Run: func(context.Context) error { return m.Close() }},
			},
		},
		Version: buildVersion(),
		Log:     log,
	})
	if err != nil {
		return err
	}
	pr.h.Store(health)
	go announceDraining(health.Drainer(), node)

	errc := make(chan error, 2)
	hs := serveHTTP(httpLn, routes(srv, health, node), errc)
	servers = append(servers, hs)
	if addr := c.String("health"); addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("--health: %w", err)
		}
		servers = append(servers, serveHTTP(ln, health.Handler(), errc))
	}

	var adv []string
	for _, a := range m.GetListenAddresses() {
		adv = append(adv, a.String())
	}
	log.Info().Str("version", buildVersion()).Stringer("udp", m.LocalAddr()).
		Str("http", hs.Addr).Strs("advertise", adv).Msg("oneport serving")

	// The first SIGTERM or SIGINT drains; a second one exits at once.
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		drains := 0
		for {
			select {
			case sig := <-sigs:
				drains++
				if drains > 1 {
					cancel(fmt.Errorf("second signal %v", sig))
					return
				}
				health.Drainer().Drain(sig.String())
			case err := <-errc:
				cancel(err)
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	res := health.Drainer().Run(ctx)
	if res.ExitCode() != 0 {
		shutdownHTTP(context.Background(), servers)
		msg := fmt.Sprintf("oneport: drain %v after %v with %d sessions left", res.Outcome, res.Waited.Round(time.Millisecond), res.Remaining)
		if res.Err != nil { // nil after a timeout whose hooks all ran
			msg += ": " + res.Err.Error()
		}
		return cli.Exit(msg, res.ExitCode())
	}
	log.Info().Stringer("outcome", res.Outcome).Dur("waited", res.Waited).Msg("drained, exiting")
	return nil
}

// announceDraining keeps the cluster meta's draining flag in step with the
// drainer, so no new room is placed on a draining node. It ends when the
// drain finishes.
func announceDraining(d *lbhealth.Drainer, node *cluster.Node) {
	for {
		draining, changed := d.Watch()
		node.SetDraining(draining)
		if d.State() == lbhealth.StateDone {
			return
		}
		<-changed
	}
}

// defaultAdvertise picks the internal address to announce: the media
// port's IP when it is specific, else a private address of this host, else
// loopback (a cluster of one).
func defaultAdvertise(listen *net.UDPAddr) string {
	if listen.IP != nil && !listen.IP.IsUnspecified() {
		return listen.IP.String()
	}
	addrs, _ := net.InterfaceAddrs()
	var global string
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.To4() == nil || ipn.IP.IsLoopback() {
			continue
		}
		if ipn.IP.IsPrivate() {
			return ipn.IP.String()
		}
		if global == "" && ipn.IP.IsGlobalUnicast() {
			global = ipn.IP.String()
		}
	}
	if global != "" {
		return global
	}
	return "127.0.0.1"
}

// listenHTTP listens on addr with cfg's connection bounds.
func listenHTTP(addr string, cfg connlimit.Config) (*connlimit.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	l, err := connlimit.New(ln, cfg)
	if err != nil {
		ln.Close()
		return nil, err
	}
	return l, nil
}

// serveHTTP serves h on ln; a failure of the server lands in errc.
func serveHTTP(ln net.Listener, h http.Handler, errc chan<- error) *http.Server {
	hs := sfu.NewHTTPServer(ln.Addr().String(), h)
	go func() {
		if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http %s: %w", ln.Addr(), err)
		}
	}()
	return hs
}

// shutdownHTTP stops the listeners; event streams never end by themselves,
// so a deadline closes what is left.
func shutdownHTTP(ctx context.Context, servers []*http.Server) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var errs []error
	for _, hs := range servers {
		if err := hs.Shutdown(ctx); err != nil {
			hs.Close()
			if !errors.Is(err, context.DeadlineExceeded) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// pionMux opens pion's UDP mux for comparisons. It cannot share the port
// with the oneport mux (which would steal half the flows through
// SO_REUSEPORT), so it takes the next free port on the same address.
func pionMux(m *mux.Mux, log zerolog.Logger) (*ice.UDPMuxDefault, error) {
	la := m.LocalAddr().(*net.UDPAddr)
	uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: la.IP})
	if err != nil {
		return nil, fmt.Errorf("--mux pion: %w", err)
	}
	_ = uc.SetReadBuffer(8 << 20)
	_ = uc.SetWriteBuffer(8 << 20)
	log.Warn().Stringer("udp", uc.LocalAddr()).Msg("benchmark mode: media on pion's ice.UDPMuxDefault")
	return ice.NewUDPMuxDefault(ice.UDPMuxParams{UDPConn: uc}), nil
}

// routes mounts the signaling API, health and metrics, and the demo page on
// one handler.
func routes(srv *sfu.Server, health *lbhealth.Health, node *cluster.Node) http.Handler {
	h := http.NewServeMux()
	api := clusterSignaling(srv, node)
	for _, p := range []string{"/whip/", "/whep/", "/rooms/", "/api/"} {
		h.Handle(p, api)
	}
	health.Mount(h)
	h.Handle("/", web.Handler())
	return h
}

// isLoopback reports whether the media port is bound to a loopback address,
// where loopback candidates are the only ones that work.
func isLoopback(a net.Addr) bool {
	ua, ok := a.(*net.UDPAddr)
	return ok && ua.IP.IsLoopback()
}
