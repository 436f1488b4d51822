package serve

// A oneport cluster behind a real kernel load balancer (issue 4, "Real kernel
// LB"): internal/netnstest's namespaces (client hosts, an LB host holding the
// VIP with an nftables jhash DNAT rule for VIP:3478/udp and VIP:8080/tcp,
// three node hosts on a bridge), one `oneport serve` process per node
// namespace, and pion clients as processes in the client namespaces
// (kernellb_client_linux_test.go) publishing and subscribing through the VIP
// only. Which node the kernel picks for each flow is read from the LB's
// conntrack table, never assumed.

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/oneport/oneport/cluster"
	"github.com/oneport/oneport/internal/netnstest"
)

// Ports inside the node namespaces; each node has its own address, so all
// use the defaults.
const (
	klbUDPPort    = 3478
	klbHTTPPort   = 8080
	klbGossipPort = 7946
	klbRelayPort  = 7947
)

// Deadlines of the kernel-LB tests.
const (
	klbJoinBudget    = 20 * time.Second // three alive members everywhere
	klbOwnerBudget   = 10 * time.Second // every node knows the room's owner
	klbReadyBudget   = 60 * time.Second // a client process to connected peers receiving media
	klbStopBudget    = 20 * time.Second // a client process's final report and exit
	klbResumeBudget  = 10 * time.Second // media after a re-hash or a node failure
	klbDetectBudget  = 20 * time.Second // memberlist declaring a killed node dead
	klbClientMaxRun  = 3 * time.Minute  // a client process not stopped by then fails
	klbSubscribers   = 8                // subscribers' sockets: 9 flows over 3 nodes
	klbMediaPackets  = 400              // packets every subscriber receives before the checks (2 s)
	klbResumePackets = 200              // packets after a disruption that count as resumed (1 s)
)

// klbCluster is three `oneport serve` processes behind the kernel LB.
type klbCluster struct {
	t     *testing.T
	top   *netnstest.Topology
	nodes []*node
	names []string
	key   string   // the cluster key, for nodes started again
	flags []string // extra serve flags of every node
}

// startKLBCluster builds the topology (3 nodes, 2 client hosts) and starts a
// node process in each node namespace, joined into one cluster; flags are
// extra serve flags for every node.
func startKLBCluster(t *testing.T, flags ...string) *klbCluster {
	t.Helper()
	top, err := netnstest.New(t, netnstest.Config{Nodes: 3, Clients: 2, UDPPort: klbUDPPort, TCPPort: klbHTTPPort})
	if err != nil {
		t.Fatal(err)
	}
	var k [16]byte
	_, _ = rand.Read(k[:])
	c := &klbCluster{t: t, top: top, key: hex.EncodeToString(k[:]), flags: flags}
	for i := range top.Nodes() {
		join := 0 // every node joins n0, which joins nobody
		if i == 0 {
			join = -1
		}
		c.nodes = append(c.nodes, c.startNode(i, join))
		c.names = append(c.names, fmt.Sprintf("n%d", i))
	}
	c.waitMembers(klbJoinBudget)
	return c
}

// waitMembers waits until every node sees every node alive and is ready.
func (c *klbCluster) waitMembers(d time.Duration) {
	c.t.Helper()
	waitFor(c.t, "all members alive on every node", d, func() bool {
		for i := range c.nodes {
			if len(c.alive(i)) != len(c.nodes) {
				return false
			}
		}
		return true
	})
	for i, n := range c.nodes {
		waitFor(c.t, fmt.Sprintf("n%d ready", i), d, func() bool {
			code, _ := n.health(n.base, "/readyz")
			return code == http.StatusOK
		})
	}
}

