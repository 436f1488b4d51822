package lbhealth

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// DrainState is where a Drainer is in its life.
type DrainState int32

const (
	// StateServing: ready for new sessions (as far as draining goes).
	StateServing DrainState = iota
	// StateDraining: no new sessions or rooms; waiting for sessions to end.
	StateDraining
	// StateFinishing: the wait ended; shutdown hooks are running.
	StateFinishing
	// StateDone: hooks have run; Run has returned or is returning.
	StateDone
)

var drainStateNames = [...]string{"serving", "draining", "finishing", "done"}

func (s DrainState) String() string {
	if s < 0 || int(s) >= len(drainStateNames) {
		return "invalid"
	}
	return drainStateNames[s]
}

// DrainOutcome says how Run ended.
type DrainOutcome int

const (
	// DrainClean: the node held no sessions before the timeout.
	DrainClean DrainOutcome = iota
	// DrainTimedOut: DrainConfig.Timeout passed with sessions left; the hooks
	// (closing the server) ended them.
	DrainTimedOut
	// DrainAborted: Run's context was cancelled (e.g. a second SIGTERM)
	// before the drain finished; no hook ran.
	DrainAborted
)

var drainOutcomeNames = [...]string{"clean", "timed_out", "aborted"}

func (o DrainOutcome) String() string {
	if o < 0 || int(o) >= len(drainOutcomeNames) {
		return "invalid"
	}
	return drainOutcomeNames[o]
}

var (
	// ErrAborted is wrapped in DrainResult.Err when Run's context ended first.
	ErrAborted = errors.New("lbhealth: drain aborted")
	// ErrDrainFinished is returned by Undrain, and by a second Run, once a
	// drain has stopped waiting: the node is shutting down.
	ErrDrainFinished = errors.New("lbhealth: drain already finished")
	// ErrRunning is returned in DrainResult.Err by a Run called while another
	// Run is active.
	ErrRunning = errors.New("lbhealth: Run already running")
)

// DrainResult is what Run reports.
type DrainResult struct {
	Outcome DrainOutcome
	// Reason is what Drain was called with ("SIGTERM", "admin", ...).
	Reason string
	// Remaining is the session count when the wait ended (0 when clean).
	Remaining int
	// Waited is the time from Drain to the end of the wait.
	Waited time.Duration
	// Err joins the hooks' errors, or wraps ErrAborted and the context's
	// cause, or is ErrRunning/ErrDrainFinished for a misuse of Run.
	Err error
}

// ExitCode is the process exit code for r: 0 for a clean drain whose hooks
// all succeeded, 1 otherwise.
func (r DrainResult) ExitCode() int {
	if r.Outcome == DrainClean && r.Err == nil {
		return 0
	}
	return 1
}

// Drainer is the drain state machine. Drain and Undrain may be called from
// any goroutine (signal handler, admin request); Run waits on the caller's
// goroutine for the drain to finish and runs the hooks.
type Drainer struct {
	cfg      DrainConfig
	sessions SessionCounter
	log      zerolog.Logger

	state   atomic.Int32 // DrainState; written under mu, read lock-free
	running atomic.Bool  // a Run is active

	mu      sync.Mutex    // guards the fields below and writes to state
	gen     uint64        // bumped by every Drain/Undrain transition
	since   time.Time     // when the current drain started
	reason  string        // what started it
	changed chan struct{} // closed and replaced on every state change
}

// NewDrainer returns a serving Drainer that waits on sessions.
func NewDrainer(sessions SessionCounter, cfg DrainConfig, log zerolog.Logger) (*Drainer, error) {
	if sessions == nil {
		return nil, fmt.Errorf("%w: Sessions is nil", ErrInvalidConfig)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Drainer{
		cfg:      cfg,
		sessions: sessions,
		log:      log.With().Str("component", "lbhealth").Logger(),
		changed:  make(chan struct{}),
	}, nil
}

// State returns the current state.
func (d *Drainer) State() DrainState { return DrainState(d.state.Load()) }

// Draining reports whether the node is draining or shutting down: it must
// take no new rooms and fail readiness. It is a single atomic load.
func (d *Drainer) Draining() bool { return d.State() != StateServing }

// Watch returns the current Draining value and a channel closed at the next
// state change. Gossip uses it to republish its meta:
//
//	for {
//		draining, changed := d.Watch()
//		publish(draining)
//		select { case <-changed: case <-ctx.Done(): return }
//	}
func (d *Drainer) Watch() (draining bool, changed <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.State() != StateServing, d.changed
}

// status returns the state with the drain's start time and reason.
func (d *Drainer) status() (DrainState, time.Time, string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.State(), d.since, d.reason
}

// Drain starts draining: readiness fails before Drain returns. It reports
// whether this call started a drain (false if one was already under way or
// finished). reason is kept for logs and /readyz.
func (d *Drainer) Drain(reason string) bool {
	d.mu.Lock()
	if d.State() != StateServing {
		d.mu.Unlock()
		return false
	}
	d.since, d.reason = time.Now(), reason
	d.setLocked(StateDraining)
	d.mu.Unlock()
	d.log.Info().Str("reason", reason).Dur("timeout", d.cfg.Timeout).
		Int("sessions", d.sessions.Sessions()).Msg("draining")
	return true
}

// Undrain cancels a drain that is still waiting for sessions to end. It is a
// no-op when serving and fails with ErrDrainFinished once the wait has ended.
func (d *Drainer) Undrain() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch d.State() {
	case StateServing:
		return nil
	case StateDraining:
		d.setLocked(StateServing)
		d.log.Info().Str("reason", d.reason).Dur("after", time.Since(d.since)).Msg("drain cancelled")
		return nil
	default:
		return ErrDrainFinished
	}
}

