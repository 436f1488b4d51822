package serve

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/oneport/oneport/cluster"
)

// A client's signaling flood sent to one node of two is bounded at that
// node, whichever node placement picks for the rooms it names: a request
// the node would proxy is charged, and refused with 429, before it is
// proxied. The other node sees no more of the client than its limit, and
// the client gets no more than one node's worth of requests through.
func TestSignalingRateAtIngress(t *testing.T) {
	const rate, burst = 5, 10 // --signaling-rate 5: burst twice the rate
	a := startNode(t, "--signaling-rate", "5", "--node-name", "a")
	gossip := a.waitLog("gossip started", time.Second, msgIs("gossip started")).str("gossip")
	b := startNode(t, "--signaling-rate", "5", "--node-name", "b", "--join", gossip)
	waitFor(t, "both nodes alive in a's view", 10*time.Second, func() bool {
		code, _, body := a.do(a.base, http.MethodGet, "/api/cluster", "")
		var info cluster.ClusterInfo
		if code != http.StatusOK || json.Unmarshal([]byte(body), &info) != nil {
			return false
		}
		alive := 0
		for _, m := range info.Members {
			if m.State == "alive" {
				alive++
			}
		}
		return alive == 2
	})
	beforeA, beforeB := a.scrape(), b.scrape()

	// One client (127.0.0.9), 400 POSTs naming 400 new rooms: about half
	// are placed on b. Each is refused (415) by whichever node serves it.
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 9)}, Timeout: 5 * time.Second}
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
	}}
	defer cl.CloseIdleConnections()
	const n = 400
	var limited, through int
	start := time.Now()
	for i := range n {
		res, err := cl.Post(fmt.Sprintf("%s/whep/ingress-%d", a.base, i), "text/plain", strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		switch res.StatusCode {
		case http.StatusTooManyRequests:
			limited++
		case http.StatusUnsupportedMediaType:
			through++
		default:
			t.Fatalf("request %d: %d", i, res.StatusCode)
		}
	}
	elapsed := time.Since(start)
	afterA, afterB := a.scrape(), b.scrape()

	allowed := burst + rate*elapsed.Seconds() + 1
	if float64(through) > allowed {
		t.Errorf("%d of %d requests got through in %v; the client's limit allows %.0f", through, n, elapsed, allowed)
	}
	if got := floodDelta(beforeA, afterA, "oneport_sfu_refused_total", "reason", "rate_limited"); got != float64(limited) {
		t.Errorf("a counted %.0f rate-limited requests, the client got %d 429s", got, limited)
	}
	if got := floodDelta(beforeB, afterB, "oneport_sfu_refused_total", "reason", "rate_limited"); got != 0 {
		t.Errorf("b refused %.0f proxied requests: a proxied more than the client's limit", got)
	}
	code, _, body := a.do(a.base, http.MethodGet, "/api/cluster", "")
	var info cluster.ClusterInfo
	if code != http.StatusOK || json.Unmarshal([]byte(body), &info) != nil {
		t.Fatalf("GET /api/cluster: %d %s", code, body)
	}
	t.Logf("%d POSTs in %v: %d got through (%d proxied to b), %d answered 429 by a", n, elapsed.Round(time.Millisecond), through, info.Signaling.Proxied, limited)
	if info.Signaling.Proxied == 0 {
		t.Errorf("a proxied none of the %d requests that got through: placement put every room on a?", through)
	}
}
