package bench

import (
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// Linux spreads datagrams over SO_REUSEPORT sockets by 4-tuple hash.
const reusePortBalances = true

func reusePortControl(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return serr
}

// setSocketBuffers asks for buf bytes of receive and send buffer, past the
// rmem_max/wmem_max caps where the process may (CAP_NET_ADMIN), as
// oneport's mux does, so every receiver gets the same buffer.
func setSocketBuffers(c *net.UDPConn, buf int) error {
	if buf == 0 {
		return nil
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("bench: socket buffers: %w", err)
	}
	var forced bool
	_ = rc.Control(func(fd uintptr) {
		forced = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, buf) == nil &&
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, buf) == nil
	})
	if forced {
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
