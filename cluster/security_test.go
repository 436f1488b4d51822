package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/oneport/oneport/internal/testclock"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

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

// A signature covers the proxying node, the time, the method, path and
// query (and so the room) and the client address appended to
// X-Forwarded-For: changing any of them, signing with another key, or
// presenting it outside the skew window fails verification.
func TestForwardedAuth(t *testing.T) {
	key := deriveKey([]byte("k"), "forwarded")
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	signed := func(at time.Time) http.Header {
		h := http.Header{}
		h.Set("X-Forwarded-For", "203.0.113.9, 192.0.2.1")
		signForwarded(h, key, "node-a", at, "POST", "/whep/r1", "publisher=p1")
		return h
	}
	if by, err := verifyForwardedAuth(signed(now), key, now, "POST", "/whep/r1", "publisher=p1"); err != nil || by != "node-a" {
		t.Fatalf("a fresh signature: %q %v", by, err)
	}
	for _, skew := range []time.Duration{MaxForwardedSkew, -MaxForwardedSkew} {
		if _, err := verifyForwardedAuth(signed(now.Add(skew)), key, now, "POST", "/whep/r1", "publisher=p1"); err != nil {
			t.Errorf("skew %v (at the window's edge): %v", skew, err)
		}
	}
	set := func(name, value string) func(http.Header) { return func(h http.Header) { h.Set(name, value) } }
	for _, tc := range []struct {
		name                string
		at                  time.Time
		edit                func(http.Header)
		key                 []byte
		method, path, query string
		want                error
	}{
		{name: "no header", edit: func(h http.Header) { h.Del(ForwardedHeader) }, want: ErrNotForwarded},
		{name: "no signature", edit: func(h http.Header) { h.Del(ForwardedAuthHeader) }, want: errForwardedMalformed},
		{name: "junk signature", edit: set(ForwardedAuthHeader, "junk"), want: errForwardedMalformed},
		{name: "another version", edit: func(h http.Header) { h.Set(ForwardedAuthHeader, "v2"+h.Get(ForwardedAuthHeader)[2:]) }, want: errForwardedMalformed},
		{name: "timestamp spelled otherwise", edit: func(h http.Header) {
			v := h.Get(ForwardedAuthHeader)
			h.Set(ForwardedAuthHeader, "v1.0"+v[3:])
		}, want: errForwardedMalformed},
		{name: "MAC cut short", edit: func(h http.Header) { v := h.Get(ForwardedAuthHeader); h.Set(ForwardedAuthHeader, v[:len(v)-2]) }, want: errForwardedMalformed},
		{name: "another node", edit: set(ForwardedHeader, "node-b"), want: errForwardedBadMAC},
		{name: "client address changed", edit: set("X-Forwarded-For", "203.0.113.9, 192.0.2.2"), want: errForwardedBadMAC},
		{name: "client address appended", edit: func(h http.Header) { h.Add("X-Forwarded-For", "198.51.100.1") }, want: errForwardedBadMAC},
		{name: "other key", key: deriveKey([]byte("other"), "forwarded"), want: errForwardedBadMAC},
		{name: "relay key", key: RelayKey([]byte("k")), want: errForwardedBadMAC},
		{name: "other method", method: "DELETE", want: errForwardedBadMAC},
		{name: "other room", path: "/whep/r2", want: errForwardedBadMAC},
		{name: "other query", query: "publisher=p2", want: errForwardedBadMAC},
		{name: "too old", at: now.Add(-MaxForwardedSkew - time.Millisecond), want: errForwardedExpired},
		{name: "from the future", at: now.Add(MaxForwardedSkew + time.Millisecond), want: errForwardedExpired},
	} {
		at := now
		if !tc.at.IsZero() {
			at = tc.at
		}
		h := signed(at)
		if tc.edit != nil {
			tc.edit(h)
		}
		k, method, path, query := key, "POST", "/whep/r1", "publisher=p1"
		if tc.key != nil {
			k = tc.key
		}
		if tc.method != "" {
			method = tc.method
		}
		if tc.path != "" {
			path = tc.path
		}
		if tc.query != "" {
			query = tc.query
		}
		_, err := verifyForwardedAuth(h, k, now, method, path, query)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if tc.want != ErrNotForwarded && !errors.Is(err, ErrForwardedUnauthenticated) {
			t.Errorf("%s: %v does not wrap ErrForwardedUnauthenticated", tc.name, err)
		}
	}
	// Without a key nothing is signed, and a client's signature is not
	// passed on.
	h := http.Header{}
	h.Set(ForwardedAuthHeader, "v1.1.forged")
	signForwarded(h, nil, "node-a", now, "POST", "/whip/r", "")
	if h.Get(ForwardedAuthHeader) != "" || h.Get(ForwardedHeader) != "node-a" {
		t.Fatalf("unkeyed proxy headers: %v", h)
	}
}

