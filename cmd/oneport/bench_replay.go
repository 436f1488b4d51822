package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/oneport/oneport/bench"
	"github.com/oneport/oneport/mux"
)

func benchReplayCommand() *cli.Command {
	return &cli.Command{
		Name:  "replay",
		Usage: "replay a pcap/pcapng capture's client STUN, DTLS and RTP, with its timing, into sessions on oneport's mux, rewritten to name them",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "capture", EnvVars: env("capture"), Usage: "the pcap or pcapng file (required)"},
			&cli.Float64Flag{Name: "speed", EnvVars: env("speed"), Usage: "timing scale: 2 replays twice as fast (default 1)"},
			&cli.IntFlag{Name: "copies", EnvVars: env("copies"), Usage: "copies of the capture's sessions replayed at once, each from its own sockets (default 1)"},
			&cli.IntFlag{Name: "mux-sockets", EnvVars: env("mux-sockets"), Usage: "oneport mux sockets (default one per CPU)"},
			&cli.BoolFlag{Name: "json", EnvVars: env("json"), Usage: "print the report as JSON"},
		},
		Action: func(c *cli.Context) error {
			log, err := newLogger(c)
			if err != nil {
				return err
			}
			if c.String("capture") == "" {
				return fmt.Errorf("bench replay: --capture is required")
			}
			ctx, stop := benchContext()
			defer stop()
			rep, err := bench.RunReplay(ctx, bench.ReplayConfig{
				Capture: c.String("capture"),
				Speed:   c.Float64("speed"),
				Copies:  c.Int("copies"),
				Mux:     mux.Config{Sockets: c.Int("mux-sockets")},
				Logger:  log,
			})
			return printReport(c, "replay", rep, err == nil, err)
		},
	}
}
