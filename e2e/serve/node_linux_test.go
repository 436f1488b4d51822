package serve

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Deadlines. Generous: under -race both the binary and the pion clients run
// several times slower, on a shared 2-core machine.
const (
	startBudget = 20 * time.Second // process start to its "oneport serving" line
	exitBudget  = 20 * time.Second // a process that should exit, to its exit
	killBudget  = 10 * time.Second // clean-up: SIGKILL to reaped
	httpTimeout = 10 * time.Second // one HTTP request
)

// Bounds on what is kept of a process's output.
const (
	maxLogLines = 20000
	tailOnFail  = 60
)

// node is one `oneport serve` process and its output.
type node struct {
	t    *testing.T
	cmd  *exec.Cmd
	udp  netip.AddrPort // the media port
	base string         // http://127.0.0.1:port of --http

	http *http.Client
	log  *procLog

	exited chan struct{}    // closed once the process is reaped
	state  *os.ProcessState // set before exited is closed
}

// startNode starts `oneport --log-format json serve` on loopback with extra
// serve flags and waits for its "oneport serving" line, which gives the
// addresses the kernel chose. The process is killed by PID at clean-up.
func startNode(t *testing.T, flags ...string) *node {
	t.Helper()
	n, ok := tryStartNode(t, flags...)
	if !ok {
		t.Fatalf("the node exited at start:\n%s", n.log.tail(tailOnFail))
	}
	return n
}

// tryStartNode is startNode that reports a process that exits before its
// serving line (e.g. a port taken) instead of failing the test.
func tryStartNode(t *testing.T, flags ...string) (*node, bool) {
	t.Helper()
	// Every listener on loopback, on a port the kernel picks: the gossip and
	// relay defaults (:7946, :7947) would bind every interface and collide
	// with any other node on the machine.
	args := append([]string{"--log-format", "json", "--log-level", "info",
		"serve", "--udp", "127.0.0.1:0", "--http", "127.0.0.1:0",
		"--gossip", "127.0.0.1:0", "--relay", "127.0.0.1:0"}, flags...)
	cmd := exec.Command(oneportBin, args...)
	cmd.Env = cleanEnv()
	// A test binary that dies (panic, -timeout) takes its nodes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", oneportBin, err)
	}
	n := &node{
		t:   t,
		cmd: cmd,
		// No keep-alive: no idle connection outlives a request, so nothing
		// lingers after the process exits or at the leak check.
		http:   &http.Client{Timeout: httpTimeout, Transport: &http.Transport{DisableKeepAlives: true}},
		log:    newProcLog(),
		exited: make(chan struct{}),
	}
	go func() { // owned by n: ends when the process exits and closes stderr
		n.log.readFrom(stderr)
		err := cmd.Wait()
		n.state = cmd.ProcessState
		if n.state == nil {
			n.log.add(fmt.Sprintf("wait: %v", err))
		}
		close(n.exited)
	}()
	t.Cleanup(n.cleanup)

	e, err := n.log.wait(startBudget, msgIs("oneport serving"))
	if errors.Is(err, errLogEnded) {
		<-n.exited
		return n, false
	}
	if err != nil {
		t.Fatalf("waiting for the \"oneport serving\" line: %v", err)
	}
	udp, err := netip.ParseAddrPort(e.str("udp"))
	if err != nil {
		t.Fatalf("serving line: udp %q: %v", e.str("udp"), err)
	}
	if _, err := netip.ParseAddrPort(e.str("http")); err != nil {
		t.Fatalf("serving line: http %q: %v", e.str("http"), err)
	}
	n.udp, n.base = udp, "http://"+e.str("http")
	return n, true
}

// cleanEnv is the test's environment without ONEPORT_* variables, which
// would set serve flags behind the test's back.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ONEPORT_") {
			env = append(env, kv)
		}
	}
	return env
}

// cleanup kills the process by PID if it still runs, reaps it, and fails the
// test on a race report in its output.
func (n *node) cleanup() {
	select {
	case <-n.exited:
	default:
		_ = n.cmd.Process.Kill()
		select {
		case <-n.exited:
		case <-time.After(killBudget):
			n.t.Errorf("pid %d not reaped %v after SIGKILL", n.cmd.Process.Pid, killBudget)
		}
	}
	if r := n.log.raceReport(); r != "" {
		n.t.Errorf("pid %d: the race detector reported:\n%s", n.cmd.Process.Pid, r)
	}
	if n.t.Failed() {
		n.t.Logf("pid %d output (last %d lines):\n%s", n.cmd.Process.Pid, tailOnFail, n.log.tail(tailOnFail))
	}
}

// signal sends sig to the process.
func (n *node) signal(sig syscall.Signal) {
	n.t.Helper()
	if err := n.cmd.Process.Signal(sig); err != nil {
		n.t.Fatalf("signal %v to pid %d: %v", sig, n.cmd.Process.Pid, err)
	}
}

// waitExit waits for the process to exit by itself and returns its exit code.
func (n *node) waitExit(d time.Duration) int {
	n.t.Helper()
	select {
	case <-n.exited:
	case <-time.After(d):
		n.t.Fatalf("pid %d still running after %v", n.cmd.Process.Pid, d)
	}
	if n.state == nil {
		n.t.Fatalf("pid %d: no exit status", n.cmd.Process.Pid)
	}
	return n.state.ExitCode()
}

