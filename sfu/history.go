package sfu

import "sync"

// Packet history. Each received layer keeps its recent packets once, in a
// ring indexed by source sequence number, and every subscriber's queue holds
// only references into it: a packet is copied once on arrival however many
// subscribers it goes to, and the same ring answers subscribers' NACKs.
// (pion's NACK responder keeps a copy of every sent packet per subscriber:
// at 600 subscribers that is 600 copies of each packet and up to 1,024
// retained packets, ~1.3 MB, per subscriber and track.)
//
// Sizes: 512 slots hold 2.5 s of 2 Mbit/s video at 200 packets/s, more than
// a NACK is useful for and as many as a subscriber queue can hold; audio
// packets are small and few, 128 slots. Slot buffers are allocated on first
// use, so a low-rate layer costs what it carries.
const (
	historyVideo = 512
	historyAudio = 128
)

// history is a layer's packet ring. Its size is a power of two that divides
// 65536, so slot(seq) is stable across sequence-number wrap.
type history struct {
	mask  uint16
	slots []histSlot
}

// histSlot is one packet. mu guards every field: the layer's reader writes
// under Lock; subscriber writers read, and send straight from buf, under
// RLock. gen tells a reference that its packet was overwritten.
type histSlot struct {
	mu  sync.RWMutex
	gen uint64 // 0: empty
	h   rtpInfo
	kf  bool
	at  int64 // monotonic ns of arrival
	n   int
	buf []byte
}

func newHistory(size int) *history {
	return &history{mask: uint16(size - 1), slots: make([]histSlot, size)}
}

func (h *history) slot(seq uint16) *histSlot { return &h.slots[seq&h.mask] }

// put stores packet b and returns its slot and generation. Reader goroutine
// of the layer only (gen is its counter).
func (h *history) put(b []byte, info *rtpInfo, kf bool, now int64, gen uint64) *histSlot {
	s := h.slot(info.seq)
	s.mu.Lock()
	if cap(s.buf) < len(b) {
		s.buf = make([]byte, len(b), maxPacket)
	}
	s.n = copy(s.buf[:len(b)], b)
	s.h, s.kf, s.at, s.gen = *info, kf, now, gen
	s.mu.Unlock()
	return s
}

// payload is the slot's payload; callers hold s.mu (read).
func (s *histSlot) payload() []byte { return s.buf[s.h.payloadOff:s.h.payloadEnd] }
