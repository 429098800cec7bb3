package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"

	"switchboard/transport/auth"
	"switchboard/transport/client"
)

// minter signs development tokens with the server's key (the same RS256 key the server
// verifies with), so the tool needs no running issuer and no /login round trips.
type minter struct {
	dev      *auth.DevIssuer
	clientID string
	ttl      time.Duration
}

func newMinter(o *options) (*minter, error) {
	path := filepath.Join(o.dataDir, auth.DevKeyFile)
	if _, err := os.Stat(path); err != nil {
		// OpenDevIssuer would create a fresh key that the server does not know.
		return nil, fmt.Errorf("no development key at %s: point --data-dir at the server's SWITCHBOARD_DATA_DIR "+
			"(the server creates the key on its first start): %w", path, err)
	}
	dev, err := auth.OpenDevIssuer(o.dataDir)
	if err != nil {
		return nil, err
	}
	ttl := min(o.duration+o.timeout+30*time.Minute, 24*time.Hour)
	return &minter{dev: dev, clientID: o.clientID, ttl: ttl}, nil
}

func (m *minter) mint(user string, roles ...string) (string, error) {
	tok, _, err := m.dev.Mint(auth.MintParams{Subject: user, ClientID: m.clientID, Roles: roles, TTL: m.ttl})
	return tok, err
}

// userTokens returns one token per connection index, shared by perUser consecutive indexes
// (user names prefix-<i/perUser>), minted on every core. Minting is not part of any timing.
func (m *minter) userTokens(ctx context.Context, prefix string, n, perUser int, roles ...string) ([]string, error) {
	users := (n + perUser - 1) / perUser
	toks := make([]string, users)
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range max(runtime.GOMAXPROCS(0), 1) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= users {
					return
				}
				t, err := m.mint(fmt.Sprintf("%s-%d", prefix, i), roles...)
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				toks[i] = t
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := make([]string, n)
	for i := range out {
		out[i] = toks[i/perUser]
	}
	return out, nil
}

// dialer opens gws client connections with small buffers.
type dialer struct {
	url     string // ws://host:port/web
	alt     string // a second node's ws://host:port/web: dials alternate between url and alt
	turn    atomic.Uint32
	readBuf int
	noRead  bool // slow consumers: never start the read loop, so nothing is read
	next    atomic.Uint32
}

// sourceIPs is how many loopback source addresses (127.0.0.1…) the dialer rotates over when
// the server is on 127.0.0.1. With one source address, connect(2) searches the ephemeral port
// range for a free 4-tuple and that search grows with every connection already open: at
// 19 000 connections it was half of the tool's CPU. Sixteen sources keep each range sparse.
const sourceIPs = 16

// netDialer returns a dialer bound to the next loopback source address, or a plain one when the
// target is not 127.0.0.1.
func (d *dialer) netDialer() gws.Dialer {
	nd := &net.Dialer{Timeout: 10 * time.Second}
	if u, err := url.Parse(d.url); err == nil && u.Hostname() == "127.0.0.1" {
		k := d.next.Add(1) % sourceIPs
		nd.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+k))}
	}
	return nd
}

// tinySession replaces gws's per-connection map+mutex session: the tool keeps its state in the
// handler instead.
type tinySession struct{}

func (tinySession) Len() int                     { return 0 }
func (tinySession) Load(string) (any, bool)      { return nil, false }
func (tinySession) Delete(string)                {}
func (tinySession) Store(string, any)            {}
func (tinySession) Range(func(string, any) bool) {}
func newTinySession() gws.SessionStorage         { return tinySession{} }
func bearer(token string) http.Header            { return http.Header{"Authorization": {"Bearer " + token}} }
func (d *dialer) option(h http.Header) *gws.ClientOption {
	addr := d.url
	if d.alt != "" && d.turn.Add(1)%2 == 0 {
		addr = d.alt
	}
	return &gws.ClientOption{
		Addr:               addr,
		RequestHeader:      h,
		ReadBufferSize:     d.readBuf,
		ReadMaxPayloadSize: 1 << 20,
		HandshakeTimeout:   10 * time.Second,
		NewSession:         newTinySession,
		NewDialer:          func() (gws.Dialer, error) { return d.netDialer(), nil },
		Logger:             quietLogger{},
	}
}

