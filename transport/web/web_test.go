package web

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func serve(t *testing.T, h http.Handler, method, path string, header http.Header) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, path, nil)
	for k, v := range header {
		r.Header[k] = v
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// The page, its modules and the client are served with their types, the page's CSP and an
// ETag; a request that has the ETag gets 304; anything else is a JSON 404.
func TestServesEmbeddedFiles(t *testing.T) {
	h, err := New()
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"/":                                      "text/html; charset=utf-8",
		"/static/dashboard.js":                   "text/javascript; charset=utf-8",
		"/static/style.css":                      "text/css; charset=utf-8",
		"/static/vendor/uplot/uPlot.iife.min.js": "text/javascript; charset=utf-8",
		"/client/switchboard.js":                 "text/javascript; charset=utf-8",
		"/client/protobuf.js":                    "text/javascript; charset=utf-8",
	} {
		w := serve(t, h, http.MethodGet, path, nil)
		if w.Code != http.StatusOK || w.Header().Get("Content-Type") != want {
			t.Fatalf("%s: %d %q", path, w.Code, w.Header().Get("Content-Type"))
		}
		if w.Header().Get("Content-Security-Policy") != CSP || w.Header().Get("Cache-Control") != "no-cache" {
			t.Fatalf("%s: headers %v", path, w.Header())
		}
		etag := w.Header().Get("ETag")
		if etag == "" || w.Body.Len() == 0 {
			t.Fatalf("%s: no ETag or empty body", path)
		}
		if w := serve(t, h, http.MethodGet, path, http.Header{"If-None-Match": {etag}}); w.Code != http.StatusNotModified {
			t.Fatalf("%s with its ETag: %d", path, w.Code)
		}
	}
	if w := serve(t, h, http.MethodHead, "/client/switchboard.js", nil); w.Code != http.StatusOK || w.Body.Len() != 0 {
		t.Fatalf("HEAD: %d, %d bytes", w.Code, w.Body.Len())
	}
	// Not served: the client's tests and package.json, the vendored library's licence file,
	// anything else.
	for _, path := range []string{"/client/package.json", "/client/test/e2e.test.js", "/static/vendor/uplot/LICENSE", "/static/nope.js", "/static/"} {
		w := serve(t, h, http.MethodGet, path, nil)
		if w.Code != http.StatusNotFound || !strings.Contains(w.Body.String(), `"detail"`) {
			t.Fatalf("%s: %d %s", path, w.Code, w.Body)
		}
	}
}

// The page loads nothing that its CSP refuses: no inline script or style, no other origin; and
// its own scripts build no code from strings and no HTML from text.
func TestPageKeepsToItsCSP(t *testing.T) {
	h, err := New()
	if err != nil {
		t.Fatal(err)
	}
	page := serve(t, h, http.MethodGet, "/", nil).Body.String()
	for _, bad := range []string{"<script>", "<style", " style=", " onclick=", " onload=", "http://", "https://"} {
		if strings.Contains(page, bad) {
			t.Fatalf("index.html holds %q, which the CSP refuses", bad)
		}
	}
	for _, p := range h.Paths() {
		if strings.HasSuffix(p, ".js") && !strings.Contains(p, "vendor") {
			body := serve(t, h, http.MethodGet, p, nil).Body.String()
			for _, bad := range []string{"eval(", "new Function(", "innerHTML", "insertAdjacentHTML"} {
				if strings.Contains(body, bad) {
					t.Fatalf("%s uses %s", p, bad)
				}
			}
		}
	}
}
