package sfu

import (
	"errors"
	"fmt"
	"github.com/oneport/oneport/mux"
	"strconv"
	"strings"

	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
)

// Errors a caller (and the HTTP layer) can test with errors.Is.
var (
	ErrMalformedSDP  = errors.New("sfu: malformed SDP")
	ErrNoCommonCodec = errors.New("sfu: no codec in common")
	ErrBadFragment   = errors.New("sfu: malformed trickle-ice-sdpfrag")
	ErrNotFound      = errors.New("sfu: not found")
	ErrClosed        = errors.New("sfu: server closed")
	ErrFull          = errors.New("sfu: server full")
	// ErrTooManyParticipants, ErrTooManyRooms and ErrTooManyWatchers are the
	// ErrFull cases (503 with Retry-After).
	ErrTooManyParticipants = fmt.Errorf("%w: too many participants", ErrFull)
	ErrTooManyRooms        = fmt.Errorf("%w: too many rooms", ErrFull)
	ErrTooManyWatchers     = fmt.Errorf("%w: too many event streams in the room", ErrFull)
	// ErrMediaPortFull: the UDPMux gave the session no candidate, as when
	// the mux holds MaxSessions (--max-sessions).
	ErrMediaPortFull = fmt.Errorf("%w: no session left on the media port", ErrFull)
	// ErrRoomFull: the room has MaxRoomParticipants (403).
	ErrRoomFull     = errors.New("sfu: room full")
	ErrBadRequest   = errors.New("sfu: bad request")
	ErrPrecondition = errors.New("sfu: precondition failed")
	ErrUnauthorized = errors.New("sfu: unauthorized")
	ErrNegotiation  = errors.New("sfu: negotiation failed")
	// ErrSDPLimit: an offer or fragment over Config's m-line or candidate
	// limits (400).
	ErrSDPLimit = errors.New("sfu: SDP over limits")
)

// sdpLimits are Config's bounds on an offer and on a trickle fragment.
type sdpLimits struct {
	media    int // m-sections of an offer
	perMedia int // candidates per m-section
	total    int // candidates in all
}

// defaultSDPLimits are the zero Config's.
var defaultSDPLimits = sdpLimits{media: 16, perMedia: 64, total: 256}

// candidateCounter checks candidate counts against the limits as they are met.
type candidateCounter struct {
	lim   sdpLimits
	total int
}

func (c *candidateCounter) add(mline, inMedia int) error {
	c.total++
	if inMedia > c.lim.perMedia {
		return fmt.Errorf("%w: more than %d candidates in m-line %d", ErrSDPLimit, c.lim.perMedia, mline)
	}
	if c.total > c.lim.total {
		return fmt.Errorf("%w: more than %d candidates in all", ErrSDPLimit, c.lim.total)
	}
	return nil
}

type offerCodec struct {
	pt  uint8
	cap webrtc.RTPCodecCapability
}

type offerMedia struct {
	kind   string // "audio", "video", or another media type (ignored)
	active bool   // port != 0, audio or video, not inactive
	mid    string
	dir    string // sendrecv, sendonly, recvonly, inactive
	codecs []offerCodec
	rids   []string // simulcast rids the offerer sends
}

// sends and receives are from the offerer's point of view.
func (m *offerMedia) sends() bool    { return m.dir == "sendrecv" || m.dir == "sendonly" }
func (m *offerMedia) receives() bool { return m.dir == "sendrecv" || m.dir == "recvonly" }

type offerInfo struct {
	media []offerMedia
}

