package mux

import "encoding/binary"

// Class is the kind of a datagram by its first byte (RFC 7983).
type Class uint8

// Packet classes, counted separately in Stats.
const (
	ClassSTUN  Class = iota // first byte 0-3 and the STUN magic cookie
	ClassDTLS               // first byte 20-63
	ClassRTP                // first byte 128-191: RTP and RTCP
	ClassOther              // anything else (ZRTP, TURN channels, junk)
	NumClasses
)

var classNames = [NumClasses]string{"stun", "dtls", "rtp", "other"}

func (c Class) String() string {
	if c < NumClasses {
		return classNames[c]
	}
	return "invalid"
}

const (
	stunHeaderLen   = 20
	stunMagicCookie = 0x2112A442
	stunBindingReq  = 0x0001
	stunAttrUser    = 0x0006
	// maxUsernameLen is RFC 8489's limit on USERNAME (513 bytes).
	maxUsernameLen = 513
)

// Classify returns the class of b by RFC 7983's first-byte ranges. A packet
// whose first byte says STUN but that lacks the magic cookie or a whole
// header is ClassOther.
func Classify(b []byte) Class {
	if len(b) == 0 {
		return ClassOther
	}
	switch c := b[0]; {
	case c <= 3:
		if len(b) >= stunHeaderLen && binary.BigEndian.Uint32(b[4:8]) == stunMagicCookie {
			return ClassSTUN
		}
		return ClassOther
	case c >= 20 && c <= 63:
		return ClassDTLS
	case c >= 128 && c <= 191:
		return ClassRTP
	}
	return ClassOther
}

// StunKind is what a STUN message means to the demultiplexer.
type StunKind uint8

// What ParseSTUN found.
const (
	StunInvalid      StunKind = iota // not a well-formed STUN message
	StunOther                        // well formed, but not a Binding request
	StunBinding                      // Binding request with a USERNAME
	StunBindingProbe                 // Binding request without USERNAME: a health probe
)

// ParseSTUN reads a STUN message in place: its kind and, for a Binding
// request with USERNAME, the local ufrag (the USERNAME text before the first
// ':', or all of it when there is none). The returned slice aliases b. It
// checks the header, the length field and every attribute's bounds, never
// allocates and never panics.
func ParseSTUN(b []byte) (kind StunKind, localUfrag []byte) {
	if Classify(b) != ClassSTUN {
		return StunInvalid, nil
	}
	msgLen := int(binary.BigEndian.Uint16(b[2:4]))
	if msgLen%4 != 0 || stunHeaderLen+msgLen > len(b) {
		return StunInvalid, nil
	}
	typ := binary.BigEndian.Uint16(b[0:2])
	attrs := b[stunHeaderLen : stunHeaderLen+msgLen]
	var user []byte
	found := false
	for len(attrs) > 0 {
		if len(attrs) < 4 {
			return StunInvalid, nil
		}
		at := binary.BigEndian.Uint16(attrs[0:2])
		al := int(binary.BigEndian.Uint16(attrs[2:4]))
		padded := (al + 3) &^ 3
		if 4+padded > len(attrs) {
			return StunInvalid, nil
		}
		if at == stunAttrUser && !found {
			if al == 0 || al > maxUsernameLen {
				return StunInvalid, nil
			}
			user = attrs[4 : 4+al]
			found = true
		}
		attrs = attrs[4+padded:]
	}
	if typ != stunBindingReq {
		return StunOther, nil
	}
	if !found {
		return StunBindingProbe, nil
	}
	for i, c := range user {
		if c == ':' {
			return StunBinding, user[:i]
		}
	}
	return StunBinding, user
}
