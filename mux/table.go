package mux

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
)

// flow is what the flow table maps a client address to: a local session,
// or (on an ingress node) the remote node that owns the client's session.
type flow struct {
	sess  *session // immutable: the local session the address is bound to, or nil
	owner *peer    // immutable: the remote owner when sess is nil

	// via is, for a local session's flow, the ingress node its datagrams
	// last came through (nil: straight from the client). Replies leave the
	// same way, since only that node's replies are translated back to the
	// load balancer's VIP. The latest path wins.
	via atomic.Pointer[peer]

	lastSeen atomic.Int64 // coarse unix nanoseconds of the last datagram either way
}

// touch records activity at now, writing only when the coarse clock moved so
// a busy flow does not bounce its cache line between readers and writers.
func (f *flow) touch(now int64) {
	if f.lastSeen.Load() != now {
		f.lastSeen.Store(now)
	}
}

const flowShards = 64 // a power of two

// flowTable maps netip.AddrPort (unmapped) to *flow. Lookups take one shard's
// read lock; binds, unbinds and sweeps take its write lock.
type flowTable struct {
	shards [flowShards]flowShard
	count  atomic.Int64  // entries over all shards, tombstones included
	gen    atomic.Uint64 // bumped when a flow is removed or rebound: readers' caches check it
}

type flowShard struct {
	mu sync.RWMutex
	m  map[netip.AddrPort]*flow // guarded by mu
	_  [40]byte                 // keep shards' locks on separate cache lines
}

func (t *flowTable) init() {
	for i := range t.shards {
		t.shards[i].m = make(map[netip.AddrPort]*flow)
	}
}

// addrHash is a multiplicative hash of a's 16-byte form and port: no
// allocation. It picks shards and cache slots; Go's map inside a shard still
// uses its own seeded hash, so colliding addresses cost locality, not time.
func addrHash(a netip.AddrPort) uint64 {
	b := a.Addr().As16()
	h := binary.LittleEndian.Uint64(b[0:8])*0x9E3779B97F4A7C15 ^
		binary.LittleEndian.Uint64(b[8:16])*0xC2B2AE3D27D4EB4F ^
		uint64(a.Port())*0x165667B19E3779F9
	return h ^ h>>29
}

func (t *flowTable) shard(a netip.AddrPort) *flowShard {
	return &t.shards[(addrHash(a)>>10)&(flowShards-1)]
}

// get returns a's flow, or nil.
func (t *flowTable) get(a netip.AddrPort) *flow { return t.getHashed(a, addrHash(a)) }

func (t *flowTable) getHashed(a netip.AddrPort, h uint64) *flow {
	sh := &t.shards[(h>>10)&(flowShards-1)]
	sh.mu.RLock()
	f := sh.m[a]
	sh.mu.RUnlock()
	return f
}

// bindResult says what bind did.
type bindResult uint8

const (
	bindExisting bindResult = iota // a was already bound to s
	bindNew                        // a is now bound to s
	bindFull                       // the table is full: a is not bound
)

// bind binds a to the local session s, or (s nil) to the remote owner o,
// replacing any other binding: the latest to answer an address owns it.
// It returns the flow now bound and the local session a was bound to
// before, if another.
func (t *flowTable) bind(a netip.AddrPort, s *session, o *peer, now int64, max int) (res bindResult, f *flow, prev *session) {
	sh := t.shard(a)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	old := sh.m[a]
	if old != nil && old.sess == s && old.owner == o {
		old.touch(now)
		return bindExisting, old, nil
	}
	if old == nil {
		if t.count.Load() >= int64(max) {
			return bindFull, nil, nil
		}
		t.count.Add(1)
	} else {
		if old.sess != s {
			prev = old.sess
		}
		t.gen.Add(1)
	}
	f = &flow{sess: s, owner: o}
	f.lastSeen.Store(now)
	sh.m[a] = f
	return bindNew, f, prev
}

// unbind removes a's binding if it belongs to s.
func (t *flowTable) unbind(a netip.AddrPort, s *session) {
	sh := t.shard(a)
	sh.mu.Lock()
	if f := sh.m[a]; f != nil && f.sess == s {
		delete(sh.m, a)
		t.count.Add(-1)
		t.gen.Add(1)
	}
	sh.mu.Unlock()
}

// sweep deletes flows idle since before idleBefore and tombstones of
// sessions closed before deadBefore. gone is called (with no lock held) for
// each live session's address that expired, so the session forgets it.
func (t *flowTable) sweep(idleBefore, deadBefore int64, gone func(*session, netip.AddrPort)) {
	type expired struct {
		s *session
		a netip.AddrPort
	}
	var out []expired
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for a, f := range sh.m {
			if f.sess == nil { // a remote owner's flow
				if f.owner.gone.Load() || f.lastSeen.Load() < idleBefore {
					delete(sh.m, a)
					t.count.Add(-1)
					t.gen.Add(1)
				}
				continue
			}
			if c := f.sess.closedAt.Load(); c != 0 {
				if c < deadBefore {
					delete(sh.m, a)
					t.count.Add(-1)
					t.gen.Add(1)
				}
				continue
			}
			if f.lastSeen.Load() < idleBefore {
				delete(sh.m, a)
				t.count.Add(-1)
				t.gen.Add(1)
				out = append(out, expired{f.sess, a})
			}
		}
		sh.mu.Unlock()
		for _, e := range out {
			gone(e.s, e.a)
		}
		out = out[:0]
	}
}

// len is the number of entries, tombstones included.
func (t *flowTable) len() int { return int(t.count.Load()) }
