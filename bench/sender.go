package bench

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/stun/v3"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// SenderEnv is the environment variable that turns the current binary into
// a bench sender process (see MaybeRunSender).
const SenderEnv = "ONEPORT_BENCH_SENDER"

// MaybeRunSender runs this process as a bench sender and exits, when
// SenderEnv is "1" (RunMux starts its senders that way), or as a fan-out
// child when ChildEnv names a role (RunFanout's server and clients);
// otherwise it returns at once. Call it first thing in main and in TestMain
// of any package that calls RunMux or RunFanout.
func MaybeRunSender() {
	maybeRunChild()
	if os.Getenv(SenderEnv) != "1" {
		return
	}
	if err := runSender(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// The parent and a sender speak JSON lines: the parent writes a senderJob,
// the sender answers with a "ready" senderEvent; then for every senderCmd
// "run" the sender sends and answers "done". "quit" or a closed stdin ends
// the sender.

type senderJob struct {
	Network          string        `json:"network"`
	Target           string        `json:"target"` // receiver address, loopback only
	Source           string        `json:"source"` // local IP of the clients' sockets; "": the kernel's choice
	Sessions         []sessionSpec `json:"sessions"`
	Batch            int           `json:"batch"`
	HandshakeTimeout time.Duration `json:"handshake_timeout"`
	HostileSockets   int           `json:"hostile_sockets"`
	HostileSSRCBase  uint32        `json:"hostile_ssrc_base"`
	Deadline         time.Time     `json:"deadline"` // the sender exits by itself then
	Nice             int           `json:"nice"`
}

type senderCmd struct {
	Cmd          string        `json:"cmd"` // "run" or "quit"
	Size         int           `json:"size"`
	PayloadType  uint8         `json:"pt"` // the run's tag (see runTagger)
	Duration     time.Duration `json:"duration"`
	Rate         float64       `json:"rate"`          // this sender's packets/s, valid and hostile; 0: as fast as it can
	HostileRatio float64       `json:"hostile_ratio"` // share of hostile packets; 0: none
}

type senderEvent struct {
	Event       string        `json:"event"` // "ready" or "done"
	PID         int           `json:"pid"`
	Bound       int           `json:"bound,omitempty"`  // sessions whose check was answered
	Failed      int           `json:"failed,omitempty"` // sessions whose check was not
	Sent        uint64        `json:"sent,omitempty"`   // valid RTP packets sent
	Bytes       uint64        `json:"bytes,omitempty"`
	Hostile     HostileCounts `json:"hostile,omitzero"`
	WriteErrors uint64        `json:"write_errors,omitempty"`
	Elapsed     time.Duration `json:"elapsed,omitempty"`
}

// HostileCounts counts hostile packets by kind. A spoofer names a bound
// session's ufrag from an address that session never answered.
type HostileCounts struct {
	UnknownUfrag uint64 `json:"unknown_ufrag"` // Binding requests naming a ufrag no session has
	Junk         uint64 `json:"junk"`          // random bytes
	SpoofedSTUN  uint64 `json:"spoofed_stun"`  // Binding requests naming a bound ufrag, wrong MESSAGE-INTEGRITY
	SpoofedRTP   uint64 `json:"spoofed_rtp"`   // RTP from the spoofing addresses
}

// Total is the number of hostile packets of every kind.
func (h HostileCounts) Total() uint64 { return h.UnknownUfrag + h.Junk + h.SpoofedSTUN + h.SpoofedRTP }

func (h HostileCounts) add(o HostileCounts) HostileCounts {
	return HostileCounts{h.UnknownUfrag + o.UnknownUfrag, h.Junk + o.Junk, h.SpoofedSTUN + o.SpoofedSTUN, h.SpoofedRTP + o.SpoofedRTP}
}

// batchWriter is WriteBatch of x/net's ipv4 and ipv6 PacketConns (sendmmsg
// on Linux).
type batchWriter interface {
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// clientSock is one client socket, connected to the receiver.
type clientSock struct {
	conn *net.UDPConn
	bw   batchWriter
	spec sessionSpec
	seq  uint16
	ts   uint32
}

// hostileSock sends one kind of hostile traffic; its packets are built once.
type hostileSock struct {
	conn *net.UDPConn
	bw   batchWriter
	kind int      // hostileUnknown, hostileJunk or hostileSpoof
	pkts [][]byte // spoofers: the STUN request, then the RTP packet
	next int
}

const (
	hostileUnknown = iota
	hostileJunk
	hostileSpoof
	numHostileKinds
)

type sender struct {
	job     senderJob
	socks   []*clientSock // sockets of sessions whose check was answered
	hostile []*hostileSock
	turn    int   // the hostile socket that sent last
	slots   []int // per hostile batch slot: which of a spoofer's packets it held
	hc      HostileCounts
}

func runSender(in io.Reader, out io.Writer) error {
	rd := bufio.NewReader(in)
	enc := json.NewEncoder(out)
	var job senderJob
	line, err := rd.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("bench sender: read job: %w", err)
	}
	if err := json.Unmarshal(line, &job); err != nil {
		return fmt.Errorf("bench sender: job: %w", err)
	}
	// Outlive the parent by no more than the deadline it set.
	if d := time.Until(job.Deadline); d > 0 {
		time.AfterFunc(d, func() {
			fmt.Fprintln(os.Stderr, "bench sender: deadline passed, exiting")
			os.Exit(3)
		})
	} else {
		return errors.New("bench sender: job deadline already passed")
	}
	if job.Nice != 0 {
		if err := setOwnNice(job.Nice); err != nil {
			return err
		}
	}
	s := &sender{job: job}
	defer s.close()
	all, err := s.open()
	if err != nil {
		return err
	}
	s.socks = s.handshake(all)
	ready := senderEvent{Event: "ready", PID: os.Getpid(), Bound: len(s.socks), Failed: len(all) - len(s.socks)}
	if err := s.openHostile(); err != nil {
		return err
	}
	if err := enc.Encode(ready); err != nil {
		return fmt.Errorf("bench sender: write: %w", err)
	}
	for {
		line, err := rd.ReadBytes('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil // the parent is gone or done
			}
			return fmt.Errorf("bench sender: read command: %w", err)
		}
		var cmd senderCmd
		if err := json.Unmarshal(line, &cmd); err != nil {
			return fmt.Errorf("bench sender: command: %w", err)
		}
		switch cmd.Cmd {
		case "quit":
			return nil
		case "run":
			ev, err := s.run(cmd)
			if err != nil {
				return err
			}
			if err := enc.Encode(ev); err != nil {
				return fmt.Errorf("bench sender: write: %w", err)
			}
		default:
			return fmt.Errorf("bench sender: unknown command %q", cmd.Cmd)
		}
	}
}

func (s *sender) dial() (*net.UDPConn, batchWriter, error) {
	raddr, err := net.ResolveUDPAddr(s.job.Network, s.job.Target)
	if err != nil {
		return nil, nil, fmt.Errorf("bench sender: target: %w", err)
	}
	if !raddr.IP.IsLoopback() {
		return nil, nil, fmt.Errorf("bench sender: target %v is not loopback", raddr)
	}
	var laddr *net.UDPAddr
	if s.job.Source != "" {
		if laddr, err = net.ResolveUDPAddr(s.job.Network, net.JoinHostPort(s.job.Source, "0")); err != nil {
			return nil, nil, fmt.Errorf("bench sender: source: %w", err)
		}
	}
	c, err := net.DialUDP(s.job.Network, laddr, raddr)
	if err != nil {
		return nil, nil, fmt.Errorf("bench sender: dial: %w", err)
	}
	if s.job.Network == "udp6" {
		return c, ipv6.NewPacketConn(c), nil
	}
	return c, ipv4.NewPacketConn(c), nil
}

func (s *sender) open() ([]*clientSock, error) {
	all := make([]*clientSock, 0, len(s.job.Sessions))
	for _, spec := range s.job.Sessions {
		c, bw, err := s.dial()
		if err != nil {
			closeClients(all)
			return nil, err
		}
		all = append(all, &clientSock{conn: c, bw: bw, spec: spec})
	}
	return all, nil
}

// handshake sends every socket's connectivity check, retransmitting with
// backoff until it is answered or the handshake timeout passes, and
// returns the sockets that were answered.
func (s *sender) handshake(all []*clientSock) []*clientSock {
	deadline := time.Now().Add(s.job.HandshakeTimeout)
	ok := make([]bool, len(all))
	var wg sync.WaitGroup
	for i, cs := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok[i] = cs.check(deadline)
		}()
	}
	wg.Wait()
	var bound []*clientSock
	for i, cs := range all {
		if ok[i] {
			bound = append(bound, cs)
		} else {
			_ = cs.conn.Close()
		}
	}
	return bound
}

