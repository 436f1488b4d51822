//go:build !linux

package bench

import (
	"fmt"
	"net"
	"syscall"
)

// Elsewhere SO_REUSEPORT does not balance UDP among sockets: use one.
const reusePortBalances = false

func reusePortControl(_, _ string, _ syscall.RawConn) error { return nil }

func setSocketBuffers(c *net.UDPConn, buf int) error {
	if buf == 0 {
		return nil
	}
	if err := c.SetReadBuffer(buf); err != nil {
		return fmt.Errorf("bench: SO_RCVBUF: %w", err)
	}
	if err := c.SetWriteBuffer(buf); err != nil {
		return fmt.Errorf("bench: SO_SNDBUF: %w", err)
	}
	return nil
}
