package lbhealth

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// fakeNode stands in for the mux, sfu and cluster, which other packages
// implement; the lead's integration test wires the real ones.
type fakeNode struct {
	unbound  atomic.Bool
	sessions atomic.Int64
	notJoin  atomic.Bool

	mu      sync.Mutex // guards the snapshots below
	media   MediaStats
	sfu     SFUStats
	cluster ClusterStats
}

var (
	errUnbound   = errors.New("media socket 127.0.0.1:3478 closed")
	errNotJoined = errors.New("no seed reachable")
)

func (f *fakeNode) Bound() error {
	if f.unbound.Load() {
		return errUnbound
	}
	return nil
}

func (f *fakeNode) Sessions() int { return int(f.sessions.Load()) }

func (f *fakeNode) Joined() error {
	if f.notJoin.Load() {
		return errNotJoined
	}
	return nil
}

func (f *fakeNode) MediaStats() MediaStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.media
	s.Drops = append([]DropCount(nil), f.media.Drops...)
	return s
}

func (f *fakeNode) SFUStats() SFUStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sfu
}

func (f *fakeNode) ClusterStats() ClusterStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cluster
}

func (f *fakeNode) update(fn func(*fakeNode)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

var (
	_ Sockets        = (*fakeNode)(nil)
	_ SessionCounter = (*fakeNode)(nil)
	_ Membership     = (*fakeNode)(nil)
	_ MediaSource    = (*fakeNode)(nil)
	_ SFUSource      = (*fakeNode)(nil)
	_ ClusterSource  = (*fakeNode)(nil)
)

// newHealth returns a Health over a fresh fakeNode with every source wired;
// edit adjusts the config first.
func newHealth(t testing.TB, edit func(*Config)) (*Health, *fakeNode) {
	t.Helper()
	f := &fakeNode{}
	cfg := Config{
		Sockets: f, Sessions: f, Cluster: f,
		Media: f, SFU: f, ClusterStats: f,
		Version: "v1.2.3", Revision: "abc123",
	}
	if edit != nil {
		edit(&cfg)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return h, f
}

// udpWriter adapts *net.UDPConn to ProbeWriter, as the mux's writer will.
type udpWriter struct{ *net.UDPConn }

func (u udpWriter) WriteToAddrPort(b []byte, addr netip.AddrPort) (int, error) {
	return u.WriteToUDPAddrPort(b, addr)
}

// marker is echoed by probeServer unchanged; a client that reads it knows the
// server has handled, and answered or not, every packet it sent before.
var marker = []byte("marker")

// probeServer is a media-port stand-in: a real UDP socket whose reader hands
// every packet to HandleProbe, except markers, which it echoes.
type probeServer struct {
	conn *net.UDPConn
	done chan struct{}
}

func startProbeServer(t *testing.T, h *Health, network, addr string) *probeServer {
	t.Helper()
	conn, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatalf("listen %s %s: %v", network, addr, err)
	}
	s := &probeServer{conn: conn, done: make(chan struct{})}
	go s.serve(h)
	t.Cleanup(s.close)
	return s
}

func (s *probeServer) serve(h *Health) {
	defer close(s.done)
	buf := make([]byte, 1500)
	w := udpWriter{s.conn}
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if string(buf[:n]) == string(marker) {
			_, _ = s.conn.WriteToUDPAddrPort(marker, from)
			continue
		}
		h.HandleProbe(buf[:n], from, w)
	}
}

func (s *probeServer) addr() netip.AddrPort { return s.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (s *probeServer) close() {
	_ = s.conn.Close()
	<-s.done
}

// verifyNoLeaks checks for leaked goroutines after the test's cleanups (which
// close its servers) have run: cleanups run last-registered first.
func verifyNoLeaks(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

// dialClient opens a client UDP socket connected to the server.
func dialClient(t *testing.T, network string, server netip.AddrPort) *net.UDPConn {
	t.Helper()
	return dialClientFrom(t, network, netip.AddrPort{}, server)
}

// dialClientFrom is dialClient from a chosen local address: the probe rate
// limit keys on the source address, and all of 127.0.0.0/8 is loopback.
func dialClientFrom(t *testing.T, network string, local, server netip.AddrPort) *net.UDPConn {
	t.Helper()
	var laddr *net.UDPAddr
	if local.IsValid() {
		laddr = net.UDPAddrFromAddrPort(local)
	}
	c, err := net.DialUDP(network, laddr, net.UDPAddrFromAddrPort(server))
	if err != nil {
		t.Fatalf("dial %v: %v", server, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// readUntilMarker sends a marker and returns every datagram that arrives
// before its echo. Bounded by a deadline, not by sleeping.
func readUntilMarker(t *testing.T, c *net.UDPConn) [][]byte {
	t.Helper()
	if _, err := c.Write(marker); err != nil {
		t.Fatalf("write marker: %v", err)
	}
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	var got [][]byte
	for range 100 {
		buf := make([]byte, 1500)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("read: %v (got %d datagrams before the marker)", err, len(got))
		}
		if string(buf[:n]) == string(marker) {
			return got
		}
		got = append(got, buf[:n])
	}
	t.Fatal("marker never came back")
	return nil
}
