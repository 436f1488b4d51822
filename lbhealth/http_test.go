package lbhealth

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// httpRig serves a Health on a real loopback listener.
type httpRig struct {
	srv    *httptest.Server
	client *http.Client
}

func startHTTP(t *testing.T, handler http.Handler) *httpRig {
	t.Helper()
	srv := httptest.NewServer(handler)
	tr := &http.Transport{}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		srv.Close()
	})
	return &httpRig{srv: srv, client: &http.Client{Transport: tr}}
}

// do sends a request and returns the status, headers and body.
func (r *httpRig) do(t *testing.T, method, path, token string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, r.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", token)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, body
}

// report GETs path and decodes the JSON report.
func (r *httpRig) report(t *testing.T, path string) (int, Report) {
	t.Helper()
	code, hdr, body := r.do(t, http.MethodGet, path, "")
	if ct := hdr.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q", path, ct)
	}
	var rep Report
	if err := json.Unmarshal(body, &rep); err != nil {
		t.Fatalf("%s: body %q: %v", path, body, err)
	}
	return code, rep
}

func TestHealthzReadyzHTTP(t *testing.T) {
	verifyNoLeaks(t)
	h, f := newHealth(t, func(c *Config) { c.MaxSessions = 1 })
	r := startHTTP(t, h.Handler())

	for _, path := range []string{PathHealthz, PathReadyz} {
		code, rep := r.report(t, path)
		if code != http.StatusOK || rep.Status != "ok" || len(rep.Checks) == 0 {
			t.Errorf("%s: %d %+v", path, code, rep)
		}
		if code, _, body := r.do(t, http.MethodHead, path, ""); code != http.StatusOK || len(body) != 0 {
			t.Errorf("HEAD %s: %d %q", path, code, body)
		}
	}

	f.sessions.Store(1) // full: not ready, still live
	if code, rep := r.report(t, PathReadyz); code != http.StatusServiceUnavailable ||
		rep.Status != "fail" || checkOf(t, rep, CheckSessions).Reason != "1 sessions, limit 1" {
		t.Errorf("full: %d %+v", code, rep)
	}
	if code, _ := r.report(t, PathHealthz); code != http.StatusOK {
		t.Errorf("full node not live: %d", code)
	}

	f.unbound.Store(true) // unbound: neither
	if code, rep := r.report(t, PathHealthz); code != http.StatusServiceUnavailable ||
		checkOf(t, rep, CheckSockets).Reason != errUnbound.Error() {
		t.Errorf("unbound healthz: %d %+v", code, rep)
	}
	if code, _, _ := r.do(t, http.MethodPost, PathReadyz, ""); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /readyz: %d", code)
	}
}

func TestAdminDrainHTTP(t *testing.T) {
	verifyNoLeaks(t)
	const token = "s3cret-token"
	h, _ := newHealth(t, func(c *Config) { c.AdminToken = token })
	// Mounted next to the lead's own routes, as on the --http listener.
	mux := http.NewServeMux()
	mux.HandleFunc("GET /whip", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "whip") })
	h.Mount(mux)
	r := startHTTP(t, mux)

	for i, auth := range []string{"", "Bearer wrong", "Basic " + token, "Bearer " + token + "x", "Bearer"} {
		code, hdr, _ := r.do(t, http.MethodPost, PathDrain, auth)
		if code != http.StatusUnauthorized || !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("auth %q: %d %v", auth, code, hdr)
		}
		if got := h.unauthorized.Load(); got != uint64(i+1) {
			t.Errorf("unauthorized counter %d, want %d", got, i+1)
		}
	}
	if h.Drainer().Draining() {
		t.Fatal("drained without a valid token")
	}

	code, _, body := r.do(t, http.MethodPost, PathDrain, "bearer "+token) // scheme is case-insensitive
	var st DrainStatus
	if err := json.Unmarshal(body, &st); err != nil || code != http.StatusAccepted || !st.Draining || st.State != "draining" {
		t.Fatalf("drain: %d %s (%v)", code, body, err)
	}
	// The very next readiness request fails: no wait, no poll.
	if code, rep := r.report(t, PathReadyz); code != http.StatusServiceUnavailable ||
		!strings.Contains(checkOf(t, rep, CheckDraining).Reason, "(admin)") {
		t.Errorf("readyz while draining: %d %+v", code, rep)
	}
	if code, _ := r.report(t, PathHealthz); code != http.StatusOK {
		t.Errorf("draining node not live: %d", code)
	}

	code, _, body = r.do(t, http.MethodPost, PathUndrain, "Bearer "+token)
	if err := json.Unmarshal(body, &st); err != nil || code != http.StatusOK || st.Draining {
		t.Fatalf("undrain: %d %s (%v)", code, body, err)
	}
	if code, _ := r.report(t, PathReadyz); code != http.StatusOK {
		t.Errorf("readyz after undrain: %d", code)
	}
	if code, _, _ := r.do(t, http.MethodGet, PathDrain, "Bearer "+token); code != http.StatusMethodNotAllowed {
		t.Errorf("GET /admin/drain: %d", code)
	}
	if code, _, body := r.do(t, http.MethodGet, "/whip", ""); code != http.StatusOK || string(body) != "whip" {
		t.Errorf("lead's route: %d %q", code, body)
	}
}

// TestUndrainAfterFinishHTTP: once the wait has ended, undrain is refused.
func TestUndrainAfterFinishHTTP(t *testing.T) {
	verifyNoLeaks(t)
	const token = "t"
	h, _ := newHealth(t, func(c *Config) { c.AdminToken = token })
	r := startHTTP(t, h.Handler())
	h.Drainer().Drain("SIGTERM")
	if res := h.Drainer().Run(t.Context()); res.Outcome != DrainClean { // no sessions: finishes at once
		t.Fatalf("run: %+v", res)
	}
	code, _, body := r.do(t, http.MethodPost, PathUndrain, "Bearer "+token)
	if code != http.StatusConflict || !strings.Contains(string(body), "finished") {
		t.Errorf("undrain after finish: %d %s", code, body)
	}
}

// TestAdminAbsentWithoutToken: without a token the admin paths answer 404,
// also when Mount shares its mux with a catch-all (the CLI mounts the demo
// page at "/", which answers POST with 405).
func TestAdminAbsentWithoutToken(t *testing.T) {
	verifyNoLeaks(t)
	h, _ := newHealth(t, nil)
	shared := http.NewServeMux()
	h.Mount(shared)
	shared.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "catch-all", http.StatusMethodNotAllowed)
	})
	for _, r := range []*httpRig{startHTTP(t, h.Handler()), startHTTP(t, shared)} {
		for _, path := range []string{PathDrain, PathUndrain} {
			for _, auth := range []string{"", "Bearer ", "Bearer x"} {
				if code, _, _ := r.do(t, http.MethodPost, path, auth); code != http.StatusNotFound {
					t.Errorf("POST %s (%q) without a token configured: %d", path, auth, code)
				}
			}
		}
	}
	if h.Drainer().Draining() {
		t.Error("drained through an absent endpoint")
	}
}
