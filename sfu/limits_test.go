package sfu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oneport/oneport/mux"
)

// Limits with clear answers: each refusal has its status, its reason,
// Retry-After where a retry can succeed, a counter, and changes nothing.

// refusalCheck asserts one refused request.
func refusalCheck(t *testing.T, what string, res httpResult, code int, retryAfter, reason string) {
	t.Helper()
	if res.code != code || res.hdr.Get("Retry-After") != retryAfter || !strings.Contains(res.body, reason) {
		t.Errorf("%s: %d Retry-After %q %q; want %d Retry-After %q with %q",
			what, res.code, res.hdr.Get("Retry-After"), strings.TrimSpace(res.body), code, retryAfter, reason)
	}
}

func TestLimitServerFull(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.MaxParticipants = 1 })
	newPublisher(t, e, "full", nil, false)
	before := e.srv.Stats()
	offer := validOffer(t)
	refusalCheck(t, "second participant, same room", e.do("POST", "/whip/full", mimeSDP, offer), 503, "5", "too many participants")
	refusalCheck(t, "second participant, new room", e.do("POST", "/whip/other", mimeSDP, offer), 503, "5", "too many participants")
	after := e.srv.Stats()
	if after.Participants != before.Participants || after.Rooms != before.Rooms || e.srv.HasRoom("other") {
		t.Errorf("refusals changed state: %+v, before %+v", after, before)
	}
	if after.Refused.ServerFull != 2 {
		t.Errorf("Refused %+v, want ServerFull 2", after.Refused)
	}
}

// The media port's session limit (mux MaxSessions, --max-sessions) answers
// like MaxParticipants, instead of an answer without candidates.
func TestLimitMuxSessions(t *testing.T) {
	m, err := mux.Listen("127.0.0.1:0", mux.Config{MaxSessions: 1})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{UDPMux: m, IncludeLoopback: true})
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	e := &testEnv{t: t, mux: m, srv: s, http: httptest.NewServer(s.Handler())}
	t.Cleanup(func() {
		e.http.CloseClientConnections()
		e.http.Close()
		_ = s.Close()
		m.Close()
	})
	newPublisher(t, e, "one", nil, false)
	before := e.srv.Stats()
	refusalCheck(t, "second session on a full mux", e.do("POST", "/whip/one", mimeSDP, validOffer(t)), 503, "5", "no session left on the media port")
	after := e.srv.Stats()
	if after.Participants != before.Participants || after.Rooms != before.Rooms || m.Sessions() != 1 {
		t.Errorf("refusal changed state: %+v (mux sessions %d), before %+v", after, m.Sessions(), before)
	}
	if after.Refused.ServerFull != 1 {
		t.Errorf("Refused %+v, want ServerFull 1", after.Refused)
	}
}

func TestLimitMaxRooms(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.MaxRooms = 1 })
	newPublisher(t, e, "one", nil, false)
	before := e.srv.Stats()
	refusalCheck(t, "WHIP to a new room", e.do("POST", "/whip/two", mimeSDP, validOffer(t)), 503, "5", "too many rooms")
	// An event stream would create the room too.
	refusalCheck(t, "events of a new room", e.do("GET", "/rooms/two/events", "", ""), 503, "5", "too many rooms")
	after := e.srv.Stats()
	if after.Rooms != 1 || after.Participants != before.Participants || e.srv.HasRoom("two") {
		t.Errorf("refusals changed state: %+v, before %+v", after, before)
	}
	if after.Refused.Rooms != 2 {
		t.Errorf("Refused %+v, want Rooms 2", after.Refused)
	}
	// The existing room still takes participants.
	sub := newSubscriber(t, e, "/whep/one", true, false)
	if sub.location == "" || e.srv.Stats().Participants != 2 {
		t.Errorf("subscriber to the existing room: %+v", e.srv.Stats())
	}
}

func TestLimitRoomParticipants(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.MaxRoomParticipants = 1 })
	newPublisher(t, e, "small", nil, false)
	before := e.srv.Stats()
	recvOffer := strings.ReplaceAll(validOffer(t), "a=sendrecv", "a=recvonly")
	// 403, no Retry-After: retrying does not help until someone leaves.
	refusalCheck(t, "WHEP to a full room", e.do("POST", "/whep/small", mimeSDP, recvOffer), 403, "", "room full")
	after := e.srv.Stats()
	if after.Participants != before.Participants || after.Rooms != before.Rooms {
		t.Errorf("refusal changed state: %+v, before %+v", after, before)
	}
	if after.Refused.RoomFull != 1 {
		t.Errorf("Refused %+v, want RoomFull 1", after.Refused)
	}
	// Another room is not affected.
	newPublisher(t, e, "other", nil, false)
}

