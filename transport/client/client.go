package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Client is a connection to Switchboard that stays up: it reconnects, resubscribes and
// refreshes its token by itself. All methods are safe for concurrent use. Close stops it.
type Client struct {
	cfg     Config
	log     *slog.Logger
	urls    []string
	ownHTTP bool // cfg.HTTPClient was made by the client: Close closes its idle connections

	ctx    context.Context // canceled by shutdown: ends dials, GetToken calls and waits
	cancel context.CancelFunc

	out      chan *pending // requests waiting to be written; bounded (Config.OutboundQueue)
	inbound  chan delivery // broadcasts and events waiting for callbacks; bounded (InboundQueue)
	drained  chan struct{} // 1-buffered: the callbacks brought the inbound queue down to half
	resubNow chan struct{} // 1-buffered: a subscription waits to be resubscribed on the live connection
	closing  chan struct{} // closed by shutdown (Close, or the client gave up)
	runDone  chan struct{} // the connection goroutine has exited
	dispDone chan struct{} // the callback goroutine has exited
	stopOnce sync.Once
	nextConn atomic.Uint64
	nextReq  atomic.Uint64

	mu         sync.Mutex
	pending    map[string]*pending      // requests by req_id, from registration to answer or failure
	subs       map[string]*Subscription // by topic
	token      string
	tokenExp   time.Time
	tokenStale bool          // refused by the server (4001, 401): get another before using it
	cur        *conn         // the live connection, nil between connections
	up         chan struct{} // closed while a connection is live; replaced when it ends
	finalErr   error         // why the client stopped (ErrClosed after Close)
	lastErr    error         // the last connection failure, for Dial's error

	stats struct {
		connects, disconnects, overflows, dropped, missed atomic.Uint64
	}
}

// Stats are counters since the client was created.
type Stats struct {
	Connects    uint64 // connections established
	Disconnects uint64 // connections that ended and attempts that failed
	Overflows   uint64 // connections given up because the inbound queue was full
	Dropped     uint64 // broadcasts without history dropped because the inbound queue was full
	Missed      uint64 // Missed events (recovery impossible) delivered to subscriptions
}

// New starts a client that connects in the background; requests made before the connection is
// up wait for it (within their timeout). Use Dial to wait for the first connection.
func New(cfg Config) (*Client, error) {
	ownHTTP := cfg.HTTPClient == nil
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{
		cfg: cfg, log: cfg.Logger, urls: append([]string{cfg.URL}, cfg.FallbackURLs...),
		ctx: ctx, cancel: cancel,
		out:      make(chan *pending, cfg.OutboundQueue),
		inbound:  make(chan delivery, cfg.InboundQueue),
		drained:  make(chan struct{}, 1),
		resubNow: make(chan struct{}, 1),
		closing:  make(chan struct{}),
		runDone:  make(chan struct{}),
		dispDone: make(chan struct{}),
		pending:  make(map[string]*pending),
		subs:     make(map[string]*Subscription),
		up:       make(chan struct{}),
		ownHTTP:  ownHTTP,
	}
	if cfg.Token != "" {
		c.token, c.tokenExp = cfg.Token, tokenExpiry(cfg.Token)
	}
	go c.run()
	go c.dispatch()
	return c, nil
}

// Dial starts a client and waits until its first connection is up. It retries what can pass
// (a refused dial, a 5xx, a close 1008) until ctx ends, and returns at once on what cannot
// (a 401 without GetToken, a 403). On failure the client is closed.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	c, err := New(cfg)
	if err != nil {
		return nil, err
	}
	if err := c.WaitConnected(ctx); err != nil {
		c.mu.Lock()
		last := c.lastErr
		c.mu.Unlock()
		_ = c.Close()
		if last != nil && !errors.Is(err, last) {
			return nil, fmt.Errorf("%w (last attempt: %v)", err, last)
		}
		return nil, err
	}
	return c, nil
}

// WaitConnected waits until a connection is live, ctx ends or the client stops.
func (c *Client) WaitConnected(ctx context.Context) error {
	for {
		c.mu.Lock()
		up, final := c.up, c.finalErr
		c.mu.Unlock()
		if final != nil {
			return c.stoppedErr()
		}
		select {
		case <-up:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-c.closing:
		}
	}
}

// Connected reports whether a connection is live now.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur != nil
}

