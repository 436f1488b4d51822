package bench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
)

// listenUDP opens n sockets sharing one loopback port (SO_REUSEPORT; one
// socket where the platform cannot balance among several), each with buf
// bytes of kernel receive and send buffer.
func listenUDP(network string, n, buf int) ([]*net.UDPConn, error) {
	if !reusePortBalances {
		n = 1
	}
	lc := net.ListenConfig{Control: reusePortControl}
	addr := netip.AddrPortFrom(loopback(network), 0)
	var conns []*net.UDPConn
	for i := range n {
		pc, err := lc.ListenPacket(context.Background(), network, addr.String())
		if err != nil {
			closeAll(conns)
			return nil, fmt.Errorf("bench: listen %s %v: %w", network, addr, err)
		}
		c := pc.(*net.UDPConn)
		conns = append(conns, c)
		if err := setSocketBuffers(c, buf); err != nil {
			closeAll(conns)
			return nil, err
		}
		if i == 0 {
			addr = c.LocalAddr().(*net.UDPAddr).AddrPort()
		}
	}
	return conns, nil
}

func closeAll(conns []*net.UDPConn) {
	for _, c := range conns {
		_ = c.Close()
	}
}
