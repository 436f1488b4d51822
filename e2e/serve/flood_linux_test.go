package serve

// Issue 7: floods against a node holding live sessions. One `oneport serve`
// process with a publisher and two subscribers in a room takes, one after
// the other, a million STUN checks for random ufrags, a million junk
// datagrams, spoofed checks naming a live session's ufrag, relay frames
// from a non-member and with bad MACs, RTCP NACKs from a subscriber of the
// room asking for everything again and again, and a WHIP POST flood. For
// each, the
// test asserts that
//
//   - the live subscribers lose no packet the kernel did not drop: the
//     publisher's payloads carry counters, and the loss allowed is the
//     receive-buffer drops of the node's media port and of the subscribers'
//     own sockets (/proc/net/udp) over the flood;
//   - the media keeps flowing afterwards and every live client is still
//     connected, having failed at no point (a pause long enough to show as
//     disconnected and back is reported with the longest media gap);
//   - every datagram the node read is counted under the reason its content
//     calls for (predicted per datagram with the mux's own exported parser):
//     each reason's counter moved by at least what was sent for it minus
//     every kernel drop on the node's sockets, and by at most what was sent
//     for it;
//   - the process's heap and resident memory grew by a bounded amount;
//   - nothing is logged per packet: the node's output grew by a few lines;
//
// and, flood by flood, that no check was answered and no spoofed address
// bound, that the whoHas queries junk makes the node send its peers stay
// below the datagrams that trigger them, and that the WHIP flood is answered
// 201, 400, 429 or 503 only, with the refusal counters matching.
//
// The figures (sizes, durations, loss, kernel drops, counters, memory, log
// lines) are logged as a table at the end, not asserted as performance.
// With -short the floods are a tenth to a quarter of their size.
//
// Relay frames are accepted only from a member's relay address, so the test
// process joins the node's cluster itself (cluster.New, with the node's
// --cluster-key and a relay socket of its own) and announces draining, so no
// room is ever placed on it. Frames with bad MACs then come from a member's
// address, and frames from any other address are a non-member's.

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v4"
	"golang.org/x/net/ipv4"

	"github.com/oneport/oneport/cluster"
	"github.com/oneport/oneport/mux"
)

// Flood sizes: CI runs without -short, and a million is the figure.
type floodSizes struct {
	randomUfrag, junk, liveUfrag, relay, nack, whip uint64
}

var (
	floodFull  = floodSizes{randomUfrag: 1_000_000, junk: 1_000_000, liveUfrag: 200_000, relay: 200_000, nack: 20_000, whip: 2_000}
	floodShort = floodSizes{randomUfrag: 100_000, junk: 100_000, liveUfrag: 50_000, relay: 50_000, nack: 5_000, whip: 500}
)

const (
	// floodSendBudget stops a flood that has not sent its size by then (a
	// slow machine, -race); the figures say how much it did send.
	floodSendBudget = 20 * time.Second
	// floodSettleBudget bounds waiting for the node to have read and
	// counted a flood's backlog.
	floodSettleBudget = 20 * time.Second
	// floodMediaAfter is how far past the publisher's last packet at the
	// end of a flood every subscriber must get before the loss is read:
	// half a second of media, long enough for a NACK's retransmission.
	floodMediaAfter = 100
	// floodMaxLogLines bounds the node's output during one UDP flood.
	floodMaxLogLines = 20
	// floodSockets is how many sockets (distinct random 127/8 sources and
	// ephemeral ports) a random flood is sent from.
	floodSockets = 1024
)

// floodMemBound bounds the heap and resident memory growth over one flood.
// Under -race every allocation also costs shadow memory.
func floodMemBound() uint64 {
	if raceEnabled {
		return 256 << 20
	}
	return 64 << 20
}

// Node flags: a cluster key so relay frames are authenticated; a low
// signaling rate (burst 20 per client IP) and participant limit so the WHIP
// flood meets both the 429 and the 503 within a few hundred requests.
const (
	floodClusterKey      = "flood-test-cluster-key"
	floodSignalingRate   = "10"
	floodMaxParticipants = 16
)

// floodFixture is the node, its live sessions and the test's own cluster
// member, shared by the floods in turn.
type floodFixture struct {
	t    *testing.T
	n    *node
	rng  *rand.Rand
	rb   floodRand
	pid  int
	tag  string         // the node's owner tag
	peer netip.AddrPort // the node's relay socket
	key  []byte         // the relay key derived from floodClusterKey

	member     *cluster.Node
	memberSock *net.UDPConn     // the member's relay socket, connected to the node's
	memberIn   [5]atomic.Uint64 // frames the node sent the member, by type (1-4)
	memberPC   *ipv4.PacketConn // memberSock for WriteBatch
	memberDone chan struct{}    // closed when the member's reader returns

	pub   *publisher
	subs  []*subscriber
	ufrag map[string]bool // the node's ufrags of the live sessions

	mediaPort, relayPort uint16
	clientPorts          []uint16 // the live clients' sockets

	results []*floodResult
}

// floodResult is one row of the final table.
type floodResult struct {
	name     string
	sent     uint64
	cut      bool
	send     time.Duration // sending
	settle   time.Duration // from the end of sending to every datagram counted
	loss     int64         // live-session packets lost, over all subscribers
	disorder int64         // live-session packets that came after a later one, retransmissions aside
	gap      time.Duration // the longest pause in a subscriber's media over the flood
	blips    int           // live clients' transient disconnections (no packet for clientDisconnected)
	kernel   uint64        // kernel drops on the node's sockets (media and relay)
	clientKD uint64        // kernel drops on the live clients' sockets
	drops    string        // mux drop counters that moved, by reason
	heap     int64         // go_memstats_heap_inuse_bytes growth
	rss      int64         // resident memory growth
	peak     int64         // peak resident memory over the flood, above the start
	logLines int
	extra    string
}

