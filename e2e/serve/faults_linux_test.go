package serve

// Faults in the kernel-LB cluster (issue 7, "Faults"): the three `oneport
// serve` processes of kernellb_linux_test.go behind the nftables VIP, with
// pion clients as processes in the client namespaces, put through what an
// operator and a network do to a cluster: a node cut off from the others and
// healed, every node drained and restarted in turn under load, an LB re-hash
// while several rooms carry media, and a room kept live while every other
// node restarts.
//
// Faults are made with nftables in the topology's own namespaces: a node is
// cut off by a table in its namespace dropping every packet to and from the
// other nodes' addresses (the VIP and the clients still reach it), and a
// client host is sent to one node (an LB route, what a client on one side of
// a split would see) by a DNAT chain in the LB namespace that runs before the
// LB's jhash. Both go away with their namespaces.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/oneport/oneport/bench"
	"github.com/oneport/oneport/internal/netnstest"
)

// Budgets and sizes of the fault tests.
const (
	faultDetectBudget = 30 * time.Second // both sides of a cut declaring the other dead
	faultHealBudget   = 60 * time.Second // every node seeing every node alive after a heal
	faultSettleBudget = 30 * time.Second // the directories agreeing on one owner per room
	faultBenchBudget  = 90 * time.Second // one `oneport bench load` run, start to exit
	faultSubs         = 2                // subscribers per room in the multi-room tests
	faultRehashSubs   = 4                // subscribers per room under the re-hash
	faultAdminToken   = "fault-admin"    // --admin-token of the drain test
	// faultDrainTimeout is the drain test's --drain-timeout: far beyond
	// anything it waits for, so a session ended by the server before it is
	// a failure, not the timeout.
	faultDrainTimeout = 5 * time.Minute
)

// spreadRooms are room names whose rendezvous scores at equal load favour
// n0, n1 and n2 respectively over a hundredfold, so that rooms started one
// after the other land on three different nodes at the loads these tests
// make. Placement still decides: the tests read where each room went.
var spreadRooms = []string{"spread14", "spread127", "spread187"}

// Reasons of "participant left" lines that the client caused: a DELETE, or
// its PeerConnection closed (DTLS close_notify). Any other reason ("server
// closed", "ice failed or consent expired", "room ended: ...") is the server
// ending a session.
var clientLeft = []string{"deleted", "peer connection closed"}

// serverEnded returns node n's "participant left" lines, from the from-th on,
// whose reason is not the client's doing.
func serverEnded(n *node, from int) []logEntry {
	var out []logEntry
	left := n.participantsLeft()
	for _, e := range left[min(from, len(left)):] {
		if !slices.Contains(clientLeft, e.str("reason")) {
			out = append(out, e)
		}
	}
	return out
}

// nft loads ruleset (nft syntax) in ns through a file.
func (c *klbCluster) nft(ns netnstest.NS, ruleset string) {
	c.t.Helper()
	f := filepath.Join(c.t.TempDir(), "rules.nft")
	if err := os.WriteFile(f, []byte(ruleset), 0o600); err != nil {
		c.t.Fatal(err)
	}
	if _, err := ns.Run("nft", "-f", f); err != nil {
		c.t.Fatal(err)
	}
}

// faultTable is the nftables table of the faults, in a node's namespace (the
// cut) and in the LB's (the client pins).
const faultTable = "oneport_fault"

// cut drops every packet between node i and the other nodes, both ways, in
// node i's namespace: gossip, relay and proxied signaling. Clients and the
// VIP still reach it.
func (c *klbCluster) cut(i int) {
	c.t.Helper()
	var others []string
	for j := range c.nodes {
		if j != i {
			others = append(others, c.top.NodeAddr(j).String())
		}
	}
	set := strings.Join(others, ", ")
	c.nft(c.top.NodeNS(i), fmt.Sprintf(`table inet %[1]s {
	chain in {
		type filter hook input priority filter - 10; policy accept;
		ip saddr { %[2]s } drop
	}
	chain out {
		type filter hook output priority filter - 10; policy accept;
		ip daddr { %[2]s } drop
	}
}
`, faultTable, set))
}

// heal undoes cut.
func (c *klbCluster) heal(i int) {
	c.t.Helper()
	if _, err := c.top.NodeNS(i).Run("nft", "delete", "table", "inet", faultTable); err != nil {
		c.t.Fatal(err)
	}
}

