package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Config configures a Client. URL and one of Token or GetToken are required; every other field
// has a default (the zero value means "the default").
type Config struct {
	// URL is the WebSocket endpoint, ws://host:port/web (wss:// for TLS). A format query
	// parameter is added from Format; the token goes in the Authorization header, never in the
	// URL (query strings end up in logs).
	URL string
	// FallbackURLs are other nodes of the same deployment: the client moves on to the next URL
	// after every connection that ended or failed (1001 at a node's shutdown, a refused dial).
	FallbackURLs []string

	// Token is a bearer token (JWT). Without GetToken it is used as long as it lasts: when it
	// expires the client stops with ErrTokenExpired.
	Token string
	// GetToken returns a fresh token. When set, the client calls it for the first connection (if
	// Token is empty), ahead of expiry to send the new token on the live connection
	// (REFRESH_TOKEN), after a close 4001 or a handshake 401, and for Publish. It must honour ctx.
	GetToken func(ctx context.Context) (string, error)
	// RefreshBefore is how long before the token's exp the client refreshes it on the live
	// connection, at most half the token's remaining life. 30s by default; negative disables
	// refreshing ahead (the client then gets a fresh token only after the server closed with 4001).
	RefreshBefore time.Duration

	// Format is the frame format: JSON (default) or Protobuf. The API is the same for both.
	Format Format

	// RequestTimeout bounds a request whose context has no deadline and no WithTimeout.
	// 10s by default.
	RequestTimeout time.Duration
	// HandshakeTimeout bounds one dial and upgrade. 10s by default.
	HandshakeTimeout time.Duration
	// WriteTimeout bounds one frame write; a server that takes nothing for that long is given up
	// on and the client reconnects. 10s by default.
	WriteTimeout time.Duration
	// PingInterval is how often the client pings; the server answers, which keeps the
	// connection alive through proxies. 20s by default.
	PingInterval time.Duration
	// ReadTimeout: a connection on which nothing arrived (frame, ping or pong) for this long is
	// taken for dead and replaced. 45s by default; it must exceed PingInterval.
	ReadTimeout time.Duration

	// ReconnectMin and ReconnectMax bound the jittered exponential wait between connection
	// attempts (100ms and 30s by default).
	ReconnectMin, ReconnectMax time.Duration
	// ConnLimitDelay is the least wait after the server refused the connection for the user's
	// connection limit (close 1008). 5s by default.
	ConnLimitDelay time.Duration
	// MaxClientFaults is how many connections in a row may end with a code that says the client
	// sent something the server cannot accept (1002, 1003, 1007, 1009) before the client stops
	// reconnecting with ErrRejected. 3 by default.
	MaxClientFaults int

	// OutboundQueue is how many requests may wait to be written (while disconnected, or while
	// the server reads slowly); Request blocks on a full queue until its context ends.
	// 256 by default.
	OutboundQueue int
	// InboundQueue is how many broadcasts and subscription events may wait for their callbacks
	// (see the package documentation for what happens when it is full). 1024 by default.
	InboundQueue int
	// InboundWait is how long the read goroutine waits for room in a full inbound queue before
	// it counts the queue as overflowed. 1s by default; negative: not at all. Answers to
	// requests wait behind it.
	InboundWait time.Duration
	// MaxMessageBytes, when set, refuses locally (ErrTooLarge) requests whose frame is longer:
	// set it to the server's SWITCHBOARD_WS_MAX_MESSAGE_BYTES, so an oversized request fails
	// alone instead of the server closing the connection (1009) under every request in flight.
	MaxMessageBytes int
	// MaxInboundBytes is the largest frame accepted from the server (16 MiB by default).
	MaxInboundBytes int

	// Header holds extra handshake headers (Origin, for a server with allowed origins).
	Header http.Header
	// Dialer opens the TCP connection (net.Dialer.DialContext by default).
	Dialer func(ctx context.Context, network, addr string) (net.Conn, error)
	// HTTPClient makes Publish's calls (a client with a 30s timeout by default).
	HTTPClient *http.Client
	// HTTPBase is the base URL of the HTTP façade for Publish (derived from URL by default:
	// ws→http, wss→https, the path without its last /web).
	HTTPBase string

	// OnBroadcast receives broadcasts that carry no topic (they reach every connection). It runs
	// on the client's callback goroutine, like subscription callbacks.
	OnBroadcast func(Message)
	// OnConnected is called after every successful connection (before resubscribing).
	OnConnected func(Connected)
	// OnDisconnect is called after every connection that ended and every attempt that failed,
	// with the cause and the wait before the next attempt. OnConnected and OnDisconnect run on
	// the goroutine that reconnects: keep them short.
	OnDisconnect func(Disconnect)

	// Logger gets the client's diagnostics (nothing by default).
	Logger *slog.Logger
}

