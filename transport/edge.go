package transport

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"switchboard/transport/auth"
)

// EdgeConfig bounds what a peer can make the server hold before it authenticates. The header
// size and time limits themselves are http.Server's (MaxHeaderBytes, ReadHeaderTimeout); the
// Edge answers their refusals in the contract's JSON shape and caps the connections per client
// address that have not authenticated yet.
type EdgeConfig struct {
	// MaxPreAuthPerIP caps the connections of one client address (an IPv6 /64) that are neither
	// upgraded to a WebSocket nor have carried a request with a valid token within its user's
	// rate limit. Connections over it
	// are answered 429 and closed at once, before a byte of their request is read.
	MaxPreAuthPerIP int
	// TrustedProxies are exempt from the cap: behind them every client shares their address.
	TrustedProxies []netip.Prefix
	// MaxHeaderBytes and HeaderTimeout are the http.Server's, for the text of 431 and 408.
	MaxHeaderBytes int
	HeaderTimeout  time.Duration
	Logger         *slog.Logger
	Metrics        *metrics.Set
}

// Edge wraps the server's listener (Listen) and must be given to the http.Server as its
// ConnContext and ConnState hooks; the middleware chain finds each request's connection through
// the context. Its counters are safe for concurrent use; the only goroutines it starts are the
// bounded refusals of a listener, which that listener's Close stops and waits for.
type Edge struct {
	cfg     EdgeConfig
	refused *metrics.Counter
	preAuth atomic.Int64

	mu    sync.Mutex
	perIP map[netip.Addr]int // pre-auth connections per client key (see clientKey)

	lastWarn   atomic.Int64 // unix nanoseconds of the last refusal warning
	suppressed atomic.Int64 // refusals since then
}

// NewEdge returns an Edge; cfg.MaxPreAuthPerIP < 1 means no cap.
func NewEdge(cfg EdgeConfig) *Edge {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	e := &Edge{cfg: cfg, perIP: make(map[netip.Addr]int)}
	e.refused = cfg.Metrics.GetOrCreateCounter("http_connections_refused_total")
	cfg.Metrics.GetOrCreateGauge("http_preauth_connections", func() float64 { return float64(e.preAuth.Load()) })
	return e
}

// PreAuth returns the number of connections now counted as not authenticated.
func (e *Edge) PreAuth() int { return int(e.preAuth.Load()) }

// refuseLinger bounds how long a refused connection is kept to deliver its 429, and
// maxRefusing how many are kept at once; past that a refused connection is just closed.
const (
	refuseLinger = time.Second
	maxRefusing  = 64
	warnEvery    = 10 * time.Second
)

// Listen wraps ln: every accepted connection is counted against its address's pre-auth cap
// (or refused) and wrapped so the server's own error answers come out as JSON.
func (e *Edge) Listen(ln net.Listener) net.Listener {
	return &edgeListener{Listener: ln, e: e, slots: make(chan struct{}, maxRefusing), refusing: make(map[net.Conn]struct{})}
}

// ConnContext is the http.Server hook that lets handlers find their connection.
func (e *Edge) ConnContext(ctx context.Context, c net.Conn) context.Context {
	if ec, ok := c.(*edgeConn); ok {
		return context.WithValue(ctx, edgeConnKey{}, ec)
	}
	return ctx
}

// ConnState is the http.Server hook that marks where one request ends: once a connection is
// idle again, what is read and written next belongs to the next request.
func (e *Edge) ConnState(c net.Conn, s http.ConnState) {
	if ec, ok := c.(*edgeConn); ok && s == http.StateIdle {
		ec.handling.Store(false)
		ec.partial.Store(0)
	}
}

// clientKey is the unit the cap counts: the address itself for IPv4, its /64 for IPv6 (one
// host usually owns a whole /64). ok is false for trusted proxies and non-IP addresses, which
// are not counted.
func (e *Edge) clientKey(addr net.Addr) (netip.Addr, bool) {
	var ap netip.AddrPort
	if ta, isTCP := addr.(*net.TCPAddr); isTCP {
		ap = ta.AddrPort()
	} else if p, err := netip.ParseAddrPort(addr.String()); err == nil {
		ap = p
	} else {
		return netip.Addr{}, false
	}
	a := ap.Addr().Unmap()
	for _, p := range e.cfg.TrustedProxies {
		if p.Contains(a) {
			return netip.Addr{}, false
		}
	}
	if a.Is6() {
		a = netip.PrefixFrom(a, 64).Masked().Addr()
	}
	return a, a.IsValid()
}

// admit counts one more pre-auth connection for key, or reports false when key is at the cap.
func (e *Edge) admit(key netip.Addr) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cfg.MaxPreAuthPerIP > 0 && e.perIP[key] >= e.cfg.MaxPreAuthPerIP {
		return false
	}
	e.perIP[key]++
	e.preAuth.Add(1)
	return true
}

func (e *Edge) release(key netip.Addr) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if n := e.perIP[key]; n > 1 {
		e.perIP[key] = n - 1
	} else {
		delete(e.perIP, key)
	}
	e.preAuth.Add(-1)
}