func (cs *clientSock) check(deadline time.Time) bool {
	tid := stun.NewTransactionID()
	req, err := bindingRequest(tid, cs.spec.ServerUfrag, cs.spec.ClientUfrag, cs.spec.ServerPwd)
	if err != nil {
		return false
	}
	buf := make([]byte, 1500)
	rto := 100 * time.Millisecond
	for time.Now().Before(deadline) {
		if _, err := cs.conn.Write(req); err != nil && !isRefused(err) {
			return false
		}
		wait := time.Now().Add(rto)
		if wait.After(deadline) {
			wait = deadline
		}
		_ = cs.conn.SetReadDeadline(wait)
		for {
			n, err := cs.conn.Read(buf)
			if err != nil {
				break // timeout, or refused while the receiver starts: retransmit
			}
			if checkBindingResponse(buf[:n], tid, cs.spec.ServerPwd) {
				_ = cs.conn.SetReadDeadline(time.Time{})
				return true
			}
		}
		rto = min(2*rto, time.Second)
	}
	return false
}

// openHostile opens the hostile sockets and builds their packets: sockets
// take the kinds in turn; spoofers name this sender's bound ufrags.
func (s *sender) openHostile() error {
	for i := range s.job.HostileSockets {
		c, bw, err := s.dial()
		if err != nil {
			return err
		}
		h := &hostileSock{conn: c, bw: bw, kind: i % numHostileKinds}
		s.hostile = append(s.hostile, h)
		switch h.kind {
		case hostileUnknown:
			req, err := bindingRequest(stun.NewTransactionID(), newUfrag(), randomIceChars(8), newPassword())
			if err != nil {
				return err
			}
			h.pkts = [][]byte{req}
		case hostileJunk:
			for range 16 {
				b := make([]byte, 1+int(randUint32()%MaxPacketSize))
				_, _ = rand.Read(b)
				h.pkts = append(h.pkts, b)
			}
		case hostileSpoof:
			if len(s.socks) == 0 {
				continue
			}
			victim := s.socks[i%len(s.socks)].spec
			// A wrong password: the attacker does not know the session's.
			req, err := bindingRequest(stun.NewTransactionID(), victim.ServerUfrag, randomIceChars(8), newPassword())
			if err != nil {
				return err
			}
			h.pkts = [][]byte{req} // the RTP half is built per run, at the run's size
		}
	}
	return nil
}

