// Package connlimit bounds the connections a TCP listener keeps open: in
// all, and per client IP (an IPv6 client by its /64, as ratelimit keys it).
//
// Go's http.Server accepts without limit, and an event stream or a
// slowloris client holds its connection for as long as it likes: a few
// hosts could take every file descriptor of the node, and with them the
// signaling of every other client. A connection over either bound is closed
// as soon as it is accepted, and counted: a full node refuses at once
// instead of leaving clients hanging in the accept queue, as a blocking
// limit (x/net/netutil.LimitListener) would. Exempt addresses (cluster
// members, which proxy many clients' requests over their connections) count
// toward the total only.
//
// Invariants: open and byIP (guarded by mu) count exactly the accepted
// connections not yet closed; a connection's slot is released once, on its
// first Close; byIP holds no zero entries, so it is bounded by MaxConns.
package connlimit

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/oneport/oneport/internal/ratelimit"
)

// Config bounds a Listener. The zero value of each field takes its default.
type Config struct {
	// MaxConns bounds the open connections in all. Default 16384.
	MaxConns int
	// MaxPerIP bounds the open connections of one client IP (/64 for
	// IPv6). Default 512: a browser holds about 6 per origin, and an office
	// behind one NAT address may hold hundreds of event streams.
	MaxPerIP int
	// Exempt reports addresses free of MaxPerIP. Default: none.
	Exempt func(netip.Addr) bool
}

// Defaults for Config.
const (
	DefaultMaxConns = 16384
	DefaultMaxPerIP = 512
)

// ErrConfig reports an invalid Config.
var ErrConfig = errors.New("connlimit: invalid config")

func (c *Config) applyDefaults() error {
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.MaxPerIP == 0 {
		c.MaxPerIP = DefaultMaxPerIP
	}
	if c.MaxConns < 0 || c.MaxPerIP < 0 {
		return fmt.Errorf("%w: MaxConns %d, MaxPerIP %d: must not be negative", ErrConfig, c.MaxConns, c.MaxPerIP)
	}
	return nil
}

// Listener is a net.Listener that closes connections over its bounds.
type Listener struct {
	net.Listener
	cfg Config

	mu   sync.Mutex // guards open and byIP
	open int
	byIP map[netip.Addr]int

	refusedTotal, refusedPerIP atomic.Uint64
}

// New wraps ln. The Listener owns ln: closing it closes ln.
func New(ln net.Listener, cfg Config) (*Listener, error) {
	if ln == nil {
		return nil, fmt.Errorf("%w: no listener", ErrConfig)
	}
	if err := cfg.applyDefaults(); err != nil {
		return nil, err
	}
	return &Listener{Listener: ln, cfg: cfg, byIP: make(map[netip.Addr]int)}, nil
}

// Accept returns the next connection within the bounds; those over them are
// closed and counted on the way.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key, perIP := l.key(c.RemoteAddr())
		if l.take(key, perIP) {
			return &conn{Conn: c, l: l, key: key, perIP: perIP}, nil
		}
		c.Close()
	}
}

// key is the client's bucket, and whether MaxPerIP applies to it.
func (l *Listener) key(a net.Addr) (netip.Addr, bool) {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return netip.Addr{}, false
	}
	ip = ip.Unmap()
	if l.cfg.Exempt != nil && l.cfg.Exempt(ip) {
		return netip.Addr{}, false
	}
	return ratelimit.SourceKey(ip), true
}

// take reserves a slot for a connection from key, or counts the refusal.
func (l *Listener) take(key netip.Addr, perIP bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open >= l.cfg.MaxConns {
		l.refusedTotal.Add(1)
		return false
	}
	if perIP {
		if l.byIP[key] >= l.cfg.MaxPerIP {
			l.refusedPerIP.Add(1)
			return false
		}
		l.byIP[key]++
	}
	l.open++
	return true
}

func (l *Listener) release(key netip.Addr, perIP bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if perIP {
		if n := l.byIP[key] - 1; n > 0 {
			l.byIP[key] = n
		} else {
			delete(l.byIP, key)
		}
	}
}

// Refusal reasons, as metric labels: RefusedTotal's and RefusedPerIP's.
const (
	ReasonMaxConns = "max_conns"
	ReasonMaxPerIP = "max_per_ip"
)

// Stats is a snapshot of a Listener.
type Stats struct {
	Open         int    // connections open
	Clients      int    // client IPs (/64s) with connections open, exempt ones aside
	RefusedTotal uint64 // connections closed at accept: MaxConns open
	RefusedPerIP uint64 // connections closed at accept: MaxPerIP open from that client
}

// Stats returns the current counts.
func (l *Listener) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Stats{Open: l.open, Clients: len(l.byIP),
		RefusedTotal: l.refusedTotal.Load(), RefusedPerIP: l.refusedPerIP.Load()}
}

// conn releases its slot on its first Close. http.Server closes every
// connection it accepted, hijacked ones aside, which their handler closes.
type conn struct {
	net.Conn
	l     *Listener
	key   netip.Addr
	perIP bool
	once  sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.key, c.perIP) })
	return err
}