// noteRefusal counts a refused connection and warns at most once per warnEvery: a flood must
// not turn into a flood of log lines.
func (e *Edge) noteRefusal(addr net.Addr) {
	e.refused.Inc()
	now := time.Now().UnixNano()
	last := e.lastWarn.Load()
	if now-last < int64(warnEvery) || !e.lastWarn.CompareAndSwap(last, now) {
		e.suppressed.Add(1)
		return
	}
	e.cfg.Logger.Warn("connection refused: too many unauthenticated connections from its address",
		"remote", addr.String(), "limit", e.cfg.MaxPreAuthPerIP, "refused_since_last_warning", e.suppressed.Swap(0))
}

// ownError counts and logs an answer the HTTP server wrote by itself, before any handler ran
// (the request could not be read), like the access log does for handled requests.
func (e *Edge) ownError(status int, remote net.Addr) {
	e.cfg.Metrics.GetOrCreateCounter(`http_requests_total{method="other",route="unparsed",status="` + strconv.Itoa(status) + `"}`).Inc()
	e.cfg.Logger.Info("http request", "route", "unparsed", "status", status, "remote", remote.String())
}

// ownErrorDetail is the JSON detail for an answer the HTTP server writes by itself. reason is
// the server's own fixed explanation of a 400 (such as "missing required Host header"), if any.
func (e *Edge) ownErrorDetail(status int, reason string) string {
	switch status {
	case http.StatusRequestHeaderFieldsTooLarge:
		if e.cfg.MaxHeaderBytes > 0 {
			return "Request headers too large: at most " + strconv.Itoa(e.cfg.MaxHeaderBytes) + " bytes"
		}
		return "Request headers too large"
	case http.StatusRequestTimeout:
		if e.cfg.HeaderTimeout > 0 {
			return "Request headers not received within " + e.cfg.HeaderTimeout.String()
		}
		return "Request headers not received in time"
	case http.StatusBadRequest:
		if reason != "" {
			return "Malformed request: " + reason
		}
		return "Malformed request"
	case http.StatusNotImplemented:
		return "Unsupported transfer encoding"
	case http.StatusHTTPVersionNotSupported:
		return "Unsupported HTTP version: use HTTP/1.1"
	case http.StatusExpectationFailed:
		return "Unsupported Expect header: only 100-continue is understood"
	}
	return http.StatusText(status)
}

type edgeConnKey struct{}

func edgeConnOf(r *http.Request) *edgeConn {
	ec, _ := r.Context().Value(edgeConnKey{}).(*edgeConn)
	return ec
}

// edgeListener is the wrapped listener. Refused connections get their 429 from a goroutine of
// their own (at most maxRefusing at once, each for at most refuseLinger), so Accept never waits
// on a peer.
type edgeListener struct {
	net.Listener
	e     *Edge
	slots chan struct{}

	mu       sync.Mutex
	closed   bool
	refusing map[net.Conn]struct{}
	wg       sync.WaitGroup
}

func (l *edgeListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key, counted := l.e.clientKey(c.RemoteAddr())
		if !counted {
			return &edgeConn{Conn: c, edge: l.e}, nil
		}
		if l.e.admit(key) {
			ec := &edgeConn{Conn: c, edge: l.e, key: key}
			ec.counted.Store(true)
			return ec, nil
		}
		l.e.noteRefusal(c.RemoteAddr())
		l.refuse(c)
	}
}

// tooManyConnections is the answer to a connection over its address's cap.
func tooManyConnections() []byte {
	return rawErrorResponse(http.StatusTooManyRequests, "Too many unauthenticated connections from this address",
		"Retry-After: 1\r\n")
}

func (l *edgeListener) refuse(c net.Conn) {
	select {
	case l.slots <- struct{}{}:
	default:
		_ = c.Close() // refusals are piling up: do not spend more on them
		return
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		<-l.slots
		_ = c.Close()
		return
	}
	l.refusing[c] = struct{}{}
	l.wg.Add(1)
	l.mu.Unlock()
	go l.linger(c)
}

