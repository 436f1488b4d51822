//go:build linux

package netnstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// netnsDir is where ip-netns(8) keeps its named namespaces.
const netnsDir = "/run/netns"

// NS is a named network namespace, as ip-netns(8) names it.
type NS string

// Path is the namespace's file, the handle setns(2) takes.
func (ns NS) Path() string { return filepath.Join(netnsDir, string(ns)) }

// ErrNotReturned reports that the function given to Do ended its goroutine
// (runtime.Goexit, as t.FailNow does) instead of returning.
var ErrNotReturned = errors.New("netnstest: function given to Do did not return")

// Do runs fn on an OS thread switched into ns and returns fn's error.
// Sockets fn creates keep the namespace after Do returns; so does nothing
// else: goroutines fn starts run on other threads, in the process's own
// namespace, and host names are resolved outside ns. fn must not call
// t.FailNow (it runs on a goroutine of its own); return an error instead.
//
// The thread is switched back before it is unlocked. If switching back
// fails, it stays locked and the runtime ends it with its goroutine, so no
// thread of the scheduler's is ever left in ns.
func (ns NS) Do(fn func() error) error {
	target, err := os.Open(ns.Path())
	if err != nil {
		return fmt.Errorf("netnstest: open namespace %s: %w", ns, err)
	}
	defer target.Close()

	errc := make(chan error, 1)
	go func() {
		returned := false
		defer func() {
			if !returned {
				errc <- ErrNotReturned
			}
		}()
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			returned = true
			errc <- fmt.Errorf("netnstest: open own namespace: %w", err)
			return
		}
		defer self.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			returned = true
			errc <- fmt.Errorf("netnstest: setns %s: %w", ns, err)
			return
		}
		// Switch back even if fn panics or exits the goroutine; unlock only
		// once back.
		defer func() {
			if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err == nil {
				runtime.UnlockOSThread()
			}
		}()
		ferr := fn()
		returned = true
		errc <- ferr
	}()
	return <-errc
}

// ListenUDP opens a UDP socket in ns bound to addr.
func (ns NS) ListenUDP(addr netip.AddrPort) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := ns.Do(func() (err error) {
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	})
	return c, err
}

// DialUDP opens a UDP socket in ns connected to raddr, from laddr if valid.
// A connected socket takes datagrams from raddr only: through the LB, it
// receives only replies that were un-NATed to the VIP.
func (ns NS) DialUDP(laddr, raddr netip.AddrPort) (*net.UDPConn, error) {
	var la *net.UDPAddr
	if laddr.IsValid() {
		la = net.UDPAddrFromAddrPort(laddr)
	}
	var c *net.UDPConn
	err := ns.Do(func() (err error) {
		c, err = net.DialUDP("udp", la, net.UDPAddrFromAddrPort(raddr))
		return err
	})
	return c, err
}

// ListenTCP opens a TCP listener in ns bound to addr.
func (ns NS) ListenTCP(addr netip.AddrPort) (*net.TCPListener, error) {
	var l *net.TCPListener
	err := ns.Do(func() (err error) {
		l, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(addr))
		return err
	})
	return l, err
}

// DialContext dials from ns; address must be an IP literal and port (names
// would be resolved outside ns). Its signature fits http.Transport's
// DialContext, so an HTTP client can live in ns:
//
//	client := &http.Client{Transport: &http.Transport{DialContext: ns.DialContext}}
func (ns NS) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}
