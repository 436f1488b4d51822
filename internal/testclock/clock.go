// Package testclock is a clock tests move by hand, for the Clock interfaces
// of sfu and cluster (a room's life, claim times) without sleeping.
// Safe for concurrent use.
package testclock

import (
	"sync"
	"time"
)

// Clock is a time that moves only when Advance is called.
type Clock struct {
	mu  sync.Mutex
	now time.Time // guarded by mu
}

// New returns a Clock reading t.
func New(t time.Time) *Clock { return &Clock{now: t} }

// Now is the clock's current time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}
