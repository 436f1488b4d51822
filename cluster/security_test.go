package cluster

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/oneport/oneport/mux"
)

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Without a cluster key the node says at start, as a warning, that the
// internal network must be trusted; with one it does not.
func TestNoClusterKeyWarns(t *testing.T) {
	defer verifyNoLeaks(t)
	for _, tc := range []struct {
		key  []byte
		warn bool
	}{{nil, true}, {[]byte("a shared secret"), false}} {
		var out syncBuffer
		id := NewIdentity()
		m, err := mux.Listen("127.0.0.1:0", mux.Config{Sockets: 1, Tag: id.Tag, Relay: "127.0.0.1:0", RelayKey: RelayKey(tc.key)})
		if err != nil {
			t.Fatal(err)
		}
		node, err := New(Config{
			Identity: id, NodeName: "warn", Gossip: "127.0.0.1:0", Key: tc.key,
			Relay: m, RelayPort: m.RelayAddr().(*net.UDPAddr).Port, Profile: "local",
			Logger: zerolog.New(&out),
		})
		if err != nil {
			m.Close()
			t.Fatal(err)
		}
		node.Close()
		m.Close()
		var warned bool
		for _, ln := range strings.Split(out.String(), "\n") {
			if strings.Contains(ln, `"level":"warn"`) && strings.Contains(ln, "no --cluster-key") &&
				strings.Contains(ln, "internal network must be trusted") {
				warned = true
			}
		}
		if warned != tc.warn {
			t.Errorf("key %q: warned %v, want %v; log:\n%s", tc.key, warned, tc.warn, out.String())
		}
	}
}

// ClientIP trusts X-Forwarded-For only on a request that carries
// ForwardedHeader from a member's IP, and then only its last entry.
func TestClientIPTrustsOnlyMembers(t *testing.T) {
	defer verifyNoLeaks(t)
	n, _ := startDirNode(t, "127.0.0.1")
	defer n.close()
	got := make(chan netip.Addr, 1)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- n.node.ClientIP(r)
	}))
	defer hs.Close()
	from := func(ip string, hdr ...string) netip.Addr {
		t.Helper()
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		}}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest("POST", hs.URL+"/whip/x", nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Add(hdr[i], hdr[i+1])
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return <-got
	}
	for _, tc := range []struct {
		name string
		ip   string
		hdr  []string
		want string
	}{
		{"public, no headers", "127.0.0.5", nil, "127.0.0.5"},
		{"public, forged XFF", "127.0.0.5", []string{"X-Forwarded-For", "192.0.2.1"}, "127.0.0.5"},
		{"public, forged XFF and forwarded header", "127.0.0.5", []string{ForwardedHeader, "node-x", "X-Forwarded-For", "192.0.2.1"}, "127.0.0.5"},
		{"member, XFF without forwarded header", "127.0.0.1", []string{"X-Forwarded-For", "192.0.2.1"}, "127.0.0.1"},
		{"member, proxied", "127.0.0.1", []string{ForwardedHeader, "node-x", "X-Forwarded-For", "203.0.113.9, 192.0.2.1"}, "192.0.2.1"},
		{"member, proxied, two XFF lines", "127.0.0.1", []string{ForwardedHeader, "node-x", "X-Forwarded-For", "203.0.113.9", "X-Forwarded-For", "2001:db8::7"}, "2001:db8::7"},
		{"member, proxied, junk XFF", "127.0.0.1", []string{ForwardedHeader, "node-x", "X-Forwarded-For", "junk"}, "127.0.0.1"},
	} {
		if ip := from(tc.ip, tc.hdr...); ip != netip.MustParseAddr(tc.want) {
			t.Errorf("%s: charged to %v, want %s", tc.name, ip, tc.want)
		}
	}
}
