package sfu

import (
	"encoding/binary"

	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

// RTP header extensions the sfu forwards from publishers to subscribers,
// each renumbered to the id the subscriber negotiated: audio level (active
// speaker indicators), video orientation (a phone's rotation: without it a
// portrait camera shows sideways) and playout delay. Transport-level ones
// (transport-wide sequence numbers, abs-send-time) describe the hop, not the
// media, and mid/rid are the sender's own, so those are not forwarded.
var forwardedExtensions = [...]struct {
	uri  string
	kind webrtc.RTPCodecType
}{
	{"urn:ietf:params:rtp-hdrext:ssrc-audio-level", webrtc.RTPCodecTypeAudio},
	{"urn:3gpp:video-orientation", webrtc.RTPCodecTypeVideo},
	{"http://www.webrtc.org/experiments/rtp-hdrext/playout-delay", webrtc.RTPCodecTypeVideo},
}

// extMap maps a one- or two-byte header extension id (1..255) to an index
// in forwardedExtensions plus one; 0: not forwarded.
type extMap [256]uint8

// registerForwardedExtensions offers the forwarded extensions in every
// negotiation, so publishers send them and subscribers accept them.
func registerForwardedExtensions(me *webrtc.MediaEngine) error {
	for _, e := range forwardedExtensions {
		if err := me.RegisterHeaderExtension(webrtc.RTPHeaderExtensionCapability{URI: e.uri}, e.kind); err != nil {
			return err
		}
	}
	return nil
}

// newExtMap indexes negotiated extensions by id.
func newExtMap(exts []webrtc.RTPHeaderExtensionParameter) *extMap {
	var m extMap
	for _, x := range exts {
		for i, e := range forwardedExtensions {
			if x.URI == e.uri && x.ID > 0 && x.ID < len(m) {
				m[x.ID] = uint8(i + 1)
			}
		}
	}
	return &m
}

// outIDs is a subscriber's id for each forwarded extension; 0: not
// negotiated.
type outIDs [len(forwardedExtensions)]uint8

func newOutIDs(exts []webrtc.RTPHeaderExtensionParameter) outIDs {
	var o outIDs
	for _, x := range exts {
		for i, e := range forwardedExtensions {
			if x.URI == e.uri && x.ID > 0 && x.ID < 256 {
				o[i] = uint8(x.ID)
			}
		}
	}
	return o
}

// copyExtensions sets on dst every element of pkt's header extension block
// that in maps and out numbers, reading in place (RFC 8285 one- and two-byte
// forms): dst's payloads point into pkt. A malformed block ends the walk; a
// payload the chosen form cannot carry is left out.
func copyExtensions(dst *rtp.Header, pkt []byte, h *rtpInfo, in *extMap, out *outIDs) {
	dst.Extension, dst.ExtensionProfile = false, 0
	dst.Extensions = dst.Extensions[:0]
	if h.extOff == 0 || in == nil {
		return
	}
	set := func(k uint8, payload []byte) {
		if id := out[k-1]; id != 0 {
			_ = dst.SetExtension(id, payload)
		}
	}
	profile := binary.BigEndian.Uint16(pkt[h.extOff-4:])
	b := pkt[h.extOff:h.extEnd]
	switch {
	case profile == 0xBEDE:
		for i := 0; i < len(b); {
			if b[i] == 0 { // padding
				i++
				continue
			}
			id, n := b[i]>>4, int(b[i]&0x0f)+1
			if id == 15 || i+1+n > len(b) {
				return
			}
			if k := in[id]; k != 0 {
				set(k, b[i+1:i+1+n])
			}
			i += 1 + n
		}
	case profile&0xfff0 == 0x1000:
		for i := 0; i < len(b); {
			if b[i] == 0 {
				i++
				continue
			}
			if i+2 > len(b) {
				return
			}
			id, n := b[i], int(b[i+1])
			if i+2+n > len(b) {
				return
			}
			if k := in[id]; k != 0 {
				set(k, b[i+2:i+2+n])
			}
			i += 2 + n
		}
	}
}
