package main

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"switchboard/config"
	"switchboard/hub/sysstats"
	sbclient "switchboard/transport/client"
	"switchboard/transport/web"
)

// The page and the client are served by the node with the page's CSP and a rate limit of their
// own (static_ip, ten times the HTTP limit); the API keeps its stricter CSP.
func TestDashboardFilesServed(t *testing.T) {
	s := startServer(t, func(c *config.Config) { c.RateLimitPerMinute = 7 })
	for _, path := range []string{"/", "/client/switchboard.js", "/static/dashboard.js"} {
		resp, body := s.do(t, http.MethodGet, path, "", "")
		if resp.StatusCode != http.StatusOK || len(body) == 0 {
			t.Fatalf("GET %s: %d", path, resp.StatusCode)
		}
		if got := resp.Header.Get("Content-Security-Policy"); got != web.CSP {
			t.Fatalf("GET %s: CSP %q", path, got)
		}
		if resp.Header.Get("X-Frame-Options") != "DENY" || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Fatalf("GET %s: security headers %v", path, resp.Header)
		}
		if got := resp.Header.Get("X-RateLimit-Limit"); got != strconv.Itoa(7*10) {
			t.Fatalf("GET %s: X-RateLimit-Limit %q", path, got)
		}
	}
	resp, _ := s.do(t, http.MethodGet, "/authors", "", "")
	if got := resp.Header.Get("Content-Security-Policy"); got != "default-src 'none'; frame-ancestors 'none'" {
		t.Fatalf("the API's CSP changed: %q", got)
	}
	if resp, _ := s.do(t, http.MethodGet, "/static/missing.js", "", ""); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("a missing file: %d", resp.StatusCode)
	}
}

// sys.stats: any authenticated user subscribes and gets the node's figures once a second
// (pkg_id 30, no seq: the topic keeps no history); nobody publishes on it but the server.
func TestSysStatsTopic(t *testing.T) {
	s := startServer(t, nil)
	c := s.connect(t, s.token(t, "stats-watcher"))
	c.mustSubscribe(sysstats.Topic)
	e := c.next(15 * time.Second)
	if e.Topic != sysstats.Topic || e.PkgID != sysstats.PkgID || e.Seq != 0 {
		t.Fatalf("stats broadcast %+v", e)
	}
	var st sysstats.Stats
	decodeMsg(t, e, &st)
	if st.Node != s.app.node || st.Connections < 1 || st.IntervalS <= 0 {
		t.Fatalf("stats %+v", st)
	}
	// Watching the figures does not change them: the stats are not counted as broadcasts.
	if got := s.scrapeMetric(t, "ws_broadcasts_total"); got != "0" {
		t.Fatalf("ws_broadcasts_total = %q after stats only, want 0", got)
	}
	if _, err := s.publisher(t, s.token(t, "publisher", "broadcast")).Publish(t.Context(), sysstats.Topic, sysstats.PkgID, map[string]any{}); !sbclient.IsPermissionDenied(err) {
		t.Fatalf("a client publishing on sys.stats: %v, want 403", err)
	}
}
