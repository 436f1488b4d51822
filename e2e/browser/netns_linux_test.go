//go:build linux

package browser

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// netnsTopology is one test's network: a namespace for the browser and a
// veth pair on a private /30, root side hostAddr, namespace side nsAddr.
type netnsTopology struct {
	name     string     // network namespace
	hostLink string     // veth end in the root namespace
	hostAddr netip.Addr // on hostLink; the server listens here
	nsAddr   netip.Addr // on the namespace's end
}

// cmdTimeout bounds each ip(8) invocation.
const cmdTimeout = 10 * time.Second

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// runQuiet is run for clean-up: it reports failures but never stops the test.
func runQuiet(t testing.TB, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// newTopology creates the namespace and veth pair, with names unique to this
// run and a 10.203.0.0/16 /30 that no interface of the root namespace uses,
// and registers their removal, and the killing of every process left in the
// namespace, with t.Cleanup.
func newTopology(t *testing.T) *netnsTopology {
	t.Helper()
	var tag [3]byte
	if _, err := rand.Read(tag[:]); err != nil {
		t.Fatal(err)
	}
	id := hex.EncodeToString(tag[:])
	top := &netnsTopology{name: "oneport-e2e-" + id, hostLink: "opb" + id + "h"}
	nsLink := "opb" + id + "n"
	top.hostAddr, top.nsAddr = freeSubnet(t)

	run(t, "ip", "netns", "add", top.name)
	t.Cleanup(func() { top.destroy(t) })
	run(t, "ip", "link", "add", top.hostLink, "type", "veth", "peer", "name", nsLink, "netns", top.name)
	run(t, "ip", "addr", "add", top.hostAddr.String()+"/30", "dev", top.hostLink)
	run(t, "ip", "link", "set", top.hostLink, "up")
	run(t, "ip", "-n", top.name, "addr", "add", top.nsAddr.String()+"/30", "dev", nsLink)
	run(t, "ip", "-n", top.name, "link", "set", nsLink, "up")
	run(t, "ip", "-n", top.name, "link", "set", "lo", "up")
	return top
}

// freeSubnet picks a random /30 in 10.203.0.0/16 that overlaps no address
// of the root namespace, and returns its .1 (root side) and .2.
func freeSubnet(t *testing.T) (host, ns netip.Addr) {
	t.Helper()
	used := localPrefixes(t)
	for range 64 {
		var b [2]byte
		if _, err := rand.Read(b[:]); err != nil {
			t.Fatal(err)
		}
		base := netip.AddrFrom4([4]byte{10, 203, b[0], b[1] &^ 3})
		p := netip.PrefixFrom(base, 30)
		clash := false
		for _, u := range used {
			if u.Overlaps(p) {
				clash = true
				break
			}
		}
		if !clash {
			return base.Next(), base.Next().Next()
		}
	}
	t.Fatal("no free /30 in 10.203.0.0/16")
	return
}

func localPrefixes(t *testing.T) []netip.Prefix {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if p, err := netip.ParsePrefix(n.String()); err == nil {
				out = append(out, p.Masked())
			}
		}
	}
	return out
}

// pids lists the processes whose network namespace is the topology's.
func (top *netnsTopology) pids(t testing.TB) []int {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", top.name).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			pids = append(pids, pid)
		}
	}
	return pids
}

// destroy kills, by PID, every process still in the namespace (all of them
// were started by this test: the driver, node and Chromium with its helpers),
// waits for them to go, then removes the namespace and the veth pair.
func (top *netnsTopology) destroy(t *testing.T) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := top.pids(t)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("processes %v still in namespace %s after SIGKILL", pids, top.name)
			break
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond) // poll interval while the kernel reaps them
	}
	if err := runQuiet(t, "ip", "netns", "del", top.name); err != nil {
		t.Errorf("clean-up: %v", err)
	}
	// Deleting the namespace destroys the veth pair, asynchronously; if the
	// root end outlives a short wait (or the pair never reached the
	// namespace), delete it by name.
	for deadline := time.Now().Add(2 * time.Second); ; {
		if _, err := net.InterfaceByName(top.hostLink); err != nil {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
	if err := runQuiet(t, "ip", "link", "del", top.hostLink); err != nil {
		if _, gone := net.InterfaceByName(top.hostLink); gone != nil {
			return
		}
		t.Errorf("clean-up: %v", err)
	}
}
