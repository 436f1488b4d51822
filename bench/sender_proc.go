package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// errSenderExited is returned when a sender process ends before answering.
var errSenderExited = errors.New("bench: sender process exited")

// testHookSenderStarted, when set (by tests), learns every sender PID.
var testHookSenderStarted func(pid int)

// senderProc is a sender process RunMux started and owns: it is killed by
// PID in stop, which every path out of RunMux runs.
type senderProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	events chan senderEvent
	done   chan struct{} // closed once the process has exited and been reaped
	stderr *tailBuffer
	quit   sync.Once // guards requestStop
	once   sync.Once // guards stop
}

// startSender re-executes the current binary as a sender (MaybeRunSender)
// and hands it its job.
func startSender(job senderJob) (*senderProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("bench: find own binary: %w", err)
	}
	cmd := exec.Command(exe)
	// One P: a sender is one goroutine in a send loop; more Ps would only
	// take CPU from the receiver.
	cmd.Env = append(os.Environ(), SenderEnv+"=1", "GOMAXPROCS=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	setSenderDeathSignal(cmd.SysProcAttr)
	p := &senderProc{cmd: cmd, events: make(chan senderEvent, 4), done: make(chan struct{}), stderr: &tailBuffer{max: 4096}}
	cmd.Stderr = p.stderr
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, fmt.Errorf("bench: sender stdin: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("bench: sender stdout: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start sender: %w", err)
	}
	if testHookSenderStarted != nil {
		testHookSenderStarted(cmd.Process.Pid)
	}
	go p.readEvents(stdout)
	if err := p.send(job); err != nil {
		p.stop(time.Time{})
		return nil, err
	}
	return p, nil
}

// readEvents forwards the sender's JSON lines until its stdout closes, then
// reaps the process. It is the only goroutine a senderProc has, and it ends
// when the process does (stop kills it if need be).
func (p *senderProc) readEvents(stdout io.Reader) {
	defer close(p.done)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		var ev senderEvent
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		select {
		case p.events <- ev:
		default: // the parent stopped listening (an error path): keep draining
		}
	}
	_, _ = io.Copy(io.Discard, stdout)
	_ = p.cmd.Wait()
}

func (p *senderProc) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("bench: encode for sender: %w", err)
	}
	if _, err := p.stdin.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("bench: write to sender %d: %w", p.cmd.Process.Pid, err)
	}
	return nil
}

// next waits for the sender's next event, at most timeout.
func (p *senderProc) next(ctx context.Context, want string, timeout time.Duration) (senderEvent, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case ev := <-p.events:
		return p.check(ev, want)
	case <-p.done:
		select { // an event sent just before exiting still counts
		case ev := <-p.events:
			return p.check(ev, want)
		default:
		}
		return senderEvent{}, fmt.Errorf("%w: pid %d (%v): %s", errSenderExited, p.cmd.Process.Pid, p.cmd.ProcessState, p.stderr)
	case <-ctx.Done():
		return senderEvent{}, ctx.Err()
	case <-t.C:
		return senderEvent{}, fmt.Errorf("bench: sender %d: no %q within %v", p.cmd.Process.Pid, want, timeout)
	}
}

func (p *senderProc) check(ev senderEvent, want string) (senderEvent, error) {
	if ev.Event != want {
		return ev, fmt.Errorf("bench: sender %d said %q, want %q", p.cmd.Process.Pid, ev.Event, want)
	}
	return ev, nil
}

// stop asks the sender to quit, waits until the deadline, then kills it
// by PID and waits until it is reaped. Idempotent.
func (p *senderProc) stop(deadline time.Time) {
	p.once.Do(func() {
		p.requestStop()
		if wait := time.Until(deadline); wait > 0 {
			t := time.NewTimer(wait)
			defer t.Stop()
			select {
			case <-p.done:
				return
			case <-t.C:
			}
		}
		_ = p.cmd.Process.Kill()
		<-p.done
	})
}

// requestStop tells the sender to quit: a "quit" line and a closed stdin,
// which it sees once its current run ends.
func (p *senderProc) requestStop() {
	p.quit.Do(func() {
		_ = p.send(senderCmd{Cmd: "quit"})
		_ = p.stdin.Close()
	})
}

// tailBuffer keeps the last max bytes written to it: a sender's stderr, for
// error messages.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
