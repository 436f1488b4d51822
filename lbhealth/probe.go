package lbhealth

import (
	"encoding/binary"
	"hash/crc32"
	"net/netip"
	"sync"
	"time"
)

// ProbeWriter sends a probe answer. It is an alias of an unnamed interface
// type so that a package that declares the same alias (or spells the
// interface out) has an identical HandleProbe signature, and *Health
// satisfies its hook interface without an adapter. *net.UDPConn names this
// method WriteToUDPAddrPort, so the mux passes its own writer.
type ProbeWriter = interface {
	WriteToAddrPort(b []byte, addr netip.AddrPort) (int, error)
}

// ProbeHandler is what the mux calls with a STUN Binding request that carries
// no USERNAME. req is not retained after HandleProbe returns.
type ProbeHandler interface {
	HandleProbe(req []byte, from netip.AddrPort, w ProbeWriter)
}

var _ ProbeHandler = (*Health)(nil)

// STUN (RFC 8489) constants the probe needs.
const (
	stunHeaderLen        = 20
	stunMagicCookie      = 0x2112A442
	stunBindingRequest   = 0x0001
	stunBindingSuccess   = 0x0101
	attrUsername         = 0x0006
	attrXORMappedAddress = 0x0020
	attrFingerprint      = 0x8028
	fingerprintXOR       = 0x5354554e
	familyIPv4           = 0x01
	familyIPv6           = 0x02

	// probeRespMax is a response with an IPv6 XOR-MAPPED-ADDRESS and a
	// FINGERPRINT: header, 4+20, 4+4.
	probeRespMax = stunHeaderLen + 4 + 20 + 4 + 4
)

// ProbeResult classifies one probe; every probe is counted under one.
type ProbeResult int

const (
	// ProbeAnswered: a Binding success response was sent.
	ProbeAnswered ProbeResult = iota
	// ProbeNotReady: a valid probe left silent because the node is not
	// ready (draining, full, unbound, not joined, over a load limit).
	ProbeNotReady
	// ProbeRateLimited: a valid probe over its source's or the global rate.
	ProbeRateLimited
	// ProbeMalformed: not a well-formed STUN message (length, cookie,
	// attribute framing, FINGERPRINT), or an invalid source address.
	ProbeMalformed
	// ProbeRejected: well-formed STUN but not a plain health probe: not a
	// Binding request, or it has USERNAME or another attribute that must be
	// understood (comprehension-required, 0x0000-0x7FFF), which a health
	// responder does not implement.
	ProbeRejected
	// ProbeWriteError: the answer could not be sent.
	ProbeWriteError
	NumProbeResults
)

var probeResultNames = [NumProbeResults]string{
	"answered", "not_ready", "rate_limited", "malformed", "rejected", "write_error",
}

// String returns the metric label value of r.
func (r ProbeResult) String() string {
	if r < 0 || r >= NumProbeResults {
		return "invalid"
	}
	return probeResultNames[r]
}

// ProbeStats counts probes by result.
type ProbeStats [NumProbeResults]uint64

