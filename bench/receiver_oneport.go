package bench

import (
	"net/netip"

	"github.com/oneport/oneport/mux"
)

// newOneportReceiver serves specs through oneport's mux on a loopback port.
func newOneportReceiver(cfg MuxConfig, specs []sessionSpec, stall bool) (*muxReceiver, error) {
	m, err := mux.Listen(netip.AddrPortFrom(loopback(cfg.Network), 0).String(), cfg.Mux)
	if err != nil {
		return nil, err
	}
	r, err := newMuxReceiver(m, specs, stall)
	if err != nil {
		return nil, err
	}
	r.drops = func() map[string]uint64 {
		st := m.Stats()
		d := make(map[string]uint64, len(st.Drops))
		for i, n := range st.Drops {
			if n > 0 {
				d[mux.DropReason(i).String()] = n
			}
		}
		return d
	}
	r.in = func() uint64 { return m.Stats().TotalIn() }
	return r, nil
}
