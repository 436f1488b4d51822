package bench

import (
	"encoding/binary"
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// Synthetic media. Every RTP payload the fan-out publisher sends ends with a
// trailer: kind byte (0 video, 1 audio), counter uint64, send time int64 (Unix
// ns, the machine's wall clock, which publisher and subscribers share), all
// big-endian: the layout of the sfu tests' synthetic payload.
const (
	trailerLen = 17
	kindVideo  = 0
	kindAudio  = 1
	numKinds   = 2
)

// putTrailer writes the trailer into the last trailerLen bytes of payload.
func putTrailer(payload []byte, kind byte, counter uint64, sentUnixNano int64) {
	t := payload[len(payload)-trailerLen:]
	t[0] = kind
	binary.BigEndian.PutUint64(t[1:9], counter)
	binary.BigEndian.PutUint64(t[9:17], uint64(sentUnixNano))
}

// readTrailer finds the trailer of a plain (decrypted) RTP packet in place:
// after the header, its CSRCs and extension, before any padding. ok is false
// for anything that is not RTP carrying a trailer.
func readTrailer(pkt []byte) (kind byte, counter uint64, sentUnixNano int64, ok bool) {
	off, end, ok := rtpPayload(pkt)
	if !ok || end-off < trailerLen {
		return 0, 0, 0, false
	}
	t := pkt[end-trailerLen : end]
	if t[0] >= numKinds {
		return 0, 0, 0, false
	}
	return t[0], binary.BigEndian.Uint64(t[1:9]), int64(binary.BigEndian.Uint64(t[9:17])), true
}

// rtpPayload returns the bounds of a plain RTP packet's payload: after the
// header, its CSRCs and extension, before any padding.
func rtpPayload(pkt []byte) (off, end int, ok bool) {
	if len(pkt) < 12 || pkt[0]>>6 != 2 {
		return 0, 0, false
	}
	off = 12 + 4*int(pkt[0]&0x0f)
	if pkt[0]&0x10 != 0 {
		if len(pkt) < off+4 {
			return 0, 0, false
		}
		off += 4 + 4*int(binary.BigEndian.Uint16(pkt[off+2:]))
	}
	end = len(pkt)
	if pkt[0]&0x20 != 0 && end > 0 {
		end -= int(pkt[end-1])
	}
	if end < off {
		return 0, 0, false
	}
	return off, end, true
}

// Latency histogram: log-linear bins of microseconds, 8 per power of two
// (at most 12.5 % wide), exact below 8 us, everything from about 2^26 us
// (67 s) up in the last bin.
const latBins = 8 + 8*23

// latBin is the bin of a latency of us microseconds.
func latBin(us uint64) int {
	if us < 8 {
		return int(us)
	}
	e := bits.Len64(us) - 4
	i := 8 + 8*e + int((us>>e)&7)
	return min(i, latBins-1)
}

// latBinLow is the smallest latency, in microseconds, that falls in bin i.
func latBinLow(i int) uint64 {
	if i < 8 {
		return uint64(i)
	}
	e := (i - 8) / 8
	return uint64(8+(i-8)%8) << e
}

// latQuantile is the q-quantile (0..1) of the histogram h (trailing empty
// bins may be cut), as the middle of its bin, in microseconds; 0 for an
// empty histogram.
func latQuantile(h []uint64, q float64) float64 {
	var total uint64
	for _, n := range h {
		total += n
	}
	if total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(total)))
	rank = max(rank, 1)
	var seen uint64
	for i, n := range h {
		seen += n
		if seen >= rank {
			lo := latBinLow(i)
			if i < 8 || i+1 >= latBins { // exact bins; the open last one
				return float64(lo)
			}
			return (float64(lo) + float64(latBinLow(i+1))) / 2
		}
	}
	return float64(latBinLow(len(h) - 1))
}

// slope is the least-squares slope of ys over xs; 0 with fewer than two
// distinct xs.
func slope(xs, ys []float64) float64 {
	n := float64(len(xs))
	if len(xs) < 2 || len(xs) != len(ys) {
		return 0
	}
	var sx, sy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
	}
	mx, my := sx/n, sy/n
	var sxy, sxx float64
	for i := range xs {
		sxy += (xs[i] - mx) * (ys[i] - my)
		sxx += (xs[i] - mx) * (xs[i] - mx)
	}
	if sxx == 0 {
		return 0
	}
	return sxy / sxx
}

