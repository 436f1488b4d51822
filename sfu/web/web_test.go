package web

import (
	"io"
	"io/fs"
	"mime"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, method, target string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	return rec.Result()
}

func body(t *testing.T, res *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestIndex(t *testing.T) {
	res := get(t, Handler(), http.MethodGet, "/?room=demo&mode=watch")
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /: %d", res.StatusCode)
	}
	if ct, _, _ := mime.ParseMediaType(res.Header.Get("Content-Type")); ct != "text/html" {
		t.Errorf("Content-Type %q, want text/html", res.Header.Get("Content-Type"))
	}
	for _, h := range []string{"Content-Security-Policy", "X-Content-Type-Options", "Cache-Control"} {
		if res.Header.Get(h) == "" {
			t.Errorf("missing header %s", h)
		}
	}
	if b := body(t, res); !strings.Contains(b, `src="app.js"`) {
		t.Errorf("index does not load app.js:\n%s", b)
	}
}

var refAttr = regexp.MustCompile(`(?:src|href)="([^"]*)"`)

// TestReferencedAssets: every file the page refers to is served with a
// content type the browser will run under nosniff, and nothing comes from
// another origin (no CDN).
func TestReferencedAssets(t *testing.T) {
	h := Handler()
	index := body(t, get(t, h, http.MethodGet, "/"))
	want := map[string]string{".js": "text/javascript", ".css": "text/css"}
	refs := refAttr.FindAllStringSubmatch(index, -1)
	if len(refs) < 2 {
		t.Fatalf("found %d references in index.html, want app.js and style.css", len(refs))
	}
	for _, m := range refs {
		ref := m[1]
		if strings.HasPrefix(ref, "data:") {
			continue
		}
		if strings.Contains(ref, "//") {
			t.Errorf("index.html refers to another origin: %q", ref)
			continue
		}
		res := get(t, h, http.MethodGet, "/"+ref)
		if res.StatusCode != http.StatusOK {
			t.Errorf("GET /%s: %d", ref, res.StatusCode)
			continue
		}
		ct, _, _ := mime.ParseMediaType(res.Header.Get("Content-Type"))
		if w, ok := want[filepath.Ext(ref)]; ok && ct != w {
			t.Errorf("GET /%s: Content-Type %q, want %s", ref, ct, w)
		}
	}
	// The script reaches only its own server (or the one named by ?server=).
	js := body(t, get(t, h, http.MethodGet, "/app.js"))
	if u := regexp.MustCompile(`https?://[^\s'"]+`).FindString(js); u != "" {
		t.Errorf("app.js names an absolute URL %q", u)
	}
}

func TestMethodsAndMissing(t *testing.T) {
	h := Handler()
	res := get(t, h, http.MethodPost, "/")
	if res.StatusCode != http.StatusMethodNotAllowed || res.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /: %d Allow %q, want 405 with Allow GET, HEAD", res.StatusCode, res.Header.Get("Allow"))
	}
	if res := get(t, h, http.MethodGet, "/no-such-file.js"); res.StatusCode != http.StatusNotFound {
		t.Errorf("GET missing file: %d, want 404", res.StatusCode)
	}
	res = get(t, h, http.MethodHead, "/app.js")
	if res.StatusCode != http.StatusOK || body(t, res) != "" {
		t.Errorf("HEAD /app.js: %d, want 200 without a body", res.StatusCode)
	}
}

// TestScriptParses checks the embedded script's syntax with node, as the
// browser will parse it; node is installed in CI for the browser test.
func TestScriptParses(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("node is not installed (CI installs it for e2e/browser)")
		}
		t.Skip("node not installed")
	}
	err = fs.WalkDir(assets, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(path) != ".js" {
			return err
		}
		src, err := fs.ReadFile(assets, path)
		if err != nil {
			return err
		}
		tmp := filepath.Join(t.TempDir(), filepath.Base(path))
		if err := os.WriteFile(tmp, src, 0o600); err != nil {
			return err
		}
		if out, err := exec.Command(node, "--check", tmp).CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", path, err, out)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