// TestFlood is issue 7: see the top of this file.
func TestFlood(t *testing.T) {
	sizes := floodFull
	if testing.Short() {
		sizes = floodShort
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	f := newFloodFixture(t, rand.New(rand.NewPCG(seed, 7)))

	f.floodRandomUfrags(sizes.randomUfrag)
	f.floodJunk(sizes.junk)
	f.floodLiveUfrag(sizes.liveUfrag)
	f.floodRelay(sizes.relay)
	f.floodNACK(sizes.nack)
	f.floodWHIP(sizes.whip)
	f.report()
}

func newFloodFixture(t *testing.T, rng *rand.Rand) *floodFixture {
	t.Helper()
	n := startNode(t, "--cluster-key", floodClusterKey,
		"--signaling-rate", floodSignalingRate, "--max-participants", fmt.Sprint(floodMaxParticipants))
	f := &floodFixture{t: t, n: n, rng: rng, rb: newFloodRand(rng, 1<<20), pid: n.cmd.Process.Pid,
		key: cluster.RelayKey([]byte(floodClusterKey)), ufrag: map[string]bool{}}
	// Both lines come before "oneport serving".
	relay := n.waitLog("relay listening", time.Second, msgIs("relay listening"))
	relayAddr, err := netip.ParseAddrPort(relay.str("relay"))
	if err != nil {
		t.Fatalf("relay listening: %q: %v", relay.str("relay"), err)
	}
	gossip := n.waitLog("gossip started", time.Second, msgIs("gossip started"))
	f.peer, f.tag = relayAddr, gossip.str("tag")
	f.mediaPort, f.relayPort = n.udp.Port(), relayAddr.Port()

	// The live sessions: placed before the member exists, so on this node.
	pub, sub := joinRoom(t, n, "flood")
	sub2 := newSubscriber(t, n, "flood")
	sub2.waitConnected()
	waitPackets(t, sub2, 50)
	f.pub, f.subs = pub, []*subscriber{sub, sub2}
	for _, p := range []*peer{pub.peer, sub.peer, sub2.peer} {
		f.ufrag[floodSDPUfrag(t, p.pc.RemoteDescription().SDP)] = true
		f.clientPorts = append(f.clientPorts, floodLocalPort(t, p))
	}
	f.joinMember(gossip.str("gossip"))
	return f
}

// floodSDPUfrag returns the a=ice-ufrag of an SDP: in the node's answer, the
// ufrag of the client's session on the node.
func floodSDPUfrag(t *testing.T, sdp string) string {
	t.Helper()
	for line := range strings.SplitSeq(sdp, "\n") {
		if u, ok := strings.CutPrefix(strings.TrimSpace(line), "a=ice-ufrag:"); ok {
			return u
		}
	}
	t.Fatalf("no a=ice-ufrag in the answer:\n%s", sdp)
	return ""
}

// floodLocalPort is the port of a client's selected local candidate.
func floodLocalPort(t *testing.T, p *peer) uint16 {
	t.Helper()
	pair, err := p.pc.SCTP().Transport().ICETransport().GetSelectedCandidatePair()
	if err != nil || pair == nil {
		t.Fatalf("selected candidate pair: %v %v", pair, err)
	}
	return pair.Local.Port
}

// floodNopRelay is the test member's mux: the member relays nothing.
type floodNopRelay struct{}

func (floodNopRelay) SetPeers([]mux.Peer) error { return nil }

// joinMember makes the test process a draining member of the node's
// cluster with a relay socket of its own, and waits until the node counts a
// frame from that socket as the member's (relay_auth, not
// relay_not_member).
func (f *floodFixture) joinMember(gossip string) {
	t := f.t
	sock, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, net.UDPAddrFromAddrPort(f.peer))
	if err != nil {
		t.Fatalf("member relay socket: %v", err)
	}
	f.memberSock, f.memberPC, f.memberDone = sock, ipv4.NewPacketConn(sock), make(chan struct{})
	go f.readMember()
	t.Cleanup(func() {
		_ = sock.Close()
		<-f.memberDone
	})
	m, err := cluster.New(cluster.Config{
		Identity:  cluster.NewIdentity(),
		NodeName:  "flood-member",
		Gossip:    "127.0.0.1:0",
		Advertise: "127.0.0.1",
		Join:      []string{gossip},
		Key:       []byte(floodClusterKey),
		Relay:     floodNopRelay{},
		RelayPort: sock.LocalAddr().(*net.UDPAddr).Port,
		HTTP:      "127.0.0.1:9", // never used: the member drains, so no room is placed on it
		Profile:   "local",
	})
	if err != nil {
		t.Fatalf("join the node's cluster: %v", err)
	}
	t.Cleanup(func() { _ = m.Close() })
	m.SetDraining(true)
	f.member = m

	waitFor(t, "the member alive and draining at the node", mediaBudget, func() bool {
		mf := f.n.scrape()
		return floodSum(mf, "oneport_cluster_members", "state", "alive") == 2 &&
			floodSum(mf, "oneport_cluster_members_draining") == 1
	})
	// The mux learns its peers on a goroutine of its own: until then a
	// frame from the member counts as a non-member's.
	b := make([]byte, 512)
	waitFor(t, "the node's relay accepting the member", mediaBudget, func() bool {
		n := floodRelayFrame(f.rng, f.rb, b, 1, 1, time.Now().UnixMilli(), nil)
		if _, err := sock.Write(b[:n]); err != nil {
			t.Fatalf("member: write: %v", err)
		}
		return floodSum(f.n.scrape(), "oneport_mux_drops_total", "reason", "relay_auth") > 0
	})
}

