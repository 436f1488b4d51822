package mux

import "net/netip"

// flowCacheSize is the number of entries in each reader's flow cache (a
// power of two).
const flowCacheSize = 4096

// readerState is what one reader goroutine keeps to itself: a direct-mapped
// cache in front of the flow table, and counters it adds up during a batch
// and publishes once per batch. Nothing in it is shared, so the per-packet
// path takes no lock and does no atomic read-modify-write for a bound flow.
type readerState struct {
	cache [flowCacheSize]cacheEntry
	local localCounts
	asked [askedSize]askedEntry // when each address was last asked about (whoHas)
	// askBudget limits ownership queries per second from this reader.
	askSecond int64
	askCount  int
}

const askedSize = 1024

type askedEntry struct {
	addr netip.AddrPort
	at   int64
}

// cacheEntry remembers a flow found in the table. It is valid while the
// table's generation, bumped whenever a flow is removed or rebound, has not
// moved since gen was read (before the table lookup).
type cacheEntry struct {
	addr netip.AddrPort
	f    *flow
	gen  uint64
}

// localCounts is a batch's worth of counters, unsynchronised.
type localCounts struct {
	packets [NumClasses]uint64
	bytes   [NumClasses]uint64
	drops   [NumDropReasons]uint64
	probes  uint64
	frames  uint64 // relay frames received
	fbytes  uint64
	dirty   bool
}

func (l *localCounts) count(c Class, n int) {
	l.packets[c]++
	l.bytes[c] += uint64(n)
	l.dirty = true
}

// frame counts a relay frame received.
func (l *localCounts) frame(n int) {
	l.frames++
	l.fbytes += uint64(n)
	l.dirty = true
}

func (l *localCounts) drop(r DropReason) {
	l.drops[r]++
	l.dirty = true
}

// flush adds the batch's counts to c and zeroes them.
func (l *localCounts) flush(c *counters) {
	if !l.dirty {
		return
	}
	for i := range l.packets {
		if l.packets[i] != 0 {
			c.packets[i].Add(l.packets[i])
			c.bytes[i].Add(l.bytes[i])
		}
	}
	for i, v := range l.drops {
		if v != 0 {
			c.drops[i].Add(v)
		}
	}
	if l.probes != 0 {
		c.probes.Add(l.probes)
	}
	if l.frames != 0 {
		c.frames.Add(l.frames)
		c.frameBytes.Add(l.fbytes)
	}
	*l = localCounts{}
}

// lookup finds a's flow through the cache, then the table.
func (rs *readerState) lookup(t *flowTable, a netip.AddrPort) *flow {
	h := addrHash(a)
	e := &rs.cache[h&(flowCacheSize-1)]
	gen := t.gen.Load()
	if e.f != nil && e.addr == a && e.gen == gen {
		return e.f
	}
	f := t.getHashed(a, h)
	if f != nil {
		*e = cacheEntry{addr: a, f: f, gen: gen}
	}
	return f
}
