package sfu

import (
	"testing"
)

// Seeds live in testdata/fuzz/<FuzzName>/ (committed); these add a few more.

func FuzzParseOffer(f *testing.F) {
	f.Add("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\na=fingerprint:sha-256 00\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\na=rid:h send\r\n", true)
	f.Fuzz(func(t *testing.T, body string, publish bool) {
		info, err := parseOffer(body, publish, defaultSDPLimits)
		if err != nil {
			return
		}
		if len(info.media) > defaultSDPLimits.media {
			t.Fatalf("accepted %d media sections", len(info.media))
		}
		for _, m := range info.media {
			if len(m.rids) > 3 && m.active {
				t.Fatalf("accepted %d rids", len(m.rids))
			}
		}
	})
}

func FuzzParseTrickleFragment(f *testing.F) {
	f.Add("a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n")
	f.Fuzz(func(t *testing.T, body string) {
		frag, err := parseTrickleFragment(body, defaultSDPLimits)
		if err != nil {
			return
		}
		if (frag.ufrag == "") != (frag.pwd == "") {
			t.Fatal("credentials half present")
		}
		if frag.ufrag != "" && !validICECredentials(frag.ufrag, frag.pwd) {
			t.Fatalf("accepted credentials %q %q outside RFC 8839", frag.ufrag, frag.pwd)
		}
		if len(frag.candidates) > defaultSDPLimits.total {
			t.Fatalf("accepted %d candidates", len(frag.candidates))
		}
		perMLine := map[uint16]int{}
		for _, c := range frag.candidates {
			if perMLine[c.mline]++; perMLine[c.mline] > defaultSDPLimits.perMedia || int(c.mline) >= defaultSDPLimits.media {
				t.Fatalf("accepted candidate %d of m-line %d", perMLine[c.mline], c.mline)
			}
		}
	})
}

func FuzzParseLayerRequest(f *testing.F) {
	f.Add([]byte(`{"rid":"h"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := parseLayerRequest(b)
		if err == nil && (req.RID == "" || len(req.RID) > 32) {
			t.Fatalf("accepted rid %q", req.RID)
		}
	})
}

func FuzzRTP(f *testing.F) {
	f.Add(rtpPacket(1, 2, 3, []byte{0x10, 0x10, 0x02, 0x00}))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, ok := parseRTP(b)
		if !ok {
			return
		}
		if h.payloadOff > h.payloadEnd || h.payloadEnd > len(b) {
			t.Fatalf("payload bounds %d..%d of %d", h.payloadOff, h.payloadEnd, len(b))
		}
		p := b[h.payloadOff:h.payloadEnd]
		for c := codecAudio; c <= codecOtherVideo; c++ {
			isKeyframeStart(c, p)
		}
	})
}