// readMember counts the frames the node sends the member (whoHas queries
// when a non-STUN datagram comes from an unknown address) until the socket
// is closed.
func (f *floodFixture) readMember() {
	defer close(f.memberDone)
	b := make([]byte, 2048)
	for {
		n, err := f.memberSock.Read(b)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // ECONNREFUSED from an ICMP error: keep reading
		}
		if n >= floodRelayHeaderLen && b[1] >= 1 && b[1] <= 4 {
			f.memberIn[b[1]].Add(1)
		}
	}
}

// floodSum sums the series of family name that carry the labels; 0 when
// there is none (drop series appear only once non-zero).
func floodSum(mf families, name string, labels ...string) float64 {
	fam, ok := mf[name]
	if !ok {
		return 0
	}
	var s float64
	for _, m := range fam.GetMetric() {
		if !hasLabels(m, labels) {
			continue
		}
		switch {
		case m.GetCounter() != nil:
			s += m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			s += m.GetGauge().GetValue()
		case m.GetUntyped() != nil:
			s += m.GetUntyped().GetValue()
		}
	}
	return s
}

// floodDelta is a counter's growth between two pages.
func floodDelta(before, after families, name string, labels ...string) float64 {
	return floodSum(after, name, labels...) - floodSum(before, name, labels...)
}

