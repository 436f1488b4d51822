//go:build linux

package mux

import (
	"context"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// reusePortBalances is true where SO_REUSEPORT spreads datagrams over the
// sockets sharing a port by flow hash.
const reusePortBalances = true

// listenUDP opens one of the port's sockets with SO_REUSEPORT, sized buffers
// (forced past rmem_max/wmem_max when running as root).
func listenUDP(addr *net.UDPAddr, bufSize int) (*net.UDPConn, bool, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp", addr.String())
	if err != nil {
		return nil, false, err
	}
	uc := pc.(*net.UDPConn)
	rc, err := uc.SyscallConn()
	if err != nil {
		uc.Close()
		return nil, false, err
	}
	var v6 bool
	var derr error
	err = rc.Control(func(fd uintptr) {
		var dom int
		dom, derr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		v6 = dom == unix.AF_INET6
		if bufSize > 0 {
			// Best effort: the unforced calls are capped by the sysctls,
			// the forced ones need CAP_NET_ADMIN.
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, bufSize)
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, bufSize)
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, bufSize)
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, bufSize)
		}
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		uc.Close()
		return nil, false, fmt.Errorf("mux: socket options: %w", err)
	}
	return uc, v6, nil
}
