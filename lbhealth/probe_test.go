package lbhealth

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

// RFC 5769 test vectors.
var (
	// 2.1: ICE connectivity check (USERNAME, MESSAGE-INTEGRITY): not a probe.
	rfc5769Request = []byte("\x00\x01\x00\x58\x21\x12\xa4\x42" +
		"\xb7\xe7\xa7\x01\xbc\x34\xd6\x86\xfa\x87\xdf\xae" +
		"\x80\x22\x00\x10STUN test client" +
		"\x00\x24\x00\x04\x6e\x00\x01\xff" +
		"\x80\x29\x00\x08\x93\x2f\xf9\xb1\x51\x26\x3b\x36" +
		"\x00\x06\x00\x09\x65\x76\x74\x6a\x3a\x68\x36\x76\x59\x20\x20\x20" +
		"\x00\x08\x00\x14\x9a\xea\xa7\x0c\xbf\xd8\xcb\x56\x78\x1e\xf2\xb5" +
		"\xb2\xd3\xf2\x49\xc1\xb5\x71\xa2" +
		"\x80\x28\x00\x04\xe5\x7a\x3b\xcf")
	// 2.4: long-term credentials request: not a probe.
	rfc5769LongTerm = []byte("\x00\x01\x00\x60\x21\x12\xa4\x42" +
		"\x78\xad\x34\x33\xc6\xad\x72\xc0\x29\xda\x41\x2e" +
		"\x00\x06\x00\x12\xe3\x83\x9e\xe3\x83\x88\xe3\x83\xaa\xe3\x83\x83" +
		"\xe3\x82\xaf\xe3\x82\xb9\x00\x00" +
		"\x00\x15\x00\x1c\x66\x2f\x2f\x34\x39\x39\x6b\x39\x35\x34\x64\x36" +
		"\x4f\x4c\x33\x34\x6f\x4c\x39\x46\x53\x54\x76\x79\x36\x34\x73\x41" +
		"\x00\x14\x00\x0b\x65\x78\x61\x6d\x70\x6c\x65\x2e\x6f\x72\x67\x00" +
		"\x00\x08\x00\x14\xf6\x70\x24\x65\x6d\xd6\x4a\x3e\x02\xb8\xe0\x71" +
		"\x2e\x85\xc9\xa2\x8c\xa8\x96\x66")
	// 2.2: IPv4 response for 192.0.2.1:32853.
	rfc5769RespIPv4 = []byte("\x01\x01\x00\x3c\x21\x12\xa4\x42" +
		"\xb7\xe7\xa7\x01\xbc\x34\xd6\x86\xfa\x87\xdf\xae" +
		"\x80\x22\x00\x0b\x74\x65\x73\x74\x20\x76\x65\x63\x74\x6f\x72\x20" +
		"\x00\x20\x00\x08\x00\x01\xa1\x47\xe1\x12\xa6\x43" +
		"\x00\x08\x00\x14\x2b\x91\xf5\x99\xfd\x9e\x90\xc3\x8c\x74\x89\xf9" +
		"\x2a\xf9\xba\x53\xf0\x6b\xe7\xd7" +
		"\x80\x28\x00\x04\xc0\x7d\x4c\x96")
	// 2.3: IPv6 response for [2001:db8:1234:5678:11:2233:4455:6677]:32853.
	rfc5769RespIPv6 = []byte("\x01\x01\x00\x48\x21\x12\xa4\x42" +
		"\xb7\xe7\xa7\x01\xbc\x34\xd6\x86\xfa\x87\xdf\xae" +
		"\x80\x22\x00\x0b\x74\x65\x73\x74\x20\x76\x65\x63\x74\x6f\x72\x20" +
		"\x00\x20\x00\x14\x00\x02\xa1\x47" +
		"\x01\x13\xa9\xfa\xa5\xd3\xf1\x79\xbc\x25\xf4\xb5\xbe\xd2\xb9\xd9" +
		"\x00\x08\x00\x14\xa3\x82\x95\x4e\x4b\xe6\x7b\xf1\x17\x84\xc9\x7c" +
		"\x82\x92\xc2\x75\xbf\xe3\xed\x41" +
		"\x80\x28\x00\x04\xc8\xfb\x0b\x4c")
)

