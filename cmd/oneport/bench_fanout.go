package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/oneport/oneport/bench"
)

func benchFanoutCommand() *cli.Command {
	return &cli.Command{
		Name:  "fanout",
		Usage: "one publisher to N subscribers, N stepped up until loss or growing latency, on pion's mux and oneport's, in one run",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "mux", EnvVars: env("mux"), Usage: "servers to measure, in order: pion, oneport (default both)"},
			&cli.IntSliceFlag{Name: "steps", EnvVars: env("steps"), Usage: "subscriber counts to step through (default 25,50,100,200,300,400,500,600,800,1000,1200,1500)"},
			&cli.IntFlag{Name: "max-subscribers", EnvVars: env("max-subscribers"), Usage: "largest N measured (default 1000)"},
			&cli.DurationFlag{Name: "step-duration", EnvVars: env("step-duration"), Usage: "measured window per step (default 4s)"},
			&cli.DurationFlag{Name: "settle", EnvVars: env("settle"), Usage: "pause after a step's joins (default 1s)"},
			&cli.IntFlag{Name: "clients", EnvVars: env("clients"), Usage: "subscriber processes (default 2)"},
			&cli.IntFlag{Name: "video-bitrate", EnvVars: env("video-bitrate"), Usage: "publisher video bits/s (default 2000000)"},
			&cli.IntFlag{Name: "video-pps", EnvVars: env("video-pps"), Usage: "publisher video packets/s (default 200)"},
			&cli.Float64Flag{Name: "max-loss", EnvVars: env("max-loss"), Usage: "loss ratio that fails a step (default 0.01)"},
			&cli.Float64Flag{Name: "max-latency-slope", EnvVars: env("max-latency-slope"), Usage: "latency growth in ms/s that fails a step (default 2)"},
			&cli.IntFlag{Name: "mux-sockets", EnvVars: env("mux-sockets"), Usage: "oneport mux sockets (default one per CPU)"},
			&cli.StringFlag{Name: "profile-dir", EnvVars: env("profile-dir"), Usage: "write a server CPU profile of each step here"},
			&cli.BoolFlag{Name: "json", EnvVars: env("json"), Usage: "print the report as JSON"},
		},
		Action: func(c *cli.Context) error {
			log, err := newLogger(c)
			if err != nil {
				return err
			}
			if dir := c.String("profile-dir"); dir != "" {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					return fmt.Errorf("--profile-dir: %w", err)
				}
			}
			cfg := bench.FanoutConfig{
				Muxes:           c.StringSlice("mux"),
				Steps:           c.IntSlice("steps"),
				MaxSubscribers:  c.Int("max-subscribers"),
				StepDuration:    c.Duration("step-duration"),
				Settle:          c.Duration("settle"),
				Clients:         c.Int("clients"),
				VideoBitrate:    c.Int("video-bitrate"),
				VideoPPS:        c.Int("video-pps"),
				MaxLoss:         c.Float64("max-loss"),
				MaxLatencySlope: c.Float64("max-latency-slope"),
				MuxSockets:      c.Int("mux-sockets"),
				ProfileDir:      c.String("profile-dir"),
				Logger:          log,
			}
			ctx, stop := benchContext()
			defer stop()
			rep, err := bench.RunFanout(ctx, cfg)
			return printReport(c, "fanout", rep, len(rep.Servers) > 0, err)
		},
	}
}
