package serve

// The flood side of flood_linux_test.go: many UDP sockets on loopback
// source addresses sending sendmmsg batches (x/net's ipv4.PacketConn
// WriteBatch), the hostile datagrams they carry, and what the kernel and the
// node's process say about them (/proc/net/udp drops, /proc/PID/status).
//
// The bench's senders (bench/sender.go) do the same with a handful of kinds
// of packet built once and repeated; a flood test wants every datagram
// different (random ufrags, lengths, first bytes) and knows, for each one,
// which drop reason the mux must count it under, so it has its own.

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/oneport/oneport/mux"
)

// floodBatch is how many datagrams one sendmmsg carries.
const floodBatch = 64

// floodMaxPacket is the mux's default Config.MaxPacketSize: a datagram
// larger than this is dropped as truncated.
const floodMaxPacket = 1600

// Kinds of flood datagram beyond the mux's drop reasons (a kind below
// mux.NumDropReasons is the reason the datagram must be dropped for).
const (
	floodKindProbe   = int(mux.NumDropReasons) + iota // a Binding request without USERNAME: handed to lbhealth
	floodKindSession                                  // names a live session's ufrag: queued to it, unbound_limit or unbound_rate
	floodNumKinds
)

// floodKindName names a kind for reports.
func floodKindName(k int) string {
	switch {
	case k < int(mux.NumDropReasons):
		return mux.DropReason(k).String()
	case k == floodKindProbe:
		return "health_probe"
	case k == floodKindSession:
		return "live_session"
	}
	return "invalid"
}

// floodCounts is what one flood sent, by kind.
type floodCounts struct {
	sent    uint64
	byKind  [floodNumKinds]uint64
	errs    uint64 // sendmmsg calls that failed
	elapsed time.Duration
	cut     bool // the deadline stopped the flood before its size
}

// flooder sends to one target from many connected UDP sockets, one
// sendmmsg batch from one socket at a time.
type flooder struct {
	conns []*net.UDPConn
	pcs   []*ipv4.PacketConn
	owned int // conns[:owned] are the flooder's to close
}

// newFlooder opens a socket from each source to to (port 0 in a source: the
// kernel picks a random ephemeral port); close closes them, and clean-up
// does if nothing did before.
func newFlooder(t *testing.T, to netip.AddrPort, srcs []netip.AddrPort) *flooder {
	t.Helper()
	f := &flooder{}
	t.Cleanup(f.close)
	for _, src := range srcs {
		c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(src), net.UDPAddrFromAddrPort(to))
		if err != nil {
			t.Fatalf("flood socket %v -> %v: %v", src, to, err)
		}
		f.conns = append(f.conns, c)
		f.pcs = append(f.pcs, ipv4.NewPacketConn(c))
		f.owned++
	}
	return f
}

// borrow adds a socket someone else owns and closes (the test member's
// relay socket) after the flooder's own.
func (f *flooder) borrow(c *net.UDPConn, pc *ipv4.PacketConn) {
	f.conns = append(f.conns, c)
	f.pcs = append(f.pcs, pc)
}

func (f *flooder) close() {
	for _, c := range f.conns[:f.owned] {
		_ = c.Close()
	}
	f.conns, f.pcs, f.owned = nil, nil, 0
}

