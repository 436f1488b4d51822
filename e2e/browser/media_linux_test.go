//go:build linux

package browser

import (
	"net"
	"net/netip"
	"testing"

	"github.com/rs/zerolog"

	"github.com/oneport/oneport/mux"
)

// listenMedia opens the server's one media port on host (the kernel picks
// the port) with oneport's mux, which advertises that bound address as the
// only host candidate.
func listenMedia(t *testing.T, host netip.Addr, logger zerolog.Logger) (*mux.Mux, netip.AddrPort) {
	t.Helper()
	m, err := mux.Listen(netip.AddrPortFrom(host, 0).String(), mux.Config{Logger: logger})
	if err != nil {
		t.Fatalf("mux.Listen: %v", err)
	}
	return m, m.LocalAddr().(*net.UDPAddr).AddrPort()
}