// floodDrops formats every drop reason that moved between two pages.
func floodDrops(before, after families) string {
	var parts []string
	for r := mux.DropReason(0); r < mux.NumDropReasons; r++ {
		if d := floodDelta(before, after, "oneport_mux_drops_total", "reason", r.String()); d != 0 {
			parts = append(parts, fmt.Sprintf("%s=%.0f", r, d))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

// floodLineCount is how many lines the process has written.
func (l *procLog) floodLineCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines) + l.dropped
}

// floodSnap is what is read before a flood and after it has settled.
type floodSnap struct {
	mf        families
	nodeKD    uint64 // kernel drops, media port and relay socket
	mediaKD   uint64 // kernel drops, media port only
	clientKD  uint64
	mem       floodMem
	logLines  int
	lost      []uint64 // per subscriber: counters skipped
	backwards []int    // per subscriber: packets that came after a later one
	recovered []int    // per subscriber: of those, skipped counters that came later
	states    []int    // per live client: state changes so far
}

func (f *floodFixture) snap() floodSnap {
	t := f.t
	t.Helper()
	s := floodSnap{mf: f.n.scrape(), logLines: f.n.log.floodLineCount()}
	var err error
	if s.mediaKD, err = floodKernelDrops(f.mediaPort); err != nil {
		t.Fatal(err)
	}
	if s.nodeKD, err = floodKernelDrops(f.mediaPort, f.relayPort); err != nil {
		t.Fatal(err)
	}
	if s.clientKD, err = floodKernelDrops(f.clientPorts...); err != nil {
		t.Fatal(err)
	}
	if s.mem, err = floodReadMem(f.pid); err != nil {
		t.Fatal(err)
	}
	for _, sub := range f.subs {
		_, _, lost, _ := sub.received()
		back, rec := sub.late()
		s.lost, s.backwards, s.recovered = append(s.lost, lost), append(s.backwards, back), append(s.recovered, rec)
	}
	for _, p := range f.livePeers() {
		s.states = append(s.states, p.stateCount())
	}
	return s
}

func (f *floodFixture) livePeers() []*peer {
	ps := []*peer{f.pub.peer}
	for _, s := range f.subs {
		ps = append(ps, s.peer)
	}
	return ps
}

// floodRun is one flood's outcome for its own assertions.
type floodRun struct {
	fc            floodCounts
	before, after floodSnap
	kd            uint64 // kernel drops on the node's sockets over the flood
	res           *floodResult
}

// run measures one flood: send sends it; settled says, from a fresh page
// and the kernel drops on the node's sockets since the start, whether the
// node has read and counted all of it. Then it waits for the media to go
// on and asserts what every flood must leave intact.
func (f *floodFixture) run(name string, send func() (floodCounts, error), settled func(mf families, kd uint64) bool) *floodRun {
	t := f.t
	t.Helper()
	before := f.snap()
	start := time.Now()
	fc, err := send()
	if err != nil {
		t.Errorf("%s: %v", name, err)
	}
	if fc.errs > 0 {
		t.Logf("%s: %d sendmmsg calls failed (the kernel refused a batch)", name, fc.errs)
	}
	sentEnd := f.pub.sent.Load()
	sendEnd := time.Now()

	// Settle: every datagram the kernel took has been read and counted.
	deadline := sendEnd.Add(floodSettleBudget)
	for i := 0; ; i++ {
		kd, err := floodKernelDrops(f.mediaPort, f.relayPort)
		if err != nil {
			t.Fatal(err)
		}
		if settled(f.n.scrape(), kd-before.nodeKD) {
			break
		}
		if time.Now().After(deadline) || i > 10_000 {
			t.Errorf("%s: the node's counters did not account for the %d datagrams sent within %v", name, fc.sent, floodSettleBudget)
			break
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronization
	}
	settle := time.Since(sendEnd)

	// The media goes on, and the loss is read once retransmissions had time.
	for _, s := range f.subs {
		s.waitCounter(sentEnd+floodMediaAfter, mediaBudget)
	}
	after := f.snap()
	r := &floodRun{fc: fc, before: before, after: after, kd: after.nodeKD - before.nodeKD}

	res := floodResult{name: name, sent: fc.sent, cut: fc.cut, send: fc.elapsed, settle: settle,
		kernel: r.kd, clientKD: after.clientKD - before.clientKD, drops: floodDrops(before.mf, after.mf),
		logLines: after.logLines - before.logLines}
	for i := range f.subs {
		rec := int64(after.recovered[i] - before.recovered[i])
		res.loss += int64(after.lost[i]-before.lost[i]) - rec
		res.disorder += int64(after.backwards[i]-before.backwards[i]) - rec
	}
	res.heap = int64(floodSum(after.mf, "go_memstats_heap_inuse_bytes")) - int64(floodSum(before.mf, "go_memstats_heap_inuse_bytes"))
	res.rss = int64(after.mem.rss) - int64(before.mem.rss)
	res.peak = max(int64(after.mem.hwm)-int64(before.mem.rss), 0)

	// Loss, and packets out of order: at most what the kernel dropped on
	// the way (the node's media port, the subscribers' sockets).
	if allowed := int64(after.mediaKD-before.mediaKD) + int64(res.clientKD); res.loss > allowed || res.disorder > allowed {
		t.Errorf("%s: the live subscribers lost %d packets and got %d out of order; the kernel dropped %d on the media port and %d at the clients",
			name, res.loss, res.disorder, after.mediaKD-before.mediaKD, res.clientKD)
	}
	for _, s := range f.subs {
		for _, g := range s.gapsSoFar() {
			if g.End.After(start) {
				res.gap = max(res.gap, g.Len)
			}
		}
	}
	// A session must survive the flood. A pause in its packets longer than
	// clientDisconnected shows as disconnected and back, which a starved
	// machine (a -race node on two shared cores) can cause without any
	// fault of the node's: that is reported, with the longest gap, not
	// failed.
	for i, p := range f.livePeers() {
		ch := p.statesSince(before.states[i])
		for _, st := range ch {
			switch st {
			case webrtc.PeerConnectionStateDisconnected:
				res.blips++
			case webrtc.PeerConnectionStateConnected:
			default:
				t.Errorf("%s: live client %d went %v", name, i, st)
			}
		}
		if p.state() != webrtc.PeerConnectionStateConnected {
			t.Errorf("%s: live client %d is %v after the flood (changes %v)", name, i, p.state(), ch)
		} else if len(ch) > 0 {
			t.Logf("%s: live client %d disconnected and came back: %v; longest media gap %s", name, i, ch, floodGap(res.gap))
		}
	}
	for _, s := range f.subs {
		if err := s.stopped(); err != nil {
			t.Errorf("%s: a subscriber's track ended: %v", name, err)
		}
	}
	// Memory: bounded, whatever the flood's size.
	bound := int64(floodMemBound())
	if res.heap > bound || res.rss > bound || res.peak > bound {
		t.Errorf("%s: memory grew: heap in use %+d B, resident %+d B, peak %+d B (bound %d B)",
			name, res.heap, res.rss, res.peak, bound)
	}
	if code, rep := f.n.health(f.n.base, "/healthz"); code != http.StatusOK {
		t.Errorf("%s: /healthz %d %+v after the flood", name, code, rep)
	}
	f.results = append(f.results, &res)
	r.res = &res
	t.Logf("%s: sent %d in %v (cut by the deadline: %v), settled in %v; live loss %d, out of order %d, longest gap %s, disconnections %d; kernel drops node %d, clients %d; drops %s; heap %+d B, RSS %+d B, peak %+d B; %d log lines",
		name, res.sent, res.send.Round(time.Millisecond), res.cut, res.settle.Round(time.Millisecond), res.loss, res.disorder,
		floodGap(res.gap), res.blips,
		res.kernel, res.clientKD, res.drops, res.heap, res.rss, res.peak, res.logLines)
	return r
}

// checkLogs asserts that the node logged at most limit lines over the flood.
func (f *floodFixture) checkLogs(r *floodRun, limit int) {
	f.t.Helper()
	if r.res.logLines >= limit {
		f.t.Errorf("%s: the node logged %d lines during the flood (bound %d): per-packet logging?\n%s",
			r.res.name, r.res.logLines, limit, f.n.log.tail(min(r.res.logLines, 40)))
	}
}

// checkReasons asserts, for every kind the flood sent, that its reason's
// counter moved by at least what was sent of it minus every kernel drop on
// the node's sockets, and by at most what was sent of it.
func (f *floodFixture) checkReasons(r *floodRun) {
	f.t.Helper()
	for k := range int(mux.NumDropReasons) {
		sent := r.fc.byKind[k]
		reason := mux.DropReason(k).String()
		got := floodDelta(r.before.mf, r.after.mf, "oneport_mux_drops_total", "reason", reason)
		if got < float64(sent)-float64(r.kd) || got > float64(sent) {
			f.t.Errorf("%s: drops{reason=%q} moved by %.0f; sent %d of that kind, %d dropped by the kernel",
				r.res.name, reason, got, sent, r.kd)
		}
	}
}

// floodSettledByKind is a settle condition: the counters of the reasons the
// flood's kinds call for, and the probes answered, add up with the kernel's
// drops to what was sent.
func floodSettledByKind(before families, fc *floodCounts) func(families, uint64) bool {
	return func(mf families, kd uint64) bool {
		var n float64
		for k := range int(mux.NumDropReasons) {
			if fc.byKind[k] > 0 {
				n += floodDelta(before, mf, "oneport_mux_drops_total", "reason", mux.DropReason(k).String())
			}
		}
		if fc.byKind[floodKindProbe] > 0 {
			n += floodDelta(before, mf, "oneport_health_probes_total")
		}
		return n+float64(kd) >= float64(fc.sent)
	}
}

// floodRandomUfrags sends size STUN Binding requests for random ufrags
// from floodSockets sources: ufrags in the node's own format (with its tag
// or another that no member has), random ice-chars of 4 to 32, and longer
// than any ufrag may be; all must be dropped as unknown_ufrag, and none
// answered.
func (f *floodFixture) floodRandomUfrags(size uint64) {
	t := f.t
	fl := newFlooder(t, f.n.udp, floodSources(f.rng, floodSockets))
	defer fl.close() // its sockets' descriptors are not needed past this flood
	memberTag := f.member.Tag()
	var fc floodCounts
	before := f.n.scrape()
	user := make([]byte, 0, 128)
	r := f.run("stun random ufrag", func() (floodCounts, error) {
		var err error
		fc, err = fl.run(size, time.Now().Add(floodSendBudget),
			func() int { return f.rng.IntN(len(fl.conns)) },
			func(_ int, b []byte) (int, int) {
				user = user[:0]
				switch v := f.rng.IntN(10); {
				case v < 5: // the node's format: 'a', a tag, 16 ice-chars
					user = append(user, 'a')
					if v == 0 {
						user = append(user, f.tag...)
					} else {
						user = floodAppendIceChars(f.rng, user, mux.TagLen)
						if string(user[1:]) == memberTag {
							user[0] = 'b' // a member's tag would be relayed to it, not dropped
						}
					}
					user = floodAppendIceChars(f.rng, user, mux.UfragRandomChars)
				case v < 9:
					user = floodAppendIceChars(f.rng, user, 4+f.rng.IntN(29))
				default: // longer than mux.MaxUfragLen
					user = floodAppendIceChars(f.rng, user, mux.MaxUfragLen+1+f.rng.IntN(32))
				}
				user = append(user, ':')
				user = floodAppendIceChars(f.rng, user, 4+f.rng.IntN(29))
				n := floodBindingRequest(f.rng, f.rb, b, user)
				return n, floodPredict(b[:n], nil)
			})
		return fc, err
	}, func(mf families, kd uint64) bool { return floodSettledByKind(before, &fc)(mf, kd) })
	if other := fc.sent - fc.byKind[mux.DropUnknownUfrag]; other != 0 {
		t.Errorf("the generator made %d checks the mux does not see as a Binding request with a USERNAME", other)
	}
	f.checkReasons(r)
	f.checkLogs(r, floodMaxLogLines)
	f.checkNoReplies(r, fl)
}

// checkNoReplies asserts that the node sent nothing back to the flood's
// sockets.
func (f *floodFixture) checkNoReplies(r *floodRun, fl *flooder) {
	f.t.Helper()
	n, err := fl.replies()
	if err != nil {
		f.t.Fatal(err)
	}
	if n != 0 {
		f.t.Errorf("%s: the node answered %d datagrams of the flood", r.res.name, n)
	}
}

// floodJunk sends size junk datagrams (random bytes and lengths after
// first bytes of every class) from floodSockets sources. Each must be
// counted under the reason the mux's parser gives its content; the whoHas
// queries it triggers towards the member (non-STUN from unknown addresses)
// must be bounded by the datagrams that trigger them.
func (f *floodFixture) floodJunk(size uint64) {
	t := f.t
	fl := newFlooder(t, f.n.udp, floodSources(f.rng, floodSockets))
	defer fl.close() // its sockets' descriptors are not needed past this flood
	var fc floodCounts
	before := f.n.scrape()
	whoHas0 := f.memberIn[3].Load()
	r := f.run("junk", func() (floodCounts, error) {
		var err error
		fc, err = fl.run(size, time.Now().Add(floodSendBudget),
			func() int { return f.rng.IntN(len(fl.conns)) },
			func(_ int, b []byte) (int, int) {
				n := floodJunkDatagram(f.rng, f.rb, b)
				return n, floodPredict(b[:n], nil)
			})
		return fc, err
	}, func(mf families, kd uint64) bool { return floodSettledByKind(before, &fc)(mf, kd) })
	f.checkReasons(r)
	f.checkLogs(r, floodMaxLogLines)
	probes := floodDelta(r.before.mf, r.after.mf, "oneport_health_probes_total")
	if want := fc.byKind[floodKindProbe]; probes < float64(want)-float64(r.kd) || probes > float64(want) {
		t.Errorf("junk: %.0f health probes counted, %d sent", probes, want)
	}
	replies, err := fl.replies()
	if err != nil {
		t.Fatal(err)
	}
	if uint64(replies) > fc.byKind[floodKindProbe] {
		t.Errorf("junk: %d replies to %d health probes and junk", replies, fc.byKind[floodKindProbe])
	}
	whoHas := f.memberIn[3].Load() - whoHas0
	unknown := floodDelta(r.before.mf, r.after.mf, "oneport_mux_drops_total", "reason", "unknown_address")
	if float64(whoHas) > unknown {
		t.Errorf("junk: %d whoHas queries reached the member for %.0f unknown-address datagrams", whoHas, unknown)
	}
	var kinds []string
	for k, n := range fc.byKind {
		if n > 0 {
			kinds = append(kinds, fmt.Sprintf("%s=%d", floodKindName(k), n))
		}
	}
	r.res.extra = fmt.Sprintf("sent by kind: %s; health probes answered %.0f; whoHas to the member %d; replies %d",
		strings.Join(kinds, " "), floodDelta(r.before.mf, r.after.mf, "oneport_health_probes_total", "result", "answered"), whoHas, replies)
}

// floodLiveUfrag sends size checks naming the live sessions' ufrags (the
// publisher's and a subscriber's, read from the node's answers) with a bad
// MESSAGE-INTEGRITY, from 127.0.0.2 to 127.0.0.200, five ports each. They
// reach the sessions' ICE agents within the unbound budget and rate, or are
// dropped as unbound_limit or unbound_rate; none may be answered or bind an
// address.
func (f *floodFixture) floodLiveUfrag(size uint64) {
	t := f.t
	var srcs []netip.AddrPort
	for i := 2; i <= 200; i++ {
		for range 5 {
			srcs = append(srcs, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, byte(i)}), 0))
		}
	}
	fl := newFlooder(t, f.n.udp, srcs)
	defer fl.close() // its sockets' descriptors are not needed past this flood
	targets := []string{floodSDPUfrag(t, f.pub.pc.RemoteDescription().SDP), floodSDPUfrag(t, f.subs[0].pc.RemoteDescription().SDP)}
	live := func(u []byte) bool { return f.ufrag[string(u)] }
	var fc floodCounts
	before := f.n.scrape()
	user := make([]byte, 0, 128)
	r := f.run("stun live ufrag, bad integrity", func() (floodCounts, error) {
		var err error
		fc, err = fl.run(size, time.Now().Add(floodSendBudget),
			func() int { return f.rng.IntN(len(fl.conns)) },
			func(_ int, b []byte) (int, int) {
				user = append(user[:0], targets[f.rng.IntN(len(targets))]...)
				user = append(user, ':')
				user = floodAppendIceChars(f.rng, user, 4+f.rng.IntN(29))
				n := floodBindingRequest(f.rng, f.rb, b, user)
				return n, floodPredict(b[:n], live)
			})
		return fc, err
	}, func(mf families, kd uint64) bool {
		return floodDelta(before, mf, "oneport_mux_packets_total", "direction", "in", "class", "stun")+float64(kd) >= float64(fc.sent)
	})
	if fc.byKind[floodKindSession] != fc.sent {
		t.Errorf("the generator made %d of %d checks that do not name a live ufrag", fc.sent-fc.byKind[floodKindSession], fc.sent)
	}
	f.checkLogs(r, floodMaxLogLines)
	f.checkNoReplies(r, fl)
	unbound := floodDelta(r.before.mf, r.after.mf, "oneport_mux_drops_total", "reason", "unbound_limit")
	rate := floodDelta(r.before.mf, r.after.mf, "oneport_mux_drops_total", "reason", "unbound_rate")
	if unbound+rate > float64(fc.sent) {
		t.Errorf("%s: unbound_limit and unbound_rate moved by %.0f for %d sent", r.res.name, unbound+rate, fc.sent)
	}
	// The per-session rate (mux Config.UnboundRate) keeps the live sessions'
	// ICE agents from checking the integrity of more than a trickle of them.
	if reached := float64(fc.sent) - float64(r.kd) - unbound - rate; reached > float64(fc.sent)/10 {
		t.Errorf("%s: about %.0f of %d spoofed checks reached the ICE agents", r.res.name, reached, fc.sent)
	}
	for _, reason := range []string{"unknown_ufrag", "queue_full", "table_full"} {
		if d := floodDelta(r.before.mf, r.after.mf, "oneport_mux_drops_total", "reason", reason); d != 0 {
			t.Errorf("%s: drops{reason=%q} moved by %.0f", r.res.name, reason, d)
		}
	}
	// Nothing was bound: the spoofed sources got no flow.
	if b, a := floodSum(r.before.mf, "oneport_mux_flows"), floodSum(r.after.mf, "oneport_mux_flows"); a > b {
		t.Errorf("%s: flows went from %.0f to %.0f", r.res.name, b, a)
	}
	stunIn := floodDelta(r.before.mf, r.after.mf, "oneport_mux_packets_total", "direction", "in", "class", "stun")
	r.res.extra = fmt.Sprintf("stun in %.0f; to the sessions' ICE agents (discarded there) about %.0f; unbound_limit %.0f; unbound_rate %.0f",
		stunIn, max(float64(fc.sent)-float64(r.kd)-unbound-rate, 0), unbound, rate)
}

