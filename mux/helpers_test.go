package mux

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// listenTest opens a mux on addr and closes it (checking for leaked
// goroutines) when the test ends.
func listenTest(t *testing.T, addr string, cfg Config) *Mux {
	t.Helper()
	if _, seen := leakChecked.LoadOrStore(t, true); !seen {
		// Registered before any Close, so it runs after all of them.
		t.Cleanup(func() {
			goleak.VerifyNone(t)
			leakChecked.Delete(t)
		})
	}
	m, err := Listen(addr, cfg)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return m
}

var leakChecked sync.Map // *testing.T -> true once its leak check is registered

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// client is a plain UDP socket playing a peer.
func client(t *testing.T, network, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func muxAddrPort(m *Mux) netip.AddrPort {
	return m.LocalAddr().(*net.UDPAddr).AddrPort()
}

// readTimeout reads one datagram from a conn with a deadline.
func readTimeout(t *testing.T, c interface {
	SetReadDeadline(time.Time) error
	ReadFromUDPAddrPort([]byte) (int, netip.AddrPort, error)
}, d time.Duration) ([]byte, netip.AddrPort, error) {
	t.Helper()
	buf := make([]byte, 2048)
	_ = c.SetReadDeadline(time.Now().Add(d))
	n, from, err := c.ReadFromUDPAddrPort(buf)
	return buf[:n], from, err
}
