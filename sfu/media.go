package sfu

import (
	"strconv"
	"strings"

	"github.com/pion/interceptor"
	"github.com/pion/interceptor/pkg/nack"
	"github.com/pion/webrtc/v4"
)

// Codecs the server negotiates and forwards: pion's defaults less H.265 (which
// most browsers cannot receive, so a publisher choosing it would strand its
// viewers).
func newMediaEngine() (*webrtc.MediaEngine, error) {
	me := &webrtc.MediaEngine{}
	for _, c := range []webrtc.RTPCodecParameters{
		{RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2, SDPFmtpLine: "minptime=10;useinbandfec=1"}, PayloadType: 111},
		{RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeG722, ClockRate: 8000}, PayloadType: 9},
		{RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypePCMU, ClockRate: 8000}, PayloadType: 0},
		{RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypePCMA, ClockRate: 8000}, PayloadType: 8},
	} {
		if err := me.RegisterCodec(c, webrtc.RTPCodecTypeAudio); err != nil {
			return nil, err
		}
	}
	fb := []webrtc.RTCPFeedback{{Type: "goog-remb"}, {Type: "ccm", Parameter: "fir"}, {Type: "nack"}, {Type: "nack", Parameter: "pli"}}
	video := func(mime, fmtp string, pt, rtx webrtc.PayloadType) []webrtc.RTPCodecParameters {
		return []webrtc.RTPCodecParameters{
			{RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: mime, ClockRate: 90000, SDPFmtpLine: fmtp, RTCPFeedback: fb}, PayloadType: pt},
			{RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeRTX, ClockRate: 90000, SDPFmtpLine: "apt=" + strconv.Itoa(int(pt))}, PayloadType: rtx},
		}
	}
	var vs []webrtc.RTPCodecParameters
	vs = append(vs, video(webrtc.MimeTypeVP8, "", 96, 97)...)
	vs = append(vs, video(webrtc.MimeTypeH264, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f", 102, 103)...)
	vs = append(vs, video(webrtc.MimeTypeH264, "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f", 104, 105)...)
	vs = append(vs, video(webrtc.MimeTypeH264, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f", 106, 107)...)
	vs = append(vs, video(webrtc.MimeTypeH264, "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f", 108, 109)...)
	vs = append(vs, video(webrtc.MimeTypeH264, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f", 127, 125)...)
	vs = append(vs, video(webrtc.MimeTypeH264, "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=4d001f", 39, 40)...)
	vs = append(vs, video(webrtc.MimeTypeAV1, "", 45, 46)...)
	vs = append(vs, video(webrtc.MimeTypeVP9, "profile-id=0", 98, 99)...)
	vs = append(vs, video(webrtc.MimeTypeVP9, "profile-id=2", 100, 101)...)
	vs = append(vs, video(webrtc.MimeTypeH264, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f", 112, 113)...)
	for _, c := range vs {
		if err := me.RegisterCodec(c, webrtc.RTPCodecTypeVideo); err != nil {
			return nil, err
		}
	}
	return me, nil
}

// registerInterceptors installs the pion interceptors the SFU relies on: NACK
// generation towards publishers, sender and receiver reports, simulcast
// header extensions, and transport-wide congestion feedback to publishers
// (browsers' send-side bandwidth estimation needs it to enable higher
// simulcast layers). Subscribers' NACKs are answered by the sfu itself from
// each layer's shared history (history.go), not by pion's responder, which
// keeps a copy of every packet per subscriber.
func registerInterceptors(me *webrtc.MediaEngine, ir *interceptor.Registry) error {
	gen, err := nack.NewGeneratorInterceptor()
	if err != nil {
		return err
	}
	me.RegisterFeedback(webrtc.RTCPFeedback{Type: "nack"}, webrtc.RTPCodecTypeVideo)
	me.RegisterFeedback(webrtc.RTCPFeedback{Type: "nack", Parameter: "pli"}, webrtc.RTPCodecTypeVideo)
	ir.Add(gen)
	if err := webrtc.ConfigureRTCPReports(ir); err != nil {
		return err
	}
	if err := webrtc.ConfigureSimulcastExtensionHeaders(me); err != nil {
		return err
	}
	if err := registerForwardedExtensions(me); err != nil {
		return err
	}
	return webrtc.ConfigureTWCCSender(me, ir)
}

// forwardableMime reports whether the server negotiates and forwards mime.
func forwardableMime(mime string) bool {
	switch strings.ToLower(mime) {
	case "audio/opus", "audio/g722", "audio/pcmu", "audio/pcma",
		"video/vp8", "video/vp9", "video/h264", "video/av1":
		return true
	}
	return false
}

// fmtpParam returns the value of key in an fmtp line, or "".
func fmtpParam(fmtp, key string) string {
	for _, kv := range strings.Split(fmtp, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if ok && strings.EqualFold(k, key) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// codecMatch grades how well a receiver's codec (mime, fmtp) fits a sender's:
// 2 exact (same format parameters that matter for decoding), 1 same mime and
// clock rate, 0 none. Mirrors pion's fuzzy codec search.
func codecMatch(send, recv webrtc.RTPCodecCapability) int {
	if !strings.EqualFold(send.MimeType, recv.MimeType) || (send.ClockRate != 0 && recv.ClockRate != 0 && send.ClockRate != recv.ClockRate) {
		return 0
	}
	switch strings.ToLower(send.MimeType) {
	case "video/h264":
		pm := func(f string) string {
			if v := fmtpParam(f, "packetization-mode"); v != "" {
				return v
			}
			return "0"
		}
		prof := func(f string) string {
			v := strings.ToLower(fmtpParam(f, "profile-level-id"))
			if len(v) >= 4 {
				return v[:4] // profile_idc and constraint flags; level may differ
			}
			return "42e0"
		}
		if pm(send.SDPFmtpLine) == pm(recv.SDPFmtpLine) && prof(send.SDPFmtpLine) == prof(recv.SDPFmtpLine) {
			return 2
		}
		return 1
	case "video/vp9":
		p := func(f string) string {
			if v := fmtpParam(f, "profile-id"); v != "" {
				return v
			}
			return "0"
		}
		if p(send.SDPFmtpLine) == p(recv.SDPFmtpLine) {
			return 2
		}
		return 1
	case "video/av1":
		p := func(f string) string {
			if v := fmtpParam(f, "profile"); v != "" {
				return v
			}
			return "0"
		}
		if p(send.SDPFmtpLine) == p(recv.SDPFmtpLine) {
			return 2
		}
		return 1
	}
	return 2
}

// bestCodec picks the receiver codec that fits send best; ok is false when
// none does. H.264 needs the same packetization mode to be decodable at all.
func bestCodec(send webrtc.RTPCodecCapability, recv []webrtc.RTPCodecParameters) (webrtc.RTPCodecParameters, bool) {
	best, grade := webrtc.RTPCodecParameters{}, 0
	for _, c := range recv {
		g := codecMatch(send, c.RTPCodecCapability)
		if g == 1 && strings.EqualFold(send.MimeType, webrtc.MimeTypeH264) &&
			fmtpParam(send.SDPFmtpLine, "packetization-mode") != fmtpParam(c.SDPFmtpLine, "packetization-mode") {
			continue
		}
		if g > grade {
			best, grade = c, g
		}
	}
	return best, grade > 0
}