// linger writes the 429, half-closes, and reads (and drops) what the client had sent for up
// to refuseLinger: closing a socket with unread input resets it, and the reset can destroy the
// answer before the client reads it.
func (l *edgeListener) linger(c net.Conn) {
	defer l.wg.Done()
	defer func() { <-l.slots }()
	defer func() {
		_ = c.Close()
		l.mu.Lock()
		delete(l.refusing, c)
		l.mu.Unlock()
	}()
	_ = c.SetDeadline(time.Now().Add(refuseLinger))
	if _, err := c.Write(tooManyConnections()); err != nil {
		return
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_, _ = io.CopyN(io.Discard, c, 64<<10)
}

// Close closes the listener, ends the refusals in progress and waits for them.
func (l *edgeListener) Close() error {
	err := l.Listener.Close()
	l.mu.Lock()
	l.closed = true
	for c := range l.refusing {
		_ = c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
	return err
}

// edgeConn is an accepted connection while it serves HTTP. It holds its address's pre-auth slot
// until the connection closes, is upgraded (detach) or carries a request with a valid token
// within its user's rate limit (admitted), and rewrites the HTTP server's own error answers,
// which it writes straight to the connection in text/plain, into the contract's JSON. A
// WebSocket never reads through it: detach hands the bare connection to the upgrade.
type edgeConn struct {
	net.Conn
	edge    *Edge
	key     netip.Addr
	counted atomic.Bool // holds a pre-auth slot
	// handling is set when the middleware chain starts on a request and cleared when the
	// server goes idle after it: while it is clear, whatever the server writes is its own
	// answer to a request it could not read (431, 400, 501, 505, 417).
	handling atomic.Bool
	partial  atomic.Int64 // bytes read while not handling: a request's line and headers so far
	// answered is set by the first own answer: the server closes the connection after it, and
	// a timed-out read that is retried must not answer twice.
	answered atomic.Bool
	tokens   auth.Memo // the last token a request on it presented, verified
}

// RemoteAddr is the peer's address. net/http asks for it first thing on the connection's own
// goroutine, whose stack starts at 2 KiB and grew twice while it served a handshake: to 4 KiB
// here and to 8 KiB in the routing, twenty frames deep, where the runtime's copy adjusts every
// frame. Its frame of 4 KiB makes the stack grow to 8 KiB here at once, with two frames to
// copy; elsewhere it costs the frame's zeroing. A connection still sending its first request's
// headers holds 8 KiB of stack instead of 4.
func (c *edgeConn) RemoteAddr() net.Addr {
	var frame [4096]byte
	keepFrame(frame[:])
	return c.Conn.RemoteAddr()
}

// keepFrame keeps RemoteAddr's frame from being optimised away.
//
//go:noinline
func keepFrame([]byte) {}

func (c *edgeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if !c.handling.Load() && c.partial.Add(int64(n)) > 0 && err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		// The header timeout struck a request that had started: the server would close
		// silently. An idle connection timing out (nothing read yet) is closed silently.
		c.writeOwnError(http.StatusRequestTimeout, "")
	}
	return n, err
}

func (c *edgeConn) Write(p []byte) (int, error) {
	if c.handling.Load() {
		return c.Conn.Write(p)
	}
	status, reason, ok := parseOwnAnswer(p)
	if !ok {
		return c.Conn.Write(p)
	}
	if err := c.writeOwnError(status, reason); err != nil {
		return 0, err
	}
	return len(p), nil
}

// writeOwnError writes the JSON answer for status, bounded in time: the connection is about
// to be closed, and a peer that does not read must not hold the server's goroutine.
func (c *edgeConn) writeOwnError(status int, reason string) error {
	if !c.answered.CompareAndSwap(false, true) {
		return nil
	}
	c.edge.ownError(status, c.RemoteAddr())
	_ = c.Conn.SetWriteDeadline(time.Now().Add(refuseLinger))
	_, err := c.Conn.Write(rawErrorResponse(status, c.edge.ownErrorDetail(status, reason), ""))
	return err
}

// CloseWrite lets the HTTP server half-close after its 431, as it does on a bare TCP connection.
func (c *edgeConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *edgeConn) Close() error {
	c.releasePreAuth()
	return c.Conn.Close()
}

// releasePreAuth frees the connection's pre-auth slot, once.
func (c *edgeConn) releasePreAuth() {
	if c.counted.CompareAndSwap(true, false) {
		c.edge.release(c.key)
	}
}

// detach frees the slot and returns the bare connection, for a WebSocket upgrade: the socket's
// read loop must not run through a wrapper (a frame more on an idle connection's stack doubles
// it).
func (c *edgeConn) detach() net.Conn {
	c.releasePreAuth()
	return c.Conn
}

// parseOwnAnswer reads the status (>= 400) and, for a 400, the server's fixed reason from the
// status line of an answer the HTTP server writes by itself ("HTTP/1.1 400 Bad Request: missing
// required Host header\r\n…").
func parseOwnAnswer(p []byte) (status int, reason string, ok bool) {
	const prefix = "HTTP/1.1 "
	if len(p) < len(prefix)+3 || string(p[:len(prefix)]) != prefix {
		return 0, "", false
	}
	status, err := strconv.Atoi(string(p[len(prefix) : len(prefix)+3]))
	if err != nil || status < 400 || status > 599 {
		return 0, "", false
	}
	line := p[len(prefix)+3:]
	for i := range line {
		if line[i] == '\r' || line[i] == '\n' {
			line = line[:i]
			break
		}
	}
	if status == http.StatusBadRequest {
		if _, after, found := strings.Cut(string(line), ": "); found && plainReason(after) {
			reason = after
		}
	}
	return status, reason, true
}

// plainReason accepts the short lowercase explanations net/http gives ("malformed Host
// header"), and nothing else, so no request byte is ever echoed.
func plainReason(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch == ' ' || ch == '-') {
			return false
		}
	}
	return true
}
