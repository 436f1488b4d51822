package sfu

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Signaling and API routes (all with CORS; OPTIONS answers preflights):
//
//	POST   /whip/{room}                  application/sdp offer -> 201, answer, Location /whip/{room}/{id}, ETag
//	PATCH  /whip/{room}/{id}             application/trickle-ice-sdpfrag: candidates (204) or ICE restart (200 + fragment)
//	DELETE /whip/{room}/{id}             end the publisher
//	POST   /whep/{room}[?publisher=id]   subscribe to the room's tracks (or one publisher's); same resource semantics
//	PATCH, DELETE /whep/{room}/{id}
//	GET    /rooms/{room}/events          server-sent events: participant-joined, participant-left,
//	                                     track-published, track-unpublished (current state first)
//	GET    /api/rooms                    JSON []RoomSummary
//	GET    /api/rooms/{room}             JSON RoomInfo
//	POST   /api/rooms/{room}/subscribers/{id}/layer
//	                                     JSON {"rid":"q","track":"<track id, optional>"}: the simulcast layer a
//	                                     subscriber receives; switches on the layer's next keyframe
//
// GET / is left to the demo page (see extraRoutes).

// extraRoutes are added to every Server's handler; the demo page (web.go)
// registers "GET /" here from an init function.
var extraRoutes []func(*http.ServeMux)

const (
	mimeSDP     = "application/sdp"
	mimeTrickle = "application/trickle-ice-sdpfrag"
	mimeJSON    = "application/json"
)

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /whip/{room}", s.rateLimited(s.handleOffer(rolePublisher)))
	mux.HandleFunc("POST /whep/{room}", s.rateLimited(s.handleOffer(roleSubscriber)))
	for _, kind := range []struct {
		prefix string
		role   participantRole
	}{{"/whip/", rolePublisher}, {"/whep/", roleSubscriber}} {
		mux.HandleFunc("PATCH "+kind.prefix+"{room}/{id}", s.rateLimited(s.handlePatch(kind.role)))
		mux.HandleFunc("DELETE "+kind.prefix+"{room}/{id}", s.rateLimited(s.handleDelete(kind.role)))
		mux.HandleFunc("OPTIONS "+kind.prefix+"{room}", preflight("POST, OPTIONS", "Accept-Post", mimeSDP))
		mux.HandleFunc("OPTIONS "+kind.prefix+"{room}/{id}", preflight("PATCH, DELETE, OPTIONS", "Accept-Patch", mimeTrickle))
	}
	mux.HandleFunc("GET /rooms/{room}/events", s.handleEvents)
	mux.HandleFunc("OPTIONS /rooms/{room}/events", preflight("GET, OPTIONS", "", ""))
	mux.HandleFunc("GET /api/rooms", s.handleRooms)
	mux.HandleFunc("OPTIONS /api/rooms", preflight("GET, OPTIONS", "", ""))
	mux.HandleFunc("GET /api/rooms/{room}", s.handleRoom)
	mux.HandleFunc("OPTIONS /api/rooms/{room}", preflight("GET, OPTIONS", "", ""))
	mux.HandleFunc("POST /api/rooms/{room}/subscribers/{id}/layer", s.rateLimited(s.handleLayer))
	mux.HandleFunc("OPTIONS /api/rooms/{room}/subscribers/{id}/layer", preflight("POST, OPTIONS", "Accept-Post", mimeJSON))
	for _, add := range extraRoutes {
		add(mux)
	}
	return cors(mux)
}

// cors lets browser clients on other origins use every endpoint. Bearer
// tokens, not cookies, authenticate, so any origin may be allowed.
func cors(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", "*")
		w.Header().Set("Access-Control-Expose-Headers", "Location, ETag, Link, Accept-Patch, Accept-Post, Content-Type")
		h.ServeHTTP(w, r)
	})
}

