//go:build !linux

package batchio

import (
	"net"
	"net/netip"
)

// Reader receives one datagram per Read where recvmmsg is not available.
type Reader struct {
	c    *net.UDPConn
	bufs [][]byte
	n    int
	from netip.AddrPort
}

// NewReader reads c into bufs[0]; the other buffers are unused.
func NewReader(c *net.UDPConn, bufs [][]byte) (*Reader, error) {
	return &Reader{c: c, bufs: bufs}, nil
}

// SetBuffer gives slot i a new buffer for the next Read.
func (r *Reader) SetBuffer(i int, b []byte) { r.bufs[i] = b }

// Read receives one datagram into slot 0.
func (r *Reader) Read() (int, error) {
	n, from, err := r.c.ReadFromUDPAddrPort(r.bufs[0])
	if err != nil {
		return 0, err
	}
	r.n, r.from = n, netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	return 1, nil
}

// Datagram returns slot 0 of the last Read. Truncation is not reported
// here: callers size buffers one byte over their limit to tell.
func (r *Reader) Datagram(int) ([]byte, netip.AddrPort, bool) {
	return r.bufs[0][:r.n], r.from, false
}
