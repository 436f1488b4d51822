// Command oneport runs a oneport media server node, its benchmarks, and
// reports its version.
//
// Every flag can also be set through the environment as ONEPORT_<FLAG>, the
// flag's name upper-cased with '-' turned into '_' (--log-level is
// ONEPORT_LOG_LEVEL).
package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/oneport/oneport/bench"
)

func main() {
	// A bench sender is this binary started by `oneport bench mux`.
	bench.MaybeRunSender()
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "oneport:", err)
		os.Exit(1)
	}
}

// env names the environment variable that also sets flag name.
func env(name string) []string {
	return []string{"ONEPORT_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))}
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "oneport",
		Usage: "a WebRTC media server whose whole cluster speaks through one UDP port",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: env("log-level"),
				Usage: "trace, debug, info, warn, error"},
			&cli.StringFlag{Name: "log-format", EnvVars: env("log-format"),
				Usage: "json or console (default: console when stderr is a terminal, else json)"},
		},
		Commands: []*cli.Command{serveCommand(), benchCommand(), versionCommand()},
	}
}

// newLogger builds the process logger from the global flags.
func newLogger(c *cli.Context) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(c.String("log-level"))
	if err != nil {
		return zerolog.Logger{}, fmt.Errorf("--log-level: %w", err)
	}
	var w io.Writer = os.Stderr
	switch f := c.String("log-format"); f {
	case "":
		if isTerminal(os.Stderr) {
			w = zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly}
		}
	case "console":
		w = zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly}
	case "json":
	default:
		return zerolog.Logger{}, fmt.Errorf("--log-format %q: want json or console", f)
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
