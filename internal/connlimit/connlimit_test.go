package connlimit

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// acceptAll accepts on l until it is closed, handing connections to the
// returned channel; done is closed when the loop has returned.
func acceptAll(t *testing.T, l *Listener) (<-chan net.Conn, <-chan struct{}) {
	t.Helper()
	conns := make(chan net.Conn, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("accept: %v", err)
				}
				return
			}
			conns <- c
		}
	}()
	return conns, done
}

// dialFrom connects to l from the loopback address src.
func dialFrom(t *testing.T, l net.Listener, src string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// refused reports whether the listener closed c: a read ends at once.
func refused(t *testing.T, c net.Conn) bool {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false // still open
	}
	return err != nil
}

func expect(t *testing.T, conns <-chan net.Conn) net.Conn {
	t.Helper()
	select {
	case c := <-conns:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no connection accepted")
		return nil
	}
}

// Connections over MaxPerIP from one client, or over MaxConns in all, are
// closed at accept and counted; closing one frees its slot; exempt clients
// count toward the total only.
func TestLimits(t *testing.T) {
	defer goleak.VerifyNone(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	exempt := netip.MustParseAddr("127.0.0.4")
	l, err := New(ln, Config{MaxConns: 5, MaxPerIP: 2, Exempt: func(a netip.Addr) bool { return a == exempt }})
	if err != nil {
		t.Fatal(err)
	}
	conns, done := acceptAll(t, l)
	var server []net.Conn // the accepted ends
	defer func() {
		for _, c := range server {
			c.Close()
		}
	}()
	accept := func(src string) {
		t.Helper()
		dialFrom(t, l, src)
		server = append(server, expect(t, conns))
	}

	accept("127.0.0.1")
	accept("127.0.0.1")
	if over := dialFrom(t, l, "127.0.0.1"); !refused(t, over) {
		t.Fatal("a third connection from one IP was kept open")
	}
	for range 3 { // exempt from the per-IP bound...
		accept("127.0.0.4")
	}
	if full := dialFrom(t, l, "127.0.0.3"); !refused(t, full) { // ...not from the total
		t.Fatal("a connection over MaxConns was kept open")
	}
	st := l.Stats()
	if st.Open != 5 || st.Clients != 1 || st.RefusedPerIP != 1 || st.RefusedTotal != 1 {
		t.Fatalf("stats %+v, want 5 open, 1 client, 1 refused per IP, 1 refused in all", st)
	}

	// Closing a connection (twice: its slot comes back once) lets its client
	// in again.
	server[1].Close()
	server[1].Close()
	if st := l.Stats(); st.Open != 4 {
		t.Fatalf("open %d after a close, want 4", st.Open)
	}
	accept("127.0.0.1")
	if st := l.Stats(); st.Open != 5 {
		t.Fatalf("open %d after a new connection, want 5", st.Open)
	}

	l.Close()
	<-done
}

// Behind an http.Server every connection's slot comes back, keep-alive
// ones included, once the server is closed; the server keeps serving the
// clients within the bounds.
func TestHTTPServerReleases(t *testing.T) {
	defer goleak.VerifyNone(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := New(ln, Config{MaxConns: 64, MaxPerIP: 8})
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(l) }()
	for i := range 20 {
		// A fresh transport each time: 20 connections over the test, at most
		// a few open at once.
		tr := &http.Transport{}
		res, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://" + l.Addr().String())
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		tr.CloseIdleConnections()
	}
	if err := hs.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Open != 0 || st.Clients != 0 || st.RefusedPerIP != 0 {
		t.Fatalf("after the server closed: %+v", st)
	}
}

func TestConfig(t *testing.T) {
	if _, err := New(nil, Config{}); !errors.Is(err, ErrConfig) {
		t.Fatalf("nil listener: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := New(ln, Config{MaxPerIP: -1}); !errors.Is(err, ErrConfig) {
		t.Fatalf("negative MaxPerIP: %v", err)
	}
	l, err := New(ln, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if l.cfg.MaxConns != DefaultMaxConns || l.cfg.MaxPerIP != DefaultMaxPerIP {
		t.Fatalf("defaults %+v", l.cfg)
	}
}
