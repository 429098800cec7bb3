package transport

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"switchboard/actors"
	"switchboard/transport/auth"
)

// chain wraps the mux, outermost first: mark the connection as handling a request → recover →
// client address from trusted proxies →
// correlation id and security headers → metrics and access log → routing with the request size
// check and JSON 404/405 → handler. Authentication, rate limits and RBAC run per route (api.authed), then the handler.
func chain(mux *http.ServeMux, cfg APIConfig) http.Handler {
	var h http.Handler = route(mux, cfg.MaxRequestBytes)
	h = observe(h, cfg)
	h = headers(h)
	h = trustedProxies(h, cfg.TrustedProxies)
	h = recoverer(h, cfg)
	return requestStarted(h)
}

// requestStarted tells the request's connection (when the Edge wraps it) that a handler runs:
// from here on, what the server writes is the handler's answer, not the server's own refusal.
func requestStarted(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ec := edgeConnOf(r); ec != nil {
			ec.handling.Store(true)
		}
		next.ServeHTTP(w, r)
	})
}

func recoverer(next http.Handler, cfg APIConfig) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				cfg.Logger.Error("http handler panicked", "path", r.URL.Path, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				writeDetail(w, http.StatusInternalServerError, "Internal error")
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// headers sets the correlation id (echoed or generated) and the security headers on every
// response, errors included.
func headers(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := headerGet(r.Header, hdrCorrelationID)
		if id == "" || len(id) > 128 {
			id = newCorrelationID()
			headerSet(r.Header, hdrCorrelationID, id)
		}
		h := w.Header()
		headerSet(h, hdrCorrelationID, id)
		for _, sh := range securityHeaders {
			h[sh.name] = sh.value
		}
		next.ServeHTTP(w, r)
	})
}

// statusWriter remembers the status a handler wrote.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// Hijack hands the connection to the WebSocket upgrade (gws asserts http.Hijacker). The
// connection returned is the bare one the listener accepted (the Edge's wrapper frees its
// pre-auth slot and steps aside), so the socket's read loop reads it directly. The
// bufio.ReadWriter still reads through the server's buffer and the wrapper: whatever it has
// buffered (Buffered() > 0: a client that sent frames before the 101) must be drained from it
// before reading the bare connection, and it must not be the socket's reader.
func (s *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(s.ResponseWriter).Hijack()
	if err != nil {
		return c, rw, err
	}
	if ec, ok := c.(*edgeConn); ok {
		c = ec.detach()
	}
	if s.status == 0 {
		s.status = http.StatusSwitchingProtocols
	}
	return c, rw, nil
}

// observe records http_requests_total and http_request_duration_seconds by route pattern (never
// the raw path) and writes one access-log line with the token redacted.
func observe(next http.Handler, cfg APIConfig) http.Handler {
	var series httpSeries
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		info := &requestInfo{}
		r = r.WithContext(context.WithValue(r.Context(), requestInfoKey{}, info))
		next.ServeHTTP(sw, r)
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		method := methodLabel(r.Method)
		series.counter(cfg.Metrics, method, route, status).Inc()
		series.histogram(cfg.Metrics, method, route).UpdateDuration(start)
		if ctx := r.Context(); cfg.Logger.Enabled(ctx, slog.LevelInfo) { // the path's redaction is not free
			// Typed attributes: the same line as Info's key-value pairs, without boxing each value.
			actors.RequestLine(ctx, cfg.Logger, slog.LevelInfo, "http request", slog.String("method", r.Method),
				slog.String("path", auth.RedactURL(r.URL)), slog.String("route", route), slog.Int("status", status),
				slog.Int64("duration_ms", time.Since(start).Milliseconds()),
				slog.String("correlation_id", headerGet(r.Header, hdrCorrelationID)),
				slog.String("user", info.user), slog.String("remote", r.RemoteAddr))
		}
	})
}

// httpSeries finds the request metrics of a method, route and status without building their
// names on every request (routes are the mux's patterns, methods and statuses few).
type httpSeries struct {
	counters   sync.Map // seriesKey -> *metrics.Counter
	histograms sync.Map // seriesKey (status 0) -> *metrics.PrometheusHistogram
}

