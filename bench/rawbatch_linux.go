package bench

import (
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawBatch reads a socket with recvmmsg into preallocated buffers and
// sockaddrs, allocating nothing per datagram, as oneport's mux does: the
// ceiling must not pay for allocations the mux avoids. (x/net's ReadBatch
// returns a net.Addr per datagram: two allocations each.)
type rawBatch struct {
	rc    syscall.RawConn
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for sockaddr_in too
	bufs  [][]byte
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool // recv, bound once so read does not allocate
}

func newRawBatch(c *net.UDPConn, _ string, batch int) (*rawBatch, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &rawBatch{
		rc:    rc,
		hdrs:  make([]unix.Mmsghdr, batch),
		iovs:  make([]unix.Iovec, batch),
		names: make([]unix.RawSockaddrInet6, batch),
		bufs:  make([][]byte, batch),
	}
	for i := range r.hdrs {
		r.bufs[i] = make([]byte, 2048)
		r.iovs[i].Base = &r.bufs[i][0]
		r.iovs[i].SetLen(len(r.bufs[i]))
		r.hdrs[i].Hdr.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		r.hdrs[i].Hdr.Iov = &r.iovs[i]
		r.hdrs[i].Hdr.SetIovlen(1)
	}
	r.fn = r.recv
	return r, nil
}

func (r *rawBatch) recv(fd uintptr) bool {
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

// read receives up to a batch; datagram(i) returns them.
func (r *rawBatch) read() (int, error) {
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

func (r *rawBatch) datagram(i int) ([]byte, netip.AddrPort) {
	sa := &r.names[i]
	var from netip.AddrPort
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		p := (*[2]byte)(unsafe.Pointer(&sa4.Port))
		from = netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), uint16(p[0])<<8|uint16(p[1]))
	case unix.AF_INET6:
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		from = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(p[0])<<8|uint16(p[1]))
	}
	return r.bufs[i][:r.hdrs[i].Len], from
}