// bindingRequest builds a real STUN Binding request with pion.
func bindingRequest(t testing.TB, setters ...stun.Setter) *stun.Message {
	t.Helper()
	m, err := stun.Build(append([]stun.Setter{stun.TransactionID, stun.BindingRequest}, setters...)...)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	return m
}

func TestParseProbe(t *testing.T) {
	plain := bindingRequest(t).Raw
	withFP := bindingRequest(t, stun.NewSoftware("lb-check"), stun.Fingerprint).Raw
	badFP := bytes.Clone(withFP)
	badFP[len(badFP)-1] ^= 1
	fpNotLast := bindingRequest(t, stun.Fingerprint, stun.NewSoftware("x")).Raw
	priority := bindingRequest(t, stun.RawAttribute{Type: 0x0024, Value: []byte{1, 2, 3, 4}}).Raw
	indication := bytes.Clone(plain)
	binary.BigEndian.PutUint16(indication, 0x0011)
	badCookie := bytes.Clone(plain)
	badCookie[4] ^= 0xff
	topBits := bytes.Clone(plain)
	topBits[0] |= 0x40
	longer := append(bytes.Clone(plain), 0, 0, 0, 0) // length field says 0
	oddLen := bytes.Clone(withFP)
	binary.BigEndian.PutUint16(oddLen[2:], uint16(len(oddLen)-stunHeaderLen-2))
	overflow := bytes.Clone(withFP)
	binary.BigEndian.PutUint16(overflow[stunHeaderLen+2:], 200) // SOFTWARE length past the end

	for _, tc := range []struct {
		name string
		b    []byte
		want ProbeResult
	}{
		{"plain", plain, ProbeAnswered},
		{"software+fingerprint", withFP, ProbeAnswered},
		{"rfc5769 request with USERNAME", rfc5769Request, ProbeRejected},
		{"rfc5769 long-term request", rfc5769LongTerm, ProbeRejected},
		{"rfc5769 ipv4 response", rfc5769RespIPv4, ProbeRejected},
		{"rfc5769 ipv6 response", rfc5769RespIPv6, ProbeRejected},
		{"comprehension-required PRIORITY", priority, ProbeRejected},
		{"binding indication", indication, ProbeRejected},
		{"bad fingerprint", badFP, ProbeMalformed},
		{"fingerprint not last", fpNotLast, ProbeMalformed},
		{"bad cookie", badCookie, ProbeMalformed},
		{"top bits set", topBits, ProbeMalformed},
		{"trailing bytes", longer, ProbeMalformed},
		{"length not multiple of 4", oddLen, ProbeMalformed},
		{"attribute past the end", overflow, ProbeMalformed},
		{"short header", plain[:19], ProbeMalformed},
		{"empty", nil, ProbeMalformed},
	} {
		if got := parseProbe(tc.b); got != tc.want {
			t.Errorf("%s: parseProbe = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestBuildProbeResponseRFC5769 checks the XOR-MAPPED-ADDRESS encoding
// against the RFC 5769 sample responses, byte for byte, and the whole
// response against pion's decoder.
func TestBuildProbeResponseRFC5769(t *testing.T) {
	for _, tc := range []struct {
		name   string
		sample []byte
		from   string
		attrAt int // offset of XOR-MAPPED-ADDRESS in the sample
		alen   int
	}{
		{"ipv4", rfc5769RespIPv4, "192.0.2.1:32853", 36, 8},
		{"ipv6", rfc5769RespIPv6, "[2001:db8:1234:5678:11:2233:4455:6677]:32853", 36, 20},
		{"ipv4-mapped sender", rfc5769RespIPv4, "[::ffff:192.0.2.1]:32853", 36, 8},
	} {
		from := netip.MustParseAddrPort(tc.from)
		var buf [probeRespMax]byte
		n := buildProbeResponse(&buf, tc.sample, from) // uses only cookie and transaction ID
		got := buf[stunHeaderLen : stunHeaderLen+4+tc.alen]
		want := tc.sample[tc.attrAt : tc.attrAt+4+tc.alen]
		if !bytes.Equal(got, want) {
			t.Errorf("%s: XOR-MAPPED-ADDRESS % x, RFC 5769 has % x", tc.name, got, want)
		}
		m := &stun.Message{Raw: buf[:n]}
		if err := m.Decode(); err != nil {
			t.Fatalf("%s: pion decode: %v", tc.name, err)
		}
		if m.Type != stun.BindingSuccess || !bytes.Equal(m.TransactionID[:], tc.sample[8:20]) {
			t.Errorf("%s: type %v txid %x", tc.name, m.Type, m.TransactionID)
		}
		if err := stun.Fingerprint.Check(m); err != nil {
			t.Errorf("%s: fingerprint: %v", tc.name, err)
		}
		var xa stun.XORMappedAddress
		if err := xa.GetFrom(m); err != nil {
			t.Fatalf("%s: XOR-MAPPED-ADDRESS: %v", tc.name, err)
		}
		if a, _ := netip.AddrFromSlice(xa.IP); a.Unmap() != from.Addr().Unmap() || xa.Port != int(from.Port()) {
			t.Errorf("%s: mapped %v:%d, want %v", tc.name, xa.IP, xa.Port, from)
		}
	}
}

// TestProbeAnsweredWhenReady uses pion's STUN client over a real UDP socket
// pair on loopback and checks the mapped address is the client's own.
func TestProbeAnsweredWhenReady(t *testing.T) {
	verifyNoLeaks(t)
	for _, tc := range []struct{ network, listen string }{
		{"udp4", "127.0.0.1:0"},
		{"udp6", "[::1]:0"},
	} {
		t.Run(tc.network, func(t *testing.T) {
			if tc.network == "udp6" {
				if c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback}); err != nil {
					t.Skipf("no IPv6 loopback: %v", err)
				} else {
					_ = c.Close()
				}
			}
			h, _ := newHealth(t, nil)
			srv := startProbeServer(t, h, tc.network, tc.listen)
			conn := dialClient(t, tc.network, srv.addr())
			client, err := stun.NewClient(conn, stun.WithRTO(5*time.Second), stun.WithNoRetransmit)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = client.Close() }()

			req := bindingRequest(t, stun.Fingerprint)
			var (
				res    stun.Event
				called bool
			)
			if err := client.Do(req, func(e stun.Event) { res, called = e, true }); err != nil {
				t.Fatalf("Do: %v", err)
			}
			if !called || res.Error != nil {
				t.Fatalf("no answer: called=%v err=%v", called, res.Error)
			}
			if res.Message.Type != stun.BindingSuccess || res.Message.TransactionID != req.TransactionID {
				t.Fatalf("answer type %v txid %x, want success %x", res.Message.Type, res.Message.TransactionID, req.TransactionID)
			}
			if err := stun.Fingerprint.Check(res.Message); err != nil {
				t.Errorf("fingerprint: %v", err)
			}
			var xa stun.XORMappedAddress
			if err := xa.GetFrom(res.Message); err != nil {
				t.Fatal(err)
			}
			local := conn.LocalAddr().(*net.UDPAddr).AddrPort()
			if xa.String() != local.String() {
				t.Errorf("XOR-MAPPED-ADDRESS %v, client is %v", xa.String(), local)
			}
			// The server counts after its write returns. Its reader handles
			// packets in order, so once a marker sent now is echoed, the
			// probe has been counted.
			if extra := readUntilMarker(t, dialClient(t, tc.network, srv.addr())); len(extra) != 0 {
				t.Errorf("%d unexpected datagrams", len(extra))
			}
			if got := h.ProbeStats(); got[ProbeAnswered] != 1 {
				t.Errorf("stats %v, want one answered", got)
			}
		})
	}
}

// sendProbe writes a fresh Binding request and returns its transaction ID.
func sendProbe(t *testing.T, c *net.UDPConn) [stun.TransactionIDSize]byte {
	t.Helper()
	m := bindingRequest(t, stun.Fingerprint)
	if _, err := c.Write(m.Raw); err != nil {
		t.Fatalf("write probe: %v", err)
	}
	return m.TransactionID
}

// answeredIDs decodes the datagrams as Binding success responses and returns
// their transaction IDs.
func answeredIDs(t *testing.T, got [][]byte) [][stun.TransactionIDSize]byte {
	t.Helper()
	var ids [][stun.TransactionIDSize]byte
	for _, b := range got {
		m := &stun.Message{Raw: b}
		if err := m.Decode(); err != nil || m.Type != stun.BindingSuccess {
			t.Fatalf("not a Binding success response (%v): % x", err, b)
		}
		ids = append(ids, m.TransactionID)
	}
	return ids
}

// TestProbeSilentWhenNotReady: every unready condition silences the probe,
// and it answers again once the condition clears. Silence is proven without
// waiting: the server handles packets in order, so an answer to the probe
// would arrive before the echo of the marker sent after it.
func TestProbeSilentWhenNotReady(t *testing.T) {
	verifyNoLeaks(t)
	h, f := newHealth(t, func(c *Config) { c.MaxSessions = 2 })
	srv := startProbeServer(t, h, "udp4", "127.0.0.1:0")
	c := dialClient(t, "udp4", srv.addr())

	for i, cond := range []struct {
		name         string
		set, restore func()
	}{
		{"draining", func() { h.Drainer().Drain("test") }, func() {
			if err := h.Drainer().Undrain(); err != nil {
				t.Fatal(err)
			}
		}},
		{"full", func() { f.sessions.Store(2) }, func() { f.sessions.Store(0) }},
		{"unbound", func() { f.unbound.Store(true) }, func() { f.unbound.Store(false) }},
		{"not joined", func() { f.notJoin.Store(true) }, func() { f.notJoin.Store(false) }},
	} {
		cond.set()
		sendProbe(t, c)
		if got := readUntilMarker(t, c); len(got) != 0 {
			t.Errorf("%s: %d answers while not ready", cond.name, len(got))
		}
		if st := h.ProbeStats(); st[ProbeNotReady] != uint64(i+1) || st[ProbeAnswered] != uint64(i) {
			t.Errorf("%s: stats %v", cond.name, st)
		}
		cond.restore()
		id := sendProbe(t, c)
		if ids := answeredIDs(t, readUntilMarker(t, c)); len(ids) != 1 || ids[0] != id {
			t.Errorf("%s cleared: answers %x, want one for %x", cond.name, ids, id)
		}
	}
}

// TestProbeRateLimit: a source gets Burst answers and no more; another source
// has its own bucket; the global bucket caps all sources together.
func TestProbeRateLimit(t *testing.T) {
	verifyNoLeaks(t)
	t.Run("per source", func(t *testing.T) {
		h, _ := newHealth(t, func(c *Config) { c.Probe = ProbeConfig{Rate: 0.001, Burst: 2} })
		srv := startProbeServer(t, h, "udp4", "127.0.0.1:0")
		a := dialClient(t, "udp4", srv.addr())
		var sent [][stun.TransactionIDSize]byte
		for range 5 {
			sent = append(sent, sendProbe(t, a))
		}
		ids := answeredIDs(t, readUntilMarker(t, a))
		if len(ids) != 2 || ids[0] != sent[0] || ids[1] != sent[1] {
			t.Errorf("answers %x, want the first two of %x", ids, sent)
		}
		b := dialClientFrom(t, "udp4", netip.MustParseAddrPort("127.0.0.2:0"), srv.addr())
		if ids := answeredIDs(t, probeOnce(t, b)); len(ids) != 1 {
			t.Errorf("second source: %d answers, want 1", len(ids))
		}
		st := h.ProbeStats()
		if st[ProbeAnswered] != 3 || st[ProbeRateLimited] != 3 {
			t.Errorf("stats %v, want 3 answered, 3 rate limited", st)
		}
	})
	t.Run("global", func(t *testing.T) {
		h, _ := newHealth(t, func(c *Config) { c.Probe = ProbeConfig{GlobalRate: 0.001, GlobalBurst: 1} })
		srv := startProbeServer(t, h, "udp4", "127.0.0.1:0")
		a := dialClient(t, "udp4", srv.addr())
		b := dialClientFrom(t, "udp4", netip.MustParseAddrPort("127.0.0.2:0"), srv.addr())
		if ids := answeredIDs(t, probeOnce(t, a)); len(ids) != 1 {
			t.Errorf("first source: %d answers, want 1", len(ids))
		}
		if ids := answeredIDs(t, probeOnce(t, b)); len(ids) != 0 {
			t.Errorf("second source: %d answers over the global limit", len(ids))
		}
		if st := h.ProbeStats(); st[ProbeAnswered] != 1 || st[ProbeRateLimited] != 1 {
			t.Errorf("stats %v", st)
		}
	})
}

// probeOnce sends one probe and returns what arrives before the marker.
func probeOnce(t *testing.T, c *net.UDPConn) [][]byte {
	t.Helper()
	sendProbe(t, c)
	return readUntilMarker(t, c)
}

// recordWriter captures what HandleProbe writes, for tests without sockets.
type recordWriter struct {
	n   int
	to  netip.AddrPort
	err error
}

func (w *recordWriter) WriteToAddrPort(b []byte, addr netip.AddrPort) (int, error) {
	w.n++
	w.to = addr
	return len(b), w.err
}

// TestProbeCounts: each kind of bad input lands in its own counter and is
// never answered; a failing writer counts as a write error.
func TestProbeCounts(t *testing.T) {
	h, _ := newHealth(t, nil)
	from := netip.MustParseAddrPort("192.0.2.7:4000")
	var w recordWriter
	h.HandleProbe(rfc5769Request, from, &w)                    // USERNAME
	h.HandleProbe([]byte("\x00\x01\x00\x00garbage"), from, &w) // short
	h.HandleProbe(bindingRequest(t).Raw, netip.AddrPort{}, &w) // no source
	h.HandleProbe(bindingRequest(t).Raw, from, &w)             // answered
	w.err = errors.New("socket closed")
	h.HandleProbe(bindingRequest(t).Raw, from, &w) // write error
	want := ProbeStats{ProbeAnswered: 1, ProbeRejected: 1, ProbeMalformed: 2, ProbeWriteError: 1}
	if got := h.ProbeStats(); got != want {
		t.Errorf("stats %v, want %v", got, want)
	}
	if w.n != 2 || w.to != from {
		t.Errorf("writes %d to %v, want 2 to %v", w.n, w.to, from)
	}
}

// TestProbeAllocs pins the answered path at zero allocations.
func TestProbeAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	h, _ := newHealth(t, func(c *Config) {
		c.Probe = ProbeConfig{Rate: 1e9, Burst: 1 << 20, GlobalRate: 1e9, GlobalBurst: 1 << 20}
	})
	req := bindingRequest(t, stun.Fingerprint).Raw
	from := netip.MustParseAddrPort("[2001:db8::1]:5000")
	var w recordWriter
	if n := testing.AllocsPerRun(1000, func() { h.HandleProbe(req, from, &w) }); n != 0 {
		t.Errorf("HandleProbe allocates %v per probe", n)
	}
	if st := h.ProbeStats(); st[ProbeAnswered] != 1001 {
		t.Errorf("stats %v, want every probe answered", st)
	}
}

// BenchmarkHandleProbe measures the answered path (parse, readiness, rate
// limit, build, write to a discarding writer).
func BenchmarkHandleProbe(b *testing.B) {
	h, _ := newHealth(b, func(c *Config) {
		c.Probe = ProbeConfig{Rate: 1e9, Burst: 1 << 20, GlobalRate: 1e9, GlobalBurst: 1 << 20}
	})
	req := bindingRequest(b, stun.Fingerprint).Raw
	from := netip.MustParseAddrPort("192.0.2.7:4000")
	var w recordWriter
	b.ReportAllocs()
	for b.Loop() {
		h.HandleProbe(req, from, &w)
	}
}
