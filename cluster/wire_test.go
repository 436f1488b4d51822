package cluster

import (
	"bytes"
	"testing"

	"github.com/rs/zerolog"
)

func testLogger() zerolog.Logger { return zerolog.Nop() }

func TestWireRoundTrip(t *testing.T) {
	m := dirMsg{kind: kindRelease, owner: "node-1", id: "abc", version: 7, room: "r.1~x", created: 12345}
	got, err := decodeMsg(encodeMsg(m))
	if err != nil || got != m {
		t.Fatalf("msg round trip: %+v %v", got, err)
	}
	secs := []stateSection{
		{owner: "a", id: "ida", version: 3, rooms: []roomEntry{{"r1", 1}, {"r2", 2}}},
		{owner: "b", id: "idb", version: 1, rooms: []roomEntry{}},
	}
	back, err := decodeState(encodeState(secs), 10)
	if err != nil || len(back) != 2 || back[0].owner != "a" || len(back[0].rooms) != 2 || back[1].version != 1 {
		t.Fatalf("state round trip: %+v %v", back, err)
	}
	if _, err := decodeState(encodeState(secs), 1); err == nil {
		t.Fatal("a section over the room limit was accepted")
	}
}

// FuzzDecodeMsg: any bytes are rejected or decode to a message that encodes
// back to the same bytes.
func FuzzDecodeMsg(f *testing.F) {
	f.Add(encodeMsg(dirMsg{kind: kindClaim, owner: "node-127.0.0.1", id: "0123456789abcdef0123456789abcdef", version: 1, room: "room", created: 1}))
	f.Add(encodeMsg(dirMsg{kind: kindRelease, owner: "n", id: "i", version: 1 << 40, room: "a-b_c.d~e", created: 1 << 62}))
	f.Add([]byte{wireVersion, kindClaim})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMsg(b)
		if err != nil {
			return
		}
		if !ValidRoomName(m.room) || !validOwner(m.owner) || !validID(m.id) || m.version == 0 || m.created <= 0 {
			t.Fatalf("invalid message accepted: %+v", m)
		}
		if !bytes.Equal(encodeMsg(m), b) {
			t.Fatalf("re-encoding differs: %+v", m)
		}
	})
}

// FuzzDecodeState: any bytes are rejected or decode within the limits, and
// merging them into a directory keeps it within its limits.
func FuzzDecodeState(f *testing.F) {
	f.Add(encodeState([]stateSection{{owner: "a", id: "ida", version: 3, rooms: []roomEntry{{"r1", 1}, {"r2", 2}}}}))
	f.Add(encodeState([]stateSection{{owner: "a", id: "i", version: 1}, {owner: "b", id: "j", version: 2, rooms: []roomEntry{{"x", 5}}}}))
	f.Add([]byte{wireVersion, kindState, 0, 0})
	f.Add([]byte{wireVersion, kindState, 0xff, 0xff, 1, 'a'})
	f.Fuzz(func(t *testing.T, b []byte) {
		const maxRooms = 8
		secs, err := decodeState(b, maxRooms)
		if err != nil {
			return
		}
		for _, s := range secs {
			if len(s.rooms) > maxRooms || !validOwner(s.owner) || !validID(s.id) || s.version == 0 {
				t.Fatalf("invalid section accepted: %+v", s)
			}
			for _, r := range s.rooms {
				if !ValidRoomName(r.room) || r.created <= 0 {
					t.Fatalf("invalid room accepted: %+v", r)
				}
			}
		}
		if !bytes.Equal(encodeState(secs), b) {
			t.Fatal("re-encoding differs")
		}
		d := newDirectory("self", "me", maxRooms, 4, testLogger())
		d.mergeState(b)
		for _, s := range d.sets {
			if len(s.rooms) > maxRooms {
				t.Fatal("merged past the room limit")
			}
		}
	})
}