// startNode starts `oneport serve` as node i (named n<i>) in its namespace,
// joining node join (none if negative), killed by PID at clean-up, and waits
// for its serving line.
func (c *klbCluster) startNode(i, join int) *node {
	t, top := c.t, c.top
	t.Helper()
	addr := top.NodeAddr(i).String()
	args := []string{"--log-format", "json", "--log-level", "info", "serve",
		"--udp", fmt.Sprintf(":%d", klbUDPPort), "--http", fmt.Sprintf(":%d", klbHTTPPort),
		"--public-ip", top.VIP().String(),
		"--gossip", fmt.Sprintf("%s:%d", addr, klbGossipPort), "--relay", fmt.Sprintf("%s:%d", addr, klbRelayPort),
		"--advertise", addr, "--node-name", fmt.Sprintf("n%d", i), "--cluster-key", c.key}
	if join >= 0 {
		args = append(args, "--join", fmt.Sprintf("%s:%d", top.NodeAddr(join), klbGossipPort))
	}
	args = append(args, c.flags...)
	cmd := top.NodeNS(i).Command(oneportBin, args...)
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// Our own pipe, not StderrPipe: the topology's goroutine calls Wait,
	// which would close a StderrPipe before the last lines (a race report at
	// exit) were read.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = pw
	p, err := top.Start(cmd)
	pw.Close()
	if err != nil {
		pr.Close()
		t.Fatal(err)
	}
	ns := top.NodeNS(i)
	n := &node{
		t:   t,
		cmd: cmd,
		// Requests from the node's own namespace; no keep-alive, so no idle
		// connection outlives a request.
		http:   &http.Client{Timeout: httpTimeout, Transport: &http.Transport{DialContext: ns.DialContext, DisableKeepAlives: true}},
		base:   fmt.Sprintf("http://%s:%d", addr, klbHTTPPort),
		log:    newProcLog(),
		exited: make(chan struct{}),
	}
	go func() { // owned by n: ends when the process exits
		n.log.readFrom(pr)
		pr.Close()
		<-p.Done()
		n.state = cmd.ProcessState
		close(n.exited)
	}()
	t.Cleanup(n.cleanup)
	e, err := n.log.wait(startBudget, msgIs("oneport serving"))
	if err != nil {
		t.Fatalf("n%d: waiting for the \"oneport serving\" line: %v\n%s", i, err, n.log.tail(tailOnFail))
	}
	if _, err := netip.ParseAddrPort(e.str("udp")); err != nil {
		t.Fatalf("n%d: serving line: udp %q: %v", i, e.str("udp"), err)
	}
	return n
}

// info is GET /api/cluster on node i.
func (c *klbCluster) info(i int) cluster.ClusterInfo {
	c.t.Helper()
	n := c.nodes[i]
	code, _, body := n.do(n.base, http.MethodGet, "/api/cluster", "")
	var info cluster.ClusterInfo
	if err := json.Unmarshal([]byte(body), &info); code != http.StatusOK || err != nil {
		c.t.Fatalf("n%d: GET /api/cluster: %d %q: %v", i, code, body, err)
	}
	return info
}

// alive lists the members node i sees alive.
func (c *klbCluster) alive(i int) []string {
	var out []string
	for _, m := range c.info(i).Members {
		if m.State == "alive" {
			out = append(out, m.Name)
		}
	}
	return out
}

// owners lists the nodes node i's directory gives as owners of room.
func (c *klbCluster) owners(i int, room string) []cluster.MemberInfo {
	var out []cluster.MemberInfo
	for _, m := range c.info(i).Members {
		if slices.Contains(m.Rooms, room) {
			out = append(out, m)
		}
	}
	return out
}

// relayed returns node i's oneport_cluster_relay_packets_total by direction.
func (c *klbCluster) relayed(i int) (in, out float64) {
	f := c.nodes[i].scrape()
	return f.value(c.t, "oneport_cluster_relay_packets_total", "direction", "in"),
		f.value(c.t, "oneport_cluster_relay_packets_total", "direction", "out")
}

// conntrackFlow matches one UDP entry of `conntrack -L`: the original
// direction's client address and port, then the reply's source, the node
// the kernel DNATed the flow to.
var conntrackFlow = regexp.MustCompile(`src=(\S+) dst=\S+ sport=(\d+) dport=\d+ .*?src=(\S+) dst=`)

// flows reads the LB's conntrack table: the node (index) each client
// address's flow to VIP:3478 is DNATed to.
func (c *klbCluster) flows() map[netip.AddrPort]int {
	c.t.Helper()
	out, err := c.top.LBNS().Run("conntrack", "-L", "-p", "udp", "--orig-dst", c.top.VIP().String(), "--dport", fmt.Sprint(klbUDPPort))
	if err != nil {
		c.t.Fatal(err)
	}
	m := map[netip.AddrPort]int{}
	for _, line := range strings.Split(out, "\n") {
		g := conntrackFlow.FindStringSubmatch(line)
		if g == nil {
			continue
		}
		client, err := netip.ParseAddrPort(g[1] + ":" + g[2])
		if err != nil {
			c.t.Fatalf("conntrack line %q: %v", line, err)
		}
		backend, err := netip.ParseAddr(g[3])
		if err != nil {
			c.t.Fatalf("conntrack line %q: %v", line, err)
		}
		for i := range c.nodes {
			if c.top.NodeAddr(i) == backend {
				m[client] = i
			}
		}
	}
	return m
}

