package serve

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/pion/webrtc/v4"
)

// admin POSTs an admin path on base with an Authorization header ("" for
// none) and returns the status and the decoded drain status.
func (n *node) admin(base, path, auth string) (int, string, bool) {
	n.t.Helper()
	var hdr []string
	if auth != "" {
		hdr = []string{"Authorization", auth}
	}
	code, h, body := n.do(base, http.MethodPost, path, "", hdr...)
	if code == http.StatusUnauthorized && !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") {
		n.t.Errorf("POST %s: 401 without a Bearer challenge", path)
	}
	var st struct {
		State    string `json:"state"`
		Draining bool   `json:"draining"`
	}
	if code == http.StatusOK || code == http.StatusAccepted {
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			n.t.Fatalf("POST %s: %d %q: %v", path, code, body, err)
		}
	}
	return code, st.State, st.Draining
}

// TestAdminDrain: the admin endpoints refuse a missing or wrong token,
// drain and undrain with the right one (readiness and the UDP probe follow),
// and an admin drain ends like a SIGTERM one: the process exits 0 once the
// last session leaves.
func TestAdminDrain(t *testing.T) {
	const token = "s3cret"
	n := startNode(t, "--admin-token", token, "--drain-timeout", "60s")
	// A live session, so that a drain waits instead of finishing at once.
	pub := newPublisher(t, n, "admin")
	pub.waitConnected()

	bad := []string{"", "Bearer", "Bearer wrong", "Bearer " + token + "x", "Basic " + token, token}
	for _, path := range []string{"/admin/drain", "/admin/undrain"} {
		for _, auth := range bad {
			if code, _, _ := n.admin(n.base, path, auth); code != http.StatusUnauthorized {
				t.Errorf("POST %s with Authorization %q: %d, want 401", path, auth, code)
			}
		}
	}
	n.wantReady(n.base, true)
	mf := n.scrape()
	if v := mf.value(t, "oneport_admin_unauthorized_total"); v != float64(2*len(bad)) {
		t.Errorf("oneport_admin_unauthorized_total %v, want %d", v, 2*len(bad))
	}
	if v := mf.value(t, "oneport_draining"); v != 0 {
		t.Errorf("oneport_draining %v after refused requests", v)
	}

	code, state, draining := n.admin(n.base, "/admin/drain", "Bearer "+token)
	if code != http.StatusAccepted || state != "draining" || !draining {
		t.Fatalf("POST /admin/drain: %d %s draining=%v, want 202 draining", code, state, draining)
	}
	n.wantReady(n.base, false) // at once: the drain flips readiness before answering
	n.wantProbeSilent()

	code, state, draining = n.admin(n.base, "/admin/undrain", "Bearer "+token)
	if code != http.StatusOK || state != "serving" || draining {
		t.Fatalf("POST /admin/undrain: %d %s draining=%v, want 200 serving", code, state, draining)
	}
	n.wantReady(n.base, true)
	n.wantProbeAnswered()
	if pub.state() != webrtc.PeerConnectionStateConnected || !n.running() {
		t.Fatalf("after drain and undrain: publisher %v, process running %v", pub.state(), n.running())
	}

	// Drained again, the node exits 0 when the last session leaves.
	if code, _, _ := n.admin(n.base, "/admin/drain", "Bearer "+token); code != http.StatusAccepted {
		t.Fatalf("second POST /admin/drain: %d", code)
	}
	pub.stopSending()
	pub.leave(n)
	if code := n.waitExit(exitBudget); code != 0 {
		t.Errorf("exit code %d after a clean admin drain, want 0", code)
	}
	if fin := n.drainFinished(); fin.str("outcome") != "clean" {
		t.Errorf("drain finished: %v, want outcome clean", fin)
	}
	drains := n.log.find(msgIs("draining"))
	for _, e := range drains {
		if e.str("reason") != "admin" {
			t.Errorf("drain started for %q, want admin: %v", e.str("reason"), e)
		}
	}
	if len(drains) != 2 {
		t.Errorf("%d drains started, want 2", len(drains))
	}
}

// TestAdminDisabledWithoutToken: without --admin-token the admin paths do
// not exist (404) on the --http listener, whatever the request carries, and
// nothing drains.
func TestAdminDisabledWithoutToken(t *testing.T) {
	n := startNode(t)
	for _, path := range []string{"/admin/drain", "/admin/undrain"} {
		for _, auth := range []string{"", "Bearer ", "Bearer x"} {
			if code, _, _ := n.admin(n.base, path, auth); code != http.StatusNotFound {
				t.Errorf("POST %s (Authorization %q) without --admin-token: %d, want 404", path, auth, code)
			}
		}
	}
	n.wantReady(n.base, true)
	if !n.running() {
		t.Fatal("the process exited")
	}
}

// TestHealthListener: --health serves /healthz, /readyz, /metrics and the
// admin endpoints, and not the signaling API, the event streams or the demo
// page; --http still serves everything.
func TestHealthListener(t *testing.T) {
	var n *node
	var health string
	// The port is free when picked; another process may take it before the
	// node binds it, so try a few.
	for attempt := 0; ; attempt++ {
		port := freeTCPPort(t)
		health = fmt.Sprintf("http://127.0.0.1:%d", port)
		var ok bool
		n, ok = tryStartNode(t, "--admin-token", "T", "--health", fmt.Sprintf("127.0.0.1:%d", port))
		if ok {
			break
		}
		if attempt == 2 {
			t.Fatal("could not start a node with --health")
		}
	}

	if code, rep := n.health(health, "/healthz"); code != http.StatusOK {
		t.Errorf("--health /healthz: %d %+v", code, rep)
	}
	n.wantReady(health, true)
	if v := n.scrapeAt(health).value(t, "oneport_ready"); v != 1 {
		t.Errorf("--health /metrics: oneport_ready %v", v)
	}
	if code, _, _ := n.admin(health, "/admin/drain", ""); code != http.StatusUnauthorized {
		t.Errorf("--health POST /admin/drain without a token: %d, want 401 (admin is served there)", code)
	}

	sdp := "v=0\r\n"
	for _, r := range []struct{ method, path, ctype string }{
		{http.MethodPost, "/whip/room", "application/sdp"},
		{http.MethodPost, "/whep/room", "application/sdp"},
		{http.MethodDelete, "/whip/room/x", ""},
		{http.MethodGet, "/api/rooms", ""},
		{http.MethodGet, "/rooms/room/events", ""},
		{http.MethodGet, "/", ""},
	} {
		var hdr []string
		if r.ctype != "" {
			hdr = []string{"Content-Type", r.ctype}
		}
		if code, _, body := n.do(health, r.method, r.path, sdp, hdr...); code != http.StatusNotFound {
			t.Errorf("--health %s %s: %d %q, want 404", r.method, r.path, code, body)
		}
	}
	// The same node's --http listener serves the API and the page.
	for _, path := range []string{"/api/rooms", "/"} {
		if code, _, body := n.do(n.base, http.MethodGet, path, ""); code != http.StatusOK {
			t.Errorf("--http GET %s: %d %q", path, code, body)
		}
	}
	if code, _, _ := n.admin(health, "/admin/drain", "Bearer T"); code != http.StatusAccepted {
		t.Fatalf("--health POST /admin/drain: %d", code)
	}
	// With no session the drain finishes at once and the process exits 0.
	if code := n.waitExit(exitBudget); code != 0 {
		t.Errorf("exit code %d after an admin drain of an idle node, want 0", code)
	}
}