// parseProbe validates b in place as a STUN Binding request that carries no
// USERNAME and no other comprehension-required attribute. It returns
// ProbeAnswered when b is such a probe, else ProbeMalformed or ProbeRejected.
// A FINGERPRINT, if present, must be last and correct.
func parseProbe(b []byte) ProbeResult {
	if len(b) < stunHeaderLen || b[0]&0xC0 != 0 {
		return ProbeMalformed
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	if n%4 != 0 || stunHeaderLen+n != len(b) || binary.BigEndian.Uint32(b[4:8]) != stunMagicCookie {
		return ProbeMalformed
	}
	verdict := ProbeAnswered
	if binary.BigEndian.Uint16(b[0:2]) != stunBindingRequest {
		verdict = ProbeRejected
	}
	// Walk every attribute even after a reason to reject, so a malformed
	// message is always counted as malformed.
	for off := stunHeaderLen; off < len(b); {
		if len(b)-off < 4 {
			return ProbeMalformed
		}
		typ := binary.BigEndian.Uint16(b[off:])
		alen := int(binary.BigEndian.Uint16(b[off+2:]))
		next := off + 4 + (alen+3)&^3
		if next > len(b) {
			return ProbeMalformed
		}
		switch {
		case typ == attrFingerprint:
			if alen != 4 || next != len(b) {
				return ProbeMalformed
			}
			want := crc32.ChecksumIEEE(b[:off]) ^ fingerprintXOR
			if binary.BigEndian.Uint32(b[off+4:]) != want {
				return ProbeMalformed
			}
		case typ < 0x8000: // USERNAME and every other comprehension-required attribute
			verdict = ProbeRejected
		}
		off = next
	}
	return verdict
}

// buildProbeResponse writes into dst a Binding success response to req (a
// request parseProbe accepted) carrying from's XOR-MAPPED-ADDRESS and a
// FINGERPRINT, and returns its length. from must be valid.
func buildProbeResponse(dst *[probeRespMax]byte, req []byte, from netip.AddrPort) int {
	addr := from.Addr().Unmap()
	alen, family := 8, byte(familyIPv4)
	if addr.Is6() {
		alen, family = 20, familyIPv6
	}
	total := stunHeaderLen + 4 + alen + 8
	b := dst[:total]
	binary.BigEndian.PutUint16(b[0:], stunBindingSuccess)
	binary.BigEndian.PutUint16(b[2:], uint16(total-stunHeaderLen))
	copy(b[4:stunHeaderLen], req[4:stunHeaderLen]) // magic cookie and transaction ID

	a := b[stunHeaderLen:]
	binary.BigEndian.PutUint16(a[0:], attrXORMappedAddress)
	binary.BigEndian.PutUint16(a[2:], uint16(alen))
	a[4], a[5] = 0, family
	binary.BigEndian.PutUint16(a[6:], from.Port()^(stunMagicCookie>>16))
	// The address is XORed with the cookie, and for IPv6 with the cookie
	// followed by the transaction ID: header bytes 4..20.
	if addr.Is4() {
		ip := addr.As4()
		for i := range ip {
			a[8+i] = ip[i] ^ b[4+i]
		}
	} else {
		ip := addr.As16()
		for i := range ip {
			a[8+i] = ip[i] ^ b[4+i]
		}
	}

	fp := b[stunHeaderLen+4+alen:]
	binary.BigEndian.PutUint16(fp[0:], attrFingerprint)
	binary.BigEndian.PutUint16(fp[2:], 4)
	binary.BigEndian.PutUint32(fp[4:], crc32.ChecksumIEEE(b[:total-8])^fingerprintXOR)
	return total
}

// respPool holds response buffers: a buffer handed to an interface method
// escapes, so a stack array would be allocated per probe.
var respPool = sync.Pool{New: func() any { return new([probeRespMax]byte) }}

// HandleProbe answers a STUN health probe from the media port. The mux calls
// it with a STUN Binding request that has no USERNAME; HandleProbe validates
// it again (the bytes are untrusted), stays silent unless the node is ready
// and the source is within its rate, and writes the Binding success response
// with w. It does not retain req and allocates nothing on the answered path.
func (h *Health) HandleProbe(req []byte, from netip.AddrPort, w ProbeWriter) {
	h.probes[h.handleProbe(req, from, w)].Add(1)
}

func (h *Health) handleProbe(req []byte, from netip.AddrPort, w ProbeWriter) ProbeResult {
	if r := parseProbe(req); r != ProbeAnswered {
		return r
	}
	if !from.IsValid() || from.Port() == 0 {
		return ProbeMalformed
	}
	if !h.ready() {
		return ProbeNotReady
	}
	now := int64(time.Since(h.epoch))
	if !h.sources.Allow(from.Addr().Unmap(), now) || !h.global.Allow(now) {
		return ProbeRateLimited
	}
	buf := respPool.Get().(*[probeRespMax]byte)
	n := buildProbeResponse(buf, req, from)
	_, err := w.WriteToAddrPort(buf[:n], from)
	respPool.Put(buf)
	if err != nil {
		return ProbeWriteError
	}
	return ProbeAnswered
}

// ProbeStats returns the probe counters.
func (h *Health) ProbeStats() ProbeStats {
	var s ProbeStats
	for i := range s {
		s[i] = h.probes[i].Load()
	}
	return s
}