// roomPlacedOn returns a room name that placement, as n sees the cluster,
// puts on node want.
func roomPlacedOn(t *testing.T, n *httpNode, want, prefix string) string {
	t.Helper()
	for i := range 1000 {
		room := fmt.Sprint(prefix, i)
		if p, ok := place(room, n.node.candidates()); ok && p == want {
			return room
		}
	}
	t.Fatalf("no room placed on %s", want)
	return ""
}

// With a cluster key, a request carrying the forwarded headers without a
// valid signature (none, junk, another key's, a stale one, one made for
// another request or another client address) is a client request: placement
// applies, so it is served by the node placement picks, not the one it was
// sent to; and the owner charges it to the client's own address, not to the
// X-Forwarded-For it carried, whatever IP it came from (a member's too). A
// request the node really proxied is served by the owner and charged to the
// client; one signed with the cluster's key skips placement.
func TestForgedForwardedHeaderIsPlaced(t *testing.T) {
	defer verifyNoLeaks(t)
	clk := testclock.New(time.Now())
	key := []byte("cluster key")
	a := startHTTPNode(t, "127.0.0.1", httpNodeOpts{key: key, clock: clk})
	defer a.close()
	b := startHTTPNode(t, "127.0.0.2", httpNodeOpts{key: key, clock: clk, join: []string{a.gossip()}})
	defer b.close()
	waitMembers(t, []*httpNode{a, b}, 2)

	// sig is a signature a member could have made for path at at.
	sig := func(fkey []byte, at time.Time, path, xff string) string {
		h := http.Header{}
		h.Set("X-Forwarded-For", xff)
		signForwarded(h, fkey, a.node.Name(), at, "POST", path, "")
		return h.Get(ForwardedAuthHeader)
	}
	fkey := deriveKey(key, "forwarded")
	const spoofed = "192.0.2.66"
	refused := 0
	for i, tc := range []struct {
		name string
		from string // the client's IP
		auth func(path string) string
	}{
		{"no signature, public IP", "127.0.0.9", nil},
		{"no signature, a member's IP", "127.0.0.1", nil},
		{"junk signature", "127.0.0.9", func(string) string { return "v1.1.junk" }},
		{"another key's signature", "127.0.0.9", func(p string) string {
			return sig(deriveKey([]byte("guess"), "forwarded"), clk.Now(), p, spoofed)
		}},
		{"a stale signature", "127.0.0.1", func(p string) string {
			return sig(fkey, clk.Now().Add(-MaxForwardedSkew-time.Second), p, spoofed)
		}},
		{"a signature for another room", "127.0.0.9", func(string) string { return sig(fkey, clk.Now(), "/whip/elsewhere", spoofed) }},
		{"a signature for another client", "127.0.0.9", func(p string) string { return sig(fkey, clk.Now(), p, "198.51.100.1") }},
	} {
		room := roomPlacedOn(t, a, b.node.Name(), fmt.Sprint("forged-", i, "-"))
		path := "/whip/" + room
		hdr := []string{ForwardedHeader, a.node.Name(), "X-Forwarded-For", spoofed}
		if tc.auth != nil {
			hdr = append(hdr, ForwardedAuthHeader, tc.auth(path))
		}
		cl := newHTTPClient(tc.from)
		code, by := cl.do(t, "POST", a.url+path, hdr...)
		cl.close()
		refused++
		if code != http.StatusCreated || by != b.node.Name() {
			t.Errorf("%s: %d, served by %q, want placement's pick %s", tc.name, code, by, b.node.Name())
			continue
		}
		if got := a.stub.servedPath("POST", path); len(got) != 0 {
			t.Errorf("%s: the node it was sent to served it", tc.name)
		}
		if got := b.stub.servedPath("POST", path); len(got) != 1 || got[0].client != netip.MustParseAddr(tc.from) {
			t.Errorf("%s: the owner charged it to %v, want the client %s", tc.name, got, tc.from)
		}
		eventually(t, 5*time.Second, tc.name+": the node it was sent to learns the owner", func() bool { return ownerIs(a.testNode, room, b.node.Name()) })
	}
	if got := a.node.SignalingStats().ForwardedRefused; got != uint64(refused) {
		t.Errorf("ForwardedRefused = %d, want %d", got, refused)
	}

	// Really proxied: sent to a, placed on b, charged to the client.
	cl := newHTTPClient("127.0.0.9")
	defer cl.close()
	room := roomPlacedOn(t, a, b.node.Name(), "proxied-")
	if code, by := cl.do(t, "POST", a.url+"/whip/"+room, "X-Forwarded-For", spoofed); code != http.StatusCreated || by != b.node.Name() {
		t.Fatalf("proxied request: %d, served by %q", code, by)
	}
	if got := b.stub.servedPath("POST", "/whip/"+room); len(got) != 1 || got[0].client != netip.MustParseAddr("127.0.0.9") {
		t.Fatalf("the owner charged the proxied request to %v, want 127.0.0.9", got)
	}
	if got := b.node.SignalingStats().ForwardedRefused; got != 0 {
		t.Fatalf("the owner refused %d of the proxy's signatures", got)
	}
	// Signed with the cluster's key: not placed again, served where sent,
	// charged to the signed client.
	room = roomPlacedOn(t, a, a.node.Name(), "signed-")
	path := "/whip/" + room
	code, by := cl.do(t, "POST", b.url+path, ForwardedHeader, a.node.Name(), "X-Forwarded-For", "198.51.100.7",
		ForwardedAuthHeader, sig(fkey, clk.Now(), path, "198.51.100.7"))
	if code != http.StatusCreated || by != b.node.Name() {
		t.Fatalf("signed request: %d, served by %q, want %s (where it was sent)", code, by, b.node.Name())
	}
	if got := b.stub.servedPath("POST", path); len(got) != 1 || got[0].client != netip.MustParseAddr("198.51.100.7") {
		t.Fatalf("the signed request was charged to %v, want 198.51.100.7", got)
	}
}

