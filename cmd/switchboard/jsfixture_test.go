package main

// jsFixture lets tests written in JavaScript (Node's test runner, driven by TestJSClient) start
// and control whole Switchboard nodes in this test process, over a small HTTP API on
// 127.0.0.1: start a node (with a few settings), mint tokens, restart it on the same port and
// data directory, stop and start it, and cut, refuse or re-open the TCP proxy its WebSocket URL
// goes through. The nodes run in-process, with the race detector when the test has it.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"switchboard/config"
	"switchboard/store/faultproxy"
	"switchboard/transport/auth"
)

// jsNodeSettings are what a JavaScript test may set on a node it starts.
type jsNodeSettings struct {
	MaxConnsPerUser int   `json:"max_conns_per_user"`
	MaxMessageBytes int   `json:"max_message_bytes"`
	JWTLeewayMS     *int  `json:"jwt_leeway_ms"`
	RateLimit       int   `json:"rate_limit_per_minute"`
	WSRateLimit     int   `json:"ws_message_rate_limit"`
	PingIntervalMS  int64 `json:"ping_interval_ms"`
}

// jsNode is one node of the fixture, with the proxy in front of its WebSocket.
type jsNode struct {
	mu    sync.Mutex
	cfg   config.Config // Addr and DataDir fixed after the first start, so restarts reuse them
	srv   *testServer   // nil while stopped
	proxy *faultproxy.Proxy
	dev   *auth.DevIssuer
}

type jsFixture struct {
	t     testing.TB
	log   *slog.Logger
	url   string
	mu    sync.Mutex
	nodes map[string]*jsNode
}

// newJSFixture starts the control API; every node it started is stopped when the test ends.
func newJSFixture(t testing.TB) *jsFixture {
	f := &jsFixture{t: t, log: testLogger(t), nodes: map[string]*jsNode{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /nodes", f.start)
	mux.HandleFunc("POST /nodes/{id}/{action}", f.act)
	srv := httptest.NewServer(mux)
	f.url = srv.URL
	t.Cleanup(func() {
		srv.Close()
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, n := range f.nodes {
			n.mu.Lock()
			if n.srv != nil {
				if err := n.srv.stop(); err != nil {
					t.Errorf("fixture node stop: %v", err)
				}
			}
			_ = n.proxy.Close()
			n.mu.Unlock()
		}
	})
	return f
}

func (f *jsFixture) start(w http.ResponseWriter, r *http.Request) {
	var s jsNodeSettings
	if err := json.NewDecoder(r.Body).Decode(&s); err != nil && !errors.Is(err, io.EOF) {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cfg := config.Default()
	cfg.DataDir = f.t.TempDir()
	cfg.Addr = "127.0.0.1:0"
	cfg.ShutdownTimeout = 10 * time.Second
	if s.MaxConnsPerUser > 0 {
		cfg.WSMaxConnsPerUser = s.MaxConnsPerUser
	}
	if s.MaxMessageBytes > 0 {
		cfg.WSMaxMessageBytes = s.MaxMessageBytes
	}
	if s.JWTLeewayMS != nil {
		cfg.JWTLeeway = time.Duration(*s.JWTLeewayMS) * time.Millisecond
	}
	if s.RateLimit > 0 {
		cfg.RateLimitPerMinute = s.RateLimit
	}
	if s.WSRateLimit > 0 {
		cfg.WSMessageRateLimit = s.WSRateLimit
	}
	if s.PingIntervalMS > 0 {
		cfg.WSPingInterval = time.Duration(s.PingIntervalMS) * time.Millisecond
	}
	seedDataDir(f.t, cfg.DataDir)
	n := &jsNode{cfg: cfg}
	if err := n.launch(f.log); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	var err error
	if n.proxy, err = faultproxy.New(n.cfg.Addr); err != nil {
		_ = n.srv.stop()
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if n.dev, err = auth.OpenDevIssuer(cfg.DataDir); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	f.mu.Lock()
	id := strconv.Itoa(len(f.nodes) + 1)
	f.nodes[id] = n
	f.mu.Unlock()
	writeFixtureJSON(w, map[string]any{
		"id":       id,
		"ws":       "ws://" + n.proxy.Addr() + "/web",
		"direct":   "ws://" + n.cfg.Addr + "/web",
		"http":     "http://" + n.cfg.Addr,
		"password": seedPassword, // of the development users admin and reader
	})
}

// launch starts the node on its configured address (the first time: a free port, which is then
// kept for restarts).
func (n *jsNode) launch(log *slog.Logger) error {
	if err := n.cfg.Validate(); err != nil {
		return err
	}
	a, err := newApp(context.Background(), n.cfg, log)
	if err != nil {
		return err
	}
	ln, err := listenRetrying(n.cfg.Addr)
	if err != nil {
		_ = a.close(context.Background())
		return err
	}
	n.cfg.Addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	n.srv = &testServer{cfg: n.cfg, app: a, base: "http://" + n.cfg.Addr, cancel: cancel, done: make(chan error, 1)}
	go func() { n.srv.done <- a.serve(ctx, ln) }()
	return nil
}

// listenRetrying listens on addr, retrying for a few seconds while the port is still held (a
// restart on the same port right after a stop).
func listenRetrying(addr string) (net.Listener, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		ln, err := net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			return ln, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *jsFixture) act(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	n := f.nodes[r.PathValue("id")]
	f.mu.Unlock()
	if n == nil {
		http.Error(w, "no such node", http.StatusNotFound)
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	var err error
	switch r.PathValue("action") {
	case "token":
		var in struct {
			User  string   `json:"user"`
			Roles []string `json:"roles"`
			TTLMS int64    `json:"ttl_ms"`
		}
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ttl := time.Hour
		if in.TTLMS > 0 {
			ttl = time.Duration(in.TTLMS) * time.Millisecond
		}
		tok, exp, err := n.dev.Mint(auth.MintParams{Subject: in.User, Username: in.User, ClientID: n.cfg.OIDCClientID, Roles: in.Roles, TTL: ttl})
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeFixtureJSON(w, map[string]any{"token": tok, "exp": exp.UnixMilli()})
		return
	case "restart":
		if n.srv != nil {
			err = n.srv.stop()
			n.srv = nil
		}
		if err == nil {
			err = n.launch(f.log)
		}
	case "stop":
		if n.srv != nil {
			err = n.srv.stop()
			n.srv = nil
		}
	case "start":
		if n.srv == nil {
			err = n.launch(f.log)
		}
	case "cut":
		n.proxy.Cut(faultproxy.RST)
	case "refuse":
		n.proxy.Refuse()
	case "listen":
		err = n.proxy.Listen()
	default:
		http.Error(w, "unknown action", http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, fmt.Sprintf("%s: %v", r.PathValue("action"), err), http.StatusInternalServerError)
		return
	}
	writeFixtureJSON(w, map[string]any{"ok": true})
}

func writeFixtureJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
