//go:build linux

package mux

import (
	"errors"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Batch I/O with recvmmsg/sendmmsg through x/sys's Mmsghdr. x/net's
// ReadBatch/WriteBatch would do the same system calls, but its Message
// carries a net.Addr, which costs two allocations per datagram; here the
// addresses are parsed from preallocated sockaddrs straight into
// netip.AddrPort, so a batch allocates nothing.

// rbatch is a socket's receive batch; only its reader goroutine touches it.
type rbatch struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for sockaddr_in too
	bufs  []*pbuf
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool // r.recv, bound once so Read does not allocate
}

// wbatch is a socket's send batch; guarded by its writer's sendMu.
type wbatch struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	idx   []int // which outPkt each header carries
	start int
	cnt   int
	sent  int
	errno syscall.Errno
	fn    func(fd uintptr) bool
}

var errFamily = errors.New("mux: IPv6 destination on an IPv4 socket")

func (s *socket) initBatch(batch int) {
	r := &s.rb
	r.hdrs = make([]unix.Mmsghdr, batch)
	r.iovs = make([]unix.Iovec, batch)
	r.names = make([]unix.RawSockaddrInet6, batch)
	r.bufs = make([]*pbuf, batch)
	for i := range r.hdrs {
		r.bufs[i] = s.m.getBuf()
		r.hdrs[i].Hdr.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		r.hdrs[i].Hdr.Iov = &r.iovs[i]
		r.hdrs[i].Hdr.SetIovlen(1)
		r.setIov(i)
	}
	r.fn = r.recv

	w := &s.wb
	w.hdrs = make([]unix.Mmsghdr, batch)
	w.iovs = make([]unix.Iovec, batch)
	w.names = make([]unix.RawSockaddrInet6, batch)
	w.idx = make([]int, batch)
	for i := range w.hdrs {
		w.hdrs[i].Hdr.Name = (*byte)(unsafe.Pointer(&w.names[i]))
		w.hdrs[i].Hdr.Iov = &w.iovs[i]
		w.hdrs[i].Hdr.SetIovlen(1)
	}
	w.fn = w.send
}

func (r *rbatch) setIov(i int) {
	b := r.bufs[i].b
	r.iovs[i].Base = &b[0]
	r.iovs[i].SetLen(len(b))
}

func (r *rbatch) recv(fd uintptr) bool {
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(len(r.hdrs)), 0, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		r.n, r.errno = int(n), e
		return true
	}
}

// readBatch receives up to a batch of datagrams; datagram(i) reads them.
func (s *socket) readBatch() (int, error) {
	r := &s.rb
	for i := range r.hdrs {
		r.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		r.hdrs[i].Hdr.Flags = 0
		r.hdrs[i].Len = 0
	}
	if err := s.rc.Read(r.fn); err != nil {
		return 0, err
	}
	if r.errno != 0 {
		return 0, r.errno
	}
	return r.n, nil
}

// datagram returns the i-th datagram of the last batch.
func (s *socket) datagram(i int) (buf *pbuf, n int, from netip.AddrPort, truncated bool) {
	r := &s.rb
	h := &r.hdrs[i]
	return r.bufs[i], int(h.Len), sockaddrAddrPort(&r.names[i]), h.Hdr.Flags&unix.MSG_TRUNC != 0
}

// replace gives slot i a fresh buffer after its datagram was handed on.
func (s *socket) replace(i int, buf *pbuf) {
	s.rb.bufs[i] = buf
	s.rb.setIov(i)
}

func (w *wbatch) send(fd uintptr) bool {
	for {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&w.hdrs[w.start])), uintptr(w.cnt), 0, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		w.sent, w.errno = int(n), e
		if e != 0 {
			w.sent = 0
		}
		return true
	}
}

// sendBatchLocked sends pkts with sendmmsg, batch by batch, counting each
// datagram sent or failed. It returns the last datagram's error. The
// caller holds the writer's sendMu.
func (s *socket) sendBatchLocked(pkts []outPkt, st *counters) error {
	w := &s.wb
	var lastErr error
	last := len(pkts) - 1
	for off := 0; off < len(pkts); {
		cnt := min(len(pkts)-off, len(w.hdrs))
		k := 0
		for i := off; i < off+cnt; i++ {
			p := &pkts[i]
			nl, ok := putSockaddr(&w.names[k], p.to, s.v6)
			if !ok {
				st.drop(DropWriteError)
				if i == last {
					lastErr = errFamily
				}
				continue
			}
			if len(p.b) > 0 {
				w.iovs[k].Base = &p.b[0]
			} else {
				w.iovs[k].Base = nil
			}
			w.iovs[k].SetLen(len(p.b))
			w.hdrs[k].Hdr.Namelen = nl
			w.idx[k] = i
			k++
		}
		for j := 0; j < k; {
			w.start, w.cnt = j, k-j
			if err := s.rc.Write(w.fn); err != nil {
				for ; j < k; j++ {
					st.drop(DropWriteError)
				}
				return err
			}
			if w.errno != 0 {
				// sendmmsg reports an error only for its first datagram.
				st.drop(DropWriteError)
				if w.idx[j] == last {
					lastErr = w.errno
				}
				j++
				continue
			}
			for x := j; x < j+w.sent; x++ {
				b := pkts[w.idx[x]].b
				st.count(Classify(b), len(b))
			}
			j += w.sent
		}
		off += cnt
	}
	for i := range w.iovs {
		w.iovs[i].Base = nil // do not keep callers' buffers alive
	}
	return lastErr
}

func sockaddrAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
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

// putSockaddr writes to into sa for a socket of the given family; an IPv4
// destination on an IPv6 socket becomes IPv4-mapped.
func putSockaddr(sa *unix.RawSockaddrInet6, to netip.AddrPort, v6 bool) (uint32, bool) {
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
