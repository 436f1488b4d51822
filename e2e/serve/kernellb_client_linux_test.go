package serve

// The client side of the kernel-LB tests (kernellb_linux_test.go). pion opens
// its sockets on goroutines of its own, which would run in the test
// process's namespace, so the clients run as processes in a client
// namespace: the test binary re-executed through `ip netns exec` with
// klbEnv set, running only TestKernelLBClient. Such a process publishes or
// subscribes through the VIP, prints a klbReport line on stdout when its
// peers are connected and receiving, then every klbStatusEvery, and a final
// one when its stdin closes (the test's signal to stop).

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oneport/oneport/cluster"
)

// klbEnv carries a klbClientConfig (JSON) to a re-executed client process.
const klbEnv = "ONEPORT_E2E_KLB_CLIENT"

// klbReportPrefix starts every report line a client prints on stdout.
const klbReportPrefix = "oneport-klb-report "

// klbStatusEvery paces a client's status reports.
const klbStatusEvery = 100 * time.Millisecond

// klbIngressTries bounds the new connections a client opens to get a
// signaling connection that the HTTP LB sends to a node other than
// klbClientConfig.Avoid: with 3 nodes, 30 misses happen once in 10^5 runs.
const klbIngressTries = 30

// klbClientRole reports whether this process is a kernel-LB test's client.
func klbClientRole() bool { return os.Getenv(klbEnv) != "" }

// klbClientConfig tells a client process what to do.
type klbClientConfig struct {
	Role  string `json:"role"`  // "pub" or "sub"
	Base  string `json:"base"`  // http://VIP:port
	Room  string `json:"room"`  // room to publish to or subscribe from
	Peers int    `json:"peers"` // subscribers (role sub); each has its own socket
	// Avoid, when set, is a node name: the first peer signals over a TCP
	// connection the LB sent to another node, so its request is proxied.
	Avoid  string        `json:"avoid,omitempty"`
	Iface  string        `json:"iface"`   // the interface to gather candidates on
	MaxRun time.Duration `json:"max_run"` // fail if not stopped by then
}

// klbReport is one report line.
type klbReport struct {
	Kind  string          `json:"kind"` // ready, status or final
	At    time.Time       `json:"at"`
	Peers []klbPeerReport `json:"peers"`
}

// klbPeerReport is one PeerConnection's state.
type klbPeerReport struct {
	Ingress   string `json:"ingress"`    // the node that took the signaling connection
	Location  string `json:"location"`   // the WHIP/WHEP resource
	LocalAddr string `json:"local_addr"` // the selected candidate pair's local address
	State     string `json:"state"`
	Sent      uint64 `json:"sent,omitempty"`     // publisher: packets sent
	PLIs      int64  `json:"plis,omitempty"`     // publisher: PLIs and FIRs received
	Count     int    `json:"count"`              // subscriber: packets received
	Last      uint64 `json:"last"`               // subscriber: the last counter
	Lost      uint64 `json:"lost"`               // subscriber: counters skipped
	Backwards int    `json:"backwards"`          // subscriber: counters not increasing
	Recovered int    `json:"recovered"`          // subscriber: of those, skipped ones filled late
	Gaps      []gap  `json:"gaps,omitempty"`     // subscriber: recorded gaps
	ReadErr   string `json:"read_err,omitempty"` // subscriber: why its track reader stopped
}

