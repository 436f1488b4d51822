//go:build linux

package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// LBKind says what the LB namespace does with traffic to the VIP.
type LBKind int

const (
	// LBNFTables installs deploy/nftables-lb.sh's table: the kernel hashes
	// each client address and port to a node and DNATs to it.
	LBNFTables LBKind = iota
	// LBNone installs no rule: the LB namespace only routes, and holds the
	// VIP for a proxying LB the test starts itself (nginx).
	LBNone
)

// nsPrefix starts every namespace name, followed by the creating process's
// PID, so a later run can remove what a killed one left.
const nsPrefix = "oneport-nt-"

// sweepStale deletes the namespaces left by runs whose process is gone (a
// test binary killed by its timeout, say), killing by PID what still runs in
// them. It returns the errors it met; namespaces of live runs are kept.
func sweepStale() []error {
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		return nil // no namespaces at all
	}
	var errs []error
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), nsPrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue // not ours, or its run is alive
		}
		ns := NS(e.Name())
		if err := killAll(ns); err != nil {
			errs = append(errs, err)
		}
		if _, err := run("ip", "netns", "del", string(ns)); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// Addresses, fixed: they exist only inside the topology's namespaces.
var (
	nodeNet   = netip.MustParsePrefix("10.77.0.0/24")
	clientNet = netip.MustParsePrefix("10.78.0.0/24")
	vip       = netip.MustParseAddr("10.77.0.100")
	nodeGW    = netip.MustParseAddr("10.77.0.1") // the LB namespace on brn
	clientGW  = netip.MustParseAddr("10.78.0.1") // the LB namespace on brc
)

// Limits on Config.Nodes and Config.Clients: nodes take .2 up to below the
// VIP (.100) and clients .2 up in their /24.
const (
	MaxNodes   = 64
	MaxClients = 64
)

// Config describes a topology. The zero value is three nodes, one client
// and the nftables LB on UDP 3478.
type Config struct {
	// Nodes is the number of node namespaces. Zero: 3.
	Nodes int
	// Clients is the number of client namespaces. Zero: 1.
	Clients int
	// UDPPort is the balanced UDP port on the VIP (nodes listen on the same
	// port). Zero: 3478.
	UDPPort uint16
	// TCPPort is a balanced TCP port on the VIP (HTTP signaling). Zero: none.
	TCPPort uint16
	// LB is what the LB namespace runs. Zero: LBNFTables.
	LB LBKind
	// Seed is the first jhash seed of the nftables rule. Zero: random.
	Seed uint32
	// Script is the path of nftables-lb.sh. Empty: the repository's
	// deploy/nftables-lb.sh, found from this package's source directory.
	Script string
}

func (c *Config) applyDefaults() error {
	if c.Nodes == 0 {
		c.Nodes = 3
	}
	if c.Clients == 0 {
		c.Clients = 1
	}
	if c.UDPPort == 0 {
		c.UDPPort = 3478
	}
	if c.Nodes < 0 || c.Nodes > MaxNodes {
		return fmt.Errorf("netnstest: Nodes %d out of 1..%d", c.Nodes, MaxNodes)
	}
	if c.Clients < 0 || c.Clients > MaxClients {
		return fmt.Errorf("netnstest: Clients %d out of 1..%d", c.Clients, MaxClients)
	}
	if c.LB != LBNFTables && c.LB != LBNone {
		return fmt.Errorf("netnstest: unknown LB kind %d", c.LB)
	}
	if c.Script == "" {
		s, err := defaultScript()
		if err != nil {
			return err
		}
		c.Script = s
	}
	return nil
}

// Topology is one test's network. Its methods are safe for concurrent use.
type Topology struct {
	cfg     Config
	tag     string // PID and random part of every namespace name
	lb      NS
	nodes   []NS
	clients []NS

	mu       sync.Mutex // guards the fields below
	created  []NS       // namespaces that exist, in creation order
	procs    []*Process // started by Start
	backends []int      // nodes in the LB's pool; nil: all
	lbUp     bool       // the nftables table is installed
	closed   bool       // Cleanup ran
}

