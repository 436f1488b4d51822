package sfu

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
)

// validOffer is a real pion offer sending VP8 and Opus.
func validOffer(t *testing.T) string {
	t.Helper()
	pc := newClientPC(t)
	for _, mime := range []string{webrtc.MimeTypeVP8, webrtc.MimeTypeOpus} {
		tr, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: mime}, "t", "s")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pc.AddTrack(tr); err != nil {
			t.Fatal(err)
		}
	}
	return completeOffer(t, pc)
}

// onlyCodec rewrites an offer's video section to offer nothing but name.
func onlyCodec(offer, name string) string {
	var out []string
	video := false
	for _, ln := range strings.Split(offer, "\r\n") {
		if strings.HasPrefix(ln, "m=") {
			video = strings.HasPrefix(ln, "m=video")
			if video {
				ln = "m=video 9 UDP/TLS/RTP/SAVPF 96"
				out = append(out, ln, "a=rtpmap:96 "+name+"/90000")
				continue
			}
		}
		if video && (strings.HasPrefix(ln, "a=rtpmap:") || strings.HasPrefix(ln, "a=fmtp:") || strings.HasPrefix(ln, "a=rtcp-fb:")) {
			continue
		}
		out = append(out, ln)
	}
	return strings.Join(out, "\r\n")
}

// Every signaling error case gets its status and a reason, and changes nothing.
func TestHTTPErrors(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.MaxBodyBytes = 16 << 10 })
	offer := validOffer(t)
	pub := newPublisher(t, e, "err", nil, false)
	pub.start(10*time.Millisecond, 100000)
	waitFor(t, "track published", 5*time.Second, func() bool { return e.srv.Stats().Tracks == 1 })

	cases := []struct {
		name, method, path, ctype, body string
		code                            int
		reason                          string
	}{
		{"wrong content type", "POST", "/whip/err", "text/plain", offer, 415, "unsupported content type"},
		{"no content type", "POST", "/whep/err", "", offer, 415, "unsupported content type"},
		{"malformed SDP", "POST", "/whip/err", "application/sdp", "v=0\r\nthis is not sdp\r\n", 400, "malformed SDP"},
		{"SDP without media", "POST", "/whip/err", "application/sdp", "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", 400, "no media section"},
		{"oversized body", "POST", "/whip/err", "application/sdp", offer + strings.Repeat("a=x\r\n", 4000), 413, "body over"},
		{"no codec in common (WHIP)", "POST", "/whip/err", "application/sdp", onlyCodec(offer, "H265"), 406, "no codec in common"},
		{"WHIP offer that only receives", "POST", "/whip/err", "application/sdp", strings.ReplaceAll(offer, "a=sendrecv", "a=recvonly"), 400, "must send"},
		{"bad room name", "POST", "/whip/b%20ad", "application/sdp", offer, 400, "room name"},
		{"unknown publisher filter", "POST", "/whep/err?publisher=nobody", "application/sdp", strings.ReplaceAll(offer, "a=sendrecv", "a=recvonly"), 404, "publisher"},
		{"PATCH unknown resource", "PATCH", "/whip/err/nope", "application/trickle-ice-sdpfrag", "a=end-of-candidates\r\n", 404, "not found"},
		{"DELETE unknown resource", "DELETE", "/whep/err/nope", "", "", 404, "not found"},
		{"PATCH wrong content type", "PATCH", pub.location, "application/sdp", "a=end-of-candidates\r\n", 415, "unsupported content type"},
		{"PATCH malformed fragment", "PATCH", pub.location, "application/trickle-ice-sdpfrag", "garbage\r\n", 400, "trickle"},
		{"PATCH WHIP resource under /whep", "PATCH", strings.Replace(pub.location, "/whip/", "/whep/", 1), "application/trickle-ice-sdpfrag", "a=end-of-candidates\r\n", 404, "not found"},
		{"layer for unknown subscriber", "POST", "/api/rooms/err/subscribers/nope/layer", "application/json", `{"rid":"q"}`, 404, "not found"},
		{"unknown room", "GET", "/api/rooms/none", "", "", 404, "not found"},
	}
	for _, c := range cases {
		res := e.do(c.method, c.path, c.ctype, c.body)
		if res.code != c.code || !strings.Contains(res.body, c.reason) {
			t.Errorf("%s: %d %q, want %d with %q", c.name, res.code, strings.TrimSpace(res.body), c.code, c.reason)
		}
	}
	if st := e.srv.Stats(); st.Participants != 1 || st.Rooms != 1 || st.Refused.BodyTooBig != 1 {
		t.Errorf("errors changed state (or the 413 was not counted): %+v", st)
	}

	// A subscriber that cannot decode the room's VP8 gets 406.
	recvOffer := strings.ReplaceAll(offer, "a=sendrecv", "a=recvonly")
	if res := e.do("POST", "/whep/err", "application/sdp", onlyCodec(recvOffer, "VP9")); res.code != 406 || !strings.Contains(res.body, "no codec in common") {
		t.Errorf("WHEP without the track's codec: %d %q", res.code, res.body)
	}

	// Precondition and resource semantics on a live resource.
	if res := e.do("PATCH", pub.location, "application/trickle-ice-sdpfrag", "a=end-of-candidates\r\n", "If-Match", `"stale"`); res.code != 412 {
		t.Errorf("PATCH with stale If-Match: %d %s", res.code, res.body)
	}
	cand := "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\na=end-of-candidates\r\n"
	if res := e.do("PATCH", pub.location, "application/trickle-ice-sdpfrag", cand); res.code != 204 {
		t.Errorf("PATCH trickle: %d %s", res.code, res.body)
	}
	sub := newSubscriber(t, e, "/whep/err", true, false)
	layer := "/api/rooms/err/subscribers/" + resourceID(sub.location) + "/layer"
	for _, c := range []struct {
		ctype, body string
		code        int
	}{
		{"application/json", `{"rid":`, 400},
		{"application/json", `{"rid":"q","extra":1}`, 400},
		{"application/json", `{"rid":"q"}`, 400}, // the track is not simulcast
		{"text/plain", `{"rid":"q"}`, 415},
	} {
		if res := e.do("POST", layer, c.ctype, c.body); res.code != c.code {
			t.Errorf("layer %s %q: %d %s, want %d", c.ctype, c.body, res.code, res.body, c.code)
		}
	}
}