// TestKernelLBClient is the client process of the kernel-LB tests; in a
// normal run (klbEnv unset) it has nothing to do.
func TestKernelLBClient(t *testing.T) {
	raw := os.Getenv(klbEnv)
	if raw == "" {
		t.Skip("the kernel-LB tests' client process: they run it in a client namespace")
	}
	var cfg klbClientConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatalf("%s: %v", klbEnv, err)
	}
	stop := make(chan struct{})
	go func() { // ends when the test closes our stdin, which is how it stops us
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	deadline := time.NewTimer(cfg.MaxRun)
	defer deadline.Stop()

	var report func(kind string)
	switch cfg.Role {
	case "pub":
		ep := dialVIP(t, cfg.Base, "")
		p := newPublisherOn(t, ep.node, cfg.Room, cfg.Iface)
		ep.done(t)
		p.waitConnected()
		report = func(kind string) {
			r := peerReport(p.peer, ep.ingress)
			r.Sent, r.PLIs = p.sent.Load(), p.plis.Load()
			printReport(kind, []klbPeerReport{r})
		}
		defer func() {
			p.stopSending()
			<-p.sendDone
			report("final")
		}()
	case "sub":
		subs := make([]*subscriber, cfg.Peers)
		eps := make([]*vipEndpoint, cfg.Peers)
		for i := range subs {
			avoid := ""
			if i == 0 {
				avoid = cfg.Avoid
			}
			eps[i] = dialVIP(t, cfg.Base, avoid)
			subs[i] = newSubscriberOn(t, eps[i].node, cfg.Room, cfg.Iface)
			eps[i].done(t)
		}
		for _, s := range subs {
			s.waitConnected()
			waitFor(t, "media at a subscriber", mediaBudget, func() bool { n, _, _, _ := s.received(); return n > 0 })
		}
		report = func(kind string) {
			var rs []klbPeerReport
			for i, s := range subs {
				r := peerReport(s.peer, eps[i].ingress)
				r.Count, r.Last, r.Lost, _ = s.received()
				r.Backwards, r.Recovered = s.late()
				r.Gaps = s.gapsSoFar()
				if err := s.stopped(); err != nil {
					r.ReadErr = err.Error()
				}
				rs = append(rs, r)
			}
			printReport(kind, rs)
		}
		defer report("final")
	default:
		t.Fatalf("role %q: want pub or sub", cfg.Role)
	}

	report("ready")
	tick := time.NewTicker(klbStatusEvery)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-deadline.C:
			t.Fatalf("not stopped within %v", cfg.MaxRun)
		case <-tick.C:
			report("status")
		}
	}
}

func printReport(kind string, peers []klbPeerReport) {
	b, err := json.Marshal(klbReport{Kind: kind, At: time.Now(), Peers: peers})
	if err != nil {
		panic(err) // plain structs always marshal
	}
	fmt.Println(klbReportPrefix + string(b))
}

func peerReport(p *peer, ingress string) klbPeerReport {
	r := klbPeerReport{Ingress: ingress, Location: p.location, State: p.state().String()}
	if pair, err := p.pc.SCTP().Transport().ICETransport().GetSelectedCandidatePair(); err == nil && pair != nil {
		r.LocalAddr = net.JoinHostPort(pair.Local.Address, fmt.Sprint(pair.Local.Port))
	}
	return r
}

// vipEndpoint is the HTTP side of one client: a *node whose base is the VIP
// and whose client has one TCP connection, which GET /api/cluster (answered
// by the node the LB chose, ingress) and then the WHIP or WHEP POST use.
type vipEndpoint struct {
	node    *node
	tr      *http.Transport
	dials   *atomic.Int32
	ingress string
}

// dialVIP opens a signaling connection through the VIP and learns which
// node took it; with avoid set, it tries new connections (new source
// ports, so new hashes) until one reaches another node.
func dialVIP(t *testing.T, base, avoid string) *vipEndpoint {
	t.Helper()
	for range klbIngressTries {
		dials := new(atomic.Int32)
		tr := &http.Transport{
			MaxConnsPerHost: 1,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				dials.Add(1)
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			},
		}
		ep := &vipEndpoint{
			node:  &node{t: t, base: base, http: &http.Client{Timeout: httpTimeout, Transport: tr}},
			tr:    tr,
			dials: dials,
		}
		code, _, body := ep.node.do(base, http.MethodGet, "/api/cluster", "")
		var info cluster.ClusterInfo
		if err := json.Unmarshal([]byte(body), &info); code != http.StatusOK || err != nil {
			t.Fatalf("GET /api/cluster through the VIP: %d %q: %v", code, body, err)
		}
		ep.ingress = info.Self
		if avoid == "" || info.Self != avoid {
			return ep
		}
		tr.CloseIdleConnections()
	}
	t.Fatalf("%d connections through the VIP all reached %s", klbIngressTries, avoid)
	return nil
}

// done checks that the signaling used the one connection whose node
// dialVIP learned, and closes it.
func (ep *vipEndpoint) done(t *testing.T) {
	t.Helper()
	if n := ep.dials.Load(); n != 1 {
		t.Fatalf("signaling opened %d connections, want 1: its ingress node is unknown", n)
	}
	ep.tr.CloseIdleConnections()
}
