package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/oneport/oneport/cluster"
	"github.com/oneport/oneport/lbhealth"
	"github.com/oneport/oneport/mux"
	"github.com/oneport/oneport/sfu"
)

// The public listener (the serve routes) has no pprof, expvar or other
// debug endpoint, and no admin endpoint without --admin-token.
func TestNoDebugEndpointsOnPublicRoutes(t *testing.T) {
	defer verifyNoLeaks(t, goleak.IgnoreCurrent())
	id := cluster.NewIdentity()
	m, err := mux.Listen("127.0.0.1:0", mux.Config{Sockets: 1, Tag: id.Tag, Relay: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	srv, err := sfu.New(sfu.Config{UDPMux: m, IncludeLoopback: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	node, err := cluster.New(cluster.Config{
		Identity: id, NodeName: "debug-test", Gossip: "127.0.0.1:0", Relay: m,
		RelayPort: m.RelayAddr().(*net.UDPAddr).Port, HTTP: "127.0.0.1:1", Profile: "local",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	health, err := lbhealth.New(lbhealth.Config{
		Sockets:  lbhealth.SocketsFunc(m.Bound),
		Sessions: lbhealth.SessionCounterFunc(m.Sessions),
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(routes(srv, health, node))
	defer hs.Close()
	get := func(method, path string) int {
		t.Helper()
		req, _ := http.NewRequest(method, hs.URL+path, nil)
		resp, err := hs.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	// The routes are live...
	for _, p := range []string{"/healthz", "/api/rooms", "/api/cluster", "/metrics"} {
		if code := get("GET", p); code != http.StatusOK {
			t.Errorf("GET %s: %d, want 200", p, code)
		}
	}
	// ...and none of these exists.
	for _, p := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/goroutine?debug=2",
		"/debug/pprof/profile?seconds=1", "/debug/pprof/cmdline", "/debug/pprof/trace", "/debug/vars", "/debug/requests", "/debug/events"} {
		if code := get("GET", p); code != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", p, code)
		}
	}
	for _, p := range []string{"/admin/drain", "/admin/undrain"} {
		if code := get("POST", p); code != http.StatusNotFound {
			t.Errorf("POST %s without --admin-token: %d, want 404", p, code)
		}
	}
}

// verifyNoLeaks polls for leaked goroutines for a few seconds: memberlist's
// Shutdown does not wait for a probe in flight.
func verifyNoLeaks(t *testing.T, opts ...goleak.Option) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := goleak.Find(opts...)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Error(err)
			return
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not synchronization
	}
}