// setLocked moves to s and wakes watchers. d.mu must be held.
func (d *Drainer) setLocked(s DrainState) {
	d.state.Store(int32(s))
	d.gen++
	close(d.changed)
	d.changed = make(chan struct{})
}

// Run waits until a drain finishes, then runs the hooks and returns. Call it
// once, from the goroutine that will exit the process; it returns early with
// DrainAborted when ctx is done (the CLI cancels ctx on a second SIGTERM).
// An Undrain while Run waits sends it back to waiting for the next Drain.
func (d *Drainer) Run(ctx context.Context) DrainResult {
	if !d.running.CompareAndSwap(false, true) {
		return DrainResult{Outcome: DrainAborted, Err: ErrRunning}
	}
	defer d.running.Store(false)
	for {
		d.mu.Lock()
		state, gen, since, reason, changed := d.State(), d.gen, d.since, d.reason, d.changed
		d.mu.Unlock()
		switch state {
		case StateServing:
			select {
			case <-changed:
				continue
			case <-ctx.Done():
				return DrainResult{Outcome: DrainAborted, Err: fmt.Errorf("%w: %w", ErrAborted, context.Cause(ctx))}
			}
		case StateDraining:
			res, finished := d.wait(ctx, gen, since, changed)
			if !finished {
				continue // undrained, or drained again: re-read the state
			}
			res.Reason = reason
			if res.Outcome != DrainAborted {
				res.Err = d.runHooks(ctx)
				d.mu.Lock()
				d.setLocked(StateDone)
				d.mu.Unlock()
			}
			d.log.Info().Stringer("outcome", res.Outcome).Int("remaining", res.Remaining).
				Dur("waited", res.Waited).AnErr("error", res.Err).Msg("drain finished")
			return res
		default:
			return DrainResult{Outcome: DrainAborted, Reason: reason, Err: ErrDrainFinished}
		}
	}
}

// wait polls the session count until it is zero, the drain times out, the
// state changes or ctx ends. finished is false when the state changed under
// it (Undrain); then Run re-reads the state.
func (d *Drainer) wait(ctx context.Context, gen uint64, since time.Time, changed <-chan struct{}) (res DrainResult, finished bool) {
	timeout := time.NewTimer(d.cfg.Timeout - time.Since(since))
	defer timeout.Stop()
	poll := time.NewTicker(d.cfg.PollInterval)
	defer poll.Stop()
	for {
		n := d.sessions.Sessions()
		if n <= 0 {
			return DrainResult{Outcome: DrainClean, Waited: time.Since(since)}, d.finish(gen)
		}
		select {
		case <-poll.C:
		case <-timeout.C:
			n = d.sessions.Sessions()
			out := DrainTimedOut
			if n <= 0 {
				out = DrainClean
			}
			return DrainResult{Outcome: out, Remaining: max(n, 0), Waited: time.Since(since)}, d.finish(gen)
		case <-changed:
			return DrainResult{}, false
		case <-ctx.Done():
			return DrainResult{
				Outcome: DrainAborted, Remaining: n, Waited: time.Since(since),
				Err: fmt.Errorf("%w: %w", ErrAborted, context.Cause(ctx)),
			}, true
		}
	}
}

// finish moves from the drain generation gen to StateFinishing, unless an
// Undrain got there first.
func (d *Drainer) finish(gen uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.gen != gen || d.State() != StateDraining {
		return false
	}
	d.setLocked(StateFinishing)
	return true
}

// runHooks runs the hooks in order under one timeout and joins their errors.
// A failing hook does not stop the next: the server must close even if
// leaving the cluster failed.
func (d *Drainer) runHooks(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.HookTimeout)
	defer cancel()
	var errs []error
	for _, h := range d.cfg.Hooks {
		if err := h.Run(ctx); err != nil {
			d.log.Error().Str("hook", h.Name).Err(err).Msg("drain hook failed")
			errs = append(errs, fmt.Errorf("lbhealth: drain hook %q: %w", h.Name, err))
		}
	}
	return errors.Join(errs...)
}
