//go:build linux

package netnstest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Bounds on commands and on the clean-up's waits.
const (
	cmdTimeout  = 15 * time.Second      // each ip/nft/script invocation
	stopTimeout = 5 * time.Second       // SIGTERM to SIGKILL, and SIGKILL to giving up
	pollEvery   = 20 * time.Millisecond // while waiting for the kernel to reap processes
	killTimeout = 5 * time.Second       // the PID sweep of a namespace
	outputLimit = 64 << 10              // bytes of a command's output kept in an error
)

// Command returns an unstarted command that runs name in ns (through
// ip netns exec, which execs name in place: the command's PID is name's).
// Start it with Topology.Start so clean-up stops it.
func (ns NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", string(ns), name}, args...)...)
}

// Run runs name in ns, bounded by cmdTimeout, and returns its combined
// output; a failure's error carries the output.
func (ns NS) Run(name string, args ...string) (string, error) {
	return run("ip", append([]string{"netns", "exec", string(ns), name}, args...)...)
}

// run runs a command bounded by cmdTimeout and returns its combined output.
func run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		o := string(out)
		if len(o) > outputLimit {
			o = o[:outputLimit] + " [truncated]"
		}
		return string(out), fmt.Errorf("netnstest: %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(o))
	}
	return string(out), nil
}

// Process is a command started by Topology.Start. A goroutine owned by the
// Process waits for it; clean-up stops it.
type Process struct {
	Cmd  *exec.Cmd
	done chan struct{}
	err  error // of Cmd.Wait; set before done is closed
}

// Done is closed when the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit and returns Cmd.Wait's error.
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

// Stop sends SIGTERM, then SIGKILL if the process outlives stopTimeout, and
// waits for it. It returns Cmd.Wait's error, or an error if even SIGKILL
// did not end it in time. Stopping a process that has exited is a no-op.
func (p *Process) Stop() error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(stopTimeout):
	}
	_ = p.Cmd.Process.Kill()
	select {
	case <-p.done:
		return p.err
	case <-time.After(stopTimeout):
		return fmt.Errorf("netnstest: pid %d survived SIGKILL for %v", p.Cmd.Process.Pid, stopTimeout)
	}
}

// Start starts cmd (usually from NS.Command) and registers it with the
// topology, whose clean-up stops it.
func (t *Topology) Start(cmd *exec.Cmd) (*Process, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, errors.New("netnstest: topology cleaned up")
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("netnstest: start %s: %w", strings.Join(cmd.Args, " "), err)
	}
	p := &Process{Cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.procs = append(t.procs, p)
	return p, nil
}

// pids lists the processes whose network namespace is ns, except this one
// (a thread of ours may be inside ns during a Do, and the main thread's
// namespace is what ip netns pids reads).
func pids(ns NS) []int {
	out, err := run("ip", "netns", "pids", string(ns))
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var list []int
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != self {
			list = append(list, pid)
		}
	}
	return list
}

// killAll SIGKILLs, by PID, every process left in ns (all started by this
// topology or by its processes) until none is left or killTimeout passes.
func killAll(ns NS) error {
	deadline := time.Now().Add(killTimeout)
	for {
		list := pids(ns)
		if len(list) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("netnstest: processes %v still in %s after SIGKILL", list, ns)
		}
		for _, pid := range list {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(pollEvery) // poll interval while the kernel reaps them
	}
}