// clientFrom returns an HTTP client whose connections come from the local
// address ip (any 127.0.0.0/8 address is local on Linux).
func clientFrom(t *testing.T, ip string) *http.Client {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return d.DialContext(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func doWith(t *testing.T, c *http.Client, method, url, ctype, body string) httpResult {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return httpResult{code: resp.StatusCode, hdr: resp.Header, body: string(b)}
}

func TestLimitSignalingRatePerIP(t *testing.T) {
	const burst = 3
	e := newTestEnv(t, func(c *Config) { c.SignalingRate, c.SignalingBurst = 20, burst })
	a := clientFrom(t, "127.0.0.1")
	offer := validOffer(t)
	for i := range burst {
		if res := doWith(t, a, "DELETE", e.http.URL+"/whip/rate/nope", "", ""); res.code != 404 {
			t.Fatalf("request %d of the burst: %d %s", i, res.code, res.body)
		}
	}
	// Beyond the burst: 429 with Retry-After, whatever the method, and a
	// valid offer creates nothing. An X-Forwarded-For from the public does
	// not make the request someone else's.
	refusalCheck(t, "POST over the rate", doWith(t, a, "POST", e.http.URL+"/whip/rate", mimeSDP, offer), 429, "1", "rate limited")
	req, _ := http.NewRequest("PATCH", e.http.URL+"/whip/rate/nope", strings.NewReader("a=end-of-candidates\r\n"))
	req.Header.Set("Content-Type", mimeTrickle)
	req.Header.Set("X-Forwarded-For", "192.0.2.99")
	resp, err := a.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 429 {
		t.Errorf("PATCH with a forged X-Forwarded-For: %d, want 429", resp.StatusCode)
	}
	if st := e.srv.Stats(); st.Rooms != 0 || st.Participants != 0 || st.Refused.RateLimited != 2 {
		t.Errorf("after refusals: %+v", st)
	}
	// Reads are not charged; another client IP has its own bucket.
	if res := doWith(t, a, "GET", e.http.URL+"/api/rooms", "", ""); res.code != 200 {
		t.Errorf("GET over the rate: %d", res.code)
	}
	b := clientFrom(t, "127.0.0.2")
	if res := doWith(t, b, "DELETE", e.http.URL+"/whip/rate/nope", "", ""); res.code != 404 {
		t.Errorf("another client IP: %d %s", res.code, res.body)
	}
	// The bucket refills at the rate: within the Retry-After, a request
	// passes again (refused ones are not charged, so polling is free).
	deadline := time.Now().Add(2 * time.Second)
	for {
		res := doWith(t, a, "DELETE", e.http.URL+"/whip/rate/nope", "", "")
		if res.code == 404 {
			break
		}
		if res.code != 429 || time.Now().After(deadline) {
			t.Fatalf("after waiting: %d %s", res.code, res.body)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronization
	}
}

// RateLimit in front of the sfu's handler (the cluster's signaling proxy
// sits between them) charges each signaling request once: the sfu does not
// charge it again. A request refused there never reaches what it wraps (a
// proxied request never leaves the node), and reads pass uncharged.
func TestRateLimitInFront(t *testing.T) {
	const burst = 3
	e := newTestEnv(t, func(c *Config) { c.SignalingRate, c.SignalingBurst = 0.001, burst })
	var reached []string
	front := e.srv.RateLimit(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached = append(reached, r.Method+" "+r.URL.Path)
		if strings.HasPrefix(r.URL.Path, "/whip/local") || r.Method == http.MethodGet {
			e.srv.Handler().ServeHTTP(w, r) // served here
			return
		}
		w.WriteHeader(http.StatusAccepted) // stands for proxying to the owner
	}))
	hs := httptest.NewServer(front)
	defer hs.Close()
	a := clientFrom(t, "127.0.0.1")
	codes := []int{}
	for _, path := range []string{"/whip/local/nope", "/whip/remote/nope", "/whip/local/nope", "/whip/remote/nope", "/whip/local/nope"} {
		codes = append(codes, doWith(t, a, "DELETE", hs.URL+path, "", "").code)
	}
	if want := []int{404, 202, 404, 429, 429}; !slices.Equal(codes, want) {
		t.Fatalf("codes %v, want %v (a burst of 3 charged once each, local or proxied)", codes, want)
	}
	if len(reached) != burst {
		t.Fatalf("%d requests got past RateLimit, want %d: %v", len(reached), burst, reached)
	}
	if res := doWith(t, a, "GET", hs.URL+"/api/rooms", "", ""); res.code != 200 {
		t.Fatalf("GET over the rate: %d", res.code)
	}
	if st := e.srv.Stats(); st.Refused.RateLimited != 2 {
		t.Fatalf("rate_limited %d, want 2", st.Refused.RateLimited)
	}
}

func TestLimitSDP(t *testing.T) {
	e := newTestEnv(t, nil)
	pub := newPublisher(t, e, "sdp", nil, false)
	before := e.srv.Stats()
	offer := validOffer(t)

	// 17 m-lines: the offer's 2 and 15 disabled ones.
	var extra strings.Builder
	for i := range 15 {
		fmt.Fprintf(&extra, "m=audio 0 UDP/TLS/RTP/SAVPF 0\r\na=mid:x%d\r\na=inactive\r\n", i)
	}
	refusalCheck(t, "17 m-lines", e.do("POST", "/whip/sdp", mimeSDP, offer+extra.String()), 400, "", "more than 16 media sections")

	cands := func(n, port int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "a=candidate:%d 1 udp 2130706431 127.0.0.1 %d typ host\r\n", i, port+i)
		}
		return b.String()
	}
	// 65 candidates in the first m-section.
	many := strings.Replace(offer, "a=mid:0\r\n", "a=mid:0\r\n"+cands(65, 10000), 1)
	refusalCheck(t, "65 candidates in an m-line", e.do("POST", "/whip/sdp", mimeSDP, many), 400, "", "more than 64 candidates in m-line 0")

	// A trickle fragment: 64 per m-line pass the per-line bound, 5 m-lines
	// of 60 are over the total of 256.
	frag := "a=mid:0\r\n" + cands(65, 20000)
	refusalCheck(t, "fragment with 65 candidates", e.do("PATCH", pub.location, mimeTrickle, frag), 400, "", "more than 64 candidates")
	var spread strings.Builder
	for i := range 5 {
		fmt.Fprintf(&spread, "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:%d\r\n%s", i, cands(60, 30000+100*i))
	}
	refusalCheck(t, "fragment with 300 candidates", e.do("PATCH", pub.location, mimeTrickle, spread.String()), 400, "", "more than 256 candidates in all")

	after := e.srv.Stats()
	if after.Participants != before.Participants || after.Rooms != before.Rooms {
		t.Errorf("refusals changed state: %+v, before %+v", after, before)
	}
	if after.Refused.SDPLimits != 4 {
		t.Errorf("Refused %+v, want SDPLimits 4", after.Refused)
	}
	// At the limits, accepted (the gathered candidates taken out first).
	var bare []string
	for _, ln := range strings.Split(offer, "\r\n") {
		if !strings.HasPrefix(ln, "a=candidate:") {
			bare = append(bare, ln)
		}
	}
	ok := strings.Replace(strings.Join(bare, "\r\n"), "a=mid:0\r\n", "a=mid:0\r\n"+cands(64, 40000), 1)
	if _, err := parseOffer(ok, true, defaultSDPLimits); err != nil {
		t.Errorf("offer with 64 candidates in an m-line: %v", err)
	}
}