// nodeOf is the node index a peer's media flow goes through, from flows.
func (c *klbCluster) nodeOf(flows map[netip.AddrPort]int, p klbPeerReport) int {
	c.t.Helper()
	a, err := netip.ParseAddrPort(p.LocalAddr)
	if err != nil {
		c.t.Fatalf("peer %s: local address %q: %v", p.Location, p.LocalAddr, err)
	}
	i, ok := flows[a]
	if !ok {
		c.t.Fatalf("peer %s: no conntrack entry for %v in %v", p.Location, a, flows)
	}
	return i
}

// klbClient is a client process (TestKernelLBClient) in a client namespace.
type klbClient struct {
	t     *testing.T
	name  string
	proc  *netnstest.Process
	stdin *os.File // closing it stops the client
	log   *procLog // stderr, and stdout lines that are not reports

	mu      sync.Mutex
	reports []klbReport   // every report, in order
	eof     bool          // stdout closed
	changed chan struct{} // closed and replaced on every report and at EOF
}

// startClient re-executes the test binary in ns as a client.
func (c *klbCluster) startClient(name string, ns netnstest.NS, cfg klbClientConfig) *klbClient {
	t := c.t
	t.Helper()
	cfg.MaxRun = klbClientMaxRun
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := ns.Command(self, "-test.run=^TestKernelLBClient$", "-test.count=1", "-test.timeout="+(klbClientMaxRun+time.Minute).String())
	cmd.Env = append(cleanEnv(), klbEnv+"="+string(raw))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	p, err := c.top.Start(cmd)
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		errR.Close()
		t.Fatal(err)
	}
	cl := &klbClient{t: t, name: name, proc: p, stdin: inW, log: newProcLog(), changed: make(chan struct{})}
	go func() { // owned by cl: ends when the process closes stderr
		cl.log.readFrom(errR)
		errR.Close()
	}()
	go func() { // owned by cl: ends when the process closes stdout
		cl.readReports(outR)
		outR.Close()
	}()
	t.Cleanup(cl.cleanup)
	return cl
}

func (cl *klbClient) readReports(r *os.File) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		raw, ok := strings.CutPrefix(line, klbReportPrefix)
		if !ok {
			cl.log.add(line)
			continue
		}
		var rep klbReport
		if err := json.Unmarshal([]byte(raw), &rep); err != nil {
			cl.log.add(fmt.Sprintf("bad report %q: %v", raw, err))
			continue
		}
		cl.mu.Lock()
		cl.reports = append(cl.reports, rep)
		close(cl.changed)
		cl.changed = make(chan struct{})
		cl.mu.Unlock()
	}
	if err := sc.Err(); err != nil {
		cl.log.add(fmt.Sprintf("reading stdout: %v", err))
	}
	cl.mu.Lock()
	cl.eof = true
	close(cl.changed)
	cl.changed = make(chan struct{})
	cl.mu.Unlock()
}

// wait returns the first report from the latest one on that ok accepts,
// failing the test after d or if the process ends first.
func (cl *klbClient) wait(what string, d time.Duration, ok func(klbReport) bool) klbReport {
	cl.t.Helper()
	r, err := cl.tryWait(what, d, ok)
	if err != nil {
		cl.t.Fatal(err)
	}
	return r
}

// tryWait is wait that returns an error instead of failing the test.
func (cl *klbClient) tryWait(what string, d time.Duration, ok func(klbReport) bool) (klbReport, error) {
	cl.mu.Lock()
	next := max(len(cl.reports)-1, 0)
	cl.mu.Unlock()
	return cl.waitFrom(next, what, d, ok)
}

// waitFrom is tryWait from the next-th report on.
func (cl *klbClient) waitFrom(next int, what string, d time.Duration, ok func(klbReport) bool) (klbReport, error) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		cl.mu.Lock()
		for ; next < len(cl.reports); next++ {
			if ok(cl.reports[next]) {
				r := cl.reports[next]
				cl.mu.Unlock()
				return r, nil
			}
		}
		eof, changed := cl.eof, cl.changed
		cl.mu.Unlock()
		if eof {
			return klbReport{}, fmt.Errorf("%s: waiting for %s: the client ended:\n%s", cl.name, what, cl.log.tail(tailOnFail))
		}
		select {
		case <-changed:
		case <-deadline.C:
			return klbReport{}, fmt.Errorf("%s: no %s within %v", cl.name, what, d)
		}
	}
}

// ready waits for the client's ready report.
func (cl *klbClient) ready() klbReport {
	cl.t.Helper()
	r, err := cl.waitFrom(0, "ready report", klbReadyBudget, func(r klbReport) bool { return r.Kind == "ready" })
	if err != nil {
		cl.t.Fatal(err)
	}
	return r
}

// latest is the latest report.
func (cl *klbClient) latest() klbReport {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.reports[len(cl.reports)-1]
}