// Without a cluster key, a request counts as proxied only when it carries
// the forwarded header from a member's IP: from anywhere else it is placed
// like any client request, and its X-Forwarded-For is ignored. From a
// member's IP the header is believed: the weaker guarantee SECURITY.md
// describes.
func TestForwardedWithoutKeyNeedsMemberIP(t *testing.T) {
	defer verifyNoLeaks(t)
	a := startHTTPNode(t, "127.0.0.1", httpNodeOpts{})
	defer a.close()
	b := startHTTPNode(t, "127.0.0.2", httpNodeOpts{join: []string{a.gossip()}})
	defer b.close()
	waitMembers(t, []*httpNode{a, b}, 2)
	for _, tc := range []struct {
		from, wantBy, wantClient string
	}{
		{"127.0.0.9", b.node.Name(), "127.0.0.9"},    // public: placed on b
		{"127.0.0.1", a.node.Name(), "198.51.100.7"}, // a member: served where sent
	} {
		room := roomPlacedOn(t, a, b.node.Name(), "unkeyed-"+tc.from+"-")
		path := "/whip/" + room
		cl := newHTTPClient(tc.from)
		code, by := cl.do(t, "POST", a.url+path, ForwardedHeader, "node-x", "X-Forwarded-For", "198.51.100.7")
		cl.close()
		if code != http.StatusCreated || by != tc.wantBy {
			t.Errorf("from %s: %d, served by %q, want %s", tc.from, code, by, tc.wantBy)
			continue
		}
		stub := a.stub
		if by == b.node.Name() {
			stub = b.stub
		}
		if got := stub.servedPath("POST", path); len(got) != 1 || got[0].client != netip.MustParseAddr(tc.wantClient) {
			t.Errorf("from %s: charged to %v, want %s", tc.from, got, tc.wantClient)
		}
	}
	if got := a.node.SignalingStats().ForwardedRefused; got != 1 {
		t.Errorf("ForwardedRefused = %d, want 1", got)
	}
}

