//go:build linux

package batchio

import (
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reader receives datagrams from one socket with recvmmsg.
type Reader struct {
	rc    syscall.RawConn
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for sockaddr_in too
	bufs  [][]byte
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool // r.recv, bound once so Read does not allocate
}

// NewReader reads c into bufs, one datagram per buffer and call slot; the
// batch is len(bufs). Every buffer must be non-empty.
func NewReader(c *net.UDPConn, bufs [][]byte) (*Reader, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("batchio: %w", err)
	}
	r := &Reader{
		rc:    rc,
		hdrs:  make([]unix.Mmsghdr, len(bufs)),
		iovs:  make([]unix.Iovec, len(bufs)),
		names: make([]unix.RawSockaddrInet6, len(bufs)),
		bufs:  bufs,
	}
	for i := range r.hdrs {
		r.hdrs[i].Hdr.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		r.hdrs[i].Hdr.Iov = &r.iovs[i]
		r.hdrs[i].Hdr.SetIovlen(1)
		r.SetBuffer(i, bufs[i])
	}
	r.fn = r.recv
	return r, nil
}

// SetBuffer gives slot i a new buffer for the next Read.
func (r *Reader) SetBuffer(i int, b []byte) {
	r.bufs[i] = b
	r.iovs[i].Base = &b[0]
	r.iovs[i].SetLen(len(b))
}

func (r *Reader) recv(fd uintptr) bool {
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(len(r.hdrs)), 0, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // wait for the poller
		}
		r.n, r.errno = int(n), e
		return true
	}
}

// Read blocks until at least one datagram is in, and returns how many
// slots were filled. A closed socket gives an error that errors.Is
// net.ErrClosed.
func (r *Reader) Read() (int, error) {
	for i := range r.hdrs {
		r.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		r.hdrs[i].Hdr.Flags = 0
		r.hdrs[i].Len = 0
	}
	if err := r.rc.Read(r.fn); err != nil {
		return 0, err
	}
	if r.errno != 0 {
		return 0, r.errno
	}
	return r.n, nil
}

// Datagram returns slot i of the last Read: its bytes (aliasing the slot's
// buffer), its unmapped source, and whether the kernel truncated it.
func (r *Reader) Datagram(i int) (b []byte, from netip.AddrPort, truncated bool) {
	h := &r.hdrs[i]
	return r.bufs[i][:h.Len], SockaddrAddrPort(&r.names[i]), h.Hdr.Flags&unix.MSG_TRUNC != 0
}

// SockaddrAddrPort parses a sockaddr_in or sockaddr_in6 into an unmapped
// netip.AddrPort (the zone is dropped); anything else is the zero value.
func SockaddrAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		p := (*[2]byte)(unsafe.Pointer(&sa4.Port))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), uint16(p[0])<<8|uint16(p[1]))
	case unix.AF_INET6:
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(p[0])<<8|uint16(p[1]))
	}
	return netip.AddrPort{}
}

// PutSockaddr writes to into sa for a socket of the given family (an IPv4
// destination on an IPv6 socket becomes IPv4-mapped) and returns the
// sockaddr's length, or false for an IPv6 destination on an IPv4 socket.
func PutSockaddr(sa *unix.RawSockaddrInet6, to netip.AddrPort, v6 bool) (uint32, bool) {
	port := to.Port()
	if v6 {
		*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: to.Addr().As16()}
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		p[0], p[1] = byte(port>>8), byte(port)
		return unix.SizeofSockaddrInet6, true
	}
	if !to.Addr().Is4() {
		return 0, false
	}
	sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
	*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: to.Addr().As4()}
	p := (*[2]byte)(unsafe.Pointer(&sa4.Port))
	p[0], p[1] = byte(port>>8), byte(port)
	return unix.SizeofSockaddrInet4, true
}
