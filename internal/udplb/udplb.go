// Package udplb is a small user-space L4 UDP load balancer for tests: it
// stands in for a kernel DNAT load balancer (kube-proxy, IPVS, a cloud NLB)
// in front of several nodes on loopback.
//
// Like a DNAT balancer it picks a backend per client 5-tuple by hash, keeps
// the choice for the flow's life (conntrack), preserves what the backend
// sees as the client address across backends (one upstream socket per
// client, whichever backend it talks to), and translates back only the
// replies of the backend the flow is currently on: a reply from any other
// node is dropped, as a DNAT balancer's conntrack would not match it.
// Rehash moves live flows to other backends, as a conntrack flush or a
// changed backend set does.
//
// Bounded: at most MaxClients flows; everything is closed and waited for by
// Close.
package udplb

import (
	"errors"
	"hash/maphash"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// MaxClients bounds the flows a Balancer tracks.
const MaxClients = 4096

// Balancer forwards datagrams between clients and backends.
type Balancer struct {
	vip      *net.UDPConn
	upstream netip.Addr // the address upstream sockets bind to

	mu       sync.Mutex
	backends []netip.AddrPort              // guarded by mu
	flows    map[netip.AddrPort]*flowState // guarded by mu: by client address
	seed     maphash.Seed                  // guarded by mu
	down     map[netip.AddrPort]bool       // guarded by mu: backends taken out

	// Counters.
	Forwarded, Returned, Stray atomic.Uint64

	wg     sync.WaitGroup
	closed atomic.Bool
}

type flowState struct {
	client  netip.AddrPort
	up      *net.UDPConn // the client's upstream socket: its address is what nodes see
	backend atomic.Pointer[netip.AddrPort]
}

// New listens on vip and balances over backends; upstream sockets bind to
// upstream (an address on the backends' network, port chosen per client).
func New(vip string, upstream netip.Addr, backends []netip.AddrPort) (*Balancer, error) {
	ua, err := net.ResolveUDPAddr("udp", vip)
	if err != nil {
		return nil, err
	}
	c, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, err
	}
	b := &Balancer{
		vip:      c,
		upstream: upstream,
		backends: append([]netip.AddrPort(nil), backends...),
		flows:    make(map[netip.AddrPort]*flowState),
		seed:     maphash.MakeSeed(),
		down:     make(map[netip.AddrPort]bool),
	}
	b.wg.Add(1)
	go b.readClients()
	return b, nil
}

// Addr is the VIP.
func (b *Balancer) Addr() netip.AddrPort { return b.vip.LocalAddr().(*net.UDPAddr).AddrPort() }

// pickLocked hashes the client onto a live backend.
func (b *Balancer) pickLocked(client netip.AddrPort) (netip.AddrPort, bool) {
	var live []netip.AddrPort
	for _, be := range b.backends {
		if !b.down[be] {
			live = append(live, be)
		}
	}
	if len(live) == 0 {
		return netip.AddrPort{}, false
	}
	h := maphash.Comparable(b.seed, client)
	return live[h%uint64(len(live))], true
}

func (b *Balancer) readClients() {
	defer b.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, client, err := b.vip.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		f := b.flow(client)
		if f == nil {
			continue
		}
		if be := f.backend.Load(); be != nil {
			if _, err := f.up.WriteToUDPAddrPort(buf[:n], *be); err == nil {
				b.Forwarded.Add(1)
			}
		}
	}
}

// flow returns client's flow, creating it (and its upstream socket) on its
// first datagram.
func (b *Balancer) flow(client netip.AddrPort) *flowState {
	b.mu.Lock()
	defer b.mu.Unlock()
	if f := b.flows[client]; f != nil {
		return f
	}
	if len(b.flows) >= MaxClients || b.closed.Load() {
		return nil
	}
	be, ok := b.pickLocked(client)
	if !ok {
		return nil
	}
	up, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(b.upstream, 0)))
	if err != nil {
		return nil
	}
	f := &flowState{client: client, up: up}
	f.backend.Store(&be)
	b.flows[client] = f
	b.wg.Add(1)
	go b.readBackend(f)
	return f
}

// readBackend returns the current backend's replies to the client from the
// VIP, and drops any other node's.
func (b *Balancer) readBackend(f *flowState) {
	defer b.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := f.up.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if be := f.backend.Load(); be == nil || *be != from {
			b.Stray.Add(1)
			continue
		}
		if _, err := b.vip.WriteToUDPAddrPort(buf[:n], f.client); err == nil {
			b.Returned.Add(1)
		}
	}
}

// Backend returns the backend client's flow is on.
func (b *Balancer) Backend(client netip.AddrPort) (netip.AddrPort, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if f := b.flows[client]; f != nil {
		return *f.backend.Load(), true
	}
	return netip.AddrPort{}, false
}

// OnlyClient returns the client address when the balancer tracks exactly
// one flow.
func (b *Balancer) OnlyClient() (netip.AddrPort, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.flows) != 1 {
		return netip.AddrPort{}, false
	}
	for a := range b.flows {
		return a, true
	}
	return netip.AddrPort{}, false
}

// Rehash draws a new hash seed and moves every live flow to the backend it
// now hashes to (some stay). It returns how many moved.
func (b *Balancer) Rehash() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seed = maphash.MakeSeed()
	return b.reassignLocked()
}

// SetDown takes a backend out (its flows move to others) or puts it back
// (only new flows and re-hashed ones go to it). It returns how many flows
// moved.
func (b *Balancer) SetDown(backend netip.AddrPort, down bool) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.down[backend] = down
	if !down {
		return 0
	}
	moved := 0
	for _, f := range b.flows {
		if *f.backend.Load() == backend {
			if be, ok := b.pickLocked(f.client); ok {
				f.backend.Store(&be)
				moved++
			}
		}
	}
	return moved
}

func (b *Balancer) reassignLocked() int {
	moved := 0
	for _, f := range b.flows {
		be, ok := b.pickLocked(f.client)
		if ok && be != *f.backend.Load() {
			f.backend.Store(&be)
			moved++
		}
	}
	return moved
}

// Close stops the balancer and waits for its goroutines.
func (b *Balancer) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	b.vip.Close()
	b.mu.Lock()
	for _, f := range b.flows {
		f.up.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
	return nil
}
