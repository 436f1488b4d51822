package bench

import (
	"net"
	"net/netip"
	"sync/atomic"

	"github.com/pion/ice/v4"
	"github.com/pion/logging"
)

// newPionReceiver serves specs through pion's ice.NewUDPMuxDefault on one
// loopback socket (pion reads one socket with one goroutine). Its logger is
// disabled: pion logs every undecodable STUN packet, and the hostile run
// sends many. With countReads, the socket is wrapped to count how many
// datagrams pion has dispatched (see dispatchCounter); the throughput runs
// hand pion the bare *net.UDPConn, as a deployment would.
func newPionReceiver(cfg MuxConfig, specs []sessionSpec, stall, countReads bool) (*muxReceiver, error) {
	socks, err := listenUDP(cfg.Network, 1, cfg.SocketBuffer)
	if err != nil {
		return nil, err
	}
	var conn net.PacketConn = socks[0]
	var dc *dispatchCounter
	if countReads {
		dc = &dispatchCounter{UDPConn: socks[0]}
		conn = dc
	}
	lf := logging.NewDefaultLoggerFactory()
	lf.DefaultLogLevel = logging.LogLevelDisabled
	m := ice.NewUDPMuxDefault(ice.UDPMuxParams{UDPConn: conn, Logger: lf.NewLogger("ice")})
	r, err := newMuxReceiver(m, specs, stall)
	if err != nil {
		return nil, err
	}
	if dc != nil {
		r.in = dc.dispatched
	}
	return r, nil
}

// dispatchCounter counts pion's socket reads. pion's mux reads with one
// goroutine that queues each datagram before it reads the next, so when it
// has entered its k-th read, k-1 datagrams are queued (or dropped).
type dispatchCounter struct {
	*net.UDPConn
	entered atomic.Uint64
}

var _ ice.AddrPortReaderWriter = (*dispatchCounter)(nil)

func (d *dispatchCounter) ReadFromAddrPort(b []byte) (int, netip.AddrPort, error) {
	d.entered.Add(1)
	return d.ReadFromUDPAddrPort(b)
}

func (d *dispatchCounter) WriteToAddrPort(b []byte, addr netip.AddrPort) (int, error) {
	return d.WriteToUDPAddrPort(b, addr)
}

func (d *dispatchCounter) dispatched() uint64 {
	if e := d.entered.Load(); e > 0 {
		return e - 1
	}
	return 0
}