// parseOffer reads what the server needs from an SDP offer and rejects what
// it cannot use, with a reason. publish is true for WHIP (the offerer sends).
func parseOffer(body string, publish bool, lim sdpLimits) (*offerInfo, error) {
	// Count m-lines before unmarshalling: pion parses every section first.
	if n := strings.Count(body, "\nm="); n > lim.media || n == lim.media && strings.HasPrefix(body, "m=") {
		return nil, fmt.Errorf("%w: more than %d media sections", ErrSDPLimit, lim.media)
	}
	var sd sdp.SessionDescription
	if err := sd.UnmarshalString(body); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedSDP, err)
	}
	if len(sd.MediaDescriptions) == 0 {
		return nil, fmt.Errorf("%w: no media section", ErrMalformedSDP)
	}
	if len(sd.MediaDescriptions) > lim.media {
		return nil, fmt.Errorf("%w: %d media sections, at most %d", ErrSDPLimit, len(sd.MediaDescriptions), lim.media)
	}
	cands := candidateCounter{lim: lim}
	_, sessUfrag := sd.Attribute("ice-ufrag")
	_, sessFP := sd.Attribute("fingerprint")
	info := &offerInfo{}
	usable := 0
	for i, md := range sd.MediaDescriptions {
		m := offerMedia{kind: md.MediaName.Media, dir: "sendrecv"}
		inMedia := 0
		for _, a := range md.Attributes {
			switch a.Key {
			case "candidate":
				inMedia++
				if err := cands.add(i, inMedia); err != nil {
					return nil, err
				}
			case "mid":
				m.mid = a.Value
			case "sendrecv", "sendonly", "recvonly", "inactive":
				m.dir = a.Key
			case "rtpmap":
				c, err := parseRtpmap(a.Value, m.kind)
				if err != nil {
					return nil, fmt.Errorf("%w: m-section %d: %w", ErrMalformedSDP, i, err)
				}
				m.codecs = append(m.codecs, c)
			case "rid":
				id, dir, _ := strings.Cut(a.Value, " ")
				if strings.HasPrefix(dir, "send") && id != "" {
					m.rids = append(m.rids, id)
				}
			}
		}
		for _, a := range md.Attributes {
			if a.Key != "fmtp" {
				continue
			}
			ptStr, params, _ := strings.Cut(a.Value, " ")
			pt, err := strconv.ParseUint(ptStr, 10, 8)
			if err != nil {
				continue
			}
			for j := range m.codecs {
				if m.codecs[j].pt == uint8(pt) {
					m.codecs[j].cap.SDPFmtpLine = params
				}
			}
		}
		if m.kind != "audio" && m.kind != "video" || md.MediaName.Port.Value == 0 || m.dir == "inactive" {
			info.media = append(info.media, m)
			continue
		}
		if len(m.rids) > 3 {
			return nil, fmt.Errorf("%w: m-section %d: %d simulcast layers, at most 3", ErrMalformedSDP, i, len(m.rids))
		}
		if _, ok := md.Attribute("ice-ufrag"); !ok && !sessUfrag {
			return nil, fmt.Errorf("%w: m-section %d: no ice-ufrag", ErrMalformedSDP, i)
		}
		if _, ok := md.Attribute("fingerprint"); !ok && !sessFP {
			return nil, fmt.Errorf("%w: m-section %d: no DTLS fingerprint", ErrMalformedSDP, i)
		}
		if publish && !m.sends() {
			return nil, fmt.Errorf("%w: m-section %d (%s) is %s; a WHIP offer must send", ErrBadRequest, i, m.kind, m.dir)
		}
		if !publish && !m.receives() {
			return nil, fmt.Errorf("%w: m-section %d (%s) is %s; a WHEP offer must receive", ErrBadRequest, i, m.kind, m.dir)
		}
		ok := false
		var offered []string
		for _, c := range m.codecs {
			if forwardableMime(c.cap.MimeType) {
				ok = true
			}
			if len(offered) < 8 {
				offered = append(offered, c.cap.MimeType)
			}
		}
		if !ok {
			return nil, fmt.Errorf("%w: m-section %d (%s) offers [%s]; the server forwards opus, G722, PCMU, PCMA, VP8, VP9, H264, AV1",
				ErrNoCommonCodec, i, m.kind, strings.Join(offered, " "))
		}
		usable++
		m.active = true
		info.media = append(info.media, m)
	}
	if usable == 0 {
		return nil, fmt.Errorf("%w: no active audio or video section", ErrBadRequest)
	}
	return info, nil
}