// run sends up to total datagrams, stopping at deadline. Each batch goes
// from the socket pick chooses; fill writes one datagram for that socket
// into b (2 KiB) and returns its length and kind. Only datagrams the kernel
// took are counted.
func (f *flooder) run(total uint64, deadline time.Time, pick func() int, fill func(sock int, b []byte) (int, int)) (floodCounts, error) {
	var fc floodCounts
	ms := make([]ipv4.Message, floodBatch)
	bufs := make([][]byte, floodBatch)
	kinds := make([]int, floodBatch)
	for i := range ms {
		bufs[i] = make([]byte, 2048)
		ms[i].Buffers = [][]byte{nil}
	}
	start := time.Now()
	for batches := 0; fc.sent < total; batches++ {
		if batches%64 == 0 && time.Now().After(deadline) {
			fc.cut = true
			break
		}
		sock := pick()
		k := int(min(uint64(floodBatch), total-fc.sent))
		for i := range k {
			n, kind := fill(sock, bufs[i])
			ms[i].Buffers[0] = bufs[i][:n]
			kinds[i] = kind
		}
		n, err := f.pcs[sock].WriteBatch(ms[:k], 0)
		if err != nil {
			fc.errs++
			// A few transient refusals (ENOBUFS) are the kernel's to make;
			// many mean the flood is not reaching the node at all.
			if fc.errs > 1000 {
				fc.elapsed = time.Since(start)
				return fc, fmt.Errorf("flood: %d failed sendmmsg calls, the last: %w", fc.errs, err)
			}
		}
		for _, kind := range kinds[:max(n, 0)] {
			fc.byKind[kind]++
		}
		fc.sent += uint64(max(n, 0))
	}
	fc.elapsed = time.Since(start)
	return fc, nil
}

// replies counts the datagrams waiting on the flood's sockets (anything
// the node sent back), reading without blocking, at most 1,000 per socket.
func (f *flooder) replies() (int, error) {
	buf := make([]byte, 2048)
	total := 0
	for _, c := range f.conns {
		rc, err := c.SyscallConn()
		if err != nil {
			return total, fmt.Errorf("replies: %w", err)
		}
		cerr := rc.Control(func(fd uintptr) {
			for range 1000 {
				if _, _, err := unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT); err != nil {
					return // EAGAIN: nothing left
				}
				total++
			}
		})
		if cerr != nil {
			return total, fmt.Errorf("replies: %w", cerr)
		}
	}
	return total, nil
}

// floodSources returns n sources on distinct random 127.0.0.0/8
// addresses other than 127.0.0.1 (where the live clients are, so a flood can
// never come from a live flow's address), with port 0.
func floodSources(rng *rand.Rand, n int) []netip.AddrPort {
	seen := make(map[netip.Addr]bool, n)
	out := make([]netip.AddrPort, 0, n)
	for i := 0; len(out) < n && i < 100*n; i++ {
		a := netip.AddrFrom4([4]byte{127, byte(1 + rng.IntN(254)), byte(rng.IntN(256)), byte(1 + rng.IntN(254))})
		if seen[a] {
			continue
		}
		seen[a] = true
		out = append(out, netip.AddrPortFrom(a, 0))
	}
	return out
}

// floodRand is random bytes datagrams are cut from: one copy per datagram
// is far cheaper than a random number per byte, which matters under -race.
type floodRand []byte

func newFloodRand(rng *rand.Rand, size int) floodRand {
	b := make([]byte, size)
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b
}

// fill copies n random bytes into b.
func (rb floodRand) fill(rng *rand.Rand, b []byte) {
	off := rng.IntN(len(rb) - len(b) + 1)
	copy(b, rb[off:off+len(b)])
}

// floodIceChars is RFC 8839's ice-char set, as the mux's ufrags use.
const floodIceChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

// floodAppendIceChars appends n random ice-chars to b.
func floodAppendIceChars(rng *rand.Rand, b []byte, n int) []byte {
	for n > 0 {
		v := rng.Uint64()
		for i := 0; i < 10 && n > 0; i++ {
			b = append(b, floodIceChars[v&63])
			v >>= 6
			n--
		}
	}
	return b
}

// STUN attribute types and the FINGERPRINT XOR (RFC 8489, RFC 8445).
const (
	floodAttrUsername    = 0x0006
	floodAttrIntegrity   = 0x0008
	floodAttrPriority    = 0x0024
	floodAttrControlling = 0x802A
	floodAttrFingerprint = 0x8028
	floodFingerprintXOR  = 0x5354554e
	floodCookie          = 0x2112A442
)

