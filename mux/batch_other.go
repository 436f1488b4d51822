//go:build !linux

package mux

import "errors"

// Portable fallback: one datagram per send.

var errFamily = errors.New("mux: IPv6 destination on an IPv4 socket")

type wbatch struct{}

func (s *socket) initWriteBatch(int) {}

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
