//go:build !linux

package mux

import (
	"errors"
	"net/netip"
)

// Portable fallback: one datagram per system call.

var errFamily = errors.New("mux: IPv6 destination on an IPv4 socket")

type rbatch struct {
	buf  *pbuf
	n    int
	from netip.AddrPort
}

type wbatch struct{}

func (s *socket) initBatch(int) { s.rb.buf = s.m.getBuf() }

func (s *socket) readBatch() (int, error) {
	n, from, err := s.conn.ReadFromUDPAddrPort(s.rb.buf.b)
	if err != nil {
		return 0, err
	}
	s.rb.n, s.rb.from = n, unmap(from)
	return 1, nil
}

func (s *socket) datagram(int) (*pbuf, int, netip.AddrPort, bool) {
	return s.rb.buf, s.rb.n, s.rb.from, s.rb.n > s.m.cfg.MaxPacketSize
}

func (s *socket) replace(_ int, buf *pbuf) { s.rb.buf = buf }

func (s *socket) sendBatchLocked(pkts []outPkt, st *counters) error {
	var lastErr error
	for i := range pkts {
		p := &pkts[i]
		_, err := s.conn.WriteToUDPAddrPort(p.b, p.to)
		if err != nil {
			st.drop(DropWriteError)
		} else {
			st.count(Classify(p.b), len(p.b))
		}
		if i == len(pkts)-1 {
			lastErr = err
		}
	}
	return lastErr
}