// floodBindingRequest writes into b an ICE connectivity check as a client
// sends it: USERNAME user, PRIORITY, ICE-CONTROLLING, a MESSAGE-INTEGRITY of
// random bytes (the sender does not know the password) and a correct
// FINGERPRINT, so the message is well formed up to its integrity. It
// returns the length; b must hold 20 + 4 + len(user) + 3 + 64 bytes.
func floodBindingRequest(rng *rand.Rand, rb floodRand, b, user []byte) int {
	binary.BigEndian.PutUint16(b[0:2], 0x0001)
	binary.BigEndian.PutUint32(b[4:8], floodCookie)
	rb.fill(rng, b[8:20]) // transaction id
	off := 20
	attr := func(typ uint16, n int) []byte {
		binary.BigEndian.PutUint16(b[off:], typ)
		binary.BigEndian.PutUint16(b[off+2:], uint16(n))
		v := b[off+4 : off+4+n]
		padded := (n + 3) &^ 3
		clear(b[off+4+n : off+4+padded])
		off += 4 + padded
		return v
	}
	copy(attr(floodAttrUsername, len(user)), user)
	rb.fill(rng, attr(floodAttrPriority, 4))
	rb.fill(rng, attr(floodAttrControlling, 8))
	rb.fill(rng, attr(floodAttrIntegrity, 20))
	binary.BigEndian.PutUint16(b[2:4], uint16(off-20+8)) // the length counts FINGERPRINT
	fpAt := off
	fp := attr(floodAttrFingerprint, 4)
	binary.BigEndian.PutUint32(fp, crc32.ChecksumIEEE(b[:fpAt])^floodFingerprintXOR)
	return off
}

// floodJunkDatagram writes a junk datagram into b: random bytes of a random
// length (now and then empty, or over the mux's packet size) after a first
// byte that says RTP, DTLS or STUN (with or without the magic cookie) or
// anything at all. It returns the length.
func floodJunkDatagram(rng *rand.Rand, rb floodRand, b []byte) int {
	var n int
	switch r := rng.IntN(256); {
	case r == 0:
		n = 0
	case r < 5:
		n = floodMaxPacket + 1 + rng.IntN(len(b)-floodMaxPacket-1) // truncated
	case r < 64:
		n = 1 + rng.IntN(40) // short: below every header
	default:
		n = 1 + rng.IntN(1200)
	}
	rb.fill(rng, b[:n])
	if n == 0 {
		return 0
	}
	switch rng.IntN(5) {
	case 0: // RTP or RTCP
		b[0] = 0x80 | b[0]&0x3f
	case 1: // DTLS
		b[0] = 20 + b[0]%44
	case 2: // STUN with the magic cookie: a header the parser must check
		b[0] &= 3
		if n >= 8 {
			binary.BigEndian.PutUint32(b[4:8], floodCookie)
		}
		if n >= 20 && rng.IntN(4) == 0 {
			// A plausible length field, so the attribute walk runs.
			binary.BigEndian.PutUint16(b[2:4], uint16(min(n-20, rng.IntN(n-19))&^3))
		}
	case 3: // STUN's first byte without the cookie
		b[0] &= 3
	}
	return n
}

// floodPredict is the kind of b by the mux's own classification (its
// exported Classify and ParseSTUN): the drop reason it must be counted
// under, or floodKindProbe, or floodKindSession when live(ufrag) names a live
// session. The test predicts with the mux's parser; what it pins is that
// every datagram the node reads is counted under the reason its content
// calls for, and none is lost to the count.
func floodPredict(b []byte, live func(ufrag []byte) bool) int {
	if len(b) > floodMaxPacket {
		return int(mux.DropTruncated)
	}
	switch mux.Classify(b) {
	case mux.ClassOther:
		return int(mux.DropJunk)
	case mux.ClassDTLS, mux.ClassRTP:
		return int(mux.DropUnknownAddr)
	}
	kind, ufrag := mux.ParseSTUN(b)
	switch kind {
	case mux.StunInvalid:
		return int(mux.DropJunk)
	case mux.StunOther:
		return int(mux.DropNotRequest)
	case mux.StunBindingProbe:
		return floodKindProbe
	}
	if live != nil && live(ufrag) {
		return floodKindSession
	}
	return int(mux.DropUnknownUfrag)
}