// parseRtpmap reads "96 VP8/90000[/channels]".
func parseRtpmap(v, kind string) (offerCodec, error) {
	ptStr, enc, ok := strings.Cut(v, " ")
	if !ok {
		return offerCodec{}, fmt.Errorf("bad rtpmap %q", v)
	}
	pt, err := strconv.ParseUint(ptStr, 10, 8)
	if err != nil || pt > 127 {
		return offerCodec{}, fmt.Errorf("bad rtpmap payload type %q", ptStr)
	}
	parts := strings.Split(enc, "/")
	if len(parts) < 2 || parts[0] == "" {
		return offerCodec{}, fmt.Errorf("bad rtpmap encoding %q", enc)
	}
	clock, err := strconv.ParseUint(parts[1], 10, 32)
	if err != nil {
		return offerCodec{}, fmt.Errorf("bad rtpmap clock rate %q", parts[1])
	}
	c := offerCodec{pt: uint8(pt), cap: webrtc.RTPCodecCapability{MimeType: kind + "/" + parts[0], ClockRate: uint32(clock)}}
	if len(parts) > 2 {
		ch, err := strconv.ParseUint(parts[2], 10, 16)
		if err != nil {
			return offerCodec{}, fmt.Errorf("bad rtpmap channels %q", parts[2])
		}
		c.cap.Channels = uint16(ch)
	}
	return c, nil
}

// canReceive reports whether the offerer of m can receive a track sent as c.
func (m *offerMedia) canReceive(c webrtc.RTPCodecCapability) bool {
	recv := make([]webrtc.RTPCodecParameters, 0, len(m.codecs))
	for _, oc := range m.codecs {
		recv = append(recv, webrtc.RTPCodecParameters{RTPCodecCapability: oc.cap, PayloadType: webrtc.PayloadType(oc.pt)})
	}
	_, ok := bestCodec(c, recv)
	return ok
}

// trickleFragment is a parsed application/trickle-ice-sdpfrag body (RFC 8840).
type trickleFragment struct {
	ufrag, pwd string
	candidates []trickleCandidate
	end        bool
}

type trickleCandidate struct {
	mid       string
	mline     uint16
	candidate string // without the "a=" prefix: "candidate:..."
}

// maxFragmentLines bounds a fragment's lines.
const maxFragmentLines = 1024

func parseTrickleFragment(body string, lim sdpLimits) (*trickleFragment, error) {
	f := &trickleFragment{}
	mid, mline := "", -1
	cands := candidateCounter{lim: lim}
	inMedia := 0
	lines := strings.Split(strings.ReplaceAll(body, "\r\n", "\n"), "\n")
	if len(lines) > maxFragmentLines {
		return nil, fmt.Errorf("%w: more than %d lines", ErrBadFragment, maxFragmentLines)
	}
	for i, ln := range lines {
		ln = strings.TrimRight(ln, "\r")
		if ln == "" {
			continue
		}
		if len(ln) < 2 || ln[1] != '=' {
			return nil, fmt.Errorf("%w: line %d is not an SDP line", ErrBadFragment, i+1)
		}
		switch ln[0] {
		case 'm':
			mline++
			mid = ""
			if mline > 0 { // candidates before the first m-line count as its own
				inMedia = 0
			}
			if mline >= lim.media {
				return nil, fmt.Errorf("%w: more than %d media sections", ErrSDPLimit, lim.media)
			}
		case 'a':
			key, val, _ := strings.Cut(ln[2:], ":")
			switch key {
			case "ice-ufrag":
				// RFC 8839: 4-256 ice-chars; the value goes into an offer.
				if len(val) < 4 || len(val) > 256 || !mux.IsIceChars(val) || (f.ufrag != "" && f.ufrag != val) {
					return nil, fmt.Errorf("%w: line %d: bad ice-ufrag", ErrBadFragment, i+1)
				}
				f.ufrag = val
			case "ice-pwd":
				// RFC 8839: 22-256 ice-chars.
				if len(val) < 22 || len(val) > 256 || !mux.IsIceChars(val) || (f.pwd != "" && f.pwd != val) {
					return nil, fmt.Errorf("%w: line %d: bad ice-pwd", ErrBadFragment, i+1)
				}
				f.pwd = val
			case "mid":
				mid = val
			case "candidate":
				if len(strings.Fields(val)) < 8 {
					return nil, fmt.Errorf("%w: line %d: short candidate", ErrBadFragment, i+1)
				}
				ml := mline
				if ml < 0 {
					ml = 0
				}
				inMedia++
				if err := cands.add(ml, inMedia); err != nil {
					return nil, err
				}
				f.candidates = append(f.candidates, trickleCandidate{mid: mid, mline: uint16(ml), candidate: ln[2:]})
			case "end-of-candidates":
				f.end = true
			}
		}
	}
	if (f.ufrag == "") != (f.pwd == "") {
		return nil, fmt.Errorf("%w: ice-ufrag and ice-pwd must come together", ErrBadFragment)
	}
	if f.ufrag == "" && len(f.candidates) == 0 && !f.end {
		return nil, fmt.Errorf("%w: no candidate, credentials or end-of-candidates", ErrBadFragment)
	}
	return f, nil
}

