package sfu

import (
	"bytes"
	"testing"

	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

// extPacket marshals an RTP packet with the given extensions.
func extPacket(t testing.TB, profile uint16, exts map[uint8][]byte) []byte {
	t.Helper()
	h := rtp.Header{Version: 2, SequenceNumber: 1, SSRC: 9, PayloadType: 111}
	for _, id := range []uint8{1, 2, 3, 4, 5, 6, 20, 30} {
		if p, ok := exts[id]; ok {
			if err := h.SetExtensionWithProfile(id, p, profile); err != nil {
				t.Fatal(err)
			}
		}
	}
	b, err := (&rtp.Packet{Header: h, Payload: []byte{1, 2, 3}}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Forwarded extensions are renumbered to the subscriber's ids; others (a
// transport-wide sequence number here) are left out; both RFC 8285 forms
// are read; nothing is allocated once the header has room.
func TestCopyExtensions(t *testing.T) {
	pubExts := []webrtc.RTPHeaderExtensionParameter{
		{URI: "urn:ietf:params:rtp-hdrext:ssrc-audio-level", ID: 3},
		{URI: "urn:3gpp:video-orientation", ID: 20},
		{URI: "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01", ID: 5},
	}
	subExts := []webrtc.RTPHeaderExtensionParameter{
		{URI: "urn:ietf:params:rtp-hdrext:ssrc-audio-level", ID: 7},
		{URI: "urn:3gpp:video-orientation", ID: 11},
	}
	in, out := newExtMap(pubExts), newOutIDs(subExts)
	for _, c := range []struct {
		name    string
		profile uint16
		exts    map[uint8][]byte
		want    map[uint8][]byte
	}{
		{"one-byte", rtp.ExtensionProfileOneByte, map[uint8][]byte{3: {0x85}, 5: {0, 1}}, map[uint8][]byte{7: {0x85}}},
		{"two-byte", rtp.ExtensionProfileTwoByte, map[uint8][]byte{3: {0x85}, 20: {1}, 5: {0, 1}}, map[uint8][]byte{7: {0x85}, 11: {1}}},
		{"none forwarded", rtp.ExtensionProfileOneByte, map[uint8][]byte{5: {0, 1}}, nil},
	} {
		pkt := extPacket(t, c.profile, c.exts)
		info, ok := parseRTP(pkt)
		if !ok {
			t.Fatalf("%s: parse failed", c.name)
		}
		var h rtp.Header
		copyExtensions(&h, pkt, &info, in, &out)
		if got := len(h.Extensions); got != len(c.want) {
			t.Fatalf("%s: %d extensions %v, want %v", c.name, got, h.Extensions, c.want)
		}
		for id, p := range c.want {
			if !bytes.Equal(h.GetExtension(id), p) {
				t.Errorf("%s: extension %d = %x, want %x", c.name, id, h.GetExtension(id), p)
			}
		}
		if _, err := (&rtp.Packet{Header: h, Payload: []byte{1}}).Marshal(); err != nil {
			t.Errorf("%s: marshal: %v", c.name, err)
		}
	}
	pkt := extPacket(t, rtp.ExtensionProfileOneByte, map[uint8][]byte{3: {0x85}, 5: {0, 1}})
	info, _ := parseRTP(pkt)
	var h rtp.Header
	copyExtensions(&h, pkt, &info, in, &out)
	if allocs := testing.AllocsPerRun(100, func() { copyExtensions(&h, pkt, &info, in, &out) }); allocs != 0 {
		t.Fatalf("%v allocations per packet, want 0", allocs)
	}
}

// Untrusted header extension blocks never panic, and what is copied
// marshals.
func FuzzCopyExtensions(f *testing.F) {
	f.Add(extPacket(f, rtp.ExtensionProfileOneByte, map[uint8][]byte{1: {0x85}, 2: {1, 2}}))
	f.Add(extPacket(f, rtp.ExtensionProfileTwoByte, map[uint8][]byte{1: {0x85}, 30: bytes.Repeat([]byte{7}, 40)}))
	f.Add([]byte{0x90, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0xbe, 0xde, 0, 1, 0xf0, 0, 0, 0})
	var in extMap
	for id := range in {
		in[id] = uint8(id%len(forwardedExtensions)) + 1
	}
	out := outIDs{1, 2, 14}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		info, ok := parseRTP(pkt)
		if !ok {
			return
		}
		var h rtp.Header
		copyExtensions(&h, pkt, &info, &in, &out)
		if _, err := (&rtp.Packet{Header: h}).Marshal(); err != nil {
			t.Fatalf("copied extensions do not marshal: %v (%v)", err, h.Extensions)
		}
	})
}