// Connected describes a new connection.
type Connected struct {
	URL     string
	Attempt int // failed attempts since the last connection that got a frame
}

// Disconnect describes a connection that ended, or an attempt that failed.
type Disconnect struct {
	URL string
	// Code and Reason are the server's close frame (0 and "" when there was none).
	Code   uint16
	Reason string
	// Err is the cause: a *CloseError, a *HandshakeError, a network error, ErrInboundOverflow…
	Err error
	// Delay is the wait before the next attempt.
	Delay time.Duration
	// Final is set when the client gives up: it will not reconnect, Client.Err says why.
	Final bool
}

// withDefaults returns cfg with every unset field at its default, or an error naming what is
// wrong.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.URL == "" {
		return cfg, errors.New("client: Config.URL is required (ws://host:port/web)")
	}
	for _, u := range append([]string{cfg.URL}, cfg.FallbackURLs...) {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "ws" && p.Scheme != "wss") || p.Host == "" {
			return cfg, fmt.Errorf("client: URL %q: want ws://host:port/web or wss://…", u)
		}
	}
	if cfg.Token == "" && cfg.GetToken == nil {
		return cfg, errors.New("client: Config.Token or Config.GetToken is required")
	}
	if cfg.Format != JSON && cfg.Format != Protobuf {
		return cfg, fmt.Errorf("client: unknown %v", cfg.Format)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defInt := func(d *int, v int) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.RefreshBefore, 30*time.Second)
	def(&cfg.RequestTimeout, 10*time.Second)
	def(&cfg.HandshakeTimeout, 10*time.Second)
	def(&cfg.WriteTimeout, 10*time.Second)
	def(&cfg.PingInterval, 20*time.Second)
	def(&cfg.ReadTimeout, 45*time.Second)
	def(&cfg.ReconnectMin, 100*time.Millisecond)
	def(&cfg.ReconnectMax, 30*time.Second)
	def(&cfg.ConnLimitDelay, 5*time.Second)
	def(&cfg.InboundWait, time.Second)
	defInt(&cfg.MaxClientFaults, 3)
	defInt(&cfg.OutboundQueue, 256)
	defInt(&cfg.InboundQueue, 1024)
	defInt(&cfg.MaxInboundBytes, 16<<20)
	if cfg.ReadTimeout <= cfg.PingInterval {
		return cfg, fmt.Errorf("client: ReadTimeout (%s) must exceed PingInterval (%s)", cfg.ReadTimeout, cfg.PingInterval)
	}
	if cfg.ReconnectMax < cfg.ReconnectMin {
		return cfg, fmt.Errorf("client: ReconnectMax (%s) is below ReconnectMin (%s)", cfg.ReconnectMax, cfg.ReconnectMin)
	}
	for name, d := range map[string]time.Duration{"RequestTimeout": cfg.RequestTimeout, "HandshakeTimeout": cfg.HandshakeTimeout,
		"WriteTimeout": cfg.WriteTimeout, "PingInterval": cfg.PingInterval, "ReconnectMin": cfg.ReconnectMin, "ConnLimitDelay": cfg.ConnLimitDelay} {
		if d < 0 {
			return cfg, fmt.Errorf("client: %s must not be negative", name)
		}
	}
	if cfg.OutboundQueue < 0 || cfg.InboundQueue < 0 || cfg.MaxClientFaults < 0 || cfg.MaxMessageBytes < 0 {
		return cfg, errors.New("client: queue sizes and limits must not be negative")
	}
	if cfg.Dialer == nil {
		cfg.Dialer = (&net.Dialer{}).DialContext
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if cfg.HTTPBase == "" {
		cfg.HTTPBase = httpBaseOf(cfg.URL)
	}
	cfg.HTTPBase = strings.TrimSuffix(cfg.HTTPBase, "/")
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return cfg, nil
}

// httpBaseOf derives the façade's base URL from the WebSocket URL: ws://h/web → http://h.
func httpBaseOf(wsURL string) string {
	u, err := url.Parse(wsURL)
	if err != nil {
		return ""
	}
	if u.Scheme == "wss" {
		u.Scheme = "https"
	} else {
		u.Scheme = "http"
	}
	u.Path = strings.TrimSuffix(strings.TrimSuffix(u.Path, "/"), "/web")
	u.RawQuery, u.Fragment, u.RawPath = "", "", ""
	return u.String()
}

// dialURL returns u with the format query parameter of f.
func dialURL(u string, f Format) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	q := p.Query()
	q.Set("format", f.String())
	p.RawQuery = q.Encode()
	return p.String()
}