// floodRelay sends size relay frames to the node's relay socket: from 255
// random 127/8 hosts and from 127.0.0.1 ports that are no member's relay
// (relay_not_member, some with a MAC made with the right key), and from the
// member's relay socket with a bad MAC, or a right MAC on a frame too old
// (both relay_auth) or of an unknown version (relay_malformed).
func (f *floodFixture) floodRelay(size uint64) {
	t := f.t
	srcs := floodSources(f.rng, 255)
	for range 16 {
		srcs = append(srcs, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 0))
	}
	fl := newFlooder(t, f.peer, srcs)
	defer fl.close() // its sockets' descriptors are not needed past this flood
	member := len(fl.conns)
	fl.borrow(f.memberSock, f.memberPC)
	var fc floodCounts
	before := f.n.scrape()
	r := f.run("relay non-member and bad MAC", func() (floodCounts, error) {
		var err error
		fc, err = fl.run(size, time.Now().Add(floodSendBudget),
			func() int {
				if f.rng.IntN(2) == 0 {
					return member
				}
				return f.rng.IntN(member)
			},
			func(sock int, b []byte) (int, int) {
				now := time.Now().UnixMilli()
				typ := byte(1 + f.rng.IntN(4))
				v := f.rng.IntN(20)
				switch {
				case sock != member && v == 0:
					return floodRelayFrame(f.rng, f.rb, b, 1, typ, now, f.key), int(mux.DropRelayNotMember)
				case sock != member:
					return floodRelayFrame(f.rng, f.rb, b, 1, typ, now, nil), int(mux.DropRelayNotMember)
				case v == 0:
					return floodRelayFrame(f.rng, f.rb, b, 1, typ, now-60_000, f.key), int(mux.DropRelayAuth)
				case v == 1:
					return floodRelayFrame(f.rng, f.rb, b, 2, typ, now, f.key), int(mux.DropRelayMalformed)
				}
				return floodRelayFrame(f.rng, f.rb, b, 1, typ, now, nil), int(mux.DropRelayAuth)
			})
		return fc, err
	}, func(mf families, kd uint64) bool { return floodSettledByKind(before, &fc)(mf, kd) })
	f.checkReasons(r)
	f.checkLogs(r, floodMaxLogLines)
	in := floodDelta(r.before.mf, r.after.mf, "oneport_cluster_relay_packets_total", "direction", "in")
	if in < float64(fc.sent)-float64(r.kd) || in > float64(fc.sent) {
		t.Errorf("%s: relay frames in moved by %.0f for %d sent, %d kernel drops", r.res.name, in, fc.sent, r.kd)
	}
	if mf := f.n.scrape(); floodSum(mf, "oneport_cluster_members", "state", "alive") != 2 {
		t.Errorf("%s: the member is no longer alive at the node", r.res.name)
	}
	r.res.extra = fmt.Sprintf("not member %d, bad MAC or too old %d, malformed %d",
		fc.byKind[mux.DropRelayNotMember], fc.byKind[mux.DropRelayAuth], fc.byKind[mux.DropRelayMalformed])
}