// recvWindow counts, for one measurement window, the packets a client
// process's subscribers received that the publisher sent within the window
// (by the send time in the trailer), whenever they arrive. Subscriber
// readers update it with atomic adds only; the window is replaced, never
// reset, so a late reader of an old window cannot corrupt a new one.
type recvWindow struct {
	start, end int64 // send-time bounds, Unix ns, [start, end)
	slice      int64 // width of one slice of the window, ns
	perSub     [][numKinds]atomic.Uint64
	slices     []sliceCounters
	hist       [latBins]atomic.Uint64
	maxUs      atomic.Uint64
}

// sliceCounters is one slice of a window: packets and their summed latency.
type sliceCounters struct {
	count atomic.Uint64
	sumUs atomic.Uint64
}

func newRecvWindow(start, end time.Time, slice time.Duration, subs int) *recvWindow {
	w := &recvWindow{start: start.UnixNano(), end: end.UnixNano(), slice: int64(slice), perSub: make([][numKinds]atomic.Uint64, subs)}
	n := (w.end - w.start + w.slice - 1) / w.slice
	w.slices = make([]sliceCounters, max(n, 1))
	return w
}

// add counts one packet of subscriber sub sent at sent and received at now
// (both Unix ns). It allocates nothing.
func (w *recvWindow) add(sub int, kind byte, sent, now int64) {
	if w == nil || sent < w.start || sent >= w.end {
		return
	}
	if sub < len(w.perSub) {
		w.perSub[sub][kind].Add(1)
	}
	us := uint64(max(now-sent, 0) / 1e3)
	s := &w.slices[min(int((sent-w.start)/w.slice), len(w.slices)-1)]
	s.count.Add(1)
	s.sumUs.Add(us)
	w.hist[latBin(us)].Add(1)
	for {
		m := w.maxUs.Load()
		if us <= m || w.maxUs.CompareAndSwap(m, us) {
			break
		}
	}
}

// windowFigures is what a recvWindow holds, in plain numbers for JSON.
type windowFigures struct {
	PerSub [][numKinds]uint64 `json:"per_sub,omitempty"`
	Slices []sliceFigures     `json:"slices,omitempty"`
	Hist   []uint64           `json:"hist,omitempty"` // trailing empty bins cut
	MaxUs  uint64             `json:"max_us,omitempty"`
}

type sliceFigures struct {
	Count uint64 `json:"n"`
	SumUs uint64 `json:"sum_us"`
}

func (w *recvWindow) figures() windowFigures {
	var f windowFigures
	if w == nil {
		return f
	}
	f.PerSub = make([][numKinds]uint64, len(w.perSub))
	for i := range w.perSub {
		for k := range numKinds {
			f.PerSub[i][k] = w.perSub[i][k].Load()
		}
	}
	f.Slices = make([]sliceFigures, len(w.slices))
	for i := range w.slices {
		f.Slices[i] = sliceFigures{w.slices[i].count.Load(), w.slices[i].sumUs.Load()}
	}
	last := -1
	f.Hist = make([]uint64, latBins)
	for i := range w.hist {
		if f.Hist[i] = w.hist[i].Load(); f.Hist[i] > 0 {
			last = i
		}
	}
	f.Hist = f.Hist[:last+1]
	f.MaxUs = w.maxUs.Load()
	return f
}

// mergeFigures adds b's slices and histogram into a (per-subscriber counts
// are kept apart, they name different subscribers).
func mergeFigures(a *windowFigures, b windowFigures) {
	for len(a.Slices) < len(b.Slices) {
		a.Slices = append(a.Slices, sliceFigures{})
	}
	for i, s := range b.Slices {
		a.Slices[i].Count += s.Count
		a.Slices[i].SumUs += s.SumUs
	}
	for len(a.Hist) < len(b.Hist) {
		a.Hist = append(a.Hist, 0)
	}
	for i, n := range b.Hist {
		a.Hist[i] += n
	}
	a.MaxUs = max(a.MaxUs, b.MaxUs)
	a.PerSub = append(a.PerSub, b.PerSub...)
}

// latencySlope fits the mean latency of each non-empty slice against the
// slice's middle: how fast the publisher's packets grow late, in ms of
// latency per s of send time.
func latencySlope(slices []sliceFigures, slice time.Duration) float64 {
	var xs, ys []float64
	for i, s := range slices {
		if s.Count == 0 {
			continue
		}
		xs = append(xs, (float64(i)+0.5)*slice.Seconds())
		ys = append(ys, float64(s.SumUs)/float64(s.Count)/1e3)
	}
	return slope(xs, ys)
}

// sentWindow counts what a publisher sent within a window, by send time.
type sentWindow struct {
	start, end int64
	sent       [numKinds]atomic.Uint64
}

func (w *sentWindow) add(kind byte, sent int64) {
	if w != nil && sent >= w.start && sent < w.end {
		w.sent[kind].Add(1)
	}
}