// Close closes the connection (1000), fails what is in flight with ErrClosed, ends every
// subscription, and waits for all of the client's goroutines, callbacks included. It must not be
// called from a callback (it would wait for itself); from one, call it in a new goroutine.
func (c *Client) Close() error {
	c.shutdown(ErrClosed)
	<-c.runDone
	<-c.dispDone
	if c.ownHTTP {
		// Publish's keep-alive connections hold goroutines of net/http until closed.
		c.cfg.HTTPClient.CloseIdleConnections()
	}
	return nil
}

// Done is closed when the client stops: Close was called, or it gave up (Err says why).
func (c *Client) Done() <-chan struct{} { return c.closing }

// Err is nil while the client runs, ErrClosed after Close, or why it gave up (ErrRejected,
// ErrUnauthorized, ErrTokenExpired, a *HandshakeError…).
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.finalErr
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	return Stats{
		Connects: c.stats.connects.Load(), Disconnects: c.stats.disconnects.Load(),
		Overflows: c.stats.overflows.Load(), Dropped: c.stats.dropped.Load(), Missed: c.stats.missed.Load(),
	}
}

// shutdown stops the client once, for the reason err.
func (c *Client) shutdown(err error) {
	c.stopOnce.Do(func() {
		c.mu.Lock()
		c.finalErr = err
		c.mu.Unlock()
		c.cancel()
		close(c.closing)
	})
}

// stoppedErr is what calls on a stopped client return: ErrClosed, wrapping the reason when the
// client gave up.
func (c *Client) stoppedErr() error {
	c.mu.Lock()
	err := c.finalErr
	c.mu.Unlock()
	if err == nil || errors.Is(err, ErrClosed) {
		return ErrClosed
	}
	return fmt.Errorf("%w: %w", ErrClosed, err)
}

// run owns the connection: it dials, serves a connection until it ends, decides how long to
// wait from how it ended, and does it again until the client stops. At the end it fails every
// request and subscription still open.
func (c *Client) run() {
	defer close(c.runDone)
	defer c.failAll()
	var (
		carry    []*pending // requests to write first on the next connection
		attempt  int        // attempts since the last healthy connection
		faults   int        // connections in a row that ended with a client-fault code
		urlIndex int
	)
	for c.ctx.Err() == nil {
		url := c.urls[urlIndex%len(c.urls)]
		cn, err := c.connect(url)
		if err != nil {
			if c.ctx.Err() != nil {
				return
			}
			delay, final := c.afterFailedDial(err, attempt)
			c.mu.Lock()
			c.lastErr = err
			c.mu.Unlock()
			c.stats.disconnects.Add(1)
			c.report(Disconnect{URL: url, Err: err, Delay: delay, Final: final != nil})
			if final != nil {
				c.shutdown(final)
				return
			}
			attempt++
			urlIndex++
			if !c.sleep(delay) {
				return
			}
			continue
		}
		c.stats.connects.Add(1)
		c.callback(func() {
			if c.cfg.OnConnected != nil {
				c.cfg.OnConnected(Connected{URL: url, Attempt: attempt})
			}
		})
		carry = c.serve(cn, carry)
		if c.ctx.Err() != nil {
			return // failAll fails what is in flight with ErrClosed
		}
		end := cn.ending()
		carry = c.connEnded(cn, end)
		c.stats.disconnects.Add(1)
		if cn.gotFrame.Load() {
			attempt = 0 // the connection worked: start the backoff again from the bottom
		}
		act := actionFor(end.code)
		if end.local {
			act = actSoon // the client closed it itself (overflow): come straight back
		}
		var final error
		switch act {
		case actClientFault:
			faults++
			if faults >= c.cfg.MaxClientFaults {
				final = fmt.Errorf("%w: %w", ErrRejected, end.err)
			}
		case actFreshToken:
			faults = 0
			if c.cfg.GetToken == nil {
				final = fmt.Errorf("%w: %w", ErrTokenExpired, end.err)
			}
			c.markStale(cn.token)
		default:
			faults = 0
		}
		delay := c.cfg.reconnectDelay(act, attempt)
		c.mu.Lock()
		c.lastErr = end.err
		c.mu.Unlock()
		c.report(Disconnect{URL: url, Code: end.code, Reason: end.reason, Err: end.err, Delay: delay, Final: final != nil})
		if final != nil {
			c.shutdown(final)
			return
		}
		attempt++
		urlIndex++
		if !c.sleep(delay) || !c.waitDrained() {
			return
		}
	}
}

