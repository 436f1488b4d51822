package bench

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/pion/stun/v3"
)

// A capture's client datagrams, ready to replay: read with gopacket's
// pcapgo (pcap and pcapng), decoded down to UDP, grouped into the flows of
// the ICE sessions in it, and rewritten per copy to name new sessions.

// Bounds on a capture.
const (
	maxCaptureBytes     = 64 << 20
	maxCaptureDatagrams = 200_000
	maxCaptureFlows     = 64
)

// ErrNoSession is returned for a capture without an ICE connectivity check
// (a STUN Binding request with USERNAME): nothing in it names a session.
var ErrNoSession = errors.New("bench: capture holds no ICE connectivity check")

// capDatagram is one UDP datagram of a capture.
type capDatagram struct {
	at       time.Duration // since the capture's first datagram
	src, dst netip.AddrPort
	payload  []byte
}

// capFlow is one ICE session's client side in a capture: the client's
// address and what identifies the session in its packets.
type capFlow struct {
	client      netip.AddrPort
	clientUfrag string   // the USERNAME's part after ':'
	ssrcs       []uint32 // RTP and RTCP sender SSRCs, in order of appearance
}

// replayPlan is what a capture replays: the client datagrams sent to the
// server, each with its flow.
type replayPlan struct {
	server netip.AddrPort
	flows  []capFlow
	pkts   []planPkt
	span   time.Duration // first to last client datagram
}

type planPkt struct {
	at      time.Duration
	flow    int
	kind    pktKind
	payload []byte
}

// pktKind classifies a datagram by its first bytes (RFC 7983, RFC 5761).
type pktKind uint8

const (
	kindSTUN pktKind = iota
	kindDTLS
	kindRTP
	kindRTCP
	kindOther
	numPktKinds
)

var pktKindNames = [numPktKinds]string{"stun", "dtls", "rtp", "rtcp", "other"}

func (k pktKind) String() string { return pktKindNames[k] }

func classify(b []byte) pktKind {
	switch {
	case len(b) == 0:
		return kindOther
	case b[0] < 4:
		if isSTUN(b) {
			return kindSTUN
		}
		return kindOther
	case b[0] >= 20 && b[0] <= 63:
		return kindDTLS
	case b[0] >= 128 && b[0] <= 191 && len(b) >= 8:
		if b[1] >= 192 && b[1] <= 223 {
			return kindRTCP
		}
		if len(b) >= 12 {
			return kindRTP
		}
	}
	return kindOther
}

// readCapture reads the UDP datagrams of a pcap or pcapng stream.
func readCapture(r io.Reader) ([]capDatagram, error) {
	br := bufio.NewReader(io.LimitReader(r, maxCaptureBytes))
	magic, err := br.Peek(4)
	if err != nil {
		return nil, fmt.Errorf("bench: capture: %w", err)
	}
	type packetSource interface {
		ReadPacketData() ([]byte, gopacket.CaptureInfo, error)
	}
	var src packetSource
	var link layers.LinkType
	if binary.BigEndian.Uint32(magic) == 0x0A0D0D0A { // pcapng section header block
		ng, err := pcapgo.NewNgReader(br, pcapgo.DefaultNgReaderOptions)
		if err != nil {
			return nil, fmt.Errorf("bench: pcapng: %w", err)
		}
		src, link = ng, ng.LinkType()
	} else {
		pr, err := pcapgo.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("bench: pcap: %w", err)
		}
		src, link = pr, pr.LinkType()
	}
	var out []capDatagram
	var t0 time.Time
	for {
		data, ci, err := src.ReadPacketData()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if len(out) > 0 && errors.Is(err, io.ErrUnexpectedEOF) {
				break // a capture cut short: keep what was whole
			}
			return nil, fmt.Errorf("bench: capture record %d: %w", len(out), err)
		}
		d, ok := decodeUDP(data, link)
		if !ok {
			continue
		}
		if len(out) == 0 {
			t0 = ci.Timestamp
		}
		d.at = max(ci.Timestamp.Sub(t0), 0)
		out = append(out, d)
		if len(out) > maxCaptureDatagrams {
			return nil, fmt.Errorf("bench: capture holds more than %d UDP datagrams", maxCaptureDatagrams)
		}
	}
	return out, nil
}

// decodeUDP decodes one captured frame down to its UDP payload.
func decodeUDP(data []byte, link layers.LinkType) (capDatagram, bool) {
	p := gopacket.NewPacket(data, link, gopacket.DecodeOptions{Lazy: true, NoCopy: true})
	udp, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if !ok || p.NetworkLayer() == nil {
		return capDatagram{}, false
	}
	var sip, dip netip.Addr
	switch n := p.NetworkLayer().(type) {
	case *layers.IPv4:
		sip, _ = netip.AddrFromSlice(n.SrcIP.To4())
		dip, _ = netip.AddrFromSlice(n.DstIP.To4())
	case *layers.IPv6:
		sip, _ = netip.AddrFromSlice(n.SrcIP)
		dip, _ = netip.AddrFromSlice(n.DstIP)
	default:
		return capDatagram{}, false
	}
	if !sip.IsValid() || !dip.IsValid() {
		return capDatagram{}, false
	}
	return capDatagram{
		src:     netip.AddrPortFrom(sip.Unmap(), uint16(udp.SrcPort)),
		dst:     netip.AddrPortFrom(dip.Unmap(), uint16(udp.DstPort)),
		payload: bytes.Clone(udp.Payload),
	}, true
}