func (s *sender) close() {
	closeClients(s.socks)
	for _, h := range s.hostile {
		_ = h.conn.Close()
	}
}

func closeClients(cs []*clientSock) {
	for _, c := range cs {
		_ = c.conn.Close()
	}
}

// run sends RTP of cmd.Size bytes round-robin over the bound sockets, a
// sendmmsg batch per socket, for cmd.Duration, mixing hostile batches in at
// cmd.HostileRatio, paced to cmd.Rate when it is set.
func (s *sender) run(cmd senderCmd) (senderEvent, error) {
	if cmd.Size < MinPacketSize || cmd.Size > MaxPacketSize || cmd.Duration <= 0 || cmd.Duration > MaxDuration || cmd.PayloadType > 127 {
		return senderEvent{}, fmt.Errorf("bench sender: bad run command %+v", cmd)
	}
	ev := senderEvent{Event: "done", PID: os.Getpid()}
	if len(s.socks) == 0 {
		return ev, nil
	}
	batch := s.job.Batch
	ms := make([]ipv4.Message, batch)
	for i := range ms {
		b := make([]byte, cmd.Size)
		h := rtp.Header{Version: 2, PayloadType: cmd.PayloadType}
		if _, err := h.MarshalTo(b); err != nil {
			return ev, fmt.Errorf("bench sender: RTP header: %w", err)
		}
		for j := 12; j < len(b); j++ {
			b[j] = byte(j)
		}
		ms[i].Buffers = [][]byte{b}
	}
	hostileMs := s.prepareHostile(cmd)
	var credit float64
	hostileRatio := 0.0
	if cmd.HostileRatio > 0 && len(s.hostile) > 0 {
		hostileRatio = cmd.HostileRatio / (1 - cmd.HostileRatio)
	}
	hc0 := s.hc
	start := time.Now()
	end := start.Add(cmd.Duration)
	var sentAll uint64
	for i := 0; ; i++ {
		now := time.Now()
		if !now.Before(end) {
			break
		}
		cs := s.socks[i%len(s.socks)]
		for k := range ms {
			b := ms[k].Buffers[0]
			binary.BigEndian.PutUint16(b[2:4], cs.seq+uint16(k))
			binary.BigEndian.PutUint32(b[4:8], cs.ts)
			binary.BigEndian.PutUint32(b[8:12], cs.spec.SSRC)
		}
		n, err := cs.bw.WriteBatch(ms, 0)
		if err != nil {
			ev.WriteErrors++
		}
		cs.seq += uint16(n)
		cs.ts += 3000
		ev.Sent += uint64(n)
		ev.Bytes += uint64(n * cmd.Size)
		sentAll += uint64(max(n, 0))
		if hostileRatio > 0 {
			credit += float64(batch) * hostileRatio
			for credit >= 1 {
				k := min(batch, int(credit))
				credit -= float64(k)
				sent, err := s.sendHostile(hostileMs[:k])
				if err != nil {
					ev.WriteErrors++
				}
				sentAll += uint64(sent)
			}
		}
		if cmd.Rate > 0 {
			due := start.Add(time.Duration(float64(sentAll) / cmd.Rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				time.Sleep(min(d, time.Until(end)))
			}
		}
	}
	ev.Elapsed = time.Since(start)
	ev.Hostile = hostileDiff(s.hc, hc0)
	return ev, nil
}

// prepareHostile builds the run's RTP for the spoofers and returns the
// message slots hostile batches use.
func (s *sender) prepareHostile(cmd senderCmd) []ipv4.Message {
	if cmd.HostileRatio <= 0 {
		return nil
	}
	for i, h := range s.hostile {
		if h.kind != hostileSpoof || len(h.pkts) == 0 {
			continue
		}
		b := make([]byte, cmd.Size)
		hdr := rtp.Header{Version: 2, PayloadType: cmd.PayloadType, SSRC: s.job.HostileSSRCBase + uint32(i)}
		_, _ = hdr.MarshalTo(b)
		h.pkts = append(h.pkts[:1], b)
	}
	ms := make([]ipv4.Message, s.job.Batch)
	for i := range ms {
		ms[i].Buffers = make([][]byte, 1)
	}
	return ms
}

// sendHostile sends one batch from the next hostile socket.
func (s *sender) sendHostile(ms []ipv4.Message) (int, error) {
	var h *hostileSock
	for range s.hostile {
		s.turn = (s.turn + 1) % len(s.hostile)
		if h = s.hostile[s.turn]; len(h.pkts) > 0 {
			break
		}
	}
	if h == nil || len(h.pkts) == 0 {
		return 0, nil
	}
	s.slots = s.slots[:0]
	for i := range ms {
		ms[i].Buffers[0] = h.pkts[h.next]
		s.slots = append(s.slots, h.next)
		h.next = (h.next + 1) % len(h.pkts)
	}
	n, err := h.bw.WriteBatch(ms, 0)
	n = max(n, 0)
	switch h.kind {
	case hostileUnknown:
		s.hc.UnknownUfrag += uint64(n)
	case hostileJunk:
		s.hc.Junk += uint64(n)
	case hostileSpoof:
		for _, k := range s.slots[:n] {
			if k == 0 {
				s.hc.SpoofedSTUN++
			} else {
				s.hc.SpoofedRTP++
			}
		}
	}
	return n, err
}

func hostileDiff(a, b HostileCounts) HostileCounts {
	return HostileCounts{a.UnknownUfrag - b.UnknownUfrag, a.Junk - b.Junk, a.SpoofedSTUN - b.SpoofedSTUN, a.SpoofedRTP - b.SpoofedRTP}
}

func randUint32() uint32 {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return binary.BigEndian.Uint32(b[:])
}

// isRefused reports an ICMP port unreachable echoed on a connected socket.
func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