// When nodes cannot verify each other's signatures (clocks over
// MaxForwardedSkew apart) and disagree on a room's owner, each takes the
// other's proxied request for a client's and proxies it back: the hop count
// ends the ping-pong with 508 instead of looping; and a client that sets the
// count only refuses itself.
func TestForwardedLoopBounded(t *testing.T) {
	defer verifyNoLeaks(t)
	key := []byte("cluster key")
	now := time.Now()
	a := startHTTPNode(t, "127.0.0.1", httpNodeOpts{key: key, clock: testclock.New(now)})
	defer a.close()
	b := startHTTPNode(t, "127.0.0.2", httpNodeOpts{key: key, clock: testclock.New(now.Add(time.Minute)), join: []string{a.gossip()}})
	defer b.close()
	waitMembers(t, []*httpNode{a, b}, 2)
	// Each believes the other owns the room (claims it never made: a node
	// ignores messages about itself, so the views stay crossed).
	const room = "crossed"
	a.node.dir.applyMsg(encodeMsg(dirMsg{kind: kindClaim, owner: b.node.Name(), id: b.id.ID, version: 1 << 40, room: room, created: 1}))
	b.node.dir.applyMsg(encodeMsg(dirMsg{kind: kindClaim, owner: a.node.Name(), id: a.id.ID, version: 1 << 40, room: room, created: 1}))
	if !ownerIs(a.testNode, room, b.node.Name()) || !ownerIs(b.testNode, room, a.node.Name()) {
		t.Fatal("views not crossed")
	}
	cl := newHTTPClient("127.0.0.9")
	defer cl.close()
	if code, by := cl.do(t, "GET", a.url+"/api/rooms/"+room); code != http.StatusLoopDetected || by != "" {
		t.Fatalf("crossed views: %d, served by %q; want 508", code, by)
	}
	if got := a.node.SignalingStats().ForwardedRefused + b.node.SignalingStats().ForwardedRefused; got != maxForwardedHops {
		t.Errorf("signatures refused: %d, want %d (one per hop)", got, maxForwardedHops)
	}
	// A client's own count.
	other := roomPlacedOn(t, a, b.node.Name(), "hops-")
	if code, _ := cl.do(t, "POST", a.url+"/whip/"+other, forwardedHopsHeader, "3"); code != http.StatusLoopDetected {
		t.Fatalf("client-set hop count: %d, want 508", code)
	}
	if code, by := cl.do(t, "POST", a.url+"/whip/"+other, forwardedHopsHeader, "-7"); code != http.StatusCreated || by != b.node.Name() {
		t.Fatalf("negative hop count: %d, served by %q", code, by)
	}
}
