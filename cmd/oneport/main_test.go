package main

import (
	"bytes"
	"flag"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

func TestVersionCommand(t *testing.T) {
	app := newApp()
	var out bytes.Buffer
	app.Writer = &out
	if err := app.Run([]string{"oneport", "version"}); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "oneport ") {
		t.Fatalf("version printed %q", out.String())
	}
}

// TestEveryFlagHasEnv: every flag of every command also reads ONEPORT_<FLAG>.
func TestEveryFlagHasEnv(t *testing.T) {
	var walk func(prefix string, flags []cli.Flag, cmds []*cli.Command)
	walk = func(prefix string, flags []cli.Flag, cmds []*cli.Command) {
		for _, f := range flags {
			ev, ok := f.(interface{ GetEnvVars() []string })
			name := f.Names()[0]
			want := "ONEPORT_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
			if !ok || len(ev.GetEnvVars()) != 1 || ev.GetEnvVars()[0] != want {
				t.Errorf("%s --%s: env vars %v, want [%s]", prefix, name, ev.GetEnvVars(), want)
			}
		}
		for _, c := range cmds {
			walk(prefix+" "+c.Name, c.Flags, c.Subcommands)
		}
	}
	app := newApp()
	walk("oneport", app.Flags, app.Commands)
}

func TestMuxConfigFromFlags(t *testing.T) {
	run := func(args ...string) (*cli.Context, error) {
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		cmd := serveCommand()
		for _, f := range cmd.Flags {
			if err := f.Apply(fs); err != nil {
				return nil, err
			}
		}
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		return cli.NewContext(newApp(), fs, nil), nil
	}
	listen := &net.UDPAddr{IP: net.IPv4zero, Port: 3478}
	c, err := run("--public-ip", "203.0.113.5", "--sockets", "3")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := muxConfig(c, listen)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Sockets != 3 || len(cfg.Advertise) != 1 || cfg.Advertise[0] != netip.MustParseAddrPort("203.0.113.5:3478") {
		t.Fatalf("config %+v", cfg)
	}
	c, _ = run("--public-ip", "::ffff:203.0.113.5", "--public-port", "443")
	if cfg, err = muxConfig(c, listen); err != nil || cfg.Advertise[0] != netip.MustParseAddrPort("203.0.113.5:443") {
		t.Fatalf("mapped public IP: %+v %v", cfg.Advertise, err)
	}
	c, _ = run("--public-port", "70000")
	if _, err := muxConfig(c, listen); err == nil {
		t.Fatal("port 70000 accepted")
	}
	c, _ = run("--public-ip", "not-an-ip")
	if _, err := muxConfig(c, listen); err == nil {
		t.Fatal("bad public IP accepted")
	}
}
