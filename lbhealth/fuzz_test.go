package lbhealth

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/pion/stun/v3"
)

// FuzzParseProbe checks the probe parser against pion's decoder: whatever
// parseProbe does not call malformed, pion decodes; whatever it accepts is a
// Binding request without USERNAME whose FINGERPRINT, if any, pion verifies;
// and the response built for it decodes as a Binding success with the same
// transaction ID and the sender's address. The committed corpus
// (testdata/fuzz/FuzzParseProbe) holds the RFC 5769 sample messages and
// requests as common STUN clients send them.
func FuzzParseProbe(f *testing.F) {
	for _, b := range [][]byte{rfc5769Request, rfc5769LongTerm, rfc5769RespIPv4, rfc5769RespIPv6} {
		f.Add(b)
	}
	f.Add(bindingRequest(f).Raw)
	f.Add(bindingRequest(f, stun.NewSoftware("probe"), stun.Fingerprint).Raw)

	senders := []netip.AddrPort{
		netip.MustParseAddrPort("192.0.2.1:32853"),
		netip.MustParseAddrPort("[::ffff:198.51.100.7]:9"),
		netip.MustParseAddrPort("[2001:db8::1]:65535"),
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		orig := bytes.Clone(b)
		r := parseProbe(b)
		if !bytes.Equal(b, orig) {
			t.Fatal("parseProbe modified its input")
		}
		switch r {
		case ProbeMalformed:
			return
		case ProbeAnswered, ProbeRejected:
		default:
			t.Fatalf("parseProbe returned %v", r)
		}
		m := &stun.Message{Raw: bytes.Clone(b)}
		if err := m.Decode(); err != nil {
			t.Fatalf("parseProbe says %v, pion cannot decode: %v", r, err)
		}
		if r != ProbeAnswered {
			return
		}
		if m.Type != stun.BindingRequest {
			t.Fatalf("accepted type %v", m.Type)
		}
		if _, err := m.Get(stun.AttrUsername); err == nil {
			t.Fatal("accepted a request with USERNAME")
		}
		if _, err := m.Get(stun.AttrFingerprint); err == nil {
			if err := stun.Fingerprint.Check(m); err != nil {
				t.Fatalf("accepted a bad FINGERPRINT: %v", err)
			}
		}
		for _, from := range senders {
			var buf [probeRespMax]byte
			n := buildProbeResponse(&buf, b, from)
			if parseProbe(buf[:n]) != ProbeRejected {
				t.Fatal("a response parses as a probe")
			}
			resp := &stun.Message{Raw: buf[:n]}
			if err := resp.Decode(); err != nil {
				t.Fatalf("response does not decode: %v", err)
			}
			if resp.Type != stun.BindingSuccess || resp.TransactionID != m.TransactionID {
				t.Fatalf("response type %v txid %x, want success %x", resp.Type, resp.TransactionID, m.TransactionID)
			}
			if err := stun.Fingerprint.Check(resp); err != nil {
				t.Fatalf("response fingerprint: %v", err)
			}
			var xa stun.XORMappedAddress
			if err := xa.GetFrom(resp); err != nil {
				t.Fatalf("response XOR-MAPPED-ADDRESS: %v", err)
			}
			got, _ := netip.AddrFromSlice(xa.IP)
			if got.Unmap() != from.Addr().Unmap() || xa.Port != int(from.Port()) {
				t.Fatalf("mapped %v:%d, sender %v", xa.IP, xa.Port, from)
			}
		}
	})
}