// restartOffer is the offer an ICE restart applies (RFC 9725 §4.3.2): the
// client's previous offer, whose non-ICE parts still hold, with its new
// ice-ufrag and ice-pwd and without its old candidates (gone with the old
// credentials; the fragment's new ones are added after).
func restartOffer(remote, ufrag, pwd string) (string, error) {
	return withICECredentials(remote, ufrag, pwd, true)
}

// withICECredentials returns desc with its ice-ufrag and ice-pwd replaced
// (at session and media level) and, if dropCandidates, without candidate
// and end-of-candidates lines.
func withICECredentials(desc, ufrag, pwd string, dropCandidates bool) (string, error) {
	var sd sdp.SessionDescription
	if err := sd.UnmarshalString(desc); err != nil {
		return "", err
	}
	set := func(attrs []sdp.Attribute) []sdp.Attribute {
		out := attrs[:0]
		for _, a := range attrs {
			switch a.Key {
			case "ice-ufrag":
				a.Value = ufrag
			case "ice-pwd":
				a.Value = pwd
			case "candidate", "end-of-candidates":
				if dropCandidates {
					continue
				}
			}
			out = append(out, a)
		}
		return out
	}
	sd.Attributes = set(sd.Attributes)
	for _, md := range sd.MediaDescriptions {
		md.Attributes = set(md.Attributes)
	}
	b, err := sd.Marshal()
	return string(b), err
}

// iceCredentials returns desc's ice-ufrag and ice-pwd: session-level ones,
// else the first media section's. Empty when absent or desc does not parse.
func iceCredentials(desc string) (ufrag, pwd string) {
	var sd sdp.SessionDescription
	if err := sd.UnmarshalString(desc); err != nil {
		return "", ""
	}
	return sdpICECredentials(&sd)
}

func sdpICECredentials(sd *sdp.SessionDescription) (ufrag, pwd string) {
	ufrag, hasU := sd.Attribute("ice-ufrag")
	pwd, hasP := sd.Attribute("ice-pwd")
	for _, md := range sd.MediaDescriptions {
		if !hasU {
			ufrag, hasU = md.Attribute("ice-ufrag")
		}
		if !hasP {
			pwd, hasP = md.Attribute("ice-pwd")
		}
	}
	return ufrag, pwd
}

// localFragment renders the server's ICE credentials and candidates from its
// local description as a trickle-ice-sdpfrag (the ICE restart answer).
func localFragment(local string) (string, error) {
	var sd sdp.SessionDescription
	if err := sd.UnmarshalString(local); err != nil {
		return "", err
	}
	var b strings.Builder
	ufrag, pwd := sdpICECredentials(&sd)
	fmt.Fprintf(&b, "a=ice-ufrag:%s\r\na=ice-pwd:%s\r\n", ufrag, pwd)
	for _, md := range sd.MediaDescriptions {
		mid, _ := md.Attribute("mid")
		fmt.Fprintf(&b, "m=%s 9 %s %s\r\na=mid:%s\r\n", md.MediaName.Media,
			strings.Join(md.MediaName.Protos, "/"), strings.Join(md.MediaName.Formats, " "), mid)
		for _, a := range md.Attributes {
			if a.Key == "candidate" {
				fmt.Fprintf(&b, "a=candidate:%s\r\n", a.Value)
			}
		}
		b.WriteString("a=end-of-candidates\r\n")
	}
	return b.String(), nil
}
