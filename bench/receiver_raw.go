package bench

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// rawReceiver is the ceiling: SO_REUSEPORT sockets read in recvmmsg batches
// the way oneport's mux reads them, with no demultiplexing and no queue. It
// only counts, and answers checks so the clients' STUN exchange is the same
// as with the muxes.
type rawReceiver struct {
	socks    []*net.UDPConn
	local    netip.AddrPort
	counters []recvCounters // one per socket reader
	nSSRC    uint32         // SSRCs ssrcBase..ssrcBase+nSSRC-1 are sessions'
	pwds     map[string]string
	runTagger

	closing atomic.Bool
	wg      sync.WaitGroup
	once    sync.Once
}

func newRawReceiver(cfg MuxConfig, specs []sessionSpec) (*rawReceiver, error) {
	socks, err := listenUDP(cfg.Network, cfg.RawSockets, cfg.SocketBuffer)
	if err != nil {
		return nil, err
	}
	r := &rawReceiver{
		socks:    socks,
		local:    socks[0].LocalAddr().(*net.UDPAddr).AddrPort(),
		counters: make([]recvCounters, len(socks)),
		nSSRC:    uint32(len(specs)),
		pwds:     make(map[string]string, len(specs)),
	}
	for _, s := range specs {
		r.pwds[s.ServerUfrag] = s.ServerPwd
	}
	batches := make([]*rawBatch, len(socks))
	for i, c := range socks {
		if batches[i], err = newRawBatch(c, cfg.Network, cfg.RawBatch); err != nil {
			closeAll(socks)
			return nil, err
		}
	}
	for i, c := range socks {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.read(c, batches[i], &r.counters[i])
		}()
	}
	return r, nil
}

func (r *rawReceiver) read(c *net.UDPConn, rb *rawBatch, ctr *recvCounters) {
	pwdOf := func(u string) (string, bool) { p, ok := r.pwds[u]; return p, ok }
	for {
		n, err := rb.read()
		if err != nil {
			if r.closing.Load() || isClosed(err) {
				return
			}
			ctr.errors.Add(1)
			continue
		}
		// Count in locals, publish once per batch.
		var delivered, bytes, stale, spoofed, misrouted, other uint64
		pt := uint8(r.cur.Load())
		for i := range n {
			p, from := rb.datagram(i)
			switch {
			case len(p) >= 12 && p[0]&0xc0 == 0x80:
				switch ssrc := binary.BigEndian.Uint32(p[8:12]); {
				case ssrc-ssrcBase < r.nSSRC && p[1]&0x7f == pt:
					delivered++
					bytes += uint64(len(p))
				case ssrc-ssrcBase < r.nSSRC:
					stale++
				case ssrc&spoofSSRCMask == spoofSSRCBase:
					spoofed++
				default:
					misrouted++
				}
			case isSTUN(p):
				r.answer(c, p, from, pwdOf, ctr)
			default:
				other++
			}
		}
		ctr.delivered.Add(delivered)
		ctr.bytes.Add(bytes)
		ctr.stale.Add(stale)
		ctr.spoofedRTP.Add(spoofed)
		ctr.misrouted.Add(misrouted)
		ctr.other.Add(other)
	}
}

func (r *rawReceiver) answer(c *net.UDPConn, req []byte, from netip.AddrPort, pwdOf func(string) (string, bool), ctr *recvCounters) {
	resp, err := answerBinding(req, from, pwdOf)
	if err != nil {
		ctr.stunRejected.Add(1)
		return
	}
	if _, err := c.WriteToUDPAddrPort(resp, from); err != nil {
		ctr.errors.Add(1)
		return
	}
	ctr.stunAnswered.Add(1)
}

func (r *rawReceiver) addr() netip.AddrPort { return r.local }

func (r *rawReceiver) counts() (c recvCounts) {
	for i := range r.counters {
		c = c.add(r.counters[i].load())
	}
	return c
}

func (r *rawReceiver) muxDrops() map[string]uint64 { return nil }
func (r *rawReceiver) datagramsIn() uint64         { return 0 }

func (r *rawReceiver) close() error {
	r.once.Do(func() {
		r.closing.Store(true)
		closeAll(r.socks)
		r.wg.Wait()
	})
	return nil
}
