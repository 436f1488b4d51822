package lbhealth

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// drainRig runs a Drainer's Run in the background of a synctest bubble and
// records the hooks it calls.
type drainRig struct {
	h      *Health
	f      *fakeNode
	d      *Drainer
	cancel context.CancelFunc
	result chan DrainResult

	mu    sync.Mutex
	calls []string // hook names in call order
}

const (
	testPoll    = time.Second
	testTimeout = time.Minute
)

// newDrainRig starts Run over a node holding sessions, with two hooks: "leave
// cluster", which fails with leaveErr, and "close server", which ends the
// sessions as closing the real server does.
func newDrainRig(t *testing.T, sessions int64, leaveErr error) *drainRig {
	t.Helper()
	r := &drainRig{result: make(chan DrainResult, 1)}
	record := func(name string, err error) Hook {
		return Hook{Name: name, Run: func(ctx context.Context) error {
			if _, ok := ctx.Deadline(); !ok {
				t.Errorf("hook %s: context without deadline", name)
			}
			r.mu.Lock()
			r.calls = append(r.calls, name)
			r.mu.Unlock()
			if name == "close server" {
				r.f.sessions.Store(0)
			}
			return err
		}}
	}
	hooks := []Hook{record("leave cluster", leaveErr), record("close server", nil)}
	r.h, r.f = newHealth(t, func(c *Config) {
		c.Drain = DrainConfig{Timeout: testTimeout, PollInterval: testPoll, Hooks: hooks}
	})
	r.d = r.h.Drainer()
	r.f.sessions.Store(sessions)
	ctx, cancel := context.WithCancel(t.Context())
	r.cancel = cancel
	t.Cleanup(cancel)
	go func() { r.result <- r.d.Run(ctx) }()
	synctest.Wait()
	return r
}

func (r *drainRig) hookCalls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// done returns Run's result if it has returned, once every goroutine in the
// bubble is blocked (so "not yet" is a fact, not a guess).
func (r *drainRig) done() (DrainResult, bool) {
	synctest.Wait()
	select {
	case res := <-r.result:
		return res, true
	default:
		return DrainResult{}, false
	}
}

func TestDrainFlipsAtOnceAndCompletesClean(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newDrainRig(t, 2, nil)
		draining, changed := r.d.Watch()
		if draining || !r.h.Ready().OK() {
			t.Fatal("not serving before Drain")
		}
		if !r.d.Drain("SIGTERM") {
			t.Fatal("Drain did not start a drain")
		}
		// No time has passed and no goroutine has run: the flip is synchronous.
		if !r.d.Draining() || r.h.ready() || r.d.State() != StateDraining {
			t.Fatal("readiness did not fail at once")
		}
		select {
		case <-changed:
		default:
			t.Fatal("Watch channel not closed by Drain")
		}
		if r.d.Drain("again") {
			t.Error("second Drain started another drain")
		}

		// Change the count half-way between polls, never at a poll instant,
		// where the order of two goroutines waking together is not defined.
		r.f.sessions.Store(1)
		time.Sleep(testPoll + testPoll/2)
		if _, ok := r.done(); ok {
			t.Fatal("drain finished with a session left")
		}
		r.f.sessions.Store(0)
		time.Sleep(testPoll)
		res, ok := r.done()
		if !ok {
			t.Fatal("drain did not finish one poll after sessions reached zero")
		}
		if res.Outcome != DrainClean || res.Remaining != 0 || res.Err != nil || res.ExitCode() != 0 ||
			res.Reason != "SIGTERM" || res.Waited != 2*testPoll {
			t.Errorf("result %+v", res)
		}
		if got := r.hookCalls(); !slices.Equal(got, []string{"leave cluster", "close server"}) {
			t.Errorf("hooks %v", got)
		}
		if r.d.State() != StateDone || !r.d.Draining() {
			t.Errorf("state %v after drain", r.d.State())
		}
		if err := r.d.Undrain(); !errors.Is(err, ErrDrainFinished) {
			t.Errorf("Undrain after finish: %v", err)
		}
	})
}

func TestDrainWithNoSessionsIsImmediate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newDrainRig(t, 0, nil)
		r.d.Drain("admin")
		res, ok := r.done()
		if !ok || res.Outcome != DrainClean || res.Waited != 0 {
			t.Errorf("result %+v, done %v", res, ok)
		}
	})
}

