package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/oneport/oneport/bench"
	"github.com/oneport/oneport/mux"
)

func benchCommand() *cli.Command {
	return &cli.Command{
		Name:        "bench",
		Usage:       "measure oneport",
		Subcommands: []*cli.Command{benchMuxCommand(), benchFanoutCommand(), benchLoadCommand(), benchReplayCommand()},
	}
}

func benchMuxCommand() *cli.Command {
	return &cli.Command{
		Name:  "mux",
		Usage: "replay STUN-then-RTP load into a raw socket, pion's UDP mux and oneport's mux, in one run",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "sessions", EnvVars: env("sessions"), Usage: "sessions per receiver (default 1000)"},
			&cli.IntFlag{Name: "senders", EnvVars: env("senders"), Usage: "sender processes (default 2)"},
			&cli.DurationFlag{Name: "duration", EnvVars: env("duration"), Usage: "measured time per receiver and size (default 5s)"},
			&cli.IntSliceFlag{Name: "size", EnvVars: env("size"), Usage: "payload sizes in bytes (default 100 and 1200)"},
			&cli.IntFlag{Name: "rate", EnvVars: env("rate"), Usage: "total packets/s the senders aim for (default: as fast as they can)"},
			&cli.StringSliceFlag{Name: "receiver", EnvVars: env("receiver"), Usage: "receivers to run: raw, pion, oneport (default all)"},
			&cli.StringFlag{Name: "network", EnvVars: env("network"), Usage: "udp4 or udp6 (default udp4)"},
			&cli.IntFlag{Name: "stalled-packets", EnvVars: env("stalled-packets"), Usage: "packets sent to a session that never reads (default 20000; negative skips)"},
			&cli.BoolFlag{Name: "hostile", EnvVars: env("hostile"), Usage: "add a run mixing unknown ufrags, junk and spoofed STUN into the valid flows"},
			&cli.Float64Flag{Name: "hostile-ratio", EnvVars: env("hostile-ratio"), Usage: "share of hostile packets in the hostile run (default 0.25)"},
			&cli.IntFlag{Name: "mux-sockets", EnvVars: env("mux-sockets"), Usage: "oneport mux sockets (default one per CPU)"},
			&cli.BoolFlag{Name: "json", EnvVars: env("json"), Usage: "print the report as JSON"},
		},
		Action: func(c *cli.Context) error {
			log, err := newLogger(c)
			if err != nil {
				return err
			}
			cfg := bench.MuxConfig{
				Sessions:       c.Int("sessions"),
				Senders:        c.Int("senders"),
				Duration:       c.Duration("duration"),
				Sizes:          c.IntSlice("size"),
				Rate:           c.Int("rate"),
				Receivers:      c.StringSlice("receiver"),
				Network:        c.String("network"),
				StalledPackets: c.Int("stalled-packets"),
				Hostile:        c.Bool("hostile"),
				HostileRatio:   c.Float64("hostile-ratio"),
				Mux:            mux.Config{Sockets: c.Int("mux-sockets")},
				Logger:         log,
			}
			ctx, stop := benchContext()
			defer stop()
			rep, err := bench.RunMux(ctx, cfg)
			return printReport(c, "mux", rep, len(rep.Receivers) > 0, err)
		},
	}
}

// benchContext is cancelled by SIGINT or SIGTERM, so a bench stops early,
// cleans up what it made and still reports what it measured.
func benchContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// printReport writes a bench's report, as JSON with --json or as its text
// table when it holds anything, and returns the run's error (or the
// writing's) with the bench's name.
func printReport(c *cli.Context, name string, rep interface{ WriteText(io.Writer) error }, hasData bool, runErr error) error {
	var werr error
	switch {
	case c.Bool("json"):
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		werr = enc.Encode(rep)
	case hasData:
		werr = rep.WriteText(c.App.Writer)
	}
	if err := cmp.Or(runErr, werr); err != nil {
		return fmt.Errorf("bench %s: %w", name, err)
	}
	return nil
}
