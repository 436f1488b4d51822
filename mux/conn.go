package mux

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v4"
)

var (
	_ net.PacketConn           = (*conn)(nil)
	_ ice.AddrPortReaderWriter = (*conn)(nil)
)

// errBadAddr is returned by WriteTo for an address that is not a UDP one.
var errBadAddr = errors.New("mux: not a UDP address")

// conn is one GetConn reference to a session. Closing it ends only this
// reference's reads; the session closes with its last reference.
type conn struct {
	s        *session
	laddr    net.Addr
	done     chan struct{}
	once     sync.Once
	deadline atomic.Int64 // read deadline, unix nanoseconds; zero for none
}

func (c *conn) isClosed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// ReadFromAddrPort returns the next datagram for the session.
func (c *conn) ReadFromAddrPort(b []byte) (int, netip.AddrPort, error) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if c.isClosed() || c.s.closed() {
			return 0, netip.AddrPort{}, net.ErrClosed
		}
		if n, from, ok := c.s.pop(b); ok {
			return n, from, nil
		}
		var expired <-chan time.Time
		if d := c.deadline.Load(); d != 0 {
			wait := time.Until(time.Unix(0, d))
			if wait <= 0 {
				return 0, netip.AddrPort{}, os.ErrDeadlineExceeded
			}
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
			expired = timer.C
		}
		if expired == nil {
			select {
			case <-c.s.notify:
			case <-c.done:
			}
			continue
		}
		select {
		case <-c.s.notify:
		case <-c.done:
		case <-expired:
		}
	}
}

// ReadFrom is ReadFromAddrPort for net.PacketConn users; it allocates the
// returned address.
func (c *conn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, from, err := c.ReadFromAddrPort(b)
	if err != nil {
		return n, nil, err
	}
	return n, net.UDPAddrFromAddrPort(from), nil
}

// WriteToAddrPort sends b to addr from the mux's port and binds addr to the
// session: the session's ICE agent only writes to addresses it answers.
func (c *conn) WriteToAddrPort(b []byte, addr netip.AddrPort) (int, error) {
	if c.isClosed() || c.s.closed() {
		return 0, io.ErrClosedPipe
	}
	addr = unmap(addr)
	if f := c.s.m.bindOnWrite(c.s, addr); f != nil {
		if v := f.via.Load(); v != nil && !v.gone.Load() {
			// The client reaches us through another node: answer through
			// it, the only one whose replies the load balancer translates.
			return c.s.m.relayToClient(b, addr, v)
		}
	}
	return c.s.w.write(b, addr)
}

// WriteTo is WriteToAddrPort for net.PacketConn users.
func (c *conn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, fmt.Errorf("%w: %T", errBadAddr, addr)
	}
	return c.WriteToAddrPort(b, ua.AddrPort())
}

// Close releases this reference; the last one closes the session.
func (c *conn) Close() error {
	c.once.Do(func() {
		close(c.done)
		c.s.m.release(c.s)
		c.s.wake() // hand on any wake-up this reference's reader took
	})
	return nil
}

// LocalAddr is the listen address the conn was asked for.
func (c *conn) LocalAddr() net.Addr { return c.laddr }

// SetDeadline sets the read deadline; see SetWriteDeadline.
func (c *conn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

// SetReadDeadline bounds reads on this reference.
func (c *conn) SetReadDeadline(t time.Time) error {
	if t.IsZero() {
		c.deadline.Store(0)
	} else {
		c.deadline.Store(max(t.UnixNano(), 1))
	}
	c.s.wake() // a blocked reader must see the new deadline
	return nil
}

// SetWriteDeadline is accepted and ignored: a write never blocks for long,
// it is sent, queued behind a send in progress, or dropped and counted.
func (c *conn) SetWriteDeadline(time.Time) error { return nil }

// unmap turns an IPv4-mapped IPv6 address into IPv4 and drops the zone, so
// equal peers are equal keys.
func unmap(a netip.AddrPort) netip.AddrPort {
	ip := a.Addr()
	if ip.Is4In6() || ip.Zone() != "" {
		return netip.AddrPortFrom(ip.Unmap().WithZone(""), a.Port())
	}
	return a
}
