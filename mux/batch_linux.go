//go:build linux

package mux

import (
	"errors"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/oneport/oneport/internal/batchio"
)

// Batch sends with sendmmsg through x/sys's Mmsghdr, with destinations
// written into preallocated sockaddrs: nothing is allocated per datagram.
// Receiving is internal/batchio's Reader.

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

func (s *socket) initWriteBatch(batch int) {
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
			nl, ok := batchio.PutSockaddr(&w.names[k], p.to, s.v6)
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
