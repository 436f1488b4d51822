package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
)

// whipClient is the signaling half of the bench's pion clients (fan-out and
// load): it posts a PeerConnection's complete offer to a WHIP or WHEP
// endpoint, applies the answer and deletes the resource at the end.
type whipClient struct {
	http        *http.Client
	base        *url.URL
	token       string        // bearer token; "": none
	joinTimeout time.Duration // bounds ICE gathering
}

// newWHIPClient parses base (http or https) and keeps up to parallel idle
// connections to it.
func newWHIPClient(base, token string, parallel int, joinTimeout time.Duration) (whipClient, error) {
	u, err := url.Parse(base)
	if err != nil {
		return whipClient{}, fmt.Errorf("bench client: base URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return whipClient{}, fmt.Errorf("bench client: base URL %q: want http(s)://host[:port]", base)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: max(parallel, 2)}
	return whipClient{http: &http.Client{Transport: tr, Timeout: 10 * time.Second}, base: u, token: token, joinTimeout: joinTimeout}, nil
}

func (w whipClient) authorize(req *http.Request) {
	if w.token != "" {
		req.Header.Set("Authorization", "Bearer "+w.token)
	}
}

// signal posts pc's complete offer to path and applies the answer; it
// returns the resource's URL (also when applying the answer fails, so the
// caller can delete it).
func (w whipClient) signal(ctx context.Context, pc *webrtc.PeerConnection, path string) (string, error) {
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		return "", fmt.Errorf("offer: %w", err)
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		return "", fmt.Errorf("set offer: %w", err)
	}
	t := time.NewTimer(w.joinTimeout)
	defer t.Stop()
	select {
	case <-gathered:
	case <-t.C:
		return "", errors.New("gathering timed out")
	case <-ctx.Done():
		return "", ctx.Err()
	}
	u := w.base.JoinPath(path)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), strings.NewReader(pc.LocalDescription().SDP))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/sdp")
	w.authorize(req)
	resp, err := w.http.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", fmt.Errorf("answer: %w", err)
	}
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("POST %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	loc, err := resp.Location()
	if err != nil {
		return "", fmt.Errorf("POST %s: %w", path, err)
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: string(body)}); err != nil {
		return loc.String(), fmt.Errorf("set answer: %w", err)
	}
	return loc.String(), nil
}

// deleteResource ends a WHIP or WHEP resource: nil when the server
// confirmed (2xx) or no longer knew it (404). A 429 or 503 is retried after
// its Retry-After (a server's signaling rate limit must not leave sessions
// behind) until ctx ends.
func (w whipClient) deleteResource(ctx context.Context, loc string) error {
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodDelete, loc, nil)
		if err != nil {
			return err
		}
		w.authorize(req)
		resp, err := w.http.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		_ = resp.Body.Close()
		switch {
		case resp.StatusCode/100 == 2 || resp.StatusCode == http.StatusNotFound:
			return nil
		case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable:
			if err := sleepCtx(ctx, retryAfter(resp.Header.Get("Retry-After"))); err != nil {
				return fmt.Errorf("DELETE: %s, then %w", resp.Status, err)
			}
		default:
			return fmt.Errorf("DELETE: %s", resp.Status)
		}
	}
}

// retryAfter is a Retry-After header's delay in seconds, between 100ms and
// 10s; 1s when it is absent or not a number.
func retryAfter(h string) time.Duration {
	s, err := strconv.Atoi(strings.TrimSpace(h))
	if err != nil {
		return time.Second
	}
	return min(max(time.Duration(s)*time.Second, 100*time.Millisecond), 10*time.Second)
}

func (w whipClient) close() { w.http.CloseIdleConnections() }

// apiOptions chooses what clientAPI's peers negotiate and where they
// gather candidates.
type apiOptions struct {
	// allCodecs adds VP9 and AV1 to VP8 (file replay, subscribers of any
	// publisher); otherwise VP8 and Opus only.
	allCodecs bool
	// simulcast registers the mid and rid header extensions on video.
	simulcast bool
	// anyInterface gathers host candidates on every interface, for a server
	// that is not on loopback; otherwise loopback only.
	anyInterface bool
}

// newClientAPI builds the peers' API: no interceptors (no NACK, reports or
// congestion control: the client is measuring, and each interceptor would
// cost it CPU per packet), UDP4 host candidates.
func newClientAPI(o apiOptions) (*webrtc.API, error) {
	me := &webrtc.MediaEngine{}
	video := []webrtc.RTPCodecParameters{{
		RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000},
		PayloadType:        96,
	}}
	if o.allCodecs {
		video = append(video,
			webrtc.RTPCodecParameters{RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP9, ClockRate: 90000, SDPFmtpLine: "profile-id=0"}, PayloadType: 98},
			webrtc.RTPCodecParameters{RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeAV1, ClockRate: 90000}, PayloadType: 45})
	}
	for _, c := range video {
		if err := me.RegisterCodec(c, webrtc.RTPCodecTypeVideo); err != nil {
			return nil, fmt.Errorf("bench client: codec: %w", err)
		}
	}
	if err := me.RegisterCodec(webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2},
		PayloadType:        111,
	}, webrtc.RTPCodecTypeAudio); err != nil {
		return nil, fmt.Errorf("bench client: codec: %w", err)
	}
	if o.simulcast {
		for _, uri := range []string{sdp.SDESMidURI, sdp.SDESRTPStreamIDURI} {
			if err := me.RegisterHeaderExtension(webrtc.RTPHeaderExtensionCapability{URI: uri}, webrtc.RTPCodecTypeVideo); err != nil {
				return nil, fmt.Errorf("bench client: header extension: %w", err)
			}
		}
	}
	se := webrtc.SettingEngine{}
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	if !o.anyInterface {
		se.SetIncludeLoopbackCandidate(true)
		se.SetInterfaceFilter(func(name string) bool { return name == "lo" })
	}
	return webrtc.NewAPI(webrtc.WithMediaEngine(me), webrtc.WithSettingEngine(se)), nil
}