// finish stops the client and returns its final report; the process must
// exit 0.
func (cl *klbClient) finish() klbReport {
	cl.t.Helper()
	cl.stdin.Close()
	r := cl.wait("final report", klbStopBudget, func(r klbReport) bool { return r.Kind == "final" })
	select {
	case <-cl.proc.Done():
	case <-time.After(klbStopBudget):
		cl.t.Fatalf("%s: still running %v after its final report", cl.name, klbStopBudget)
	}
	if err := cl.proc.Wait(); err != nil {
		cl.t.Errorf("%s: %v:\n%s", cl.name, err, cl.log.tail(tailOnFail))
	}
	return r
}

// cleanup stops the process if it runs (stdin closed, then SIGKILL by PID)
// and fails the test on a race report in its output.
func (cl *klbClient) cleanup() {
	cl.stdin.Close()
	select {
	case <-cl.proc.Done():
	case <-time.After(klbStopBudget):
		_ = cl.proc.Cmd.Process.Kill()
		select {
		case <-cl.proc.Done():
		case <-time.After(killBudget):
			cl.t.Errorf("%s: pid %d not reaped %v after SIGKILL", cl.name, cl.proc.Cmd.Process.Pid, killBudget)
		}
	}
	if r := cl.log.raceReport(); r != "" {
		cl.t.Errorf("%s: the race detector reported:\n%s", cl.name, r)
	}
	if cl.t.Failed() {
		cl.t.Logf("%s output (last %d lines):\n%s", cl.name, tailOnFail, cl.log.tail(tailOnFail))
	}
}

// klbRun is a cluster with a room: one publisher (client host 0) and
// klbSubscribers subscribers (client host 1), all connected and receiving.
type klbRun struct {
	*klbCluster
	room      string
	owner     int // the room's owner, a node index
	pub, subs *klbClient
}

func startKLBRun(t *testing.T) *klbRun {
	t.Helper()
	return startKLBCluster(t).startRun("klb", klbSubscribers)
}

// startRun starts a room on the cluster: a publisher (client host 0), then,
// once every node knows the room's owner, subs subscribers (client host 1),
// all connected and receiving. Several runs may share a cluster.
func (c *klbCluster) startRun(room string, subs int) *klbRun {
	t := c.t
	t.Helper()
	r := &klbRun{klbCluster: c, room: room}
	base := fmt.Sprintf("http://%s", c.top.TCPAddr())
	r.pub = c.startClient(room+" publisher", c.top.ClientNSAt(0), klbClientConfig{Role: "pub", Base: base, Room: r.room, Iface: "eth0"})
	r.pub.ready()
	r.startSubs(subs)
	return r
}

// startSubs waits until every node agrees on the room's one owner, then
// starts n subscribers (client host 1), all connected and receiving.
func (r *klbRun) startSubs(n int) {
	c, t := r.klbCluster, r.t
	t.Helper()
	base := fmt.Sprintf("http://%s", c.top.TCPAddr())
	// Every node must know the owner before subscribers arrive through any
	// of them; the claim spreads by gossip.
	r.waitOwner()
	r.subs = c.startClient(r.room+" subscribers", c.top.ClientNSAt(1), klbClientConfig{
		Role: "sub", Base: base, Room: r.room, Peers: n, Iface: "eth0",
		Avoid: c.names[r.owner], // at least one WHEP request is proxied
	})
	r.subs.ready()
}

// waitOwner waits until every node's directory gives the room one owner,
// the same, and sets r.owner.
func (r *klbRun) waitOwner() {
	c := r.klbCluster
	c.t.Helper()
	waitFor(c.t, "every node agreeing on the room's one owner", klbOwnerBudget, func() bool {
		first := ""
		for i := range c.nodes {
			o := c.owners(i, r.room)
			if len(o) != 1 || (first != "" && o[0].Name != first) {
				return false
			}
			first = o[0].Name
		}
		r.owner = slices.Index(c.names, first)
		return r.owner >= 0
	})
}

// sent is the publisher's latest packet count.
func (r *klbRun) sent() uint64 { return r.pub.latest().Peers[0].Sent }

// waitMedia waits until every subscriber peer has a counter of at least c.
func (r *klbRun) waitMedia(what string, d time.Duration, c uint64) klbReport {
	r.t.Helper()
	rep, err := r.subs.tryWait(what, d, func(rep klbReport) bool {
		for _, p := range rep.Peers {
			if p.Last < c {
				return false
			}
		}
		return true
	})
	if err != nil {
		r.t.Fatalf("%v (want counter %d, publisher at %d)\n%s", err, c, r.sent(), r.describe())
	}
	return rep
}

