package udplb

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// echo answers every datagram with its own name.
func echo(t *testing.T, ip string) (*net.UDPConn, netip.AddrPort) {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(ip+":0")))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 100)
		for {
			_, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort([]byte(ip), from)
		}
	}()
	return c, c.LocalAddr().(*net.UDPAddr).AddrPort()
}

func TestBalancerSpreadsAndRehashes(t *testing.T) {
	defer goleak.VerifyNone(t)
	var backends []netip.AddrPort
	for i := 1; i <= 3; i++ {
		c, a := echo(t, fmt.Sprintf("127.0.0.%d", i))
		defer c.Close()
		backends = append(backends, a)
	}
	lb, err := New("127.0.0.100:0", netip.MustParseAddr("127.0.0.200"), backends)
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	seen := map[string]int{}
	var clients []*net.UDPConn
	ask := func(c *net.UDPConn) string {
		c.WriteToUDPAddrPort([]byte("hi"), lb.Addr())
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 100)
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil || from != lb.Addr() {
			t.Fatalf("answer from %v: %v", from, err)
		}
		return string(buf[:n])
	}
	for i := 0; i < 30; i++ {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 50)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
		seen[ask(c)]++
	}
	if len(seen) != 3 {
		t.Fatalf("flows spread over %v", seen)
	}
	before := make([]string, len(clients))
	for i, c := range clients {
		before[i] = ask(c) // sticky: the same answer again
		if b, _ := lb.Backend(c.LocalAddr().(*net.UDPAddr).AddrPort()); b.Addr().String() != before[i] {
			t.Fatalf("client %d: backend %v answered as %s", i, b, before[i])
		}
	}
	if moved := lb.Rehash(); moved == 0 {
		t.Fatal("a re-hash moved no flow")
	}
	changed := 0
	for i, c := range clients {
		if ask(c) != before[i] {
			changed++
		}
	}
	if changed == 0 {
		t.Fatal("no client reached another backend after the re-hash")
	}
}