// pin sends client host client's new flows to the VIP (media and
// signaling) to node i only, ahead of the LB's hash: flows already tracked
// keep their node. Pins stay until the LB namespace goes (deleting the
// table while pinned flows run would disturb them).
func (c *klbCluster) pin(client, i int) {
	c.t.Helper()
	from, to, vip := c.top.ClientAddr(client), c.top.NodeAddr(i), c.top.VIP()
	c.nft(c.top.LBNS(), fmt.Sprintf(`table ip %[1]s {
	chain pre {
		type nat hook prerouting priority dstnat - 10; policy accept;
	}
}
add rule ip %[1]s pre ip saddr %[2]s ip daddr %[3]s udp dport %[4]d dnat to %[5]s
add rule ip %[1]s pre ip saddr %[2]s ip daddr %[3]s tcp dport %[6]d dnat to %[5]s
`, faultTable, from, vip, klbUDPPort, to, klbHTTPPort))
}

// localRooms is GET /api/rooms on node i: the rooms its sfu holds.
func (c *klbCluster) localRooms(i int) []string {
	c.t.Helper()
	n := c.nodes[i]
	code, _, body := n.do(n.base, http.MethodGet, "/api/rooms", "")
	var rooms []struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal([]byte(body), &rooms); code != http.StatusOK || err != nil {
		c.t.Fatalf("n%d: GET /api/rooms: %d %q: %v", i, code, body, err)
	}
	var out []string
	for _, r := range rooms {
		out = append(out, r.Name)
	}
	return out
}

// ownership is every room the running nodes know of, from their
// directories (GET /api/cluster) and their sfus (GET /api/rooms).
type ownership struct {
	dir   []map[string][]string // per node: room -> the owners its directory gives
	local [][]string            // per node: the rooms its sfu holds
}

// ownership reads it from the given nodes (all when none is given); the
// others' entries are nil.
func (c *klbCluster) ownership(nodes ...int) ownership {
	c.t.Helper()
	if len(nodes) == 0 {
		for i := range c.nodes {
			nodes = append(nodes, i)
		}
	}
	o := ownership{dir: make([]map[string][]string, len(c.nodes)), local: make([][]string, len(c.nodes))}
	for _, i := range nodes {
		o.dir[i] = map[string][]string{}
		for _, m := range c.info(i).Members {
			for _, r := range m.Rooms {
				o.dir[i][r] = append(o.dir[i][r], m.Name)
			}
		}
		o.local[i] = c.localRooms(i)
	}
	return o
}

// owner is the one owner node i's directory gives room, or "".
func (o ownership) owner(i int, room string) string {
	if ow := o.dir[i][room]; len(ow) == 1 {
		return ow[0]
	}
	return ""
}

// split lists what keeps the views from agreeing on one owner per room: a
// room some node's directory gives more than one owner or another owner
// than the others do, or none while another gives one; a room an sfu holds
// but its node's directory gives to another; a room held by two sfus.
func (o ownership) split(names []string) []string {
	var bad []string
	rooms := map[string]bool{}
	for i := range o.dir {
		for r := range o.dir[i] {
			rooms[r] = true
		}
		for _, r := range o.local[i] {
			rooms[r] = true
		}
	}
	for _, r := range slices.Sorted(func(yield func(string) bool) {
		for r := range rooms {
			if !yield(r) {
				return
			}
		}
	}) {
		var views, holders []string
		owners := map[string]bool{}
		for i := range o.dir {
			if o.dir[i] == nil {
				continue
			}
			ow := o.dir[i][r]
			views = append(views, fmt.Sprintf("%s:%v", names[i], ow))
			if len(ow) != 1 {
				owners[""] = true
			} else {
				owners[ow[0]] = true
			}
			if slices.Contains(o.local[i], r) {
				holders = append(holders, names[i])
				if len(ow) == 1 && ow[0] != names[i] {
					bad = append(bad, fmt.Sprintf("room %q: held by %s, whose directory gives it to %s", r, names[i], ow[0]))
				}
			}
		}
		if len(owners) != 1 || owners[""] {
			bad = append(bad, fmt.Sprintf("room %q: owners %s", r, strings.Join(views, " ")))
		}
		if len(holders) > 1 {
			bad = append(bad, fmt.Sprintf("room %q: held by %v", r, holders))
		}
	}
	return bad
}

