package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

// The files are embedded as they are in the repository: the page needs no build step, and the
// binary serves exactly what was reviewed. client/*.js leaves the client's tests and its
// package.json out (they are for npm, not for browsers).
//
//go:embed static client/*.js
var files embed.FS

// CSP is the Content-Security-Policy of the page and its files. It differs from the API's
// ("default-src 'none'") only as far as the page needs: its own scripts and style sheets, its
// favicon, and connections back to this server (fetch for /login and /refresh, the WebSocket on
// /web: CSP Level 3's 'self' covers ws: and wss: to the same host). No inline script or style,
// no eval, no other origin, no forms posting anywhere, no framing.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// asset is one file, ready to serve.
type asset struct {
	body        []byte
	contentType string
	etag        string
}

// Handler serves the dashboard page at / and its files under /static/, and the JavaScript client
// under /client/ (client/switchboard.js is the stable path applications load). It is built
// once; every response carries CSP and an ETag (the hash of the file), and asks browsers to
// revalidate (Cache-Control: no-cache), so an upgraded server never leaves a stale page behind.
// Anything else under those prefixes is answered 404 in JSON.
type Handler struct {
	assets  map[string]asset // by URL path
	started time.Time        // Last-Modified: the embedded files are as old as the process
}

// New reads the embedded files.
func New() (*Handler, error) {
	h := &Handler{assets: map[string]asset{}, started: time.Now().UTC().Truncate(time.Second)}
	err := fs.WalkDir(files, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		ct := contentType(p)
		if ct == "" {
			return nil // LICENSE, VERSION: in the repository, not on the wire
		}
		b, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		h.assets["/"+p] = asset{body: b, contentType: ct, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("web: read embedded files: %w", err)
	}
	index, ok := h.assets["/static/index.html"]
	if !ok {
		return nil, fmt.Errorf("web: static/index.html is not embedded")
	}
	h.assets["/"] = index
	return h, nil
}

// Paths lists the URL paths served, for tests and the route table.
func (h *Handler) Paths() []string {
	out := make([]string, 0, len(h.assets))
	for p := range h.assets {
		out = append(out, p)
	}
	return out
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Content-Security-Policy", CSP)
	a, ok := h.assets[r.URL.Path]
	if !ok || r.Method != http.MethodGet && r.Method != http.MethodHead {
		hdr.Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte("{\"detail\":\"Not found\"}\n"))
		return
	}
	hdr.Set("Content-Type", a.contentType)
	hdr.Set("ETag", a.etag)
	hdr.Set("Cache-Control", "no-cache")
	// ServeContent answers If-None-Match with 304 and HEAD without a body.
	http.ServeContent(w, r, path.Base(r.URL.Path), h.started, bytes.NewReader(a.body))
}

// contentType is the type of a served file by extension; "" for files that are not served.
// Module scripts need a JavaScript type: browsers refuse them otherwise under nosniff.
func contentType(p string) string {
	switch {
	case strings.HasSuffix(p, ".html"):
		return "text/html; charset=utf-8"
	case strings.HasSuffix(p, ".js"):
		return "text/javascript; charset=utf-8"
	case strings.HasSuffix(p, ".css"):
		return "text/css; charset=utf-8"
	case strings.HasSuffix(p, ".svg"):
		return "image/svg+xml"
	case strings.HasSuffix(p, ".png"):
		return "image/png"
	}
	return ""
}