// Relay frame layout (mux/relay.go): version, type, two zero bytes, client
// IP (16 bytes, IPv4-mapped), client port, sender clock in unix ms, the
// datagram, then a 16-byte truncated HMAC-SHA256 when a key is set.
const (
	floodRelayHeaderLen = 30
	floodRelayMACLen    = 16
)

// floodRelayFrame writes a frame of type typ (1-4) for a random client
// address, with a random datagram of up to 200 bytes, sent at sentMillis;
// version is normally 1. With key, the MAC is correct; without, it is random
// bytes. It returns the length.
func floodRelayFrame(rng *rand.Rand, rb floodRand, b []byte, version, typ byte, sentMillis int64, key []byte) int {
	b[0], b[1], b[2], b[3] = version, typ, 0, 0
	ip := netip.AddrFrom4([4]byte{10, byte(rng.IntN(256)), byte(rng.IntN(256)), byte(1 + rng.IntN(254))}).As16()
	copy(b[4:20], ip[:])
	binary.BigEndian.PutUint16(b[20:22], uint16(1+rng.IntN(65535)))
	binary.BigEndian.PutUint64(b[22:30], uint64(sentMillis))
	n := floodRelayHeaderLen
	if typ == 1 || typ == 2 {
		p := rng.IntN(201)
		rb.fill(rng, b[n:n+p])
		n += p
	}
	if key == nil {
		rb.fill(rng, b[n:n+floodRelayMACLen])
		return n + floodRelayMACLen
	}
	h := hmac.New(sha256.New, key)
	h.Write(b[:n])
	return n + copy(b[n:n+floodRelayMACLen], h.Sum(nil))
}

// floodKernelDrops sums the kernel's drop counters (/proc/net/udp's last column:
// datagrams discarded because the socket's receive buffer was full) of the
// sockets bound to 127.0.0.1 on the given ports.
func floodKernelDrops(ports ...uint16) (uint64, error) {
	f, err := os.Open("/proc/net/udp")
	if err != nil {
		return 0, fmt.Errorf("kernel drops: %w", err)
	}
	defer f.Close()
	want := make(map[string]bool, len(ports))
	for _, p := range ports {
		want[fmt.Sprintf("0100007F:%04X", p)] = true // 127.0.0.1, as the kernel prints it
	}
	var drops uint64
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 13 || !want[fields[1]] {
			continue
		}
		n, err := strconv.ParseUint(fields[12], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("kernel drops: %q: %w", sc.Text(), err)
		}
		drops += n
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("kernel drops: %w", err)
	}
	return drops, nil
}

// floodMem is a process's resident memory now and at its peak, from
// /proc/PID/status, in bytes.
type floodMem struct{ rss, hwm uint64 }

var errFloodNoMem = errors.New("no VmRSS/VmHWM in /proc/PID/status")

func floodReadMem(pid int) (floodMem, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return floodMem{}, fmt.Errorf("memory of pid %d: %w", pid, err)
	}
	var ms floodMem
	found := 0
	for line := range strings.SplitSeq(string(b), "\n") {
		name, val, ok := strings.Cut(line, ":")
		if !ok || name != "VmRSS" && name != "VmHWM" {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if err != nil {
			return floodMem{}, fmt.Errorf("memory of pid %d: %q: %w", pid, line, err)
		}
		if name == "VmRSS" {
			ms.rss = kb << 10
		} else {
			ms.hwm = kb << 10
		}
		found++
	}
	if found != 2 {
		return floodMem{}, fmt.Errorf("pid %d: %w", pid, errFloodNoMem)
	}
	return ms, nil
}