// waitOneOwner waits until the running nodes agree on one owner per room
// (see split) and returns how long that took.
func (c *klbCluster) waitOneOwner(what string, d time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	var bad []string
	for deadline := start.Add(d); ; {
		bad = c.ownership().split(c.names)
		if len(bad) == 0 {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: the nodes still disagree after %v:\n%s", what, d, strings.Join(bad, "\n"))
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
}

// restart starts node i again (same name, address and flags, a new
// identity and tag), joining node join, and waits until every node sees the
// new process (its tag) alive and every node alive and ready; it returns how
// long that took.
func (c *klbCluster) restart(i, join int) time.Duration {
	c.t.Helper()
	if c.nodes[i].running() {
		c.t.Fatalf("n%d: restart while it runs", i)
	}
	start := time.Now()
	c.nodes[i] = c.startNode(i, join)
	tag := ""
	for _, m := range c.info(i).Members {
		if m.Self {
			tag = m.Tag
		}
	}
	waitFor(c.t, fmt.Sprintf("every node seeing the new n%d (tag %s) alive", i, tag), klbJoinBudget, func() bool {
		for j := range c.nodes {
			seen := false
			for _, m := range c.info(j).Members {
				seen = seen || m.Name == c.names[i] && m.State == "alive" && m.Tag == tag
			}
			if !seen {
				return false
			}
		}
		return true
	})
	c.waitMembers(klbJoinBudget)
	return time.Since(start)
}

// waitAllAlive waits until every node sees every node alive, logging each
// change of a node's view, and returns how long that took.
func (c *klbCluster) waitAllAlive(what string, d time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	views := make([]string, len(c.nodes))
	for deadline := start.Add(d); ; {
		all := true
		for i := range c.nodes {
			alive := c.alive(i)
			all = all && len(alive) == len(c.nodes)
			if v := strings.Join(alive, ","); v != views[i] {
				c.t.Logf("%s +%v: %s sees %s alive", what, time.Since(start).Round(time.Millisecond), c.names[i], v)
				views[i] = v
			}
		}
		if all {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: not every node sees every node alive after %v: %v", what, d, views)
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
}

// others lists the nodes but i.
func (c *klbCluster) others(i int) []int {
	var out []int
	for j := range c.nodes {
		if j != i {
			out = append(out, j)
		}
	}
	return out
}

// TestFaultPartitionHeal: the owner A of a live room is cut off from the
// other two nodes (every packet between them dropped; clients still reach
// everyone). Each side declares the other dead; a client host routed to B
// then joins the room, which the majority, no longer knowing A's claim,
// creates again; and a second room is created on both sides, by a client
// routed to A and one routed to B. Each side serves its rooms (media through
// each). After the heal, membership converges (every node sees three alive:
// time reported) and the directories settle on one owner per room, each room
// held by one sfu only: the earliest claim won, and the other side ended its
// copy (time reported).
func TestFaultPartitionHeal(t *testing.T) {
	start := time.Now()
	c := startKLBCluster(t)
	split := c.startRun("split", faultSubs)
	a := split.owner
	b, other := (a+1)%3, (a+2)%3
	nameA := c.names[a]
	t.Logf("room %q owned by %s (A); B is %s", split.room, nameA, c.names[b])
	split.waitMedia("media before the cut", mediaBudget, split.sent()+klbResumePackets)

	// Client host 0 now reaches the cluster through A only, host 1 through
	// B only: new flows, media and signaling. The room's flows stay where
	// the LB hashed them.
	c.pin(0, a)
	c.pin(1, b)

	cutAt := time.Now()
	c.cut(a)
	waitFor(t, "each side of the cut declaring the other dead", faultDetectBudget, func() bool {
		return len(c.alive(a)) == 1 && !slices.Contains(c.alive(b), nameA) && !slices.Contains(c.alive(other), nameA)
	})
	detected := time.Since(cutAt)
	// A node started with --join fails readiness alone (the cluster
	// check), so a health-checking LB would take A out; n0, the seed, has
	// no such check.
	code, rep := c.nodes[a].health(c.nodes[a].base, "/readyz")
	ok, _, reason := rep.check("cluster")
	t.Logf("cut: both sides declared the other dead after %v; A's /readyz %d, cluster check ok=%v %q",
		detected.Round(time.Millisecond), code, ok, reason)
	if a != 0 && (code == http.StatusOK || ok) {
		t.Errorf("A (%s, started with --join) is ready alone: %d %+v", nameA, code, rep.Checks)
	}

	// The majority no longer knows A's claim: a client reaching it joins the
	// room, and the majority creates it again.
	base := fmt.Sprintf("http://%s", c.top.TCPAddr())
	splitB := c.startClient("split via B publisher", c.top.ClientNSAt(1), klbClientConfig{Role: "pub", Base: base, Room: split.room, Iface: "eth0"})
	// A room created on both sides, each with a publisher and a subscriber.
	const both = "both"
	bothA := &klbRun{klbCluster: c, room: both}
	bothB := &klbRun{klbCluster: c, room: both}
	bothA.pub = c.startClient("both via A publisher", c.top.ClientNSAt(0), klbClientConfig{Role: "pub", Base: base, Room: both, Iface: "eth0"})
	bothB.pub = c.startClient("both via B publisher", c.top.ClientNSAt(1), klbClientConfig{Role: "pub", Base: base, Room: both, Iface: "eth0"})
	splitB.ready()
	bothA.pub.ready()
	bothB.pub.ready()
	bothA.subs = c.startClient("both via A subscriber", c.top.ClientNSAt(0), klbClientConfig{Role: "sub", Base: base, Room: both, Peers: 1, Iface: "eth0"})
	bothB.subs = c.startClient("both via B subscriber", c.top.ClientNSAt(1), klbClientConfig{Role: "sub", Base: base, Room: both, Peers: 1, Iface: "eth0"})
	bothA.subs.ready()
	bothB.subs.ready()
	for _, r := range []*klbRun{bothA, bothB} {
		r.waitMedia("media on each side of the cut", mediaBudget, r.sent()+klbResumePackets)
	}
	// Each side has its own copy of both rooms: A owns them on its side,
	// one node of the majority on the other.
	held := map[string][2]string{} // room -> its owner on A's side, on the majority's
	var views string
	waitFor(t, "each side of the cut owning both rooms", klbOwnerBudget, func() bool {
		during := c.ownership()
		views = ""
		for _, room := range []string{split.room, both} {
			oa, ob, oo := during.owner(a, room), during.owner(b, room), during.owner(other, room)
			views += fmt.Sprintf(" room %q: %q on A, %q on B, %q on the third;", room, oa, ob, oo)
			if oa != nameA || ob == "" || ob == nameA || oo != ob {
				return false
			}
			held[room] = [2]string{oa, ob}
		}
		return true
	})
	t.Logf("during the cut:%s", views)
	for _, p := range []*klbClient{splitB, bothB.pub} {
		id := p.latest().Peers[0].Location
		t.Logf("%s: resource %s, signaled via %s", p.name, id, p.latest().Peers[0].Ingress)
	}

	// memberlist by itself gossips to members it declared dead only for
	// GossipToTheDeadTime, and only when it has something to broadcast, and
	// never probes or syncs with them: a heal must be noticed by the cluster.
	healAt := time.Now()
	c.heal(a)
	converged := c.waitAllAlive("after the heal", faultHealBudget)
	settled := c.waitOneOwner("after the heal", faultSettleBudget) + converged
	after := c.ownership()
	for room, h := range held {
		won := after.owner(a, room)
		loser := h[0]
		if won == h[0] {
			loser = h[1]
		}
		t.Logf("room %q after the heal: owned by %s; %s's copy ended", room, won, loser)
		li := slices.Index(c.names, loser)
		if !slices.Contains(h[:], won) {
			t.Errorf("room %q: owned by %s after the heal, which held no copy (A's side %s, majority %s)", room, won, h[0], h[1])
			continue
		}
		// The loser ended its copy: its sfu logged the room's end.
		ended := c.nodes[li].log.find(func(e logEntry) bool { return e.str("message") == "room ended" && e.str("room") == room })
		if len(ended) == 0 {
			t.Errorf("room %q: %s lost it to %s but its sfu logged no \"room ended\"", room, loser, won)
		} else {
			t.Logf("%s: room %q ended: %s", loser, room, ended[0].str("reason"))
		}
	}
	// A claimed the room the majority joined during the cut before the cut:
	// the earliest claim, it wins (unless A's copy had ended by the heal).
	if w := after.owner(a, split.room); w != nameA {
		t.Logf("room %q went to %s, not A: A's copy had ended before the heal", split.room, w)
	}
	for _, cl := range []*klbClient{splitB, bothA.pub, bothB.pub, bothA.subs, bothB.subs, split.pub, split.subs} {
		cl.finish()
	}
	t.Logf("cut %s off: dead on both sides after %v; healed after %v: three alive everywhere after %v, one owner per room after %v; total %v",
		nameA, detected.Round(time.Millisecond), healAt.Sub(cutAt).Round(time.Millisecond),
		converged.Round(time.Millisecond), settled.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// end stops the run's clients once every subscriber has what the publisher
// had sent by then, and returns the subscribers' final reports and the
// counter they all reached. Unlike stop, it does not ask for the
// publisher's very last packet, which the node sometimes loses under load
// (every subscriber, those straight on the owner too, missing that one
// packet only): presumably the publisher's DTLS close_notify, read on
// another goroutine than its RTP, removes it before the packet is forwarded.
func (r *klbRun) end() (subs []klbPeerReport, last uint64) {
	r.t.Helper()
	last = r.sent() - 1
	r.waitMedia("what the publisher had sent at every subscriber", klbStopBudget, last)
	r.pub.finish()
	return r.subs.finish().Peers, last
}

// benchLoad is one `oneport bench load` process in a client namespace.
type benchLoad struct {
	proc           *netnstest.Process
	stdout, stderr bytes.Buffer // read only once proc is done
}

// startBench runs `oneport bench load --url` against the VIP from client
// host client, with small media (the machine runs the cluster too).
func (c *klbCluster) startBench(client, rooms, subs int, d time.Duration) *benchLoad {
	c.t.Helper()
	cmd := c.top.ClientNSAt(client).Command(oneportBin, "--log-format", "json", "--log-level", "warn",
		"bench", "load", "--url", fmt.Sprintf("http://%s", c.top.TCPAddr()),
		"--rooms", fmt.Sprint(rooms), "--subscribers", fmt.Sprint(subs), "--clients", "1",
		"--video-bitrate", "200000", "--fps", "15", "--audio=false", "--duration", d.String(),
		"--json", "--quiet")
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	b := &benchLoad{}
	cmd.Stdout, cmd.Stderr = &b.stdout, &b.stderr
	p, err := c.top.Start(cmd)
	if err != nil {
		c.t.Fatal(err)
	}
	b.proc = p
	c.t.Cleanup(func() {
		select {
		case <-p.Done():
			return
		default:
			_ = p.Cmd.Process.Kill()
		}
		select {
		case <-p.Done():
		case <-time.After(killBudget):
			c.t.Errorf("bench load pid %d not reaped %v after SIGKILL", p.Cmd.Process.Pid, killBudget)
		}
	})
	return b
}

// wait waits for the run to end and returns its report; the process must
// exit 0.
func (b *benchLoad) wait(t *testing.T) bench.LoadReport {
	t.Helper()
	select {
	case <-b.proc.Done():
	case <-time.After(faultBenchBudget):
		_ = b.proc.Cmd.Process.Kill()
		<-b.proc.Done()
		t.Fatalf("bench load still running after %v:\n%s", faultBenchBudget, b.stderr.String())
	}
	var rep bench.LoadReport
	if err := json.Unmarshal(b.stdout.Bytes(), &rep); err != nil {
		t.Fatalf("bench load: report: %v\nstdout %q\nstderr:\n%s", err, b.stdout.String(), b.stderr.String())
	}
	if err := b.proc.Wait(); err != nil {
		t.Errorf("bench load: %v (%s):\n%s", err, rep.Error, b.stderr.String())
	}
	return rep
}

// TestFaultRollingDrain: every node in turn is drained (SIGTERM, or POST
// /admin/drain), taken out of the LB's pool as its failing readiness would
// have it, left to its sessions, and started again once it has exited:
// what a rolling upgrade does. While a node drains, every room keeps its
// media (the drained node's too: its flows re-hash onto the others, which
// relay them to it), new rooms and a `oneport bench load` run join through
// the VIP and land on the other nodes without a failure, and no session is
// ended by a server; when the clients of its rooms leave, it exits 0 with a
// clean drain (times reported); started again, it rejoins and is ready.
func TestFaultRollingDrain(t *testing.T) {
	start := time.Now()
	c := startKLBCluster(t, "--admin-token", faultAdminToken, "--drain-timeout", faultDrainTimeout.String())
	var rooms []*klbRun
	for _, room := range spreadRooms {
		rooms = append(rooms, c.startRun(room, faultSubs))
	}
	made := 0 // rooms started while a node drains, for their names
	newRoom := func() *klbRun {
		made++
		return c.startRun(fmt.Sprintf("roll%d", made), faultSubs)
	}
	var summary []string
	drained := map[int]bool{}
	for k := range c.nodes {
		// Next, the node not drained yet that owns the most rooms: placement
		// decides where rooms go, so a node may own none.
		x, onX := -1, []*klbRun(nil)
		for i := range c.nodes {
			var on []*klbRun
			for _, r := range rooms {
				if r.owner == i {
					on = append(on, r)
				}
			}
			if !drained[i] && (x < 0 || len(on) > len(onX)) {
				x, onX = i, on
			}
		}
		drained[x] = true
		live := slices.DeleteFunc(slices.Clone(rooms), func(r *klbRun) bool { return r.owner == x })
		var names []string
		for _, r := range onX {
			names = append(names, r.room)
		}
		n := c.nodes[x]
		how := "SIGTERM"
		if k%2 == 1 {
			how = "POST /admin/drain"
		}
		t.Logf("draining n%d (%s), owner of %v", x, how, names)

		drainAt := time.Now()
		if how == "SIGTERM" {
			n.signalDrain()
		} else {
			if code, state, _ := n.admin(n.base, "/admin/drain", "Bearer "+faultAdminToken); code != http.StatusAccepted || state != "draining" {
				t.Fatalf("n%d: POST /admin/drain: %d %s", x, code, state)
			}
			n.waitLog("the drain to start", exitBudget, func(e logEntry) bool {
				return e.str("message") == "draining" && e.str("component") == "lbhealth"
			})
		}
		// The LB's health check takes the node out: its flows re-hash onto
		// the others, which relay them to it; new flows and connections go
		// to the others.
		if err := c.top.SetBackends(c.others(x)...); err != nil {
			t.Fatal(err)
		}
		leftAt := drainAt
		if len(onX) > 0 {
			n.wantReady(n.base, false)
			waitFor(t, fmt.Sprintf("the others seeing n%d draining", x), klbOwnerBudget, func() bool {
				for _, o := range c.others(x) {
					for _, m := range c.info(o).Members {
						if m.Name == c.names[x] && !m.Draining {
							return false
						}
					}
				}
				return true
			})
			// New joins while it drains: a bench load run and a new room,
			// all on the others.
			before := c.ownership(c.others(x)...)
			load := c.startBench(1, 2, 1, 3*time.Second)
			nr := newRoom()
			if nr.owner == x {
				t.Errorf("room %q, created while n%d drains, was placed on it", nr.room, x)
			}
			rooms = append(rooms, nr)
			live = append(live, nr)
			// Every room keeps its media, the drained node's included.
			for _, r := range append(onX, live...) {
				r.waitMedia(fmt.Sprintf("media in %q while n%d drains", r.room, x), klbResumeBudget, r.sent()+klbResumePackets)
			}
			rep := load.wait(t)
			t.Logf("bench load while n%d drains: %d of %d sessions joined, %d failed %v; join p50 %.0f ms; loss %.4f; leftover %d",
				x, rep.Sessions.Joined, rep.Sessions.Planned, rep.Sessions.Failed, rep.Sessions.FailReasons, rep.Join.P50Ms, rep.Total.LossRatio, rep.Leftover)
			if rep.Sessions.Failed != 0 || rep.Sessions.Joined != rep.Sessions.Planned {
				t.Errorf("bench load while n%d drains: %d of %d joined, %d failed: %v", x, rep.Sessions.Joined, rep.Sessions.Planned, rep.Sessions.Failed, rep.Sessions.FailReasons)
			}
			after := c.ownership(c.others(x)...)
			for _, o := range c.others(x) {
				for room, owners := range after.dir[o] {
					if _, old := before.dir[o][room]; !old && slices.Contains(owners, c.names[x]) {
						t.Errorf("n%d's directory gives room %q, new while n%d drains, to n%d", o, room, x, x)
					}
				}
			}
			if !n.running() {
				t.Fatalf("n%d exited while its sessions were live", x)
			}

			// Its clients leave; it exits by itself, cleanly.
			leftAt = time.Now()
			for _, r := range onX {
				subs, last := r.end()
				for j, s := range subs {
					t.Logf("%s subscriber %d: %d packets up to %d, %d skipped, largest gap while n%d drained %v",
						r.room, j, s.Count, last, s.Lost, x, largestGapSince(s, drainAt).Round(time.Millisecond))
				}
			}
		} else {
			t.Logf("n%d owns no room: its drain has no session to wait for", x)
		}
		if code := n.waitExit(exitBudget); code != 0 {
			t.Errorf("n%d: exit code %d after its drain, want 0", x, code)
		}
		exitedAt := time.Now()
		if fin := n.drainFinished(); fin.str("outcome") != "clean" {
			t.Errorf("n%d: drain finished %v, want clean", x, fin)
		}
		for _, e := range serverEnded(n, 0) {
			t.Errorf("n%d: a session ended by the server before the drain timeout: %v", x, e)
		}
		rejoin := c.restart(x, c.others(x)[0])
		if err := c.top.SetBackends(); err != nil {
			t.Fatal(err)
		}
		rooms = live
		for _, r := range rooms {
			r.waitMedia(fmt.Sprintf("media in %q after n%d's restart", r.room, x), klbResumeBudget, r.sent()+klbResumePackets)
		}
		line := fmt.Sprintf("n%d (%s, %d rooms): exited %v after the drain began, %v after its clients left; rejoined and ready %v after starting again",
			x, how, len(onX), exitedAt.Sub(drainAt).Round(time.Millisecond), exitedAt.Sub(leftAt).Round(time.Millisecond), rejoin.Round(time.Millisecond))
		summary = append(summary, line)
		t.Log(line)
	}
	for _, r := range rooms {
		r.end()
	}
	for i, n := range c.nodes {
		for _, e := range serverEnded(n, 0) {
			t.Errorf("n%d (restarted): a session ended by the server: %v", i, e)
		}
	}
	t.Logf("rolling drain: %s; total %v", strings.Join(summary, "; "), time.Since(start).Round(time.Millisecond))
}

// TestFaultRehashUnderLoad: the LB re-hashes (new seed, conntrack flushed)
// while several rooms, spread over the nodes by placement, carry media to
// several subscribers each; media resumes at every subscriber of every room
// (the largest gap is reported, as TestClusterKernelLBRehash does, not
// asserted).
func TestFaultRehashUnderLoad(t *testing.T) {
	start := time.Now()
	c := startKLBCluster(t)
	var runs []*klbRun
	owners := map[string]int{}
	for _, room := range spreadRooms {
		r := c.startRun(room, faultRehashSubs)
		runs = append(runs, r)
		owners[c.names[r.owner]]++
	}
	for _, r := range runs {
		r.waitMedia("media before the re-hash", mediaBudget, r.sent()+klbResumePackets)
	}
	t.Logf("%d rooms (owners %v), %d flows; before the re-hash: per node %v",
		len(runs), owners, len(runs)*(1+faultRehashSubs), c.perNodeOf(runs, c.flows()))
	h := rehashRuns(c, runs)
	t.Logf("re-hash moved %d of %d flows; after it: per node %v", h.moved, h.flows, c.perNodeOf(runs, h.after))
	var worst time.Duration
	for i, r := range runs {
		pub := r.pub.latest().Peers[0]
		subs, last := r.end()
		g := r.checkRehashed(h, i, last, subs)
		t.Logf("room %s (owner n%d, publisher n%d -> n%d): largest gap after the re-hash %v",
			r.room, r.owner, r.nodeOf(h.before, pub), r.nodeOf(h.after, pub), g.Round(time.Millisecond))
		worst = max(worst, g)
	}
	t.Logf("largest media gap after the re-hash over %d rooms and %d subscribers: %v (target < 1s); total %v",
		len(runs), len(runs)*faultRehashSubs, worst.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// perNodeOf counts the runs' flows by node in flows.
func (c *klbCluster) perNodeOf(runs []*klbRun, flows map[netip.AddrPort]int) []int {
	per := make([]int, len(c.nodes))
	for _, r := range runs {
		for _, p := range append(r.pub.latest().Peers, r.subs.latest().Peers...) {
			per[c.nodeOf(flows, p)]++
		}
	}
	return per
}

// TestFaultRoomAcrossRestarts: a room stays live on its owner while each
// other node is restarted in turn, one drained by SIGTERM (it holds no
// session: it exits at once), one killed -9, each started again at once
// under the same name. The LB is left alone, so flows through the
// restarted node go nowhere until it is back. The publisher reaches the
// owner directly (its client host is routed there). After each restart the
// room's one owner is the same in every directory, only its sfu holds it,
// and every subscriber gets media again; at the end, the room never ended,
// the owner removed no one, subscribers whose flows reach the owner
// directly lost nothing, and those through a restarted node got every packet
// up to the last (their gaps reported).
func TestFaultRoomAcrossRestarts(t *testing.T) {
	start := time.Now()
	c := startKLBCluster(t)
	r := &klbRun{klbCluster: c, room: "stay"}
	base := fmt.Sprintf("http://%s", c.top.TCPAddr())
	// A first publisher makes the room; its owner known, the publisher's
	// client host is routed to it, and the publisher that stays joins.
	first := c.startClient("stay first publisher", c.top.ClientNSAt(0), klbClientConfig{Role: "pub", Base: base, Room: r.room, Iface: "eth0"})
	first.ready()
	r.waitOwner()
	c.pin(0, r.owner)
	first.finish()
	r.pub = c.startClient("stay publisher", c.top.ClientNSAt(0), klbClientConfig{Role: "pub", Base: base, Room: r.room, Iface: "eth0"})
	r.pub.ready()
	r.startSubs(klbSubscribers)
	r.waitMedia("media before the restarts", mediaBudget, r.sent()+klbResumePackets)
	flows := r.flows()
	pub := r.pub.latest().Peers[0]
	if via := r.nodeOf(flows, pub); via != r.owner {
		t.Fatalf("the publisher's flow goes through n%d, not the owner n%d it is routed to", via, r.owner)
	}
	owner := c.nodes[r.owner]
	leftBefore := len(owner.participantsLeft()) // the first publisher
	t.Logf("room %q on n%d; %s", r.room, r.owner, r.where(flows))

	type restart struct {
		node     int
		how      string
		at       time.Time
		down     time.Duration // the signal to the process's exit
		rejoined time.Duration // start to every node seeing it alive and ready
	}
	var restarts []restart
	for k, x := range c.others(r.owner) {
		rs := restart{node: x, how: "SIGTERM", at: time.Now()}
		from := r.sent()
		n := c.nodes[x]
		if k == 0 {
			n.signalDrain()
			if code := n.waitExit(exitBudget); code != 0 {
				t.Errorf("n%d: exit code %d after a SIGTERM without sessions, want 0", x, code)
			}
		} else {
			rs.how = "kill -9"
			n.signal(syscall.SIGKILL)
			n.waitExit(exitBudget)
		}
		rs.down = time.Since(rs.at)
		rs.rejoined = c.restart(x, r.owner)
		r.waitMedia(fmt.Sprintf("media at every subscriber after n%d's restart", x), klbResumeBudget, from+klbResumePackets)
		// One owner, the same, everywhere; only its sfu holds the room.
		own := c.ownership()
		if bad := own.split(c.names); len(bad) != 0 {
			t.Errorf("after n%d's restart: %s", x, strings.Join(bad, "; "))
		}
		for i := range c.nodes {
			if o := own.owner(i, r.room); o != c.names[r.owner] {
				t.Errorf("after n%d's restart: n%d's directory gives room %q to %q, want n%d", x, i, r.room, o, r.owner)
			}
		}
		restarts = append(restarts, rs)
		t.Logf("n%d (%s): exited %v after the signal; started again, seen by every node and ready after %v",
			x, rs.how, rs.down.Round(time.Millisecond), rs.rejoined.Round(time.Millisecond))
	}
	subs, last := r.end()
	for i, s := range subs {
		via := r.nodeOf(flows, s)
		if via == r.owner {
			if s.Lost != 0 || s.Backwards != 0 || s.Last < last {
				t.Errorf("subscriber %d (via the owner n%d): %d lost, %d backwards, last %d (want %d); want none lost",
					i, via, s.Lost, s.Backwards, s.Last, last)
			}
			t.Logf("subscriber %d via the owner n%d: %d packets, none lost", i, via, s.Count)
			continue
		}
		var at time.Time
		for _, rs := range restarts {
			if rs.node == via {
				at = rs.at
			}
		}
		t.Logf("subscriber %d via n%d (restarted): largest gap since its restart %v; %d skipped, %d of them retransmitted late; last %d, want %d",
			i, via, largestGapSince(s, at).Round(time.Millisecond), s.Lost, s.Recovered, s.Last, last)
		if s.Last < last {
			t.Errorf("subscriber %d (via n%d): last packet %d, want %d", i, via, s.Last, last)
		}
	}
	if e := owner.log.find(msgIs("room ended")); len(e) != 0 {
		t.Errorf("the owner ended the room: %v", e)
	}
	// The participants that left at the end, and no other.
	waitFor(t, "the owner removing the room's participants", exitBudget, func() bool {
		return len(owner.participantsLeft()) >= leftBefore+1+klbSubscribers
	})
	if left := owner.participantsLeft()[leftBefore:]; len(left) != 1+klbSubscribers {
		t.Errorf("the owner removed %d participants, want the %d that left at the end: %v", len(left), 1+klbSubscribers, left)
	}
	for _, e := range serverEnded(owner, leftBefore) {
		t.Errorf("the owner ended a session: %v", e)
	}
	t.Logf("room %q kept on n%d across %d restarts; total %v", r.room, r.owner, len(restarts), time.Since(start).Round(time.Millisecond))
}
