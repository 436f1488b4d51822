package cluster

import (
	"errors"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/oneport/oneport/mux"
)

// Seeds live in testdata/fuzz/<FuzzName>/ (committed); these add a few more.

// FuzzForwardedAuth: headers from the public (any ForwardedHeader,
// ForwardedAuthHeader and X-Forwarded-For) verify only when they are
// exactly what a member signs for that request; and what a member signs
// verifies, for any request, within the skew window and only there.
func FuzzForwardedAuth(f *testing.F) {
	key := deriveKey([]byte("fuzz"), "forwarded")
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	h := http.Header{}
	h.Set("X-Forwarded-For", "192.0.2.1")
	signForwarded(h, key, "node-a", now, "POST", "/whip/r", "")
	f.Add("node-a", h.Get(ForwardedAuthHeader), "192.0.2.1", "POST", "/whip/r", "", int64(0))
	f.Add("node-a", "v1.1740830400000.", "203.0.113.9, 192.0.2.1", "PATCH", "/whep/r/rAAAA", "publisher=x", int64(-30000))
	f.Add("", "v1.-1.AAAA", "", "GET", "/rooms/r/events", "", int64(30001))
	f.Add("n", "v1.+1740830400000.x", "::1", "DELETE", "/api/rooms/r/subscribers/i/layer", "a=b", int64(1<<62))
	f.Fuzz(func(t *testing.T, by, auth, xff, method, path, query string, skewMs int64) {
		h := http.Header{}
		h.Set(ForwardedHeader, by)
		h.Set(ForwardedAuthHeader, auth)
		h.Set("X-Forwarded-For", xff)
		got, err := verifyForwardedAuth(h, key, now, method, path, query)
		if err == nil {
			// Verified: then a member signed exactly this.
			if got != by {
				t.Fatalf("verified as %q, header says %q", got, by)
			}
			_, rest, _ := strings.Cut(auth, ".")
			ts, _, _ := strings.Cut(rest, ".")
			ms, perr := strconv.ParseInt(ts, 10, 64)
			want := h.Clone()
			signForwarded(want, key, by, time.UnixMilli(ms), method, path, query)
			if perr != nil || want.Get(ForwardedAuthHeader) != auth {
				t.Fatalf("verified %q; a member signs %q", auth, want.Get(ForwardedAuthHeader))
			}
		} else if !errors.Is(err, ErrNotForwarded) && !errors.Is(err, ErrForwardedUnauthenticated) {
			t.Fatalf("unexpected error %v", err)
		}

		// What a member signs verifies within the window, for any request.
		skew := time.Duration(skewMs%(2*MaxForwardedSkew.Milliseconds())) * time.Millisecond
		signed := http.Header{}
		signed.Set("X-Forwarded-For", xff)
		signForwarded(signed, key, by, now.Add(skew), method, path, query)
		_, err = verifyForwardedAuth(signed, key, now, method, path, query)
		inWindow := skew <= MaxForwardedSkew && skew >= -MaxForwardedSkew
		switch {
		case by == "":
			if !errors.Is(err, ErrNotForwarded) {
				t.Fatalf("no node name: %v", err)
			}
		case inWindow && err != nil:
			t.Fatalf("a member's signature at skew %v: %v", skew, err)
		case !inWindow && !errors.Is(err, errForwardedExpired):
			t.Fatalf("a member's signature at skew %v: %v, want expired", skew, err)
		}
		// And not for another key.
		if _, err := verifyForwardedAuth(signed, RelayKey([]byte("fuzz")), now, method, path, query); err == nil {
			t.Fatal("verified with another key")
		}
	})
}

// FuzzParseRoute: any method and path (from the public) is routed only to
// a valid room, with a resource id only where one belongs, and a resource
// tag is read only from an id made by NewResourceID.
func FuzzParseRoute(f *testing.F) {
	for _, s := range [][2]string{
		{"POST", "/whip/r1"}, {"PATCH", "/whep/r1/" + NewResourceID("AbC+")}, {"GET", "/rooms/r1/events"},
		{"GET", "/api/rooms/r1"}, {"POST", "/api/rooms/r1/subscribers/rAb-_xxxxxxxxxxxxxxxxxxxxxx/layer"},
		{"OPTIONS", "/whip/r1"}, {"GET", "//whip//"}, {"POST", "/whip/a/b/c"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, method, path string) {
		rt, ok := parseRoute(method, path)
		if !ok {
			return
		}
		if !ValidRoomName(rt.room) || method == http.MethodOptions {
			t.Fatalf("%s %q routed to %+v", method, path, rt)
		}
		if rt.creates && rt.id != "" {
			t.Fatalf("%s %q: a resource request creates a room", method, path)
		}
		if tag, ok := ResourceTag(rt.id); ok && (len(tag) != mux.TagLen || !mux.IsIceChars(tag)) {
			t.Fatalf("id %q: tag %q", rt.id, tag)
		}
	})
}

// FuzzDecodeMeta: a member's meta (gossip) decodes only to a routable
// member, which encodes back to the same Meta.
func FuzzDecodeMeta(f *testing.F) {
	m := Meta{Version: metaVersion, ID: "0123456789abcdef0123456789abcdef", Tag: "AbC+", Relay: netip.MustParseAddrPort("10.0.0.1:7947"),
		HTTP: "10.0.0.1:8080", Load: Load{Sessions: 3, Rooms: 1, PacketRate: 12.5}, Draining: true, Build: "v1"}
	b, _ := m.encode(512)
	f.Add(b)
	f.Add([]byte(`{"v":1,"t":"a:b"}`))
	f.Add([]byte(`{"v":1,"id":"x","t":"AAAA","ra":"[::1]:1"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = metaID(b)
		m, err := decodeMeta(b)
		if err != nil {
			return
		}
		if len(m.Tag) != mux.TagLen || !mux.IsIceChars(m.Tag) || !m.Relay.IsValid() {
			t.Fatalf("accepted %+v", m)
		}
		enc, err := m.encode(1 << 20)
		if err != nil {
			t.Fatal(err)
		}
		back, err := decodeMeta(enc)
		if err != nil || back != m {
			t.Fatalf("round trip: %+v, %v; want %+v", back, err, m)
		}
	})
}