// planReplay finds the server (the destination of the first connectivity
// check), the client flows (every address that sent it one), and keeps the
// datagrams those clients sent to it.
func planReplay(ds []capDatagram) (*replayPlan, error) {
	pl := &replayPlan{}
	flowOf := map[netip.AddrPort]int{}
	for _, d := range ds {
		if classify(d.payload) != kindSTUN {
			continue
		}
		_, client, ok := checkUsername(d.payload)
		if !ok {
			continue
		}
		if !pl.server.IsValid() {
			pl.server = d.dst
		}
		if d.dst != pl.server {
			continue
		}
		if _, ok := flowOf[d.src]; !ok {
			if len(pl.flows) >= maxCaptureFlows {
				return nil, fmt.Errorf("bench: capture holds more than %d client flows", maxCaptureFlows)
			}
			flowOf[d.src] = len(pl.flows)
			pl.flows = append(pl.flows, capFlow{client: d.src, clientUfrag: client})
		}
	}
	if len(pl.flows) == 0 {
		return nil, ErrNoSession
	}
	var first time.Duration
	for _, d := range ds {
		f, ok := flowOf[d.src]
		if !ok || d.dst != pl.server {
			continue
		}
		k := classify(d.payload)
		if ssrc, ok := senderSSRC(d.payload, k); ok && !containsU32(pl.flows[f].ssrcs, ssrc) {
			pl.flows[f].ssrcs = append(pl.flows[f].ssrcs, ssrc)
		}
		if len(pl.pkts) == 0 {
			first = d.at
		}
		pl.pkts = append(pl.pkts, planPkt{at: d.at - first, flow: f, kind: k, payload: d.payload})
	}
	pl.span = pl.pkts[len(pl.pkts)-1].at
	return pl, nil
}

func containsU32(xs []uint32, x uint32) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// checkUsername returns the two ufrags of a Binding request's USERNAME
// ("<server>:<client>"); ok is false for any other datagram.
func checkUsername(b []byte) (server, client string, ok bool) {
	m := &stun.Message{Raw: bytes.Clone(b)}
	if m.Decode() != nil || m.Type != stun.BindingRequest {
		return "", "", false
	}
	var u stun.Username
	if u.GetFrom(m) != nil {
		return "", "", false
	}
	server, client, ok = strings.Cut(u.String(), ":")
	return server, client, ok && server != ""
}

// senderSSRC is the SSRC an RTP packet carries, or the sender SSRC of an
// RTCP compound's first packet (in the clear in SRTP and SRTCP too).
func senderSSRC(b []byte, k pktKind) (uint32, bool) {
	switch k {
	case kindRTP:
		return binary.BigEndian.Uint32(b[8:12]), true
	case kindRTCP:
		return binary.BigEndian.Uint32(b[4:8]), true
	}
	return 0, false
}

// replaySession is what a copy of a flow is rewritten to name.
type replaySession struct {
	ufrag, pwd string
	ssrcs      []uint32 // new SSRCs, one per the flow's ssrcs, same order
}

// rewrite returns the datagram of flow f as copy s sends it: a Binding
// request names s's ufrag and is signed again with s's password (new
// MESSAGE-INTEGRITY and FINGERPRINT); RTP and RTCP carry s's SSRCs;
// anything else (DTLS, SRTP payloads) is sent as captured.
func rewrite(p planPkt, f capFlow, s replaySession) ([]byte, error) {
	switch p.kind {
	case kindSTUN:
		return rewriteCheck(p.payload, s.ufrag+":"+f.clientUfrag, s.pwd)
	case kindRTP, kindRTCP:
		out := bytes.Clone(p.payload)
		old, _ := senderSSRC(out, p.kind)
		for i, x := range f.ssrcs {
			if x == old && i < len(s.ssrcs) {
				off := 8
				if p.kind == kindRTCP {
					off = 4
				}
				binary.BigEndian.PutUint32(out[off:off+4], s.ssrcs[i])
			}
		}
		return out, nil
	}
	return p.payload, nil
}

// rewriteCheck rebuilds a Binding request with username, keeping its
// transaction id and every other attribute before MESSAGE-INTEGRITY, and
// signs it with pwd. Other STUN is returned as it is.
func rewriteCheck(b []byte, username, pwd string) ([]byte, error) {
	m := &stun.Message{Raw: bytes.Clone(b)}
	if err := m.Decode(); err != nil {
		return nil, fmt.Errorf("bench: replay STUN: %w", err)
	}
	if m.Type != stun.BindingRequest || !m.Contains(stun.AttrUsername) {
		return b, nil
	}
	out := stun.New()
	out.Type = m.Type
	out.TransactionID = m.TransactionID
	out.WriteHeader()
	for _, a := range m.Attributes {
		if a.Type == stun.AttrMessageIntegrity || a.Type == stun.AttrFingerprint {
			break // attributes after MESSAGE-INTEGRITY are not covered by it
		}
		if a.Type == stun.AttrUsername {
			continue
		}
		out.Add(a.Type, a.Value)
	}
	for _, s := range []stun.Setter{stun.NewUsername(username), stun.NewShortTermIntegrity(pwd), stun.Fingerprint} {
		if err := s.AddTo(out); err != nil {
			return nil, fmt.Errorf("bench: replay STUN: %w", err)
		}
	}
	return out.Raw, nil
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