// New builds the topology and registers its clean-up with t.Cleanup. It
// skips t (or fails it under CI) when this machine cannot run it; see
// Require. On error, whatever was built is already cleaned up.
func New(t testing.TB, cfg Config) (*Topology, error) {
	t.Helper()
	tools := []string{}
	if cfg.LB == LBNFTables {
		tools = append(tools, "nft")
	}
	Require(t, tools...)
	if err := cfg.applyDefaults(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(cfg.Script); cfg.LB == LBNFTables && err != nil {
		return nil, fmt.Errorf("netnstest: LB script: %w", err)
	}
	var tag [4]byte
	if _, err := rand.Read(tag[:]); err != nil {
		return nil, err
	}
	for _, err := range sweepStale() {
		t.Logf("netnstest: stale namespace of a dead run: %v", err)
	}
	top := &Topology{cfg: cfg, tag: strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(tag[:])}
	prefix := nsPrefix + top.tag + "-"
	top.lb = NS(prefix + "lb")
	for i := range cfg.Nodes {
		top.nodes = append(top.nodes, NS(prefix+"n"+strconv.Itoa(i)))
	}
	for i := range cfg.Clients {
		top.clients = append(top.clients, NS(prefix+"c"+strconv.Itoa(i)))
	}
	t.Cleanup(func() {
		if err := top.Cleanup(); err != nil {
			t.Errorf("netnstest clean-up: %v", err)
		}
	})
	if err := top.build(); err != nil {
		cerr := top.Cleanup()
		return nil, errors.Join(err, cerr)
	}
	return top, nil
}

func (t *Topology) addNS(ns NS) error {
	if _, err := run("ip", "netns", "add", string(ns)); err != nil {
		return err
	}
	t.mu.Lock()
	t.created = append(t.created, ns)
	t.mu.Unlock()
	_, err := run("ip", "-n", string(ns), "link", "set", "lo", "up")
	return err
}

// ipn runs ip(8) inside ns.
func ipn(ns NS, args ...string) error {
	_, err := run("ip", append([]string{"-n", string(ns)}, args...)...)
	return err
}

// build creates the namespaces, the LB's bridges and VIP, one veth per
// client and node, and the LB rule.
func (t *Topology) build() error {
	if err := t.addNS(t.lb); err != nil {
		return err
	}
	lb := t.lb
	steps := [][]string{
		{"link", "add", "brn", "type", "bridge"},
		{"link", "add", "brc", "type", "bridge"},
		{"addr", "add", pfx(nodeGW, nodeNet), "dev", "brn"},
		{"addr", "add", pfx(clientGW, clientNet), "dev", "brc"},
		{"addr", "add", vip.String() + "/32", "dev", "lo"},
		{"link", "set", "brn", "up"},
		{"link", "set", "brc", "up"},
	}
	for _, s := range steps {
		if err := ipn(lb, s...); err != nil {
			return err
		}
	}
	// Forward between the bridges. If br_netfilter is loaded, keep bridged
	// node-to-node frames out of the IP hooks, as on a plain switch.
	// (Written through /proc/sys, which shows the writer's namespace, so
	// that no sysctl binary is needed.)
	if _, err := lb.Run("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"); err != nil {
		return err
	}
	if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err == nil {
		if _, err := lb.Run("sh", "-c", "echo 0 > /proc/sys/net/bridge/bridge-nf-call-iptables"); err != nil {
			return err
		}
	}
	for i, ns := range t.nodes {
		if err := t.attach(ns, "vn"+strconv.Itoa(i), "brn", t.NodeAddr(i), nodeNet, nodeGW); err != nil {
			return err
		}
	}
	for i, ns := range t.clients {
		if err := t.attach(ns, "vc"+strconv.Itoa(i), "brc", t.ClientAddr(i), clientNet, clientGW); err != nil {
			return err
		}
	}
	if t.cfg.LB == LBNFTables {
		return t.lbUpCmd()
	}
	return nil
}

// attach creates ns with a veth eth0 (address addr in net, default route via
// gw) whose peer, lbLink, is a port of bridge in the LB namespace.
func (t *Topology) attach(ns NS, lbLink, bridge string, addr netip.Addr, net netip.Prefix, gw netip.Addr) error {
	if err := t.addNS(ns); err != nil {
		return err
	}
	if err := ipn(t.lb, "link", "add", lbLink, "type", "veth", "peer", "name", "eth0", "netns", string(ns)); err != nil {
		return err
	}
	if err := ipn(t.lb, "link", "set", lbLink, "master", bridge, "up"); err != nil {
		return err
	}
	for _, s := range [][]string{
		{"addr", "add", pfx(addr, net), "dev", "eth0"},
		{"link", "set", "eth0", "up"},
		{"route", "add", "default", "via", gw.String()},
	} {
		if err := ipn(ns, s...); err != nil {
			return err
		}
	}
	return nil
}

func pfx(a netip.Addr, net netip.Prefix) string {
	return netip.PrefixFrom(a, net.Bits()).String()
}

// VIP is the load-balanced address.
func (t *Topology) VIP() netip.Addr { return vip }

// UDPAddr is VIP:UDPPort, where clients send.
func (t *Topology) UDPAddr() netip.AddrPort { return netip.AddrPortFrom(vip, t.cfg.UDPPort) }

// TCPAddr is VIP:TCPPort (invalid port 0 when Config.TCPPort is zero).
func (t *Topology) TCPAddr() netip.AddrPort { return netip.AddrPortFrom(vip, t.cfg.TCPPort) }

// Nodes is the number of node namespaces.
func (t *Topology) Nodes() int { return len(t.nodes) }

// NodeNS is node i's namespace.
func (t *Topology) NodeNS(i int) NS { return t.nodes[i] }

// NodeAddr is node i's address on the node network (10.77.0.2 + i): where
// it listens, and how other nodes reach it.
func (t *Topology) NodeAddr(i int) netip.Addr {
	if i < 0 || i >= len(t.nodes) {
		panic(fmt.Sprintf("netnstest: node %d of %d", i, len(t.nodes)))
	}
	return nthAddr(nodeNet, 2+i)
}

// Clients is the number of client namespaces.
func (t *Topology) Clients() int { return len(t.clients) }

// ClientNS is the first client's namespace.
func (t *Topology) ClientNS() NS { return t.clients[0] }

// ClientNSAt is client i's namespace.
func (t *Topology) ClientNSAt(i int) NS { return t.clients[i] }

// ClientAddr is client i's address (10.78.0.2 + i).
func (t *Topology) ClientAddr(i int) netip.Addr {
	if i < 0 || i >= len(t.clients) {
		panic(fmt.Sprintf("netnstest: client %d of %d", i, len(t.clients)))
	}
	return nthAddr(clientNet, 2+i)
}

// LBNS is the LB namespace, which holds the VIP.
func (t *Topology) LBNS() NS { return t.lb }

// LBNodeAddr is the LB namespace's address on the node network: the nodes'
// gateway, and the source address nodes see behind a proxying LB.
func (t *Topology) LBNodeAddr() netip.Addr { return nodeGW }

// Namespaces lists every namespace of the topology.
func (t *Topology) Namespaces() []NS {
	all := append([]NS{t.lb}, t.nodes...)
	return append(all, t.clients...)
}

func nthAddr(p netip.Prefix, n int) netip.Addr {
	b := p.Addr().As4()
	b[3] += byte(n)
	return netip.AddrFrom4(b)
}

// Cleanup stops the started processes, kills by PID whatever is left in the
// namespaces, removes the LB table and deletes the namespaces. New
// registers it with t.Cleanup; calling it earlier is allowed, and later
// calls do nothing. Sockets still open in a namespace keep the kernel's
// namespace (not its name) alive until they are closed: close them first.
func (t *Topology) Cleanup() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	procs, created, lbUp := t.procs, t.created, t.lbUp
	t.lbUp = false
	t.mu.Unlock()

	var errs []error
	for _, p := range procs {
		// The exit status of a process we stopped is not an error; one that
		// outlived SIGKILL is.
		var exit *exec.ExitError
		if err := p.Stop(); err != nil && !errors.As(err, &exit) {
			errs = append(errs, err)
		}
	}
	for _, ns := range created {
		if err := killAll(ns); err != nil {
			errs = append(errs, err)
		}
	}
	if lbUp {
		if _, err := t.script("down"); err != nil {
			errs = append(errs, err)
		}
	}
	for i := len(created) - 1; i >= 0; i-- {
		if _, err := run("ip", "netns", "del", string(created[i])); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