// floodWHIP posts size WHIP offers (one in four garbage) to a room of its
// own from 8 goroutines on 2 client IPs: every answer is 201, 400, 429
// (the per-IP signaling rate) or 503 (the participant limit), never another
// 5xx; the refusal counters match the answers exactly.
func (f *floodFixture) floodWHIP(size uint64) {
	t := f.t
	offer := floodOffer(t)
	const workers = 8
	ips := []net.IP{net.IPv4(127, 0, 0, 101), net.IPv4(127, 0, 0, 102)}
	var (
		mu       sync.Mutex
		codes    = map[int]int{}
		errs     []error
		noRetry  int
		sessions int
	)
	r := f.run("whip post", func() (floodCounts, error) {
		start := time.Now()
		deadline := start.Add(floodSendBudget)
		var wg sync.WaitGroup
		var next, sent atomic.Uint64
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tr := &http.Transport{
					DialContext:         (&net.Dialer{LocalAddr: &net.TCPAddr{IP: ips[w%len(ips)]}, Timeout: httpTimeout}).DialContext,
					MaxIdleConnsPerHost: 1,
				}
				defer tr.CloseIdleConnections()
				cl := &http.Client{Transport: tr, Timeout: httpTimeout}
				for {
					i := next.Add(1) - 1
					if i >= size || time.Now().After(deadline) {
						return
					}
					body := offer
					if i%4 == 3 {
						body = "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\nnot an offer\r\n"
					}
					code, hdr, err := floodPost(cl, f.n.base+"/whip/flood-whip", body)
					sent.Add(1)
					mu.Lock()
					if err != nil {
						errs = append(errs, err)
					} else {
						codes[code]++
						if (code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable) && hdr.Get("Retry-After") == "" {
							noRetry++
						}
						if code == http.StatusCreated {
							sessions++
						}
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		n := sent.Load()
		return floodCounts{sent: n, elapsed: time.Since(start), cut: n < size}, nil
	}, func(families, uint64) bool { return true })

	if len(errs) > 0 {
		t.Errorf("whip: %d requests failed, the first: %v", len(errs), errs[0])
	}
	for code, k := range codes {
		switch code {
		case http.StatusCreated, http.StatusBadRequest, http.StatusTooManyRequests, http.StatusServiceUnavailable:
		default:
			t.Errorf("whip: %d answers %d %s", k, code, http.StatusText(code))
		}
	}
	if codes[http.StatusTooManyRequests] == 0 {
		t.Errorf("whip: no 429 in %d POSTs from 2 IPs at %s/s each", r.fc.sent, floodSignalingRate)
	}
	// Joins in flight count against the limit (sfu.Server.enterRoom), so
	// concurrent POSTs never overshoot it.
	if room := floodMaxParticipants - 3; sessions > room {
		t.Errorf("whip: %d sessions created; the participant limit leaves %d", sessions, room)
	}
	if noRetry > 0 {
		t.Errorf("whip: %d answers 429 or 503 without Retry-After", noRetry)
	}
	for _, c := range []struct {
		reason string
		code   int
	}{{"rate_limited", http.StatusTooManyRequests}, {"server_full", http.StatusServiceUnavailable}} {
		if d := floodDelta(r.before.mf, r.after.mf, "oneport_sfu_refused_total", "reason", c.reason); d != float64(codes[c.code]) {
			t.Errorf("whip: refused{reason=%q} moved by %.0f for %d answers %d", c.reason, d, codes[c.code], c.code)
		}
	}
	// A few lines per session created, none per request refused.
	f.checkLogs(r, floodMaxLogLines+4*sessions)
	var parts []string
	for _, code := range slices.Sorted(maps.Keys(codes)) {
		parts = append(parts, fmt.Sprintf("%d=%d", code, codes[code]))
	}
	r.res.extra = "answers " + strings.Join(parts, " ")
}

// floodPost posts one WHIP offer and reads the whole answer.
func floodPost(cl *http.Client, url, body string) (int, http.Header, error) {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return 0, nil, fmt.Errorf("whip: %w", err)
	}
	req.Header.Set("Content-Type", "application/sdp")
	resp, err := cl.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("whip: POST: %w", err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return 0, nil, fmt.Errorf("whip: body: %w", err)
	}
	return resp.StatusCode, resp.Header, nil
}

// floodOffer is a real publisher's offer (VP8, host candidates on
// loopback), made once and posted many times.
func floodOffer(t *testing.T) string {
	t.Helper()
	p := newPeer(t)
	defer p.pc.Close()
	tr, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8}, "video", "flood")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.pc.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
		t.Fatal(err)
	}
	offer, err := p.pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	gathered := webrtc.GatheringCompletePromise(p.pc)
	if err := p.pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gathered:
	case <-time.After(gatherBudget):
		t.Fatal("ICE gathering timed out")
	}
	return p.pc.LocalDescription().SDP
}