type seriesKey struct {
	method, route string
	status        int
}

func (s *httpSeries) counter(set *metrics.Set, method, route string, status int) *metrics.Counter {
	k := seriesKey{method, route, status}
	if c, ok := s.counters.Load(k); ok {
		return c.(*metrics.Counter)
	}
	c := set.GetOrCreateCounter(`http_requests_total{method="` + method + `",route="` + route +
		`",status="` + strconv.Itoa(status) + `"}`)
	s.counters.Store(k, c)
	return c
}

func (s *httpSeries) histogram(set *metrics.Set, method, route string) *metrics.PrometheusHistogram {
	k := seriesKey{method: method, route: route}
	if h, ok := s.histograms.Load(k); ok {
		return h.(*metrics.PrometheusHistogram)
	}
	h := set.GetOrCreatePrometheusHistogram(`http_request_duration_seconds{method="` + method + `",route="` + route + `"}`)
	s.histograms.Store(k, h)
	return h
}

// requestInfo carries what inner handlers learn about a request (the verified user) out to
// the access log, and the call's audit record (api.authed) to the handler: one context value,
// so the request is copied once (Request.WithContext) however much is noted.
type requestInfo struct {
	user  string
	audit *auditRecord
}

type requestInfoKey struct{}

// infoOf is the request's requestInfo (observe), or nil.
func infoOf(r *http.Request) *requestInfo {
	info, _ := r.Context().Value(requestInfoKey{}).(*requestInfo)
	return info
}

// noteUser records the verified user of the request for the access log.
func noteUser(r *http.Request, user string) {
	if info := infoOf(r); info != nil {
		info.user = user
	}
}

// admitted frees the pre-auth slot of the request's connection once a request on it has a
// verified token and was within its user's rate limit: the connection is no longer an anonymous
// peer's, and a user's own limit bounds how many connections they can take out of the cap this
// way (a request refused with 429 frees nothing).
func admitted(r *http.Request) {
	if ec := edgeConnOf(r); ec != nil {
		ec.releasePreAuth()
	}
}

// route dispatches to the mux after two checks the mux cannot make: a body over max is
// answered 413 (declared sizes at once; chunked bodies are capped and fail when read), and
// unknown routes and wrong methods are answered 404 and 405 as JSON (the mux's own answers are
// plain text).
func route(mux *http.ServeMux, max int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern != "" {
			if r.ContentLength > max {
				r.Pattern = pattern // for the metrics and the access log
				writeDetail(w, http.StatusRequestEntityTooLarge, "Request body too large")
				return
			}
			if r.Body != nil && r.Body != http.NoBody {
				r.Body = http.MaxBytesReader(w, r.Body, max)
			}
			mux.ServeHTTP(w, r)
			return
		}
		probe := &probeWriter{header: http.Header{}}
		mux.ServeHTTP(probe, r)
		switch {
		case probe.status == http.StatusMethodNotAllowed:
			w.Header().Set("Allow", probe.header.Get("Allow"))
			writeDetail(w, http.StatusMethodNotAllowed, "Method not allowed")
			return
		case probe.status >= 300 && probe.status < 400:
			mux.ServeHTTP(w, r) // the mux's redirect to a cleaned path
			return
		}
		writeDetail(w, http.StatusNotFound, "Not found")
	})
}

type probeWriter struct {
	header http.Header
	status int
}

func (p *probeWriter) Header() http.Header { return p.header }
func (p *probeWriter) Write(b []byte) (int, error) {
	if p.status == 0 {
		p.status = http.StatusOK
	}
	return len(b), nil
}
func (p *probeWriter) WriteHeader(code int) {
	if p.status == 0 {
		p.status = code
	}
}

// readLimited reads the whole body, failing with *http.MaxBytesError past limit bytes whether
// the size was declared or the body is chunked (route also caps it for every route).
func readLimited(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	return io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
}

func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodHead, http.MethodOptions:
		return m
	}
	return "other"
}