func TestUndrainCancels(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newDrainRig(t, 1, nil)
		r.d.Drain("admin")
		time.Sleep(testPoll + testPoll/2)
		_, changed := r.d.Watch()
		if err := r.d.Undrain(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-changed:
		default:
			t.Error("Watch channel not closed by Undrain")
		}
		if r.d.Draining() || !r.h.Ready().OK() {
			t.Fatal("still draining after Undrain")
		}
		// Past the timeout of the cancelled drain, and the sessions end:
		// nothing may finish, because nothing is draining.
		time.Sleep(2 * testTimeout)
		r.f.sessions.Store(0)
		time.Sleep(2 * testPoll)
		if res, ok := r.done(); ok {
			t.Fatalf("Run returned after Undrain: %+v", res)
		}
		if calls := r.hookCalls(); len(calls) != 0 {
			t.Fatalf("hooks ran after Undrain: %v", calls)
		}

		// A new drain starts its own clock.
		r.f.sessions.Store(1)
		r.d.Drain("admin again")
		time.Sleep(3*testPoll + testPoll/2)
		r.f.sessions.Store(0)
		time.Sleep(testPoll)
		res, ok := r.done()
		if !ok || res.Outcome != DrainClean || res.Waited != 4*testPoll || res.Reason != "admin again" {
			t.Errorf("second drain: %+v, done %v", res, ok)
		}
	})
}

func TestDrainTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newDrainRig(t, 3, nil)
		r.d.Drain("SIGTERM")
		time.Sleep(testTimeout - time.Nanosecond)
		if _, ok := r.done(); ok {
			t.Fatal("finished before the timeout")
		}
		time.Sleep(time.Nanosecond)
		res, ok := r.done()
		if !ok {
			t.Fatal("not finished at the timeout")
		}
		if res.Outcome != DrainTimedOut || res.Remaining != 3 || res.Waited != testTimeout ||
			res.Err != nil || res.ExitCode() != 1 {
			t.Errorf("result %+v", res)
		}
		if got := r.hookCalls(); !slices.Equal(got, []string{"leave cluster", "close server"}) {
			t.Errorf("hooks %v", got)
		}
		if r.f.Sessions() != 0 {
			t.Error("close hook did not end the sessions")
		}
	})
}

// TestDrainAbort is the second SIGTERM: the CLI cancels Run's context and Run
// returns at once without running hooks.
func TestDrainAbort(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newDrainRig(t, 5, nil)
		r.d.Drain("SIGTERM")
		time.Sleep(testPoll)
		r.cancel()
		res, ok := r.done()
		if !ok {
			t.Fatal("Run did not return on cancel")
		}
		if res.Outcome != DrainAborted || !errors.Is(res.Err, ErrAborted) || !errors.Is(res.Err, context.Canceled) ||
			res.Remaining != 5 || res.ExitCode() != 1 {
			t.Errorf("result %+v", res)
		}
		if calls := r.hookCalls(); len(calls) != 0 {
			t.Errorf("hooks ran on abort: %v", calls)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		r := newDrainRig(t, 5, nil)
		r.cancel() // shutdown for another reason, never drained
		res, ok := r.done()
		if !ok || res.Outcome != DrainAborted || !errors.Is(res.Err, ErrAborted) {
			t.Errorf("result %+v, done %v", res, ok)
		}
	})
}

func TestDrainHookErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		errLeave := errors.New("no peer reachable")
		r := newDrainRig(t, 0, errLeave)
		r.d.Drain("SIGTERM")
		res, ok := r.done()
		if !ok || res.Outcome != DrainClean || !errors.Is(res.Err, errLeave) || res.ExitCode() != 1 {
			t.Errorf("result %+v, done %v", res, ok)
		}
		if got := r.hookCalls(); !slices.Equal(got, []string{"leave cluster", "close server"}) {
			t.Errorf("a failing hook stopped the next: %v", got)
		}
	})
}

func TestRunTwice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newDrainRig(t, 1, nil)
		if res := r.d.Run(t.Context()); !errors.Is(res.Err, ErrRunning) {
			t.Errorf("second Run: %+v", res)
		}
		r.cancel()
		synctest.Wait()
	})
}
