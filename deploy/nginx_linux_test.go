//go:build linux

package deploy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oneport/oneport/internal/netnstest"
)

const (
	nginxConf     = "nginx-stream.conf"
	nginxModule   = "/usr/lib/nginx/modules/ngx_stream_module.so" // Debian's libnginx-mod-stream
	mediaPort     = 3478
	httpPort      = 8080
	flows         = 48 // P(a node gets none) = 3·(2/3)^48
	attempts      = 5
	wait          = 500 * time.Millisecond
	startAttempts = 20 // the first exchange also waits for nginx to listen: 20 × 250 ms
	startWait     = 250 * time.Millisecond
)

// requireNginx skips (fails under CI) unless nginx and its stream module
// are installed; netnstest.Require adds root and ip.
func requireNginx(t *testing.T) {
	t.Helper()
	netnstest.Require(t, "nginx")
	if _, err := os.Stat(nginxModule); err != nil {
		msg := "nginx test needs the stream module " + nginxModule + " (apt-get install -y libnginx-mod-stream)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// cappedBuffer keeps the first limit bytes of nginx's stderr for failures.
type cappedBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	limit int
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.limit - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *cappedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// confAddrs returns the listen and server addresses of the config file, in
// order.
func confAddrs(t *testing.T, conf string) (listens, servers []string) {
	t.Helper()
	for _, m := range regexp.MustCompile(`(?m)^\s*(listen|server)\s+([0-9.]+:[0-9]+)`).FindAllStringSubmatch(conf, -1) {
		if m[1] == "listen" {
			listens = append(listens, m[2])
		} else {
			servers = append(servers, m[2])
		}
	}
	return listens, servers
}

func TestNginxStreamConf(t *testing.T) {
	requireNginx(t)
	top, err := netnstest.New(t, netnstest.Config{Nodes: 3, UDPPort: mediaPort, TCPPort: httpPort, LB: netnstest.LBNone})
	if err != nil {
		t.Fatal(err)
	}

	// The example's addresses are the topology's, so the file runs as is.
	raw, err := os.ReadFile(nginxConf)
	if err != nil {
		t.Fatal(err)
	}
	conf := string(raw)
	if regexp.MustCompile(`(?m)^\s*proxy_responses`).MatchString(conf) {
		t.Error("nginx-stream.conf sets proxy_responses; media needs it unlimited")
	}
	if !regexp.MustCompile(`(?m)^\s*listen\s+\S+\s+udp\s+reuseport;`).MatchString(conf) {
		t.Error("the UDP listen needs reuseport, so all of a flow's datagrams reach one worker's session")
	}
	if !strings.Contains(conf, "hash $remote_addr$remote_port consistent;") {
		t.Error("the media upstream must hash $remote_addr$remote_port consistent")
	}
	listens, servers := confAddrs(t, conf)
	wantListens := []string{top.UDPAddr().String(), top.TCPAddr().String()}
	var wantServers []string
	for _, port := range []uint16{mediaPort, httpPort} {
		for i := range top.Nodes() {
			wantServers = append(wantServers, netip.AddrPortFrom(top.NodeAddr(i), port).String())
		}
	}
	if !slices.Equal(listens, wantListens) || !slices.Equal(servers, wantServers) {
		t.Fatalf("nginx-stream.conf listens on %v and proxies to %v; the test topology has %v and %v", listens, servers, wantListens, wantServers)
	}

	var udp []*netnstest.UDPEcho
	var tcp []*netnstest.TCPEcho
	for i := range top.Nodes() {
		u, err := netnstest.StartUDPEcho(top.NodeNS(i), netip.AddrPortFrom(top.NodeAddr(i), mediaPort), fmt.Sprintf("n%d", i))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { u.Close() })
		udp = append(udp, u)
		h, err := netnstest.StartTCPEcho(top.NodeNS(i), netip.AddrPortFrom(top.NodeAddr(i), httpPort), fmt.Sprintf("n%d", i))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		tcp = append(tcp, h)
	}

	confPath, err := filepath.Abs(nginxConf)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	args := []string{"-e", "stderr", "-p", dir, "-c", confPath, "-g", "daemon off; pid " + filepath.Join(dir, "nginx.pid") + ";"}
	if out, err := top.LBNS().Run("nginx", append([]string{"-t"}, args...)...); err != nil {
		t.Fatalf("nginx -t: %v\n%s", err, out)
	}
	logs := &cappedBuffer{limit: 1 << 20}
	cmd := top.LBNS().Command("nginx", args...)
	cmd.Stdout, cmd.Stderr = logs, logs
	nginx, err := top.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("nginx output:\n%s", logs.String())
		}
	})

	cs := make([]*net.UDPConn, flows)
	for k := range cs {
		c, err := top.ClientNS().ListenUDP(netip.AddrPortFrom(top.ClientAddr(0), 0))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cs[k] = c
	}
	// The first exchange, from a socket of its own, is the wait for nginx
	// to listen.
	probe, err := top.ClientNS().ListenUDP(netip.AddrPortFrom(top.ClientAddr(0), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	if _, _, err := netnstest.Exchange(probe, top.UDPAddr(), "start", startAttempts, startWait); err != nil {
		select {
		case <-nginx.Done():
			t.Fatalf("nginx exited: %v\n%s", nginx.Wait(), logs.String())
		default:
		}
		t.Fatalf("no answer through nginx: %v", err)
	}

	start := time.Now()
	tags := make([]string, flows)
	for k, c := range cs {
		for r := range 3 {
			tag, from, err := netnstest.Exchange(c, top.UDPAddr(), fmt.Sprintf("flow %d round %d", k, r), attempts, wait)
			if err != nil {
				t.Fatalf("flow %d: %v", k, err)
			}
			if from != top.UDPAddr() {
				t.Fatalf("flow %d: answer from %v, want %v", k, from, top.UDPAddr())
			}
			if r > 0 && tag != tags[k] {
				t.Fatalf("flow %d moved from %s to %s", k, tags[k], tag)
			}
			tags[k] = tag
		}
	}
	perNode := make(map[string]int)
	for _, tag := range tags {
		perNode[tag]++
	}
	t.Logf("%d flows × 3 exchanges through nginx in %v; flows per node %v", flows, time.Since(start), perNode)
	for i := range top.Nodes() {
		if perNode[fmt.Sprintf("n%d", i)] == 0 {
			t.Errorf("node %d got none of %d flows: %v", i, flows, perNode)
		}
	}
	// Each flow is one nginx session: one upstream address per flow, all
	// nginx's, three datagrams each; the start probe's session is the only
	// other. A flow split into several sessions (a timeout, or datagrams
	// reaching different workers) would show up as more addresses with fewer
	// datagrams.
	sessions, others := 0, 0
	for i, u := range udp {
		for src, n := range u.Sources() {
			if src.Addr() != top.LBNodeAddr() {
				t.Errorf("node %d saw %v, want nginx's address %v", i, src, top.LBNodeAddr())
			}
			if n == 3 {
				sessions++
			} else {
				others++
			}
		}
	}
	if sessions != flows || others > 1 {
		t.Errorf("nodes saw %d three-datagram sessions and %d others, want one per flow (%d) and the start probe's", sessions, others, flows)
	}

	// HTTP signaling goes through the TCP upstream.
	const conns = 12
	seen := make(map[string]int)
	for k := range conns {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := top.ClientNS().DialContext(ctx, "tcp", top.TCPAddr().String())
		cancel()
		if err != nil {
			t.Fatalf("tcp %d: %v", k, err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		msg := fmt.Sprintf("GET %d\n", k)
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil {
			t.Fatalf("tcp %d: %v", k, err)
		}
		tag, echoed, _ := strings.Cut(line, "|")
		if echoed != msg {
			t.Fatalf("tcp %d: reply %q", k, line)
		}
		seen[tag]++
	}
	total := 0
	for _, h := range tcp {
		for _, n := range h.Sources() {
			total += n
		}
	}
	t.Logf("%d TCP connections per node: %v", conns, seen)
	if total != conns {
		t.Errorf("nodes accepted %d connections, want %d", total, conns)
	}
	if len(seen) < 2 {
		t.Errorf("least_conn sent all %d sequential connections to one node: %v", conns, seen)
	}

	// SIGTERM is nginx's fast shutdown: it exits 0.
	if err := nginx.Stop(); err != nil {
		t.Errorf("stop nginx: %v", err)
	}
}