// floodNACK makes a third subscriber of the live room send size RTCP NACKs
// through its real (SRTCP) session, each naming 128 packets among the latest
// 512 it received, over and over. Answered without limit, each NACK would buy
// 128 retransmissions; the node's resend policy (sfu/resend.go) must hold
// them to maxResends per packet sent, account for every packet named
// (retransmitted, suppressed or missed), and the live subscribers must lose
// nothing.
func (f *floodFixture) floodNACK(size uint64) {
	t := f.t
	const (
		perNACK    = 128 // 8 pairs of 16: the node's per-NACK bound
		window     = 512 // the node's video history
		maxResends = 3   // sfu's
	)
	nk := newSubscriber(t, f.n, "flood")
	nk.waitConnected()
	waitPackets(t, nk, 100)
	ssrc := nk.ssrc.Load()
	pub0 := f.pub.sent.Load()
	before := f.n.scrape()
	accounted := func(mf families) float64 {
		return floodDelta(before, mf, "oneport_sfu_retransmitted_packets_total") +
			floodDelta(before, mf, "oneport_sfu_nack_suppressed_total") +
			floodDelta(before, mf, "oneport_sfu_nack_misses_total")
	}
	var asked uint64
	var last float64
	var lastChange time.Time
	r := f.run("rtcp nack from a subscriber", func() (floodCounts, error) {
		var fc floodCounts
		start := time.Now()
		deadline := start.Add(floodSendBudget)
		pairs := make([]rtcp.NackPair, perNACK/16)
		pkt := []rtcp.Packet{&rtcp.TransportLayerNack{MediaSSRC: ssrc, Nacks: pairs}}
		for ; fc.sent < size; fc.sent++ {
			if fc.sent%256 == 0 && time.Now().After(deadline) {
				fc.cut = true
				break
			}
			top := uint16(nk.lastSeq.Load())
			for k := range pairs {
				off := uint16((int(fc.sent)*perNACK + k*16) % window)
				pairs[k] = rtcp.NackPair{PacketID: top - (window - 1) + off, LostPackets: 0x7fff}
			}
			if err := nk.pc.WriteRTCP(pkt); err != nil {
				return fc, err
			}
		}
		fc.elapsed = time.Since(start)
		asked = fc.sent * perNACK
		return fc, nil
	}, func(mf families, kd uint64) bool {
		// Every packet named is accounted for, but for whole NACKs the
		// kernel or the mux (the nacker's session queue, queue_full)
		// dropped. pion may also drop RTCP when its read buffer is full:
		// then the counters stop short, and stopping for a second ends
		// the wait (the shortfall is reported).
		a := accounted(mf)
		dropped := float64(kd) + floodDelta(before, mf, "oneport_mux_drops_total", "reason", "queue_full")
		if a+perNACK*dropped >= float64(asked) {
			return true
		}
		if a != last || lastChange.IsZero() {
			last, lastChange = a, time.Now()
			return false
		}
		return time.Since(lastChange) > time.Second
	})
	resent := floodDelta(r.before.mf, r.after.mf, "oneport_sfu_retransmitted_packets_total")
	suppressed := floodDelta(r.before.mf, r.after.mf, "oneport_sfu_nack_suppressed_total")
	misses := floodDelta(r.before.mf, r.after.mf, "oneport_sfu_nack_misses_total")
	media := f.pub.sent.Load() - pub0
	if bound := float64(maxResends * (window + media)); resent > bound {
		t.Errorf("%s: %.0f retransmissions for %d media packets: more than %d of each", r.res.name, resent, media, maxResends)
	}
	if resent == 0 {
		t.Errorf("%s: no NACK was answered", r.res.name)
	}
	if a := resent + suppressed + misses; a > float64(asked) {
		t.Errorf("%s: %.0f NACKed packets accounted for, %d named", r.res.name, a, asked)
	}
	if st := nk.state(); st != webrtc.PeerConnectionStateConnected {
		t.Errorf("%s: the nacking subscriber is %v", r.res.name, st)
	}
	f.checkLogs(r, floodMaxLogLines)
	muxDropped := floodDelta(r.before.mf, r.after.mf, "oneport_mux_drops_total", "reason", "queue_full")
	r.res.extra = fmt.Sprintf("%d NACKs naming %d packets; retransmitted %.0f (%.3f per NACK; unbounded: %d), suppressed %.0f, missed %.0f; NACKs dropped by the mux (the nacker's queue) %.0f, otherwise unaccounted %.0f; media packets meanwhile %d",
		r.fc.sent, asked, resent, resent/float64(max(r.fc.sent, 1)), perNACK, suppressed, misses,
		muxDropped, float64(asked)-resent-suppressed-misses-perNACK*muxDropped, media)
	nk.close()
}

