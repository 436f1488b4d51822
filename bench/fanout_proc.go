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
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// ChildEnv is the environment variable that turns the current binary into
// one of the benchmarks' child processes: "fanout-server" (the node under
// test), "fanout-client" (pion peers) or "load-client" (RunLoad's peers). MaybeRunSender dispatches on
// it, so programs that call RunFanout need nothing more.
const ChildEnv = "ONEPORT_BENCH_CHILD"

const (
	roleServer = "fanout-server"
	roleClient = "fanout-client"
)

// errChildExited is returned when a child process ends before answering.
var errChildExited = errors.New("bench: child process exited")

// testHookChildStarted, when set (by tests), learns every child PID.
var testHookChildStarted func(pid int)

// childMsg is every line a child writes: an event naming the command it
// answers, or an error, and the answer's own fields.
type childMsg struct {
	Event string `json:"event"`
	Error string `json:"error,omitempty"`
}

// childProc is a child process the parent owns: a JSON line protocol on its
// stdin and stdout, one request at a time. It is killed by PID in stop,
// which every path out of its owner runs.
type childProc struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan []byte
	done   chan struct{} // closed once the process has exited and been reaped
	stderr *tailBuffer
	quit   sync.Once // guards requestStop
	once   sync.Once // guards stop
}

// startChild re-executes the current binary in role, hands it job, and
// waits for its "ready" answer (decoded into ready when not nil).
func startChild(ctx context.Context, name, role string, job, ready any, timeout time.Duration) (*childProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("bench: find own binary: %w", err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), ChildEnv+"="+role)
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	setSenderDeathSignal(cmd.SysProcAttr)
	p := &childProc{name: name, cmd: cmd, lines: make(chan []byte, 4), done: make(chan struct{}), stderr: &tailBuffer{max: 4096}}
	cmd.Stderr = p.stderr
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, fmt.Errorf("bench: %s stdin: %w", name, err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("bench: %s stdout: %w", name, err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start %s: %w", name, err)
	}
	if testHookChildStarted != nil {
		testHookChildStarted(cmd.Process.Pid)
	}
	go p.readLines(stdout)
	if err := p.call(ctx, job, "ready", timeout, ready); err != nil {
		p.stop(time.Time{})
		return nil, err
	}
	return p, nil
}

func (p *childProc) pid() int { return p.cmd.Process.Pid }

// readLines forwards the child's lines until its stdout closes, then reaps
// the process. It is the only goroutine a childProc has, and it ends when
// the process does (stop kills it if need be).
func (p *childProc) readLines(stdout io.Reader) {
	defer close(p.done)
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 64<<20) // reports carry per-subscriber counts
	for sc.Scan() {
		select {
		case p.lines <- append([]byte(nil), sc.Bytes()...):
		default: // the parent stopped listening (an error path): keep draining
		}
	}
	_, _ = io.Copy(io.Discard, stdout)
	_ = p.cmd.Wait()
}

// send writes one request line.
func (p *childProc) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("bench: encode for %s: %w", p.name, err)
	}
	if _, err := p.stdin.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("bench: write to %s (pid %d): %w", p.name, p.pid(), err)
	}
	return nil
}

