//go:build linux

package netnstest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Debian packages that provide each tool Require knows about, for the
// message that says what to install.
var toolPackages = map[string]string{
	"ip":        "iproute2",
	"nft":       "nftables",
	"conntrack": "conntrack",
	"nginx":     "nginx libnginx-mod-stream",
}

// Require skips t unless it runs as root and every tool is on PATH ("ip"
// is always required). When CI is set in the environment, where the CI
// script installs everything, it fails t instead: a skip there would hide a
// broken install.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	if msg := missing(tools); msg != "" {
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// missing describes what Require would skip for, or returns "".
func missing(tools []string) string {
	var miss, pkgs []string
	if os.Geteuid() != 0 {
		miss = append(miss, "root (for ip netns, veths and nftables)")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			miss = append(miss, tool)
			if p := toolPackages[tool]; p != "" {
				pkgs = append(pkgs, p)
			}
		}
	}
	if len(miss) == 0 {
		return ""
	}
	msg := "netnstest needs " + strings.Join(miss, ", ")
	if len(pkgs) > 0 {
		msg += " (apt-get install -y " + strings.Join(pkgs, " ") + ")"
	}
	return msg
}