// where lists the node of the publisher's flow, then of each subscriber's.
func (r *klbRun) where(flows map[netip.AddrPort]int) string {
	var parts []string
	for _, p := range append(r.pub.latest().Peers, r.subs.latest().Peers...) {
		a, err := netip.ParseAddrPort(p.LocalAddr)
		if i, ok := flows[a]; err == nil && ok {
			parts = append(parts, r.names[i])
		} else {
			parts = append(parts, "none")
		}
	}
	return "publisher " + parts[0] + ", subscribers " + strings.Join(parts[1:], " ")
}

// describe says where every flow is and how far each peer got, and what
// each node counted, for a failure's message.
func (r *klbRun) describe() string {
	var b strings.Builder
	flows := r.flows()
	where := func(p klbPeerReport) string {
		a, err := netip.ParseAddrPort(p.LocalAddr)
		if i, ok := flows[a]; err == nil && ok {
			return r.names[i]
		}
		return "none"
	}
	fmt.Fprintf(&b, "owner %s; conntrack %v\n", r.names[r.owner], flows)
	if ct, err := r.top.LBNS().Run("conntrack", "-L", "-p", "udp"); err == nil {
		fmt.Fprintf(&b, "conntrack -L -p udp in the LB:\n%s", ct)
	}
	for _, p := range r.pub.latest().Peers {
		fmt.Fprintf(&b, "publisher %s via %s: %s, sent %d\n", p.LocalAddr, where(p), p.State, p.Sent)
	}
	for i, p := range r.subs.latest().Peers {
		fmt.Fprintf(&b, "subscriber %d %s via %s: %s, count %d last %d lost %d backwards %d, reader error %q\n",
			i, p.LocalAddr, where(p), p.State, p.Count, p.Last, p.Lost, p.Backwards, p.ReadErr)
	}
	for i, n := range r.nodes {
		if !n.running() {
			continue
		}
		f := n.scrape()
		fmt.Fprintf(&b, "n%d:\n", i)
		for _, name := range []string{"oneport_cluster_relay_packets_total", "oneport_mux_drops_total", "oneport_mux_packets_total", "oneport_mux_flows", "oneport_sessions", "oneport_sfu_forwarded_packets_total"} {
			if mf, ok := f[name]; ok {
				for _, m := range mf.GetMetric() {
					var v float64
					switch {
					case m.GetCounter() != nil:
						v = m.GetCounter().GetValue()
					case m.GetGauge() != nil:
						v = m.GetGauge().GetValue()
					}
					var ls []string
					for _, lp := range m.GetLabel() {
						ls = append(ls, lp.GetName()+"="+lp.GetValue())
					}
					fmt.Fprintf(&b, "  %s{%s} %.0f\n", name, strings.Join(ls, ","), v)
				}
			}
		}
	}
	return b.String()
}

// stop stops the publisher, waits for its last packet at every
// subscriber, stops them, and returns both final reports.
func (r *klbRun) stop() (pub klbPeerReport, subs []klbPeerReport) {
	r.t.Helper()
	pub = r.pub.finish().Peers[0]
	if pub.Sent == 0 {
		r.t.Fatal("the publisher sent nothing")
	}
	r.waitMedia("the publisher's last packet at every subscriber", klbStopBudget, pub.Sent-1)
	return pub, r.subs.finish().Peers
}

// checkSignaling asserts that every WHIP/WHEP resource, whichever node the
// TCP VIP sent its request to, was made by the room's owner (its id carries
// the owner's tag), and that some request reached another node first.
func (r *klbRun) checkSignaling(peers []klbPeerReport) {
	r.t.Helper()
	tag := r.owners(r.owner, r.room)[0].Tag
	viaOther := 0
	for _, p := range peers {
		id := p.Location[strings.LastIndexByte(p.Location, '/')+1:]
		if got, ok := cluster.ResourceTag(id); !ok || got != tag {
			r.t.Errorf("resource %s (signaled via %s): tag %q, want the owner %s's %q", p.Location, p.Ingress, got, r.names[r.owner], tag)
		}
		if !slices.Contains(r.names, p.Ingress) {
			r.t.Errorf("resource %s: ingress %q is not a node", p.Location, p.Ingress)
		}
		if p.Ingress != r.names[r.owner] {
			viaOther++
		}
	}
	if viaOther == 0 {
		r.t.Errorf("no signaling request reached a node other than the owner")
	}
	r.t.Logf("signaling: %d of %d requests reached a non-owner node through the TCP VIP and were served by the owner %s",
		viaOther, len(peers), r.names[r.owner])
}

