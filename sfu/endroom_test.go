package sfu

import (
	"net/http"
	"sync"
	"testing"
	"time"
)

// EndRoom removes every participant, tells event streams why and closes
// them, calls OnRoomEnded, and a later request creates a fresh room.
func TestEndRoom(t *testing.T) {
	var mu sync.Mutex
	var ended []string
	e := newTestEnv(t, func(c *Config) {
		c.OnRoomEnded = func(room string) { mu.Lock(); ended = append(ended, room); mu.Unlock() }
	})
	ev := openEvents(t, e, "end")
	pub := newPublisher(t, e, "end", nil, true)
	pub.start(5*time.Millisecond, 100000)
	waitFor(t, "tracks published", 5*time.Second, func() bool { return e.srv.Stats().Tracks == 2 })
	if err := e.srv.EndRoom("end", "lost to node x"); err != nil {
		t.Fatal(err)
	}
	for {
		got := nextEvent(t, ev)
		if got.name == "room-ended" {
			if got.data["reason"] != "lost to node x" || got.data["room"] != "end" {
				t.Fatalf("room-ended %+v", got)
			}
			break
		}
	}
	if _, ok := <-ev; ok {
		t.Fatal("event stream still open after room-ended")
	}
	if st := e.srv.Stats(); st.Rooms != 0 || st.Participants != 0 || st.Tracks != 0 {
		t.Fatalf("after EndRoom: %+v", st)
	}
	mu.Lock()
	if len(ended) != 1 || ended[0] != "end" {
		t.Fatalf("OnRoomEnded calls %v", ended)
	}
	mu.Unlock()
	if res := e.do("DELETE", pub.location, "", ""); res.code != http.StatusNotFound {
		t.Fatalf("DELETE after EndRoom: %d", res.code)
	}
	if err := e.srv.EndRoom("end", "again"); err == nil {
		t.Fatal("EndRoom of a room that is gone succeeded")
	}
	waitFor(t, "mux sessions closed", 5*time.Second, func() bool { return e.mux.Stats().Sessions == 0 })
	pub2 := newPublisher(t, e, "end", nil, false)
	if !e.srv.HasRoom("end") || pub2.location == "" {
		t.Fatal("no fresh room after EndRoom")
	}
}
