//go:build linux

package netnstest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
)

// maxSources bounds the source table of an echo server; sources beyond it
// are answered but not recorded (counted in Unrecorded).
const maxSources = 4096

// sources is an echo server's bounded record of who reached it.
type sources struct {
	mu         sync.Mutex // guards the fields below
	seen       map[netip.AddrPort]int
	unrecorded int
}

func (s *sources) add(a netip.AddrPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = make(map[netip.AddrPort]int)
	}
	if _, ok := s.seen[a]; !ok && len(s.seen) >= maxSources {
		s.unrecorded++
		return
	}
	s.seen[a]++
}

// Sources returns a copy of the source addresses seen, with the number of
// datagrams (UDP) or connections (TCP) from each.
func (s *sources) Sources() map[netip.AddrPort]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[netip.AddrPort]int, len(s.seen))
	for a, n := range s.seen {
		out[a] = n
	}
	return out
}

// Unrecorded counts what arrived from sources beyond the table's bound.
func (s *sources) Unrecorded() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unrecorded
}

// UDPEcho answers every datagram with "<tag>|<payload>" from the socket it
// arrived on, so a client through the LB learns which server answered.
type UDPEcho struct {
	sources
	Tag  string
	conn *net.UDPConn
	done chan struct{} // closed when the reader has exited
	once sync.Once
}

// StartUDPEcho starts a UDPEcho on a socket opened in ns, bound to addr.
func StartUDPEcho(ns NS, addr netip.AddrPort, tag string) (*UDPEcho, error) {
	c, err := ns.ListenUDP(addr)
	if err != nil {
		return nil, err
	}
	e := &UDPEcho{Tag: tag, conn: c, done: make(chan struct{})}
	go e.serve()
	return e, nil
}

func (e *UDPEcho) serve() {
	defer close(e.done)
	buf := make([]byte, 2048)
	out := make([]byte, 0, len(e.Tag)+1+len(buf))
	for {
		n, from, err := e.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return // net.ErrClosed from Close; an unconnected socket reports no ICMP errors
		}
		e.add(from)
		out = append(append(append(out[:0], e.Tag...), '|'), buf[:n]...)
		_, _ = e.conn.WriteToUDPAddrPort(out, from)
	}
}

// LocalAddr is the server's bound address.
func (e *UDPEcho) LocalAddr() netip.AddrPort { return e.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// Close closes the socket and waits for the reader to exit. Idempotent.
func (e *UDPEcho) Close() error {
	var err error
	e.once.Do(func() { err = e.conn.Close() })
	<-e.done
	return err
}

// TCPEcho answers every line of every connection with "<tag>|<line>".
type TCPEcho struct {
	sources
	Tag string
	ln  *net.TCPListener
	wg  sync.WaitGroup // the accept loop and one goroutine per connection

	mu     sync.Mutex // guards conns and closed
	conns  map[net.Conn]struct{}
	closed bool
	once   sync.Once
}

// StartTCPEcho starts a TCPEcho on a listener opened in ns, bound to addr.
func StartTCPEcho(ns NS, addr netip.AddrPort, tag string) (*TCPEcho, error) {
	ln, err := ns.ListenTCP(addr)
	if err != nil {
		return nil, err
	}
	e := &TCPEcho{Tag: tag, ln: ln, conns: make(map[net.Conn]struct{})}
	e.wg.Add(1)
	go e.accept()
	return e, nil
}

func (e *TCPEcho) accept() {
	defer e.wg.Done()
	for {
		c, err := e.ln.Accept()
		if err != nil {
			return // net.ErrClosed from Close, or the listener is broken
		}
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			c.Close()
			return
		}
		e.conns[c] = struct{}{}
		e.wg.Add(1)
		e.mu.Unlock()
		e.add(c.RemoteAddr().(*net.TCPAddr).AddrPort())
		go e.serve(c)
	}
}

func (e *TCPEcho) serve(c net.Conn) {
	defer e.wg.Done()
	defer func() {
		e.mu.Lock()
		delete(e.conns, c)
		e.mu.Unlock()
		c.Close()
	}()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if _, err := c.Write([]byte(e.Tag + "|" + line)); err != nil {
			return
		}
	}
}

// Close closes the listener and every connection and waits for their
// goroutines. Idempotent.
func (e *TCPEcho) Close() error {
	var err error
	e.once.Do(func() {
		e.mu.Lock()
		e.closed = true
		err = e.ln.Close()
		for c := range e.conns {
			c.Close()
		}
		e.mu.Unlock()
	})
	e.wg.Wait()
	return err
}

// ErrNoReply reports that an exchange got no answer within its attempts.
var ErrNoReply = errors.New("netnstest: no reply")

// Exchange sends payload from c to `to` (or, if c is connected, to its
// peer) and waits up to wait for an echo of it, resending up to attempts
// times in all: UDP may lose the first datagrams while ARP resolves. Replies
// that do not echo payload (late answers to an earlier exchange) are
// skipped. It returns the answering server's tag (the reply up to its first
// '|') and the reply's source.
func Exchange(c *net.UDPConn, to netip.AddrPort, payload string, attempts int, wait time.Duration) (tag string, from netip.AddrPort, err error) {
	connected := c.RemoteAddr() != nil
	buf := make([]byte, 2048)
	for range attempts {
		if connected {
			_, err = c.Write([]byte(payload))
		} else {
			_, err = c.WriteToUDPAddrPort([]byte(payload), to)
		}
		if err != nil {
			return "", from, fmt.Errorf("netnstest: send: %w", err)
		}
		deadline := time.Now().Add(wait)
		if err := c.SetReadDeadline(deadline); err != nil {
			return "", from, err
		}
		for {
			n, src, err := c.ReadFromUDPAddrPort(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break // resend
			}
			if err != nil {
				return "", src, fmt.Errorf("netnstest: receive: %w", err)
			}
			t, p, ok := strings.Cut(string(buf[:n]), "|")
			if ok && p == payload {
				return t, src, c.SetReadDeadline(time.Time{})
			}
		}
	}
	return "", from, fmt.Errorf("%w to %q after %d attempts of %v", ErrNoReply, payload, attempts, wait)
}
