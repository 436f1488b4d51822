package serve

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// rawConn is a keep-alive HTTP/1.1 connection to the node from a chosen
// loopback address.
type rawConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, n *node, src string) *rawConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", strings.TrimPrefix(n.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{c: c, r: bufio.NewReader(c)}
}

// get makes one request on the connection; ok is false when the node closed
// it instead of answering.
func (rc *rawConn) get(path string) (code int, body string, ok bool) {
	if err := rc.c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return 0, "", false
	}
	if _, err := io.WriteString(rc.c, "GET "+path+" HTTP/1.1\r\nHost: oneport\r\n\r\n"); err != nil {
		return 0, "", false
	}
	res, err := http.ReadResponse(rc.r, nil)
	if err != nil {
		return 0, "", false
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, "", false
	}
	return res.StatusCode, string(b), true
}

// The signaling listener bounds open connections per client IP and in all
// (--max-http-conns-per-ip, --max-http-conns): one over either is closed at
// accept and counted in /metrics by reason, the open ones keep being served,
// and closing connections lets clients in again.
func TestHTTPConnectionLimits(t *testing.T) {
	n := startNode(t, "--max-http-conns-per-ip", "3", "--max-http-conns", "7")

	var held []*rawConn
	open := func(src string, want bool) {
		t.Helper()
		rc := dialRaw(t, n, src)
		code, _, ok := rc.get("/healthz")
		if ok != want || (ok && code != http.StatusOK) {
			t.Fatalf("a connection from %s: served %v (%d), want %v", src, ok, code, want)
		}
		if ok {
			held = append(held, rc)
		}
	}
	for range 3 {
		open("127.0.0.2", true)
	}
	open("127.0.0.2", false) // a 4th from one IP
	for range 3 {
		open("127.0.0.3", true)
	}
	open("127.0.0.4", true)  // 7 open
	open("127.0.0.5", false) // an 8th

	// The open connections are still served: scrape on one of them.
	scrape := func() families {
		t.Helper()
		code, body, ok := held[0].get("/metrics")
		if !ok || code != http.StatusOK {
			t.Fatalf("GET /metrics on a held connection: %v %d", ok, code)
		}
		p := expfmt.NewTextParser(model.LegacyValidation)
		mf, err := p.TextToMetricFamilies(strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		return mf
	}
	mf := scrape()
	for reason, want := range map[string]float64{"max_per_ip": 1, "max_conns": 1} {
		if got := floodSum(mf, "oneport_http_refused_connections_total", "reason", reason); got != want {
			t.Errorf("refused{reason=%s} = %.0f, want %.0f", reason, got, want)
		}
	}
	if got := floodSum(mf, "oneport_http_connections"); got != 7 {
		t.Errorf("http_connections %.0f, want 7", got)
	}

	// Closed connections free their slots.
	for _, rc := range held[1:] {
		rc.c.Close()
	}
	waitFor(t, "the closed connections released on the node", 5*time.Second, func() bool {
		return floodSum(scrape(), "oneport_http_connections") == 1
	})
	open("127.0.0.5", true)
	open("127.0.0.2", true)
}