// call sends req and waits at most timeout for the answer event want,
// decoding it into reply when not nil.
func (p *childProc) call(ctx context.Context, req any, want string, timeout time.Duration, reply any) error {
	if err := p.send(req); err != nil {
		return err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	var line []byte
	select {
	case line = <-p.lines:
	case <-p.done:
		select { // a line written just before exiting still counts
		case line = <-p.lines:
		default:
			return fmt.Errorf("%w: %s pid %d (%v): %s", errChildExited, p.name, p.pid(), p.cmd.ProcessState, p.stderr)
		}
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("bench: %s (pid %d): no %q within %v", p.name, p.pid(), want, timeout)
	}
	var m childMsg
	if err := json.Unmarshal(line, &m); err != nil {
		return fmt.Errorf("bench: %s (pid %d) said %q: %w", p.name, p.pid(), line, err)
	}
	if m.Error != "" {
		return fmt.Errorf("bench: %s (pid %d): %s", p.name, p.pid(), m.Error)
	}
	if m.Event != want {
		return fmt.Errorf("bench: %s (pid %d) said %q, want %q", p.name, p.pid(), m.Event, want)
	}
	if reply != nil {
		if err := json.Unmarshal(line, reply); err != nil {
			return fmt.Errorf("bench: %s (pid %d) %q: %w", p.name, p.pid(), want, err)
		}
	}
	return nil
}

// stop asks the child to quit, waits until the deadline, then kills it by
// PID and waits until it is reaped. Idempotent.
func (p *childProc) stop(deadline time.Time) {
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

// requestStop tells the child to quit: a "quit" line and a closed stdin.
func (p *childProc) requestStop() {
	p.quit.Do(func() {
		_ = p.send(childCmd{Cmd: "quit"})
		_ = p.stdin.Close()
	})
}

// stopChildren stops every child: after a clean run they get until grace
// to exit by themselves (clients delete their sessions first); on an error
// path they are killed at once.
func stopChildren(procs []*childProc, clean bool, grace time.Duration) {
	deadline := time.Now()
	if clean {
		deadline = deadline.Add(grace)
	}
	for _, p := range procs {
		if p != nil {
			p.requestStop()
		}
	}
	for _, p := range procs {
		if p != nil {
			p.stop(deadline)
		}
	}
}

// childCmd is every request the parent sends after the job; each role reads
// the fields it knows.
type childCmd struct {
	Cmd   string    `json:"cmd"`             // "add", "window", "report", "quit"
	N     int       `json:"n,omitempty"`     // add: subscribers to add
	Start time.Time `json:"start,omitzero"`  // window: send-time bounds
	End   time.Time `json:"end,omitzero"`    //
	Slice int64     `json:"slice,omitempty"` // window: slice width, ns
	Label string    `json:"label,omitempty"` // window: names the step (CPU profile file)
}

// childIO is a child's end of the protocol.
type childIO struct {
	rd  *bufio.Reader
	enc *json.Encoder
	mu  sync.Mutex // guards enc: timers may answer too
}

func newChildIO(in io.Reader, out io.Writer) *childIO {
	return &childIO{rd: bufio.NewReaderSize(in, 64<<10), enc: json.NewEncoder(out)}
}

// next reads one line into v; io.EOF when the parent closed stdin.
func (c *childIO) next(v any) error {
	line, err := c.rd.ReadBytes('\n')
	if err != nil {
		if errors.Is(err, io.EOF) && len(line) == 0 {
			return io.EOF
		}
		return fmt.Errorf("bench child: read: %w", err)
	}
	if err := json.Unmarshal(line, v); err != nil {
		return fmt.Errorf("bench child: decode %q: %w", line, err)
	}
	return nil
}

func (c *childIO) reply(v any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.enc.Encode(v); err != nil {
		return fmt.Errorf("bench child: write: %w", err)
	}
	return nil
}

func (c *childIO) fail(err error) {
	_ = c.reply(childMsg{Event: "error", Error: err.Error()})
}

// maybeRunChild runs this process as a fan-out child and exits, when
// ChildEnv names a role; otherwise it returns at once.
func maybeRunChild() {
	role := os.Getenv(ChildEnv)
	if role == "" {
		return
	}
	// A Ctrl-C at the terminal reaches the whole process group: the parent
	// handles it and stops its children in order (load clients delete
	// their sessions first); a child dying of it would leave them behind.
	signal.Ignore(os.Interrupt)
	cio := newChildIO(os.Stdin, os.Stdout)
	var err error
	switch role {
	case roleServer:
		err = runFanoutServer(cio)
	case roleClient:
		err = runFanoutClient(cio)
	case roleLoadClient:
		err = runLoadClient(cio)
	default:
		err = fmt.Errorf("bench child: unknown role %q", role)
	}
	if err != nil {
		cio.fail(err)
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// exitAtDeadline makes a child outlive its parent by no more than the
// deadline the parent set.
func exitAtDeadline(role string, deadline time.Time) error {
	d := time.Until(deadline)
	if d <= 0 {
		return fmt.Errorf("bench %s: job deadline already passed", role)
	}
	time.AfterFunc(d, func() {
		fmt.Fprintf(os.Stderr, "bench %s: deadline passed, exiting\n", role)
		os.Exit(3)
	})
	return nil
}