func TestLimitConfigDefaults(t *testing.T) {
	c := Config{UDPMux: newTestEnv(t, nil).mux}
	if err := c.applyDefaults(); err != nil {
		t.Fatal(err)
	}
	if c.MaxRooms != 10000 || c.MaxRoomParticipants != 1000 || c.MaxMediaSections != 16 ||
		c.MaxCandidatesPerMedia != 64 || c.MaxCandidates != 256 || c.SignalingRate != 20 ||
		c.SignalingBurst != 40 || c.MaxSignalingClients != 65536 || c.ClientIP == nil {
		t.Errorf("defaults %+v", c)
	}
	for name, bad := range map[string]func(*Config){
		"MaxRooms":            func(c *Config) { c.MaxRooms = -1 },
		"MaxRoomParticipants": func(c *Config) { c.MaxRoomParticipants = -1 },
		"MaxCandidates":       func(c *Config) { c.MaxCandidates = -1 },
		"SignalingBurst":      func(c *Config) { c.SignalingBurst = -1 },
	} {
		c := Config{UDPMux: c.UDPMux}
		bad(&c)
		if err := c.applyDefaults(); !errors.Is(err, ErrConfig) {
			t.Errorf("%s negative: %v", name, err)
		}
	}
	off := Config{UDPMux: c.UDPMux, SignalingRate: -1}
	s, err := New(off)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.limiter != nil {
		t.Error("SignalingRate -1 left a limiter")
	}
}

// Concurrent joins never overshoot MaxParticipants: joins in progress count.
func TestLimitServerFullConcurrent(t *testing.T) {
	const limit, tries = 3, 12
	e := newTestEnv(t, func(c *Config) { c.MaxParticipants = limit; c.SignalingRate = -1 })
	offers := make([]string, tries)
	for i := range offers {
		offers[i] = validOffer(t)
	}
	var wg sync.WaitGroup
	codes := make([]int, tries)
	for i := range tries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = e.do("POST", "/whip/race", mimeSDP, offers[i]).code
		}()
	}
	wg.Wait()
	created := 0
	for _, c := range codes {
		switch c {
		case http.StatusCreated:
			created++
		case http.StatusServiceUnavailable:
		default:
			t.Errorf("answer %d, want 201 or 503", c)
		}
	}
	if created == 0 || created > limit || e.srv.Stats().Participants > limit {
		t.Fatalf("%d created, %d participants; limit %d (answers %v)", created, e.srv.Stats().Participants, limit, codes)
	}
}
