package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/oneport/oneport/bench"
)

func benchLoadCommand() *cli.Command {
	return &cli.Command{
		Name:  "load",
		Usage: "real pion publishers and subscribers against a WHIP/WHEP server (one node or a cluster VIP): join times, packets/s, loss, jitter, latency",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "url", EnvVars: env("url"), Usage: "WHIP/WHEP base URL, http://host:port (default: a local node started for the run)"},
			&cli.StringFlag{Name: "token", EnvVars: env("token"), Usage: "bearer token for publishing, subscribing and deleting"},
			&cli.IntFlag{Name: "rooms", EnvVars: env("rooms"), Usage: "rooms (default 1)"},
			&cli.IntFlag{Name: "publishers", EnvVars: env("publishers"), Usage: "publishers per room (default 1)"},
			&cli.IntFlag{Name: "subscribers", EnvVars: env("subscribers"), Usage: "subscribers per room (default 2; negative: none)"},
			&cli.IntFlag{Name: "video-bitrate", EnvVars: env("video-bitrate"), Usage: "video bits/s per publisher, top layer (default 1000000)"},
			&cli.IntFlag{Name: "fps", EnvVars: env("fps"), Usage: "synthetic video frames/s (default 30)"},
			&cli.BoolFlag{Name: "audio", Value: true, EnvVars: env("audio"), Usage: "publish Opus too (--audio=false: video only)"},
			&cli.BoolFlag{Name: "simulcast", EnvVars: env("simulcast"), Usage: "publish three VP8 layers (q, h, f)"},
			&cli.StringFlag{Name: "video-file", EnvVars: env("video-file"), Usage: "replay this IVF file (VP8, VP9, AV1) instead of synthetic video"},
			&cli.StringFlag{Name: "audio-file", EnvVars: env("audio-file"), Usage: "replay this Ogg/Opus file instead of synthetic audio"},
			&cli.DurationFlag{Name: "duration", EnvVars: env("duration"), Usage: "how long the full load is held after the last join (default 10s)"},
			&cli.Float64Flag{Name: "ramp", EnvVars: env("ramp"), Usage: "sessions started per second (default 20)"},
			&cli.IntFlag{Name: "clients", EnvVars: env("clients"), Usage: "client processes (default 2)"},
			&cli.DurationFlag{Name: "join-timeout", EnvVars: env("join-timeout"), Usage: "offer to first media packet, per session (default 10s)"},
			&cli.IntFlag{Name: "mux-sockets", EnvVars: env("mux-sockets"), Usage: "the local node's mux sockets, without --url (default one per CPU)"},
			&cli.BoolFlag{Name: "json", EnvVars: env("json"), Usage: "print the report as JSON"},
			&cli.StringFlag{Name: "report", EnvVars: env("report"), Usage: "also write a self-contained HTML report with charts to this file"},
			&cli.BoolFlag{Name: "quiet", EnvVars: env("quiet"), Usage: "no progress line on stderr"},
		},
		Action: func(c *cli.Context) error {
			log, err := newLogger(c)
			if err != nil {
				return err
			}
			cfg := bench.LoadConfig{
				URL:          c.String("url"),
				Token:        c.String("token"),
				Rooms:        c.Int("rooms"),
				Publishers:   c.Int("publishers"),
				Subscribers:  c.Int("subscribers"),
				VideoBitrate: c.Int("video-bitrate"),
				FPS:          c.Int("fps"),
				NoAudio:      !c.Bool("audio"),
				Simulcast:    c.Bool("simulcast"),
				VideoFile:    c.String("video-file"),
				AudioFile:    c.String("audio-file"),
				Duration:     c.Duration("duration"),
				Ramp:         c.Float64("ramp"),
				Clients:      c.Int("clients"),
				JoinTimeout:  c.Duration("join-timeout"),
				MuxSockets:   c.Int("mux-sockets"),
				Logger:       log,
			}
			if !c.Bool("quiet") {
				cfg.Progress = os.Stderr
			}
			ctx, stop := benchContext()
			defer stop()
			rep, err := bench.RunLoad(ctx, cfg)
			if path := c.String("report"); path != "" && !rep.Started.IsZero() {
				if werr := writeHTMLReport(path, rep); werr != nil && err == nil {
					err = werr
				}
			}
			return printReport(c, "load", rep, !rep.Started.IsZero(), err)
		},
	}
}

func writeHTMLReport(path string, rep bench.LoadReport) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("--report: %w", err)
	}
	if err := rep.WriteHTML(f); err != nil {
		_ = f.Close()
		return fmt.Errorf("--report: %w", err)
	}
	return f.Close()
}
