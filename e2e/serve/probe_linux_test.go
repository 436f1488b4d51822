package serve

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

// probeWait is how long one probe waits for its answer.
const probeWait = 2 * time.Second

// probeResult is what one STUN health probe got back.
type probeResult struct {
	from     netip.AddrPort // the probe's own address
	answered bool
	mapped   netip.AddrPort // XOR-MAPPED-ADDRESS of the answer
}

// probe sends one STUN Binding request without USERNAME (a load balancer's
// health check) from a fresh loopback socket to the media port and waits up
// to wait for a Binding success response to it.
func probe(t *testing.T, to netip.AddrPort, wait time.Duration) probeResult {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res := probeResult{from: c.LocalAddr().(*net.UDPAddr).AddrPort()}
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if _, err := c.Write(req.Raw); err != nil {
		t.Fatalf("probe: %v", err)
	}
	if err := c.SetReadDeadline(time.Now().Add(wait)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	for {
		n, err := c.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return res
		}
		if err != nil {
			t.Fatalf("probe: read: %v", err)
		}
		m := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if err := m.Decode(); err != nil {
			t.Fatalf("probe: answer is not STUN (%x): %v", buf[:n], err)
		}
		if m.TransactionID != req.TransactionID {
			continue // a late answer to someone else's probe cannot reach this socket, but be exact
		}
		if m.Type != stun.BindingSuccess {
			t.Fatalf("probe: answer type %v, want %v", m.Type, stun.BindingSuccess)
		}
		if err := stun.Fingerprint.Check(m); err != nil {
			t.Errorf("probe: answer FINGERPRINT: %v", err)
		}
		var xor stun.XORMappedAddress
		if err := xor.GetFrom(m); err != nil {
			t.Fatalf("probe: answer without XOR-MAPPED-ADDRESS: %v", err)
		}
		ip, ok := netip.AddrFromSlice(xor.IP)
		if !ok {
			t.Fatalf("probe: XOR-MAPPED-ADDRESS IP %v", xor.IP)
		}
		res.answered = true
		res.mapped = netip.AddrPortFrom(ip.Unmap(), uint16(xor.Port))
		return res
	}
}

// wantProbeAnswered asserts that the node answers a probe, with the
// prober's own address in XOR-MAPPED-ADDRESS.
func (n *node) wantProbeAnswered() {
	n.t.Helper()
	r := probe(n.t, n.udp, probeWait)
	if !r.answered {
		n.t.Fatalf("STUN probe from %v to %v not answered within %v", r.from, n.udp, probeWait)
	}
	if r.mapped != r.from {
		n.t.Errorf("STUN probe: XOR-MAPPED-ADDRESS %v, want the sender %v", r.mapped, r.from)
	}
}

// wantProbeSilent asserts that the node received a probe, counted it as
// not_ready, and sent nothing back: the metric shows the probe arrived, so
// the silence is the node's choice and not a lost datagram.
func (n *node) wantProbeSilent() {
	n.t.Helper()
	mf := n.scrape()
	before := mf.value(n.t, "oneport_health_probes_total", "result", "not_ready")
	answered := mf.value(n.t, "oneport_health_probes_total", "result", "answered")
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(n.udp))
	if err != nil {
		n.t.Fatal(err)
	}
	defer c.Close()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	// A datagram on loopback can be dropped under load: resend until the node
	// has counted one, a bounded number of times.
	counted := false
	for i := 0; i < 10 && !counted; i++ {
		if _, err := c.Write(req.Raw); err != nil {
			n.t.Fatal(err)
		}
		deadline := time.Now().Add(probeWait)
		for time.Now().Before(deadline) {
			if n.scrape().value(n.t, "oneport_health_probes_total", "result", "not_ready") > before {
				counted = true
				break
			}
			time.Sleep(10 * time.Millisecond) // polling interval, not synchronization
		}
	}
	if !counted {
		n.t.Fatal("STUN probe never counted as not_ready")
	}
	// The node counts a probe after it has answered it or decided not to: an
	// answer would be in the socket by now. Read for a while anyway.
	if err := c.SetReadDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
		n.t.Fatal(err)
	}
	buf := make([]byte, 1500)
	if k, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		n.t.Fatalf("STUN probe while not ready: got %d bytes (%x), err %v; want silence", k, buf[:max(k, 0)], err)
	}
	if a := n.scrape().value(n.t, "oneport_health_probes_total", "result", "answered"); a != answered {
		n.t.Errorf("answered probes went from %v to %v while not ready", answered, a)
	}
}
