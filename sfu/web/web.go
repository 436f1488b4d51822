// Package web serves oneport's demo page: a plain HTML and JavaScript client,
// embedded in the binary, that publishes a camera and microphone to a room
// through WHIP and watches every other publisher of the room through WHEP,
// following the room's server-sent events stream.
//
// Invariants: the page is static (no templates, no build step, nothing fetched
// from another origin unless the user names a server), so Handler serves only
// the embedded files, only for GET and HEAD, and every answer carries headers
// that forbid loading code from anywhere else.
package web

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var embedded embed.FS

// assets is the embedded static/ tree with that prefix removed.
var assets = mustSub(embedded, "static")

func mustSub(fsys fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(fsys, dir)
	if err != nil {
		// fs.Sub fails only on an invalid path, which is a constant here.
		panic("web: " + err.Error())
	}
	return sub
}

// contentSecurityPolicy allows the page's own scripts and styles only.
// connect-src stays open to http(s) because the page may talk to a oneport
// node on another origin (?server=...), which the sfu allows through CORS.
const contentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; " +
	"img-src 'self' data:; media-src 'self' blob: mediastream:; connect-src 'self' http: https:; " +
	"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"

// Handler serves the demo page at "/" and its assets beside it. It is meant
// to be mounted at "/" next to the sfu's signaling handler; anything it does
// not hold gets 404, any method but GET and HEAD gets 405.
func Handler() http.Handler {
	files := http.FileServerFS(assets)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "web: method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		// The files change only with the binary; revalidate so an upgraded
		// node never runs a stale script against a newer API.
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
