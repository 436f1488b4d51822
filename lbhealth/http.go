package lbhealth

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Paths served by Mount.
const (
	PathHealthz = "/healthz"
	PathReadyz  = "/readyz"
	PathMetrics = "/metrics"
	PathDrain   = "/admin/drain"
	PathUndrain = "/admin/undrain"
)

// maxConcurrentScrapes bounds simultaneous /metrics requests; more get 503.
const maxConcurrentScrapes = 4

// Handler returns a handler serving only the routes Mount registers, for a
// separate --health listener.
func (h *Health) Handler() http.Handler {
	m := http.NewServeMux()
	h.Mount(m)
	return m
}

// Mount registers the health, metrics and (with an admin token) admin routes
// on m. GET patterns also answer HEAD; other methods get 405.
func (h *Health) Mount(m *http.ServeMux) {
	m.HandleFunc("GET "+PathHealthz, h.serveHealthz)
	m.HandleFunc("GET "+PathReadyz, h.serveReadyz)
	m.Handle("GET "+PathMetrics, promhttp.HandlerFor(h.reg, promhttp.HandlerOpts{
		ErrorLog:            promLog{h.log},
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: maxConcurrentScrapes,
	}))
	if h.cfg.AdminToken != "" {
		m.HandleFunc("POST "+PathDrain, h.admin(h.serveDrain))
		m.HandleFunc("POST "+PathUndrain, h.admin(h.serveUndrain))
		return
	}
	// Disabled means 404 on m, not whatever a catch-all mounted beside
	// these routes answers (the CLI's demo page at "/" answers POST with 405).
	m.Handle(PathDrain, http.NotFoundHandler())
	m.Handle(PathUndrain, http.NotFoundHandler())
}

func (h *Health) serveHealthz(w http.ResponseWriter, _ *http.Request) {
	rep := h.Live()
	writeReport(w, &rep)
}

func (h *Health) serveReadyz(w http.ResponseWriter, _ *http.Request) {
	rep := h.Ready()
	writeReport(w, &rep)
}

func writeReport(w http.ResponseWriter, rep *Report) {
	code := http.StatusOK
	if !rep.OK() {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, rep)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v) // the client went away; nothing to do
}

// DrainStatus is the body of the admin endpoints.
type DrainStatus struct {
	State    string `json:"state"`
	Draining bool   `json:"draining"`
	Error    string `json:"error,omitempty"`
}

func (h *Health) drainStatus(err error) DrainStatus {
	s := DrainStatus{State: h.drain.State().String(), Draining: h.drain.Draining()}
	if err != nil {
		s.Error = err.Error()
	}
	return s
}

func (h *Health) serveDrain(w http.ResponseWriter, r *http.Request) {
	if h.drain.Drain("admin") {
		h.log.Info().Str("remote", r.RemoteAddr).Msg("drain requested")
	}
	writeJSON(w, http.StatusAccepted, h.drainStatus(nil))
}

func (h *Health) serveUndrain(w http.ResponseWriter, r *http.Request) {
	err := h.drain.Undrain()
	switch {
	case errors.Is(err, ErrDrainFinished):
		writeJSON(w, http.StatusConflict, h.drainStatus(err))
	default:
		h.log.Info().Str("remote", r.RemoteAddr).Msg("undrain requested")
		writeJSON(w, http.StatusOK, h.drainStatus(nil))
	}
}

// admin wraps next with the bearer token check. Both sides are hashed before
// the constant-time compare so neither the content nor the length of the
// token leaks through timing.
func (h *Health) admin(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		scheme, token, found := strings.Cut(r.Header.Get("Authorization"), " ")
		got := sha256.Sum256([]byte(strings.TrimSpace(token)))
		if !found || !strings.EqualFold(scheme, "Bearer") ||
			subtle.ConstantTimeCompare(got[:], h.adminHash[:]) != 1 {
			h.unauthorized.Add(1)
			w.Header().Set("WWW-Authenticate", `Bearer realm="oneport-admin"`)
			writeJSON(w, http.StatusUnauthorized, struct {
				Error string `json:"error"`
			}{"missing or wrong bearer token"})
			return
		}
		next(w, r)
	}
}
