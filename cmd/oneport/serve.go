package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/pion/ice/v4"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

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
				Usage: "the most WebRTC sessions this node holds (default 100000)"},
			&cli.IntFlag{Name: "queue-len", EnvVars: env("queue-len"),
				Usage: "each session's receive queue in packets (default 512)"},
			&cli.StringFlag{Name: "http", Value: ":8080", EnvVars: env("http"),
				Usage: "WHIP, WHEP, events, JSON API, health, metrics and the demo page"},
			&cli.DurationFlag{Name: "empty-timeout", EnvVars: env("empty-timeout"),
				Usage: "how long an empty room lives (default 30s); rooms are never cleaned up by age"},
			&cli.StringFlag{Name: "token", EnvVars: env("token"),
				Usage: "bearer token required to publish and subscribe (default: none, open)"},
			&cli.IntFlag{Name: "max-participants", EnvVars: env("max-participants"),
				Usage: "publishers and subscribers this node accepts (default 10000)"},
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
	cfg.Logger = log
	m, err := mux.Listen(c.String("udp"), cfg)
	if err != nil {
		return err
	}
	defer m.Close()
	var udpMux ice.UDPMux = m
	switch c.String("mux") {
	case "oneport":
	case "pion":
		// Same port, same advertised address; the oneport mux stays open
		// (and idle) only to hold the port number.
		pm, err := pionMux(m, log)
		if err != nil {
			return err
		}
		defer pm.Close()
		udpMux = pm
	default:
		return fmt.Errorf("--mux %q: want oneport or pion", c.String("mux"))
	}

	srv, err := sfu.New(sfu.Config{
		UDPMux:          udpMux,
		EmptyTimeout:    c.Duration("empty-timeout"),
		Token:           c.String("token"),
		MaxParticipants: c.Int("max-participants"),
		Logger:          log,
		IncludeLoopback: isLoopback(m.LocalAddr()),
	})
	if err != nil {
		return err
	}
	defer srv.Close()

	httpLn, err := net.Listen("tcp", c.String("http"))
	if err != nil {
		return fmt.Errorf("--http: %w", err)
	}
	hs := sfu.NewHTTPServer(c.String("http"), routes(srv))
	httpDone := make(chan error, 1)
	go func() { httpDone <- hs.Serve(httpLn) }()

	var adv []string
	for _, a := range m.GetListenAddresses() {
		adv = append(adv, a.String())
	}
	log.Info().Str("version", buildVersion()).Stringer("udp", m.LocalAddr()).
		Stringer("http", httpLn.Addr()).Strs("advertise", adv).Msg("oneport serving")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	select {
	case <-ctx.Done():
		log.Info().Msg("signal received, shutting down")
	case err := <-httpDone:
		return fmt.Errorf("http server: %w", err)
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Event streams never end by themselves: Shutdown's deadline closes them.
	if err := hs.Shutdown(shutdownCtx); err != nil {
		hs.Close()
	}
	return nil
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

// routes mounts the signaling API and the demo page on one handler.
func routes(srv *sfu.Server) http.Handler {
	h := http.NewServeMux()
	api := srv.Handler()
	for _, p := range []string{"/whip/", "/whep/", "/rooms/", "/api/"} {
		h.Handle(p, api)
	}
	h.Handle("/", web.Handler())
	return h
}

// isLoopback reports whether the media port is bound to a loopback address,
// where loopback candidates are the only ones that work.
func isLoopback(a net.Addr) bool {
	ua, ok := a.(*net.UDPAddr)
	return ok && ua.IP.IsLoopback()
}