// Bearer token, CORS and preflights.
func TestAuthAndCORS(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.Token = "s3cret" })
	offer := validOffer(t)
	res := e.do("POST", "/whip/auth", "application/sdp", offer)
	if res.code != http.StatusUnauthorized || res.hdr.Get("WWW-Authenticate") == "" {
		t.Fatalf("no token: %d %v", res.code, res.hdr)
	}
	// Wrong tokens of every length, the right one under another scheme, a
	// prefix and an extension of it: all refused (compared as SHA-256
	// digests in constant time, see authorized).
	for _, auth := range []string{"Bearer wrong", "Bearer ", "Bearer s3cre", "Bearer s3cret0", "Bearer S3CRET",
		"Basic s3cret", "s3cret", "Bearer  s3cret", "Bearer " + strings.Repeat("x", 4096)} {
		if res := e.do("POST", "/whip/auth", "application/sdp", offer, "Authorization", auth); res.code != http.StatusUnauthorized {
			t.Fatalf("Authorization %.40q: %d", auth, res.code)
		}
	}
	if st := e.srv.Stats(); st.Rooms != 0 || st.Participants != 0 {
		t.Fatalf("refused requests changed state: %+v", st)
	}
	res = e.do("POST", "/whip/auth", "application/sdp", offer, "Authorization", "Bearer s3cret")
	if res.code != http.StatusCreated || res.hdr.Get("Access-Control-Allow-Origin") != "*" ||
		!strings.Contains(res.hdr.Get("Access-Control-Expose-Headers"), "Location") {
		t.Fatalf("with token: %d %v", res.code, res.hdr)
	}
	loc := res.hdr.Get("Location")
	if !strings.HasPrefix(loc, "/whip/auth/") {
		t.Fatalf("Location %q", loc)
	}
	if res := e.do("DELETE", loc, "", ""); res.code != http.StatusUnauthorized {
		t.Fatalf("DELETE without token: %d", res.code)
	}
	for _, path := range []string{"/whip/auth", loc, "/whep/auth", "/whep/auth/x", "/rooms/auth/events", "/api/rooms", "/api/rooms/auth", "/api/rooms/auth/subscribers/x/layer"} {
		res := e.do("OPTIONS", path, "", "", "Origin", "https://other.example", "Access-Control-Request-Method", "POST")
		if res.code != http.StatusNoContent || res.hdr.Get("Access-Control-Allow-Origin") != "*" ||
			!strings.Contains(res.hdr.Get("Access-Control-Allow-Headers"), "Authorization") || res.hdr.Get("Access-Control-Allow-Methods") == "" {
			t.Errorf("OPTIONS %s: %d %v", path, res.code, res.hdr)
		}
	}
	if res := e.do("DELETE", loc, "", "", "Authorization", "Bearer s3cret"); res.code != http.StatusOK {
		t.Fatalf("DELETE with token: %d", res.code)
	}
	if res := e.do("GET", "/api/rooms", "", ""); res.code != 200 || !strings.Contains(res.body, `"name":"auth"`) {
		t.Fatalf("GET /api/rooms: %d %s", res.code, res.body)
	}
}