// perNode counts peers by the node their media flow goes through.
func (r *klbRun) perNode(flows map[netip.AddrPort]int, peers []klbPeerReport) []int {
	n := make([]int, len(r.nodes))
	for _, p := range peers {
		n[r.nodeOf(flows, p)]++
	}
	return n
}

// TestClusterBehindKernelLB: a publisher and subscribers reach the cluster
// only through the VIP, the kernel spreads their UDP flows and their HTTP
// connections over the three nodes, and every subscriber gets every packet
// in order, through the owner's relay where its flow landed elsewhere.
func TestClusterBehindKernelLB(t *testing.T) {
	start := time.Now()
	r := startKLBRun(t)
	t.Logf("cluster up, publisher and %d subscribers receiving after %v; owner %s", klbSubscribers, time.Since(start).Round(time.Millisecond), r.names[r.owner])
	from := r.sent()
	r.waitMedia(fmt.Sprintf("%d more packets at every subscriber", klbMediaPackets), mediaBudget, from+klbMediaPackets)
	flows := r.flows()
	pub, subs := r.stop()

	for i, s := range subs {
		if s.Count == 0 || s.Lost != 0 || s.Backwards != 0 || s.Last != pub.Sent-1 {
			t.Errorf("subscriber %d (via n%d): %d packets, last %d of %d, %d lost, %d backwards; want all in order, none lost",
				i, r.nodeOf(flows, s), s.Count, s.Last, pub.Sent-1, s.Lost, s.Backwards)
		}
	}
	r.checkSignaling(append([]klbPeerReport{pub}, subs...))

	// The kernel's choice, from conntrack: at least one flow reached a node
	// that does not own the room, and each such node relayed both ways.
	all := append([]klbPeerReport{pub}, subs...)
	per := r.perNode(flows, all)
	t.Logf("media flows per node (conntrack): %v; publisher via n%d", per, r.nodeOf(flows, pub))
	relayedFlows := 0
	for i, n := range per {
		in, out := r.relayed(i)
		t.Logf("n%d: %d flows, relay packets in %.0f out %.0f", i, n, in, out)
		if i == r.owner {
			continue
		}
		relayedFlows += n
		if n > 0 && (in == 0 || out == 0) {
			t.Errorf("n%d carries %d flows of a room owned by %s but relayed in %.0f, out %.0f packets", i, n, r.names[r.owner], in, out)
		}
	}
	if relayedFlows == 0 {
		t.Errorf("every flow hashed to the owner: nothing was relayed (flows per node %v)", per)
	}
	if in, out := r.relayed(r.owner); relayedFlows > 0 && (in == 0 || out == 0) {
		t.Errorf("owner %s relayed in %.0f, out %.0f packets with %d flows arriving elsewhere", r.names[r.owner], in, out, relayedFlows)
	}
	for i := range r.nodes {
		if o := r.owners(i, r.room); len(o) != 1 || o[0].Name != r.names[r.owner] {
			t.Errorf("n%d's directory gives %v as owners of %q, want only %s", i, o, r.room, r.names[r.owner])
		}
	}
	t.Logf("%d packets to each of %d subscribers, in order, none lost; %d of %d flows relayed; total %v",
		pub.Sent, len(subs), relayedFlows, len(all), time.Since(start).Round(time.Millisecond))
}

// largestGapSince is the longest gap in a peer's media that ended after t.
func largestGapSince(p klbPeerReport, t time.Time) time.Duration {
	var d time.Duration
	for _, g := range p.Gaps {
		if g.End.After(t) {
			d = max(d, g.Len)
		}
	}
	return d
}

// largestGapBefore is the longest gap that ended by t: the baseline jitter.
func largestGapBefore(p klbPeerReport, t time.Time) time.Duration {
	var d time.Duration
	for _, g := range p.Gaps {
		if !g.End.After(t) {
			d = max(d, g.Len)
		}
	}
	return d
}

// klbMaxRehashes bounds the re-hashes tried until one moves a live flow (each
// moves a flow with probability 1 - 3^-9).
const klbMaxRehashes = 5

