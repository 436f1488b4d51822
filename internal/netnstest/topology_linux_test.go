//go:build linux

package netnstest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Bounds of one UDP exchange through the LB: the first datagrams of a flow
// may wait for ARP.
const (
	attempts = 5
	wait     = 500 * time.Millisecond
	flows    = 48 // client sockets; 3 nodes all get some unless jhash is broken (P(miss) = 3·(2/3)^48)
)

func newTopo(t *testing.T, cfg Config) *Topology {
	t.Helper()
	top, err := New(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return top
}

// udpEchoes starts a UDPEcho tagged "n<i>" on every node's UDP port.
func udpEchoes(t *testing.T, top *Topology) []*UDPEcho {
	t.Helper()
	var es []*UDPEcho
	for i := range top.Nodes() {
		e, err := StartUDPEcho(top.NodeNS(i), netip.AddrPortFrom(top.NodeAddr(i), top.UDPAddr().Port()), fmt.Sprintf("n%d", i))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		es = append(es, e)
	}
	return es
}

// clientSockets opens n unconnected UDP sockets spread over the client
// namespaces, each on its own ephemeral port: n flows to the LB.
func clientSockets(t *testing.T, top *Topology, n int) []*net.UDPConn {
	t.Helper()
	var cs []*net.UDPConn
	for k := range n {
		i := k % top.Clients()
		c, err := top.ClientNSAt(i).ListenUDP(netip.AddrPortFrom(top.ClientAddr(i), 0))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cs = append(cs, c)
	}
	return cs
}

// exchangeAll makes rounds exchanges on every flow and returns the tag of
// the node that answered each; every answer must come from the VIP and a
// flow must stay on one node.
func exchangeAll(t *testing.T, top *Topology, cs []*net.UDPConn, label string, rounds int) []string {
	t.Helper()
	tags := make([]string, len(cs))
	for k, c := range cs {
		for r := range rounds {
			tag, from, err := Exchange(c, top.UDPAddr(), fmt.Sprintf("%s flow %d round %d", label, k, r), attempts, wait)
			if err != nil {
				t.Fatalf("flow %d (%v): %v", k, c.LocalAddr(), err)
			}
			if from != top.UDPAddr() {
				t.Fatalf("flow %d: reply from %v, want the VIP %v (not un-NATed)", k, from, top.UDPAddr())
			}
			if r > 0 && tag != tags[k] {
				t.Fatalf("flow %d moved from %s to %s without a rehash", k, tags[k], tag)
			}
			tags[k] = tag
		}
	}
	return tags
}

func perNode(tags []string) map[string]int {
	m := make(map[string]int)
	for _, tag := range tags {
		m[tag]++
	}
	return m
}

func TestUDPThroughVIP(t *testing.T) {
	t.Parallel()
	top := newTopo(t, Config{Nodes: 3, Clients: 2, UDPPort: 3478, TCPPort: 8080})
	es := udpEchoes(t, top)
	cs := clientSockets(t, top, flows)

	start := time.Now()
	tags := exchangeAll(t, top, cs, "udp", 3)
	t.Logf("%d flows × 3 exchanges in %v; flows per node %v", len(cs), time.Since(start), perNode(tags))

	counts := perNode(tags)
	for i := range top.Nodes() {
		if counts[fmt.Sprintf("n%d", i)] == 0 {
			t.Errorf("node %d got none of %d flows: %v", i, len(cs), counts)
		}
	}
	// Each node saw the clients' real addresses (DNAT, no SNAT), three
	// datagrams from each flow it was given.
	for k, c := range cs {
		var node int
		fmt.Sscanf(tags[k], "n%d", &node)
		src := c.LocalAddr().(*net.UDPAddr).AddrPort()
		if got := es[node].Sources()[src]; got != 3 {
			t.Errorf("flow %d: node %d saw %d datagrams from %v, want 3; it saw %v", k, node, got, src, es[node].Sources())
		}
	}

	// A connected socket accepts datagrams from its peer only: it gets an
	// answer only if the reply was un-NATed to the VIP.
	dc, err := top.ClientNS().DialUDP(netip.AddrPort{}, top.UDPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	if _, _, err := Exchange(dc, netip.AddrPort{}, "connected", attempts, wait); err != nil {
		t.Fatalf("connected client: %v", err)
	}
}

func TestRehashMovesLiveFlows(t *testing.T) {
	t.Parallel()
	Require(t, "nft", "conntrack")
	top := newTopo(t, Config{Nodes: 3, UDPPort: 3478, TCPPort: 8080, Seed: 0x1badcafe})
	udpEchoes(t, top)
	cs := clientSockets(t, top, flows)
	before := exchangeAll(t, top, cs, "before", 2)

	status, err := top.LBStatus()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(status, "seed 0x1badcafe") {
		t.Errorf("status does not show the configured seed:\n%s", status)
	}
	for i := range top.Nodes() {
		if n := perNode(before)[fmt.Sprintf("n%d", i)]; !strings.Contains(status, fmt.Sprintf("%v %d\n", top.NodeAddr(i), n)) {
			t.Errorf("status does not count %d tracked flows for node %v:\n%s", n, top.NodeAddr(i), status)
		}
	}

	// Same seed: the conntrack entries go, but the hash puts every flow
	// back where it was.
	if err := top.RehashSeed(0x1badcafe); err != nil {
		t.Fatal(err)
	}
	if same := exchangeAll(t, top, cs, "same-seed", 2); !slices.Equal(same, before) {
		t.Fatalf("rehash with the same seed moved flows:\nbefore %v\nafter  %v", before, same)
	}

	start := time.Now()
	if err := top.Rehash(); err != nil {
		t.Fatal(err)
	}
	after := exchangeAll(t, top, cs, "after", 2)
	moved := 0
	for k := range cs {
		if after[k] != before[k] {
			moved++
		}
	}
	t.Logf("rehash + %d flows × 2 exchanges in %v: %d of %d flows moved; per node before %v after %v",
		len(cs), time.Since(start), moved, len(cs), perNode(before), perNode(after))
	if moved == 0 {
		t.Fatalf("no live flow moved after a rehash with a new seed")
	}
}

func TestTCPThroughVIP(t *testing.T) {
	t.Parallel()
	top := newTopo(t, Config{Nodes: 3, UDPPort: 3478, TCPPort: 8080})
	var es []*TCPEcho
	for i := range top.Nodes() {
		e, err := StartTCPEcho(top.NodeNS(i), netip.AddrPortFrom(top.NodeAddr(i), 8080), fmt.Sprintf("n%d", i))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		es = append(es, e)
	}
	const conns = 24 // P(all on one node) = 3·(1/3)^24
	seen := make(map[string]int)
	for k := range conns {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := top.ClientNS().DialContext(ctx, "tcp", top.TCPAddr().String())
		cancel()
		if err != nil {
			t.Fatalf("conn %d: %v", k, err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		msg := fmt.Sprintf("hello %d\n", k)
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("conn %d: %v", k, err)
		}
		tag, echoed, _ := strings.Cut(line, "|")
		if echoed != msg {
			t.Fatalf("conn %d: reply %q", k, line)
		}
		var node int
		fmt.Sscanf(tag, "n%d", &node)
		src := c.LocalAddr().(*net.TCPAddr).AddrPort()
		if es[node].Sources()[src] != 1 {
			t.Errorf("conn %d: node %d did not see the client's address %v: %v", k, node, src, es[node].Sources())
		}
		seen[tag]++
		c.Close()
	}
	t.Logf("%d connections per node: %v", conns, seen)
	if len(seen) < 2 {
		t.Errorf("all %d connections went to one node: %v", conns, seen)
	}
}

func netnsNames(t *testing.T) []string {
	t.Helper()
	out, err := run("ip", "netns", "list")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

func rootState(t *testing.T) string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	tables, err := run("nft", "list", "tables")
	if err != nil {
		t.Fatal(err)
	}
	return "links " + strings.Join(names, ",") + "\ntables " + tables
}

func TestCleanupLeavesNothing(t *testing.T) {
	Require(t, "nft")
	rootBefore := rootState(t)
	top := newTopo(t, Config{Nodes: 2, UDPPort: 3478, TCPPort: 8080})
	if got := rootState(t); got != rootBefore {
		t.Errorf("the root namespace changed:\nbefore %s\nafter  %s", rootBefore, got)
	}

	// The table is the LB's own; down removes it, up brings it back.
	lbTables := func() string {
		out, err := top.LBNS().Run("nft", "list", "tables")
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if !strings.Contains(lbTables(), "table ip oneport_lb") {
		t.Fatalf("no oneport_lb table in the LB namespace: %q", lbTables())
	}
	if err := top.LBDown(); err != nil {
		t.Fatal(err)
	}
	if got := lbTables(); got != "" {
		t.Fatalf("tables left after down: %q", got)
	}
	if err := top.LBUp(); err != nil {
		t.Fatal(err)
	}
	if err := top.LBUp(); err != nil { // idempotent
		t.Fatal(err)
	}
	if got := lbTables(); got != "table ip oneport_lb\n" {
		t.Fatalf("tables after up twice: %q", got)
	}

	// A tracked process, and one started behind the topology's back (a
	// child of a command, say), which the PID sweep must find.
	tracked, err := top.Start(top.NodeNS(0).Command("sleep", "60"))
	if err != nil {
		t.Fatal(err)
	}
	stray := top.NodeNS(1).Command("sleep", "60")
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	strayDone := make(chan error, 1)
	go func() { strayDone <- stray.Wait() }()
	waitInNS(t, top.NodeNS(1), stray.Process.Pid)

	names := top.Namespaces()
	if err := top.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := top.Cleanup(); err != nil {
		t.Fatalf("second Cleanup: %v", err)
	}
	select {
	case <-tracked.Done():
	default:
		t.Error("tracked process still running after Cleanup")
	}
	select {
	case err := <-strayDone:
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Errorf("stray process: %v, want killed by SIGKILL", err)
		}
	case <-time.After(killTimeout):
		t.Error("stray process still running after Cleanup")
	}
	left := netnsNames(t)
	for _, ns := range names {
		if slices.Contains(left, string(ns)) {
			t.Errorf("namespace %s left", ns)
		}
		if _, err := os.Stat(ns.Path()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v", ns.Path(), err)
		}
	}
	if got := rootState(t); got != rootBefore {
		t.Errorf("the root namespace changed:\nbefore %s\nafter  %s", rootBefore, got)
	}
	if _, err := top.Start(top.NodeNS(0).Command("true")); err == nil {
		t.Error("Start after Cleanup succeeded")
	}
}

// nsID is the namespace a /proc ns/net link names ("net:[4026531840]").
func nsID(t *testing.T, link string) string {
	t.Helper()
	id, err := os.Readlink(link)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestDoLeavesNoThreadInANamespace(t *testing.T) {
	top := newTopo(t, Config{Nodes: 2})
	root := nsID(t, "/proc/self/ns/net")
	want := make(map[NS]string)
	for _, ns := range top.Namespaces() {
		var st syscall.Stat_t
		if err := syscall.Stat(ns.Path(), &st); err != nil {
			t.Fatal(err)
		}
		want[ns] = fmt.Sprintf("net:[%d]", st.Ino)
	}

	const calls = 200
	var wg sync.WaitGroup
	errs := make(chan error, calls)
	for k := range calls {
		ns := top.Namespaces()[k%len(want)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- ns.Do(func() error {
				id, err := os.Readlink("/proc/thread-self/ns/net")
				if err != nil {
					return err
				}
				if id != want[ns] {
					return fmt.Errorf("inside Do(%s): thread in %s, want %s", ns, id, want[ns])
				}
				runtime.Gosched()
				return nil
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// A function that exits its goroutine is reported, and its thread too
	// is switched back.
	if err := top.NodeNS(0).Do(func() error { runtime.Goexit(); return nil }); !errors.Is(err, ErrNotReturned) {
		t.Fatalf("Do with Goexit: %v, want ErrNotReturned", err)
	}

	tasks, err := filepath.Glob("/proc/self/task/*/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	for _, link := range tasks {
		if id, err := os.Readlink(link); err == nil && id != root {
			t.Errorf("%s is %s, not the process's namespace %s", link, id, root)
		}
	}
	t.Logf("%d Do calls; %d threads, all in %s", calls, len(tasks), root)
}

func TestRunAndStartInNamespace(t *testing.T) {
	t.Parallel()
	top := newTopo(t, Config{Nodes: 1, LB: LBNone})
	out, err := top.NodeNS(0).Run("ip", "-4", "-o", "addr", "show", "dev", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, top.NodeAddr(0).String()+"/24") {
		t.Fatalf("node 0's eth0: %q, want %v/24", out, top.NodeAddr(0))
	}
	if _, err := top.LBNS().Run("false"); err == nil {
		t.Error("Run of a failing command returned no error")
	}
	if err := top.Rehash(); !errors.Is(err, errNoLB) {
		t.Errorf("Rehash without the nftables LB: %v", err)
	}
	if out, err := top.LBNS().Run("nft", "list", "tables"); err != nil || out != "" {
		t.Errorf("LBNone installed tables: %q, %v", out, err)
	}

	p, err := top.Start(top.NodeNS(0).Command("sleep", "60"))
	if err != nil {
		t.Fatal(err)
	}
	waitInNS(t, top.NodeNS(0), p.Cmd.Process.Pid)
	var exit *exec.ExitError
	if err := p.Stop(); !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
		t.Errorf("Stop: %v, want the process ended by SIGTERM", err)
	}
	if err := p.Stop(); !errors.As(err, &exit) {
		t.Errorf("second Stop: %v", err)
	}
}

func TestSetBackendsMovesOnlyRemovedFlows(t *testing.T) {
	t.Parallel()
	Require(t, "nft", "conntrack")
	top := newTopo(t, Config{Nodes: 3, UDPPort: 3478})
	udpEchoes(t, top)
	cs := clientSockets(t, top, flows)
	before := exchangeAll(t, top, cs, "before", 2)

	// Node 2 leaves the pool: only its flows move, and only to 0 and 1.
	if err := top.SetBackends(0, 1); err != nil {
		t.Fatal(err)
	}
	after := exchangeAll(t, top, cs, "without-n2", 2)
	for k := range cs {
		switch {
		case after[k] == "n2":
			t.Errorf("flow %d still reaches the removed node", k)
		case before[k] != "n2" && after[k] != before[k]:
			t.Errorf("flow %d moved from %s to %s though its node stayed in the pool", k, before[k], after[k])
		}
	}

	// Node 2 rejoins: live flows stay where they are.
	if err := top.SetBackends(); err != nil {
		t.Fatal(err)
	}
	if again := exchangeAll(t, top, cs, "with-n2", 2); !slices.Equal(again, after) {
		t.Errorf("adding a node moved live flows:\nbefore %v\nafter  %v", after, again)
	}
	t.Logf("flows per node: all %v, without n2 %v", perNode(before), perNode(after))
}

func TestScriptRejectsBadInput(t *testing.T) {
	t.Parallel()
	Require(t, "nft")
	top := newTopo(t, Config{Nodes: 1, LB: LBNone})
	script := top.cfg.Script
	for _, args := range [][]string{
		{"up", "--vip", "10.77.0.300", "--udp-port", "3478", "10.77.0.2"},
		{"up", "--vip", "10.77.0.100", "--udp-port", "70000", "10.77.0.2"},
		{"up", "--vip", "10.77.0.100", "--udp-port", "3478"},
		{"up", "--vip", "10.77.0.100", "--udp-port", "3478", "10.77.0.2", "10.77.0.2"},
		{"up", "--vip", "10.77.0.100", "--udp-port", "3478", "10.77.0.100"},
		{"up", "--vip", "10.77.0.100", "--udp-port", "3478", "--seed", "0x100000000", "10.77.0.2"},
		{"up", "--vip", "10.77.0.100", "--udp-port", "3478", "--table", "x;y", "10.77.0.2"},
		{"up", "--bogus"},
		{"rehash"}, // nothing installed
		{"sideways"},
	} {
		if out, err := top.LBNS().Run("sh", append([]string{script}, args...)...); err == nil {
			t.Errorf("nftables-lb.sh %v succeeded:\n%s", args, out)
		}
	}
	if out, err := top.LBNS().Run("nft", "list", "tables"); err != nil || out != "" {
		t.Errorf("rejected commands left tables: %q, %v", out, err)
	}
	// down and status with nothing installed: nothing to do, not an error
	// for down; status says so with exit status 3.
	if _, err := top.LBNS().Run("sh", script, "down"); err != nil {
		t.Error(err)
	}
	out, err := top.LBNS().Run("sh", script, "status")
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 || !strings.Contains(out, "not installed") {
		t.Errorf("status with nothing installed: %v: %q", err, out)
	}
}

// waitInNS waits until pid is in ns: ip netns exec enters the namespace,
// then execs.
func waitInNS(t *testing.T, ns NS, pid int) {
	t.Helper()
	for deadline := time.Now().Add(killTimeout); ; {
		got := pids(ns)
		if slices.Contains(got, pid) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pids in %s: %v, want %d among them", ns, got, pid)
		}
		time.Sleep(pollEvery) // poll interval
	}
}