// afterFailedDial classifies a failed attempt: the wait before the next one, or the error that
// stops the client (what no retry can mend).
func (c *Client) afterFailedDial(err error, attempt int) (time.Duration, error) {
	if errors.Is(err, ErrTokenExpired) || errors.Is(err, ErrUnauthorized) {
		return 0, err
	}
	var he *HandshakeError
	if errors.As(err, &he) {
		switch he.StatusCode {
		case 401:
			if c.cfg.GetToken == nil {
				return 0, fmt.Errorf("%w: %w", ErrUnauthorized, err)
			}
			c.markStaleAny()
		case 400, 403, 404, 405:
			return 0, err // a wrong URL, format or origin: retrying cannot help
		}
	}
	return backoff(attempt, c.cfg.ReconnectMin, c.cfg.ReconnectMax), nil
}

// sleep waits d or until the client stops; false when it stopped.
func (c *Client) sleep(d time.Duration) bool {
	if d <= 0 {
		return c.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.closing:
		return false
	}
}

// waitDrained waits until the inbound queue is at most half full, so that a connection given up
// for an overflow is not replaced by one that overflows at once. False when the client stopped.
func (c *Client) waitDrained() bool {
	for len(c.inbound) > cap(c.inbound)/2 {
		select {
		case <-c.drained:
		case <-c.closing:
			return false
		}
	}
	return true
}

func (c *Client) report(d Disconnect) {
	lvl := slog.LevelInfo
	if d.Final {
		lvl = slog.LevelError
	}
	c.log.Log(context.Background(), lvl, "switchboard client: disconnected",
		"url", d.URL, "code", d.Code, "reason", d.Reason, "err", d.Err, "retry_in", d.Delay, "final", d.Final)
	c.callback(func() {
		if c.cfg.OnDisconnect != nil {
			c.cfg.OnDisconnect(d)
		}
	})
}

// callback runs an application callback, containing its panic: the client's goroutines must
// outlive a bug in one.
func (c *Client) callback(f func()) {
	defer func() {
		if v := recover(); v != nil {
			c.log.Error("switchboard client: callback panicked", "panic", fmt.Sprint(v))
		}
	}()
	f()
}

// connEnded settles the requests of a connection that ended: those written on it fail with
// ErrConnectionLost, unless their caller asked for a retry and the server did not close for
// something the client sent; those are written again on the next connection, first, in their
// original order, followed by what the writer had taken but not written.
func (c *Client) connEnded(cn *conn, end connEnd) []*pending {
	clientFault := actionFor(end.code) == actClientFault
	lost := fmt.Errorf("%w: %w", ErrConnectionLost, end.err)
	var next []*pending // not carry[:0]: cn.unsent may share carry's array
	c.mu.Lock()
	for id, p := range c.pending {
		if p.connID != cn.id {
			continue
		}
		if p.retry && !clientFault {
			p.connID = 0
			next = append(next, p)
			continue
		}
		delete(c.pending, id)
		p.finish(result{err: lost})
	}
	c.mu.Unlock()
	sortPending(next)
	return append(next, cn.unsent...)
}

// failAll ends everything still open when the client stops.
func (c *Client) failAll() {
	err := c.stoppedErr()
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, p := range c.pending {
		delete(c.pending, id)
		p.finish(result{err: err})
	}
	for topic, s := range c.subs {
		delete(c.subs, topic)
		s.endLocked(err)
	}
}

// markStale notes that the server refused tok, so the next dial gets a fresh one first.
func (c *Client) markStale(tok string) {
	c.mu.Lock()
	if c.token == tok {
		c.tokenStale = true
	}
	c.mu.Unlock()
}

func (c *Client) markStaleAny() {
	c.mu.Lock()
	c.tokenStale = true
	c.mu.Unlock()
}

func (c *Client) setToken(tok string) {
	c.mu.Lock()
	c.token, c.tokenExp, c.tokenStale = tok, tokenExpiry(tok), false
	c.mu.Unlock()
}

// currentToken returns a token to present: the one held, or a fresh one from GetToken when
// there is none, it was refused, or it is expiring. Without GetToken an unusable token is
// ErrTokenExpired.
func (c *Client) currentToken(ctx context.Context) (string, error) {
	c.mu.Lock()
	tok, exp, stale := c.token, c.tokenExp, c.tokenStale
	c.mu.Unlock()
	if tok != "" && !stale && !needsFresh(exp, time.Now()) {
		return tok, nil
	}
	if c.cfg.GetToken == nil {
		if stale {
			return "", ErrUnauthorized
		}
		return "", ErrTokenExpired
	}
	fresh, err := c.cfg.GetToken(ctx)
	if err != nil {
		return "", fmt.Errorf("client: GetToken: %w", err)
	}
	if fresh == "" {
		return "", errors.New("client: GetToken returned an empty token")
	}
	c.setToken(fresh)
	return fresh, nil
}
