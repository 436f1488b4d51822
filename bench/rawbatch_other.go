//go:build !linux

package bench

import (
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// rawBatch reads a socket with x/net's ReadBatch (one datagram per call
// where the platform has no recvmmsg).
type rawBatch struct {
	br interface {
		ReadBatch(ms []ipv4.Message, flags int) (int, error)
	}
	ms []ipv4.Message
}

func newRawBatch(c *net.UDPConn, network string, batch int) (*rawBatch, error) {
	r := &rawBatch{br: ipv4.NewPacketConn(c), ms: make([]ipv4.Message, batch)}
	if network == "udp6" {
		r.br = ipv6.NewPacketConn(c)
	}
	for i := range r.ms {
		r.ms[i].Buffers = [][]byte{make([]byte, 2048)}
	}
	return r, nil
}

func (r *rawBatch) read() (int, error) { return r.br.ReadBatch(r.ms, 0) }

func (r *rawBatch) datagram(i int) ([]byte, netip.AddrPort) {
	m := &r.ms[i]
	ap, _ := addrPortOf(m.Addr)
	return m.Buffers[0][:m.N], ap
}