// TestClusterKernelLBRehash: the LB re-hashes every live flow (new seed,
// conntrack flushed) under live media; flows that land on another node are
// found by their new ingress (whoHas) and media resumes at every subscriber.
// The gap per subscriber is measured and reported, not asserted.
func TestClusterKernelLBRehash(t *testing.T) {
	start := time.Now()
	r := startKLBRun(t)
	r.waitMedia("media before the re-hash", mediaBudget, r.sent()+klbResumePackets)
	t.Logf("before the re-hash: %s", r.where(r.flows()))
	h := rehashRuns(r.klbCluster, []*klbRun{r})
	pub, subs := r.stop()
	t.Logf("re-hash moved %d of %d flows; the publisher's: n%d -> n%d", h.moved, h.flows, r.nodeOf(h.before, pub), r.nodeOf(h.after, pub))
	worst := r.checkRehashed(h, 0, pub.Sent-1, subs)
	t.Logf("largest media gap after the re-hash: %v (target < 1s); total %v", worst.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// klbRehash is what rehashRuns did.
type klbRehash struct {
	at            time.Time              // the first re-hash
	from          []uint64               // each run's publisher count at the first re-hash
	before, after map[netip.AddrPort]int // conntrack before the first and after the last
	moved, flows  int                    // flows that changed node, of all the runs' flows
}

// rehashRuns re-hashes the LB (new seed, conntrack flushed) under the runs'
// live media, each time waiting until every subscriber of every run is a
// second past what its publisher had sent at the re-hash, until a re-hash
// moved a flow (at most klbMaxRehashes).
func rehashRuns(c *klbCluster, runs []*klbRun) klbRehash {
	t := c.t
	t.Helper()
	h := klbRehash{before: c.flows(), from: make([]uint64, len(runs))}
	var all []klbPeerReport
	for _, r := range runs {
		all = append(append(all, r.pub.latest().Peers...), r.subs.latest().Peers...)
	}
	h.flows = len(all)
	for try := range klbMaxRehashes {
		at := time.Now()
		if err := c.top.Rehash(); err != nil {
			t.Fatal(err)
		}
		from := make([]uint64, len(runs))
		for i, r := range runs {
			from[i] = r.sent()
		}
		if try == 0 {
			h.at, h.from = at, from
		}
		// Every subscriber past what its publisher had sent at the re-hash,
		// plus a second: media resumed on every path.
		for i, r := range runs {
			r.waitMedia("media after the re-hash", klbResumeBudget, from[i]+klbResumePackets)
		}
		h.after = c.flows()
		h.moved = 0
		for _, p := range all {
			if c.nodeOf(h.before, p) != c.nodeOf(h.after, p) {
				h.moved++
			}
		}
		if h.moved > 0 {
			return h
		}
		t.Logf("re-hash %d moved no flow; again", try+1)
	}
	t.Fatalf("%d re-hashes moved none of %d flows", klbMaxRehashes, len(all))
	return h
}

// checkRehashed logs each subscriber's path and gaps around the re-hash h,
// checks that it got media after it and the publisher's packet last, and
// returns the largest gap after the re-hash. i is the run's index in the
// runs given to rehashRuns.
func (r *klbRun) checkRehashed(h klbRehash, i int, last uint64, subs []klbPeerReport) time.Duration {
	t := r.t
	t.Helper()
	var worst time.Duration
	for j, s := range subs {
		g := largestGapSince(s, h.at)
		worst = max(worst, g)
		t.Logf("%s subscriber %d: n%d -> n%d, largest gap after the re-hash %v (before it: %v); %d skipped, %d of them retransmitted late; %d repeated; last %d, want %d",
			r.room, j, r.nodeOf(h.before, s), r.nodeOf(h.after, s), g.Round(time.Millisecond),
			largestGapBefore(s, h.at).Round(time.Millisecond), s.Lost, s.Recovered, s.Backwards-s.Recovered, s.Last, last)
		if s.Last < last {
			t.Errorf("%s subscriber %d: last packet %d, want %d", r.room, j, s.Last, last)
		}
		if s.Count == 0 || s.Last <= h.from[i] {
			t.Errorf("%s subscriber %d: no media after the re-hash", r.room, j)
		}
	}
	return worst
}

// TestClusterKernelLBNodeKill: kill -9 a node that neither owns the room nor
// carries the publisher. Subscribers whose flows did not pass through it
// lose nothing, the other nodes stay ready, memberlist declares it dead
// (time reported); once the LB drops it from its backends, the flows that
// went through it re-hash onto the others and resume.
func TestClusterKernelLBNodeKill(t *testing.T) {
	start := time.Now()
	r := startKLBRun(t)
	r.waitMedia("media before the kill", mediaBudget, r.sent()+klbResumePackets)
	flows := r.flows()
	pubNode := r.nodeOf(flows, r.pub.latest().Peers[0])
	subs := r.subs.latest().Peers
	per := r.perNode(flows, subs)

	victim := -1
	for i := range r.nodes {
		if i != r.owner && i != pubNode && (victim < 0 || per[i] > per[victim]) {
			victim = i
		}
	}
	if victim < 0 {
		t.Fatalf("no node is free of the owner and the publisher")
	}
	var survivors []int
	for i := range r.nodes {
		if i != victim {
			survivors = append(survivors, i)
		}
	}
	t.Logf("owner n%d, publisher via n%d, subscribers per node %v: killing n%d", r.owner, pubNode, per, victim)
	if per[victim] == 0 {
		t.Logf("no subscriber flow passes through n%d: only the unaffected side is checked", victim)
	}

	detected := make(chan time.Duration, 1)
	killedAt := time.Now()
	if err := r.nodes[victim].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// memberlist's verdict on every survivor, polled on a goroutine this test
	// owns and waits for, so that the media checks below run meanwhile.
	var wg sync.WaitGroup
	wg.Add(1)
	detectErr := make(chan error, 1)
	go func() {
		defer wg.Done()
		deadline := killedAt.Add(klbDetectBudget)
		for time.Now().Before(deadline) {
			if r.allSeeDead(survivors, r.names[victim]) {
				detected <- time.Since(killedAt)
				return
			}
			time.Sleep(20 * time.Millisecond) // polling interval
		}
		detectErr <- fmt.Errorf("n%d not declared dead by every survivor within %v", victim, klbDetectBudget)
	}()
	defer wg.Wait()

	// Unaffected flows keep going: a second of media past the kill.
	from := r.sent()
	r.subs.wait("media at the unaffected subscribers after the kill", klbResumeBudget, func(rep klbReport) bool {
		for _, p := range rep.Peers {
			if r.nodeOf(flows, p) != victim && p.Last < from+klbResumePackets {
				return false
			}
		}
		return true
	})
	for _, i := range survivors {
		n := r.nodes[i]
		if code, rep := n.health(n.base, "/readyz"); code != http.StatusOK {
			t.Errorf("n%d /readyz after n%d died: %d %+v", i, victim, code, rep)
		}
	}
	// The LB's health check drops the dead node: its flows re-hash over the
	// survivors, which relay them to the owner.
	droppedAt := time.Now()
	if err := r.top.SetBackends(survivors...); err != nil {
		t.Fatal(err)
	}
	from = r.sent()
	r.waitMedia("media at every subscriber after the LB dropped the dead node", klbResumeBudget, from+klbResumePackets)

	var detection time.Duration
	select {
	case detection = <-detected:
	case err := <-detectErr:
		t.Fatal(err)
	}
	for _, i := range survivors {
		n := r.nodes[i]
		if code, rep := n.health(n.base, "/readyz"); code != http.StatusOK {
			t.Errorf("n%d /readyz after n%d was declared dead: %d %+v", i, victim, code, rep)
		}
	}
	pub, final := r.stop()
	for i, s := range final {
		via := r.nodeOf(flows, s)
		if via != victim {
			if s.Lost != 0 || s.Backwards != 0 || s.Last != pub.Sent-1 {
				t.Errorf("subscriber %d (via n%d, alive): %d lost, %d backwards, last %d of %d; want none lost",
					i, via, s.Lost, s.Backwards, s.Last, pub.Sent-1)
			}
			continue
		}
		var resumed time.Duration // from the LB dropping the node to the end of the gap
		for _, g := range s.Gaps {
			if g.End.After(droppedAt) && g.End.Add(-g.Len).Before(droppedAt) {
				resumed = g.End.Sub(droppedAt)
			}
		}
		t.Logf("subscriber %d (via n%d, killed): largest gap %v, media back %v after the LB dropped n%d; %d skipped, %d of them retransmitted late; %d repeated",
			i, via, largestGapSince(s, killedAt).Round(time.Millisecond), resumed.Round(time.Millisecond), victim,
			s.Lost, s.Recovered, s.Backwards-s.Recovered)
		if s.Last != pub.Sent-1 {
			t.Errorf("subscriber %d (via n%d, killed): last packet %d of %d", i, via, s.Last, pub.Sent-1)
		}
	}
	t.Logf("n%d killed: memberlist declared it dead on every survivor after %v; %d subscribers unaffected lost nothing; total %v",
		victim, detection.Round(time.Millisecond), len(final)-per[victim], time.Since(start).Round(time.Millisecond))
}

// allSeeDead reports whether every survivor's /api/cluster gives name as
// dead (or has forgotten it). It runs on a goroutine: errors are "no".
func (r *klbRun) allSeeDead(survivors []int, name string) bool {
	for _, i := range survivors {
		n := r.nodes[i]
		resp, err := n.http.Get(n.base + "/api/cluster")
		if err != nil {
			return false
		}
		var info cluster.ClusterInfo
		err = json.NewDecoder(resp.Body).Decode(&info)
		resp.Body.Close()
		if err != nil {
			return false
		}
		for _, m := range info.Members {
			if m.Name == name && (m.State == "alive" || m.State == "suspect") {
				return false
			}
		}
	}
	return true
}