// running reports whether the process has not exited.
func (n *node) running() bool {
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// waitLog waits for a JSON log line that match accepts, from the first line
// on, and returns it.
func (n *node) waitLog(what string, d time.Duration, match func(logEntry) bool) logEntry {
	n.t.Helper()
	e, err := n.log.wait(d, match)
	if err != nil {
		n.t.Fatalf("waiting for %s: %v", what, err)
	}
	return e
}

// do sends one request to base+path with optional headers (name, value
// pairs) and returns the status and body.
func (n *node) do(base, method, path, body string, hdr ...string) (int, http.Header, string) {
	n.t.Helper()
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
	if err != nil {
		n.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := n.http.Do(req)
	if err != nil {
		n.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		n.t.Fatalf("%s %s: body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

// report is the JSON body of /healthz and /readyz.
type report struct {
	Status string `json:"status"`
	Checks []struct {
		Name   string `json:"name"`
		OK     bool   `json:"ok"`
		Reason string `json:"reason"`
	} `json:"checks"`
}

// check returns the named check's ok and reason.
func (r report) check(name string) (ok, found bool, reason string) {
	for _, c := range r.Checks {
		if c.Name == name {
			return c.OK, true, c.Reason
		}
	}
	return false, false, ""
}

// health GETs a /healthz or /readyz path on base and decodes the report.
func (n *node) health(base, path string) (int, report) {
	n.t.Helper()
	code, _, body := n.do(base, http.MethodGet, path, "")
	var rep report
	if err := json.Unmarshal([]byte(body), &rep); err != nil {
		n.t.Fatalf("GET %s: %d %q: %v", path, code, body, err)
	}
	if (code == http.StatusOK) != (rep.Status == "ok") {
		n.t.Errorf("GET %s: %d with status %q", path, code, rep.Status)
	}
	return code, rep
}

// freeTCPPort returns a loopback TCP port that was free a moment ago, for
// the --health flag, whose address the serving line does not give.
func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// logEntry is one JSON line of the process's log.
type logEntry map[string]any

func (e logEntry) str(k string) string {
	s, _ := e[k].(string)
	return s
}

func (e logEntry) num(k string) (float64, bool) {
	f, ok := e[k].(float64)
	return f, ok
}

func msgIs(msg string) func(logEntry) bool {
	return func(e logEntry) bool { return e.str("message") == msg }
}

// procLog keeps a process's stderr: every line, and the JSON ones decoded.
type procLog struct {
	mu      sync.Mutex
	lines   []string
	entries []logEntry
	dropped int           // lines beyond maxLogLines
	eof     bool          // the process closed stderr
	changed chan struct{} // closed and replaced on every new line and at EOF
}

func newProcLog() *procLog { return &procLog{changed: make(chan struct{})} }

func (l *procLog) readFrom(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l.add(sc.Text())
	}
	if err := sc.Err(); err != nil {
		l.add(fmt.Sprintf("reading stderr: %v", err))
		_, _ = io.Copy(io.Discard, r) // never block the process on a full pipe
	}
	l.mu.Lock()
	l.eof = true
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

func (l *procLog) add(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) >= maxLogLines {
		l.dropped++
		return
	}
	l.lines = append(l.lines, line)
	var e logEntry
	if json.Unmarshal([]byte(line), &e) == nil {
		l.entries = append(l.entries, e)
	}
	close(l.changed)
	l.changed = make(chan struct{})
}

var errLogEnded = errors.New("the process closed its output")

// wait returns the first entry that match accepts, waiting up to d for it.
func (l *procLog) wait(d time.Duration, match func(logEntry) bool) (logEntry, error) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	next := 0
	for {
		l.mu.Lock()
		for ; next < len(l.entries); next++ {
			if match(l.entries[next]) {
				e := l.entries[next]
				l.mu.Unlock()
				return e, nil
			}
		}
		eof, changed := l.eof, l.changed
		l.mu.Unlock()
		if eof {
			return nil, errLogEnded
		}
		select {
		case <-changed:
		case <-deadline.C:
			return nil, fmt.Errorf("not logged within %v", d)
		}
	}
}

// find returns every entry match accepts so far.
func (l *procLog) find(match func(logEntry) bool) []logEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []logEntry
	for _, e := range l.entries {
		if match(e) {
			out = append(out, e)
		}
	}
	return out
}

func (l *procLog) contains(s string) bool { return l.line(s) != "" }

// line returns the first line that contains s, or "".
func (l *procLog) line(s string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return line
		}
	}
	return ""
}

// raceReport returns the race detector's first report in the output, or "".
func (l *procLog) raceReport() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, line := range l.lines {
		if !strings.Contains(line, "WARNING: DATA RACE") {
			continue
		}
		end := i + 1
		for end < len(l.lines) && end < i+200 && !strings.HasPrefix(l.lines[end], "==================") {
			end++
		}
		return strings.Join(l.lines[i:end], "\n")
	}
	return ""
}

func (l *procLog) tail(k int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	from := max(len(l.lines)-k, 0)
	s := strings.Join(l.lines[from:], "\n")
	if l.dropped > 0 {
		s += fmt.Sprintf("\n(%d lines beyond %d not kept)", l.dropped, maxLogLines)
	}
	return s
}

// waitFor polls cond every 10 ms until it holds or d passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronization
	}
}