// dial performs one handshake and starts the read loop. It returns how long the handshake took.
func (d *dialer) dial(h gws.Event, header http.Header) (*gws.Conn, time.Duration, error) {
	start := time.Now()
	c, resp, err := gws.NewClient(h, d.option(header))
	took := time.Since(start)
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
			_ = resp.Body.Close()
			return nil, took, fmt.Errorf("HTTP %d %s", resp.StatusCode, body)
		}
		return nil, took, err
	}
	if !d.noRead {
		go c.ReadLoop()
	}
	return c, took, nil
}

type quietLogger struct{}

func (quietLogger) Error(...any) {}

// pool is a set of open client connections: raw gws sockets, or Go clients (gos).
type pool struct {
	conns     []*gws.Conn // nil where the dial failed
	gos       []*client.Client
	handshake []time.Duration
	ok        int64
	failed    int64
	errs      errorCounts
	took      time.Duration
}

// openPool dials n connections, c at a time; handler(i) and header(i) give each its event
// handler and request headers. It stops early when ctx ends or the cap passes.
func openPool(ctx context.Context, rep *reporter, d *dialer, n, c int, capTime time.Duration,
	handler func(i int) gws.Event, header func(i int) http.Header) *pool {
	p := &pool{conns: make([]*gws.Conn, n), handshake: make([]time.Duration, n)}
	var next, done atomic.Int64
	deadline := time.Now().Add(capTime)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	go func() { // progress
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				rep.progress("connecting: %d/%d done, %d failed", done.Load(), n, atomic.LoadInt64(&p.failed))
			}
		}
	}()
	start := time.Now()
	for range min(c, n) {
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(deadline) {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				conn, took, err := d.dial(handler(i), header(i))
				if err != nil {
					atomic.AddInt64(&p.failed, 1)
					p.errs.add(classify(err))
				} else {
					p.conns[i] = conn
					p.handshake[i] = took
					atomic.AddInt64(&p.ok, 1)
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	p.took = time.Since(start)
	close(stop)
	return p
}

// handshakes returns the successful handshake times.
func (p *pool) handshakes() []time.Duration {
	out := make([]time.Duration, 0, p.ok)
	for i := range p.handshake {
		if p.up(i) {
			out = append(out, p.handshake[i])
		}
	}
	return out
}

// up reports whether connection i is open.
func (p *pool) up(i int) bool {
	if p.gos != nil {
		return p.gos[i] != nil
	}
	return p.conns[i] != nil
}

// close drops every connection (a TCP close; the server sees the read loop end; Go clients
// close with 1000 and wait for their goroutines).
func (p *pool) close() {
	closeClients(p.gos)
	for i, c := range p.conns {
		if c != nil {
			_ = c.NetConn().Close()
			p.conns[i] = nil
		}
	}
}

// baseHandler answers pings (the server drops peers that stay silent) and ignores the rest.
// It counts the connections the server closed, by close code.
type baseHandler struct {
	closed *atomic.Int64
	codes  *errorCounts
}

func (h *baseHandler) OnOpen(*gws.Conn) {}
func (h *baseHandler) OnClose(_ *gws.Conn, err error) {
	var ce *gws.CloseError
	if h.closed == nil || !errors.As(err, &ce) {
		return
	}
	h.closed.Add(1)
	if h.codes != nil {
		h.codes.add(fmt.Sprintf("server closed %d %s", ce.Code, ce.Reason))
	}
}
func (h *baseHandler) OnPing(c *gws.Conn, p []byte)          { _ = c.WritePong(p) }
func (h *baseHandler) OnPong(*gws.Conn, []byte)              {}
func (h *baseHandler) OnMessage(_ *gws.Conn, m *gws.Message) { _ = m.Close() }

// openClients dials n Go clients (transport/client), c at a time, each with cfg(i), and waits
// for every first connection; it stops at the first failure, when ctx ends or after capTime. The
// clients do not reconnect silently during a measurement: a lost connection fails the requests
// in flight, which the phase counts.
func openClients(ctx context.Context, rep *reporter, n, c int, capTime time.Duration, cfg func(i int) client.Config) ([]*client.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, capTime)
	defer cancel()
	out := make([]*client.Client, n)
	var next, done atomic.Int64
	var errs errorCounts
	var failed atomic.Int64
	stop := make(chan struct{})
	go func() { // progress
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				rep.progress("connecting: %d/%d done, %d failed", done.Load(), n, failed.Load())
			}
		}
	}()
	var wg sync.WaitGroup
	for range min(c, n) {
		wg.Go(func() {
			for ctx.Err() == nil && failed.Load() == 0 {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				cl, err := client.Dial(ctx, cfg(i))
				if err != nil {
					failed.Add(1)
					errs.add(classify(err))
				} else {
					out[i] = cl
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	close(stop)
	if f := failed.Load(); f > 0 || ctx.Err() != nil {
		closeClients(out)
		if f == 0 {
			return nil, fmt.Errorf("%d of %d clients connected: %w", done.Load(), n, ctx.Err())
		}
		return nil, fmt.Errorf("a client could not connect: %s", topErrors(errs.snapshot(), 3))
	}
	return out, nil
}

// closeClients closes the clients (1000) and waits for their goroutines.
func closeClients(cs []*client.Client) {
	var wg sync.WaitGroup
	for _, c := range cs {
		if c != nil {
			wg.Go(func() { _ = c.Close() })
		}
	}
	wg.Wait()
}

// openGoSubscribers connects one Go client (transport/client) per subscriber, o.c at a time,
// for --subscribers go. The default stays the raw receive-only socket: measured on the same
// server (2 000 subscribers, 100 broadcasts, 2 shared cores) the Go clients took the tool from
// about 50 to about 200 MB RSS (75 KB more per connection: four goroutines, its queues) and
// from about 1 s to 4.7 s to take the broadcasts in, 42 000 instead of 190 000-200 000 msgs/s,
// because the tool's CPU, not the server's, became the limit. The raw socket keeps the figure
// the server's.
// each handing the broadcasts it receives to its subscriber from its callback goroutine. A
// subscriber that fails to connect is left out (as openPool does); the clients do not
// reconnect during the run (ReconnectMax is long), so a server-side close shows as loss.
func openGoSubscribers(ctx context.Context, rep *reporter, o *options, tg *target, subs []*subscriber) *pool {
	n := len(subs)
	p := &pool{gos: make([]*client.Client, n), handshake: make([]time.Duration, n)}
	var next, done atomic.Int64
	ctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()
	d := &dialer{url: tg.ws}
	start := time.Now()
	var wg sync.WaitGroup
	for range min(o.c, n) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				s := subs[i]
				url := tg.ws
				if tg.ws2 != "" && i%2 == 1 {
					url = tg.ws2
				}
				nd := d.netDialer().(*net.Dialer)
				t0 := time.Now()
				c, err := client.Dial(ctx, client.Config{
					URL: url, Token: strings.TrimPrefix(tg.subHeader(i).Get("Authorization"), "Bearer "),
					OnBroadcast:  func(m client.Message) { s.onData(m.Data) },
					OnDisconnect: func(dc client.Disconnect) { s.disconnected(dc) },
					InboundQueue: 256, ReconnectMin: time.Minute, ReconnectMax: time.Minute,
					Dialer: nd.DialContext,
				})
				if err != nil {
					atomic.AddInt64(&p.failed, 1)
					p.errs.add(classify(err))
				} else {
					p.gos[i] = c
					p.handshake[i] = time.Since(t0)
					atomic.AddInt64(&p.ok, 1)
				}
				if k := done.Add(1); k%1000 == 0 {
					rep.progress("connecting: %d/%d done, %d failed", k, n, atomic.LoadInt64(&p.failed))
				}
			}
		})
	}
	wg.Wait()
	p.took = time.Since(start)
	return p
}
