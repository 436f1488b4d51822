package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/oneport/oneport/mux"
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
	log.Info().Str("version", buildVersion()).Stringer("udp", m.LocalAddr()).
		Interface("advertise", m.GetListenAddresses()).Msg("oneport serving")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	log.Info().Msg("signal received, shutting down")
	return nil
}
