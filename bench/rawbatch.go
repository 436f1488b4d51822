package bench

import (
	"net"
	"net/netip"

	"github.com/oneport/oneport/internal/batchio"
)

// rawBatch reads a socket the way oneport's mux does (internal/batchio:
// recvmmsg into preallocated buffers, nothing allocated per datagram), so
// the ceiling pays for nothing the mux avoids.
type rawBatch struct{ r *batchio.Reader }

func newRawBatch(c *net.UDPConn, _ string, batch int) (*rawBatch, error) {
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	r, err := batchio.NewReader(c, bufs)
	if err != nil {
		return nil, err
	}
	return &rawBatch{r: r}, nil
}

// read receives up to a batch; datagram(i) returns them.
func (r *rawBatch) read() (int, error) { return r.r.Read() }

func (r *rawBatch) datagram(i int) ([]byte, netip.AddrPort) {
	b, from, _ := r.r.Datagram(i)
	return b, from
}
