package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Directory messages. Every byte comes from the network and is checked:
// lengths, counts, room names (the sfu's rule), no duplicates, no trailing
// bytes.
//
//	message  = wireVersion kind body
//	claim    = owner id version:u64 room created:i64       (kind 1)
//	release  = owner id version:u64 room created:i64       (kind 2)
//	state    = count:u16 section*count                     (kind 3; the first section is the sender's)
//	section  = owner id version:u64 n:u32 (room created:i64)*n
//	owner, id, room = len:u8 bytes

const (
	wireVersion = 1

	kindClaim   = 1
	kindRelease = 2
	kindState   = 3

	maxNameLen = 128 // a memberlist node name
	maxIDLen   = 64  // a node id
	maxRoomLen = 64  // the sfu's room name limit

	// maxOwners bounds the sections of a state message.
	maxOwners = 1024
	// maxStateBytes bounds an encoded state message; sections that do not
	// fit are left for a later exchange (the sender's own always fits).
	maxStateBytes = 16 << 20
)

var errBadMessage = errors.New("cluster: bad directory message")

// dirMsg is a claim or a release of one room by its owner.
type dirMsg struct {
	kind    byte
	owner   string
	id      string
	version uint64 // the owner's directory version after this change
	room    string
	created int64 // unix ns at the owner when it claimed the room
}

// stateSection is one owner's rooms as of version.
type stateSection struct {
	owner   string
	id      string
	version uint64
	rooms   []roomEntry
}

type roomEntry struct {
	room    string
	created int64
}

// ValidRoomName reports whether n is a room name: 1-64 characters of
// A-Za-z0-9 and "-_.~" (the sfu's rule).
func ValidRoomName(n string) bool {
	if n == "" || len(n) > maxRoomLen {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~') {
			return false
		}
	}
	return true
}

func validOwner(s string) bool { return s != "" && len(s) <= maxNameLen && utf8.ValidString(s) }

func validID(s string) bool {
	if s == "" || len(s) > maxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

func appendStr(b []byte, s string) []byte { return append(append(b, byte(len(s))), s...) }

func encodeMsg(m dirMsg) []byte {
	b := make([]byte, 0, 2+3+len(m.owner)+len(m.id)+len(m.room)+16)
	b = append(b, wireVersion, m.kind)
	b = appendStr(b, m.owner)
	b = appendStr(b, m.id)
	b = binary.BigEndian.AppendUint64(b, m.version)
	b = appendStr(b, m.room)
	return binary.BigEndian.AppendUint64(b, uint64(m.created))
}

// encodeState encodes sections (the sender's first), leaving out whole
// sections past maxStateBytes.
func encodeState(secs []stateSection) []byte {
	b := []byte{wireVersion, kindState, 0, 0}
	n := 0
	for i, s := range secs {
		if n == maxOwners {
			break
		}
		size := 3 + len(s.owner) + len(s.id) + 12
		for _, r := range s.rooms {
			size += 1 + len(r.room) + 8
		}
		if i > 0 && len(b)+size > maxStateBytes {
			continue
		}
		b = appendStr(b, s.owner)
		b = appendStr(b, s.id)
		b = binary.BigEndian.AppendUint64(b, s.version)
		b = binary.BigEndian.AppendUint32(b, uint32(len(s.rooms)))
		for _, r := range s.rooms {
			b = appendStr(b, r.room)
			b = binary.BigEndian.AppendUint64(b, uint64(r.created))
		}
		n++
	}
	binary.BigEndian.PutUint16(b[2:4], uint16(n))
	return b
}

// reader walks untrusted bytes; the first error sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s", errBadMessage, what)
	}
}

func (r *reader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.fail("short " + what)
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) str(what string, valid func(string) bool) string {
	l := r.take(1, what)
	if l == nil {
		return ""
	}
	v := r.take(int(l[0]), what)
	if r.err != nil {
		return ""
	}
	s := string(v)
	if !valid(s) {
		r.fail("invalid " + what)
		return ""
	}
	return s
}

func (r *reader) u64(what string) uint64 {
	v := r.take(8, what)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// header checks the version and returns the kind.
func (r *reader) header() byte {
	h := r.take(2, "header")
	if h == nil {
		return 0
	}
	if h[0] != wireVersion {
		r.fail(fmt.Sprintf("version %d", h[0]))
	}
	return h[1]
}

// decodeMsg decodes a claim or release.
func decodeMsg(b []byte) (dirMsg, error) {
	r := reader{b: b}
	m := dirMsg{kind: r.header()}
	if r.err == nil && m.kind != kindClaim && m.kind != kindRelease {
		r.fail(fmt.Sprintf("kind %d", m.kind))
	}
	m.owner = r.str("owner", validOwner)
	m.id = r.str("id", validID)
	m.version = r.u64("version")
	m.room = r.str("room", ValidRoomName)
	m.created = int64(r.u64("created"))
	if r.err == nil && (m.version == 0 || m.created <= 0) {
		r.fail("zero version or created")
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("trailing bytes")
	}
	return m, r.err
}

// decodeState decodes a state message; each section holds at most maxRooms
// rooms.
func decodeState(b []byte, maxRooms int) ([]stateSection, error) {
	r := reader{b: b}
	if k := r.header(); r.err == nil && k != kindState {
		r.fail(fmt.Sprintf("kind %d", k))
	}
	cnt := r.take(2, "count")
	if r.err != nil {
		return nil, r.err
	}
	n := int(binary.BigEndian.Uint16(cnt))
	if n > maxOwners {
		r.fail("too many sections")
		return nil, r.err
	}
	secs := make([]stateSection, 0, min(n, 64))
	owners := make(map[string]bool, min(n, 64))
	for range n {
		s := stateSection{owner: r.str("owner", validOwner), id: r.str("id", validID), version: r.u64("version")}
		rc := r.take(4, "room count")
		if r.err != nil {
			return nil, r.err
		}
		nr := int(binary.BigEndian.Uint32(rc))
		if nr > maxRooms || nr*10 > len(r.b) { // a room takes at least 10 bytes
			r.fail("room count")
			return nil, r.err
		}
		if owners[s.owner] || s.version == 0 {
			r.fail("repeated owner or zero version")
			return nil, r.err
		}
		owners[s.owner] = true
		s.rooms = make([]roomEntry, 0, nr)
		seen := make(map[string]bool, nr)
		for range nr {
			e := roomEntry{room: r.str("room", ValidRoomName), created: int64(r.u64("created"))}
			if r.err != nil {
				return nil, r.err
			}
			if seen[e.room] || e.created <= 0 {
				r.fail("repeated room or zero created")
				return nil, r.err
			}
			seen[e.room] = true
			s.rooms = append(s.rooms, e)
		}
		secs = append(secs, s)
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("trailing bytes")
	}
	if r.err != nil {
		return nil, r.err
	}
	return secs, nil
}