func preflight(methods, acceptHeader, accept string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Access-Control-Allow-Methods", methods)
		h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, If-Match")
		h.Set("Access-Control-Max-Age", "86400")
		h.Set("Allow", methods)
		if acceptHeader != "" {
			h.Set(acceptHeader, accept)
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

// retryAfterFull is the Retry-After (seconds) of a 503: the server or its
// room table is full, or it is closing; a load balancer may send the retry
// to another node.
const retryAfterFull = "5"

// httpError writes err with its status (errorStatus), and counts refusals
// by a limit.
func (s *Server) httpError(w http.ResponseWriter, err error) {
	code := errorStatus(err)
	switch code {
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="oneport"`)
	case http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", retryAfterFull)
	}
	if why, ok := refusalOf(err); ok {
		s.stats.refused[why].Add(1)
	}
	http.Error(w, err.Error(), code)
}

// refusalOf says which limit refused a request, if one did.
func refusalOf(err error) (refusal, bool) {
	var mbe *http.MaxBytesError
	switch {
	case errors.Is(err, ErrTooManyParticipants), errors.Is(err, ErrMediaPortFull):
		return refusedServerFull, true
	case errors.Is(err, ErrTooManyRooms):
		return refusedRooms, true
	case errors.Is(err, ErrTooManyWatchers):
		return refusedWatchers, true
	case errors.Is(err, ErrRoomFull):
		return refusedRoomFull, true
	case errors.Is(err, ErrSDPLimit):
		return refusedSDP, true
	case errors.As(err, &mbe):
		return refusedBody, true
	}
	return 0, false
}

// rateLimited charges a signaling request (POST, PATCH, DELETE) to its
// client IP (Config.ClientIP) and answers 429 with Retry-After beyond
// SignalingRate, unless RateLimit in front has charged it already. It runs
// before authorization, so unauthenticated floods are bounded too.
func (s *Server) rateLimited(h http.HandlerFunc) http.HandlerFunc {
	if s.limiter == nil {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Context().Value(chargedKey{}) != nil || s.admit(w, r) {
			h(w, r)
		}
	}
}

// chargedKey marks a request's context once RateLimit has charged it.
type chargedKey struct{}

// RateLimit charges every POST, PATCH and DELETE to its client IP before h
// sees it, as the sfu's own signaling endpoints do, and marks it so they do
// not charge it again. For a handler in front of the sfu's, the cluster's
// signaling proxy: a request this node proxies to a room's owner is then
// bounded here too, not only at the owner, so a flood aimed at another
// node's rooms costs this node a 429 each, not a proxied request.
func (s *Server) RateLimit(h http.Handler) http.Handler {
	if s.limiter == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPost, http.MethodPatch, http.MethodDelete:
		default:
			h.ServeHTTP(w, r)
			return
		}
		if s.admit(w, r) {
			h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), chargedKey{}, true)))
		}
	})
}

// admit charges r to its client IP; beyond SignalingRate it answers 429 with
// Retry-After and reports false.
func (s *Server) admit(w http.ResponseWriter, r *http.Request) bool {
	ip := s.cfg.ClientIP(r)
	ok, wait := s.limiter.Check(ip, s.mono())
	if ok {
		return true
	}
	s.stats.refused[refusedRate].Add(1)
	secs := max(1, int64((wait+time.Second-1)/time.Second))
	w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	http.Error(w, fmt.Sprintf("sfu: rate limited: more than %g signaling requests/s from %v", s.cfg.SignalingRate, ip),
		http.StatusTooManyRequests)
	return false
}

var errUnsupportedMedia = errors.New("sfu: unsupported content type")

// checkRequest authorizes and checks the content type; it writes the error.
func (s *Server) checkRequest(w http.ResponseWriter, r *http.Request, contentType string) bool {
	if !s.authorized(r) {
		s.httpError(w, fmt.Errorf("%w: bearer token required", ErrUnauthorized))
		return false
	}
	if contentType != "" {
		mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if err != nil || !strings.EqualFold(mt, contentType) {
			http.Error(w, fmt.Sprintf("%v: %q, want %s", errUnsupportedMedia, r.Header.Get("Content-Type"), contentType),
				http.StatusUnsupportedMediaType)
			return false
		}
	}
	return true
}

// authorized checks the bearer token. Both sides are hashed before the
// constant-time compare (subtle.ConstantTimeCompare returns at once on a
// length mismatch), so neither the content nor the length of the token
// leaks through timing.
func (s *Server) authorized(r *http.Request) bool {
	if s.cfg.Token == "" {
		return true
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	got := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(got[:], s.tokenHash[:]) == 1 && ok
}

// bodyTimeout bounds reading a signaling request's body.
const bodyTimeout = 10 * time.Second

func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	// Not every ResponseWriter supports deadlines (httptest recorders); then
	// the server's own timeouts apply.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyTimeout))
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, fmt.Errorf("sfu: body over %d bytes: %w", s.cfg.MaxBodyBytes, err)
		}
		return nil, fmt.Errorf("%w: reading body: %w", ErrBadRequest, err)
	}
	return b, nil
}

// validRoomName accepts 1-64 characters of A-Za-z0-9 and "-_.~".
func validRoomName(n string) bool {
	if n == "" || len(n) > 64 {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~') {
			return false
		}
	}
	return true
}

func (s *Server) roomParam(w http.ResponseWriter, r *http.Request) (string, bool) {
	name := r.PathValue("room")
	if !validRoomName(name) {
		http.Error(w, fmt.Sprintf("%v: room name must be 1-64 of A-Za-z0-9-_.~", ErrBadRequest), http.StatusBadRequest)
		return "", false
	}
	return name, true
}

func (s *Server) handleOffer(role participantRole) http.HandlerFunc {
	prefix := "/whip/"
	if role == roleSubscriber {
		prefix = "/whep/"
	}
	return func(w http.ResponseWriter, r *http.Request) {
		name, ok := s.roomParam(w, r)
		if !ok || !s.checkRequest(w, r, mimeSDP) {
			return
		}
		body, err := s.readBody(w, r)
		if err != nil {
			s.httpError(w, err)
			return
		}
		var p *participant
		var answer string
		if role == rolePublisher {
			p, answer, err = s.publish(name, string(body))
		} else {
			p, answer, err = s.subscribe(name, string(body), r.URL.Query().Get("publisher"))
		}
		if err != nil {
			s.httpError(w, err)
			return
		}
		h := w.Header()
		h.Set("Content-Type", mimeSDP)
		h.Set("Location", prefix+url.PathEscape(name)+"/"+p.id)
		h.Set("ETag", p.currentETag())
		h.Set("Accept-Patch", mimeTrickle)
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, answer)
	}
}

// resourceRequest checks a request addressed to one participant's resource
// and reads its body of the given content type; on failure it has answered.
func (s *Server) resourceRequest(w http.ResponseWriter, r *http.Request, role participantRole, contentType string) (*participant, []byte, bool) {
	name, ok := s.roomParam(w, r)
	if !ok || !s.checkRequest(w, r, "") {
		return nil, nil, false
	}
	p, err := s.resource(name, r.PathValue("id"), role)
	if err != nil {
		s.httpError(w, err)
		return nil, nil, false
	}
	if !s.checkRequest(w, r, contentType) {
		return nil, nil, false
	}
	body, err := s.readBody(w, r)
	if err != nil {
		s.httpError(w, err)
		return nil, nil, false
	}
	return p, body, true
}

func (s *Server) handlePatch(role participantRole) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, body, ok := s.resourceRequest(w, r, role, mimeTrickle)
		if !ok {
			return
		}
		frag, err := parseTrickleFragment(string(body), s.cfg.sdpLimits())
		if err != nil {
			s.httpError(w, err)
			return
		}
		answer, etag, err := p.patch(frag, r.Header.Get("If-Match"))
		if err != nil {
			s.httpError(w, err)
			return
		}
		w.Header().Set("ETag", etag)
		if answer == "" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		w.Header().Set("Content-Type", mimeTrickle)
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, answer)
	}
}

func (s *Server) handleDelete(role participantRole) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name, ok := s.roomParam(w, r)
		if !ok || !s.checkRequest(w, r, "") {
			return
		}
		p, err := s.resource(name, r.PathValue("id"), role)
		if err != nil {
			s.httpError(w, err)
			return
		}
		s.remove(p, "deleted")
		w.WriteHeader(http.StatusOK)
	}
}

// eventsKeepalive is how often an idle event stream gets a comment line, so
// proxies keep it open.
const eventsKeepalive = 15 * time.Second

func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	name, ok := s.roomParam(w, r)
	if !ok {
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "sfu: streaming unsupported", http.StatusInternalServerError)
		return
	}
	// Owned by the HTTP server, but counted so Close waits for it to end.
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.httpError(w, ErrClosed)
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	rm, wt, initial, err := s.watchRoom(name)
	if err != nil {
		s.httpError(w, err)
		return
	}
	defer rm.unwatch(wt)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	for _, m := range initial {
		if _, err := w.Write(m); err != nil {
			return
		}
	}
	flusher.Flush()
	keep := time.NewTicker(eventsKeepalive)
	defer keep.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-s.ctx.Done():
			return
		case <-keep.C:
			if _, err := io.WriteString(w, ": keepalive\n\n"); err != nil {
				return
			}
			flusher.Flush()
		case m, ok := <-wt.ch:
			if !ok {
				return // fell behind: the client reconnects and gets the state again
			}
			if _, err := w.Write(m); err != nil {
				return
			}
			flusher.Flush()
		}
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", mimeJSON)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) handleRooms(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, s.RoomSummaries())
}

func (s *Server) handleRoom(w http.ResponseWriter, r *http.Request) {
	name, ok := s.roomParam(w, r)
	if !ok {
		return
	}
	info, err := s.RoomInfo(name)
	if err != nil {
		s.httpError(w, err)
		return
	}
	writeJSON(w, info)
}

// layerRequest is the body of the layer-selection API.
type layerRequest struct {
	RID   string `json:"rid"`
	Track string `json:"track,omitempty"`
}

// parseLayerRequest decodes and validates a layer-selection body.
func parseLayerRequest(b []byte) (layerRequest, error) {
	var req layerRequest
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, fmt.Errorf("%w: layer request: %w", ErrBadRequest, err)
	}
	if dec.More() {
		return req, fmt.Errorf("%w: layer request: trailing data", ErrBadRequest)
	}
	if req.RID == "" || len(req.RID) > 32 || len(req.Track) > 256 {
		return req, fmt.Errorf("%w: layer request: rid must be 1-32 characters", ErrBadRequest)
	}
	return req, nil
}

func (s *Server) handleLayer(w http.ResponseWriter, r *http.Request) {
	p, body, ok := s.resourceRequest(w, r, roleSubscriber, mimeJSON)
	if !ok {
		return
	}
	req, err := parseLayerRequest(body)
	if err != nil {
		s.httpError(w, err)
		return
	}
	changed, err := p.selectLayer(req)
	if err != nil {
		s.httpError(w, err)
		return
	}
	writeJSON(w, changed)
}

// LayerSelection reports a subscription's chosen layer.
type LayerSelection struct {
	Track string `json:"track"`
	RID   string `json:"rid"`
}

// selectLayer sets the target layer of the subscriber's simulcast tracks (or
// one of them) that have req.RID; the switch happens on its next keyframe.
func (p *participant) selectLayer(req layerRequest) ([]LayerSelection, error) {
	var out []LayerSelection
	matched := false
	for _, d := range p.downList() {
		if req.Track != "" && d.src.id != req.Track {
			continue
		}
		matched = true
		l := d.src.layerByRID(req.RID)
		if l == nil || len(d.src.layers) < 2 {
			continue
		}
		d.auto.Store(false)
		d.target.Store(l.idx)
		d.src.requestKeyframe(l.idx)
		out = append(out, LayerSelection{Track: d.src.id, RID: l.rid})
	}
	if req.Track != "" && !matched {
		return nil, fmt.Errorf("%w: track %q in this subscription", ErrNotFound, req.Track)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no simulcast track of this subscription has rid %q", ErrBadRequest, req.RID)
	}
	return out, nil
}