// report logs the table of every flood's figures.
func (f *floodFixture) report() {
	var b strings.Builder
	fmt.Fprintf(&b, "%-32s %9s %9s %9s %5s %5s %7s %5s %8s %8s %10s %10s %10s %5s  %s\n",
		"flood", "size", "send", "settle", "loss", "order", "gap", "disc", "kd node", "kd cli", "heap", "rss", "peak", "logs", "drops by reason")
	for _, r := range f.results {
		size := fmt.Sprint(r.sent)
		if r.cut {
			size += "*"
		}
		fmt.Fprintf(&b, "%-32s %9s %9v %9v %5d %5d %7s %5d %8d %8d %10s %10s %10s %5d  %s\n",
			r.name, size, r.send.Round(time.Millisecond), r.settle.Round(time.Millisecond), r.loss, r.disorder,
			floodGap(r.gap), r.blips, r.kernel, r.clientKD,
			floodMiB(r.heap), floodMiB(r.rss), floodMiB(r.peak), r.logLines, r.drops)
		if r.extra != "" {
			fmt.Fprintf(&b, "%-32s %s\n", "", r.extra)
		}
	}
	f.t.Logf("floods (* = cut by the %v deadline; loss, order and longest media gap over all subscribers; disc = live clients' transient disconnections; kd = kernel receive-buffer drops):\n%s",
		floodSendBudget, b.String())
}

// floodGap formats a media gap; subscribers record gaps from minGap on.
func floodGap(d time.Duration) string {
	if d == 0 {
		return "<" + minGap.String()
	}
	return d.Round(time.Millisecond).String()
}

func floodMiB(n int64) string { return fmt.Sprintf("%+.1fMiB", float64(n)/(1<<20)) }
