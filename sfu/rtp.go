package sfu

import (
	"encoding/binary"
	"strings"
)

// rtpInfo is what the forwarding path needs from an RTP packet, read in place.
type rtpInfo struct {
	seq        uint16
	ts         uint32
	ssrc       uint32
	pt         uint8
	marker     bool
	payloadOff int // start of the payload
	payloadEnd int // end of the payload (before padding)
	extOff     int // start of the header extension elements; 0: none
	extEnd     int
}

// parseRTP classifies b as RTP without copying or allocating. It rejects what
// the forwarder could not rewrite safely.
func parseRTP(b []byte) (rtpInfo, bool) {
	var h rtpInfo
	if len(b) < 12 || b[0]>>6 != 2 {
		return h, false
	}
	cc := int(b[0] & 0x0f)
	off := 12 + 4*cc
	if len(b) < off {
		return h, false
	}
	if b[0]&0x10 != 0 { // header extension
		if len(b) < off+4 {
			return h, false
		}
		extLen := int(binary.BigEndian.Uint16(b[off+2:])) * 4
		off += 4 + extLen
		if len(b) < off {
			return h, false
		}
		h.extOff, h.extEnd = off-extLen, off
	}
	end := len(b)
	if b[0]&0x20 != 0 { // padding
		if end == off {
			return h, false
		}
		pad := int(b[end-1])
		if pad == 0 || end-pad < off {
			return h, false
		}
		end -= pad
	}
	h.marker = b[1]&0x80 != 0
	h.pt = b[1] & 0x7f
	h.seq = binary.BigEndian.Uint16(b[2:])
	h.ts = binary.BigEndian.Uint32(b[4:])
	h.ssrc = binary.BigEndian.Uint32(b[8:])
	h.payloadOff = off
	h.payloadEnd = end
	return h, true
}

// codecKind selects the keyframe detector of a payload format.
type codecKind uint8

const (
	codecAudio codecKind = iota // every packet is a decodable start
	codecVP8
	codecVP9
	codecH264
	codecAV1
	codecOtherVideo // unknown video format: switch on any packet
)

func codecKindOf(mime string) codecKind {
	switch strings.ToLower(mime) {
	case "video/vp8":
		return codecVP8
	case "video/vp9":
		return codecVP9
	case "video/h264":
		return codecH264
	case "video/av1":
		return codecAV1
	}
	if strings.HasPrefix(strings.ToLower(mime), "audio/") {
		return codecAudio
	}
	return codecOtherVideo
}

// isKeyframeStart reports whether payload is the first packet of a keyframe
// (an independently decodable picture), which is where a subscriber may start
// or switch layers.
func isKeyframeStart(c codecKind, p []byte) bool {
	switch c {
	case codecAudio, codecOtherVideo:
		return true
	case codecVP8:
		return vp8Keyframe(p)
	case codecVP9:
		return vp9Keyframe(p)
	case codecH264:
		return h264Keyframe(p)
	case codecAV1:
		return av1Keyframe(p)
	}
	return false
}

// vp8Keyframe: RFC 7741 payload descriptor, then the VP8 payload header whose
// P bit is 0 on a key frame; only the first partition's first packet counts.
func vp8Keyframe(p []byte) bool {
	if len(p) < 1 {
		return false
	}
	b0 := p[0]
	if b0&0x10 == 0 || b0&0x07 != 0 { // S=1 and PID=0
		return false
	}
	i := 1
	if b0&0x80 != 0 { // X
		if len(p) < 2 {
			return false
		}
		x := p[1]
		i = 2
		if x&0x80 != 0 { // I: picture id
			if len(p) <= i {
				return false
			}
			if p[i]&0x80 != 0 {
				i += 2
			} else {
				i++
			}
		}
		if x&0x40 != 0 { // L: TL0PICIDX
			i++
		}
		if x&0x30 != 0 { // T or K
			i++
		}
	}
	if len(p) <= i {
		return false
	}
	return p[i]&0x01 == 0
}

// vp9Keyframe: RFC 9628 descriptor; P=0 (not inter-predicted), B=1 (start of
// frame) and, when layer indices are present, spatial layer 0.
func vp9Keyframe(p []byte) bool {
	if len(p) < 1 {
		return false
	}
	b0 := p[0]
	if b0&0x40 != 0 || b0&0x08 == 0 {
		return false
	}
	i := 1
	if b0&0x80 != 0 { // I: picture id
		if len(p) <= i {
			return false
		}
		if p[i]&0x80 != 0 {
			i += 2
		} else {
			i++
		}
	}
	if b0&0x20 != 0 { // L: layer indices
		if len(p) <= i {
			return false
		}
		if (p[i]>>1)&0x07 != 0 {
			return false
		}
	}
	return true
}

// h264Keyframe: RFC 6184; an IDR slice or SPS starting in a single NAL unit,
// a STAP-A, or the first fragment of an FU-A.
func h264Keyframe(p []byte) bool {
	if len(p) < 1 {
		return false
	}
	switch t := p[0] & 0x1f; {
	case t == 5 || t == 7:
		return true
	case t == 24: // STAP-A
		i := 1
		for n := 0; n < 64 && i+2 < len(p); n++ {
			size := int(binary.BigEndian.Uint16(p[i:]))
			i += 2
			if size == 0 || i+size > len(p) {
				return false
			}
			if nt := p[i] & 0x1f; nt == 5 || nt == 7 {
				return true
			}
			i += size
		}
	case t == 28: // FU-A
		if len(p) < 2 {
			return false
		}
		nt := p[1] & 0x1f
		return p[1]&0x80 != 0 && (nt == 5 || nt == 7)
	}
	return false
}

// av1Keyframe: the AV1 RTP aggregation header's N bit marks the first packet
// of a coded video sequence, which starts with a key frame.
func av1Keyframe(p []byte) bool {
	return len(p) >= 1 && p[0]&0x08 != 0 && p[0]&0x80 == 0
}
