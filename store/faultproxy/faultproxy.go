// Package faultproxy is a TCP proxy on 127.0.0.1 that tests put between a client and a server
// (Switchboard and PostgreSQL or Redis, or a WebSocket client and Switchboard) to make the link
// fail on command: cut every connection, refuse new ones for a while (a restart as the clients
// see it), freeze traffic without closing anything (a stopped peer, a half-open connection) or
// slow it down, and resume.
//
// Every goroutine a Proxy starts ends before Close returns. Its methods are safe for concurrent
// use. Import it only from tests.
package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// CutMode says how Cut ends connections.
type CutMode int

const (
	// RST ends each connection with a TCP reset, as a crashed host or a firewall would: the
	// peer's next read or write fails with "connection reset by peer".
	RST CutMode = iota
	// FIN closes each connection in order, as a server process that exits would: the peer reads
	// EOF.
	FIN
)

// dialTimeout bounds the proxy's connection to its target.
const dialTimeout = 5 * time.Second

// relistenFor is how long Listen retries when the port is briefly unavailable.
const relistenFor = 5 * time.Second

// ErrClosed is returned by Listen after Close.
var ErrClosed = errors.New("faultproxy: closed")

// Stats counts a proxy's connections.
type Stats struct {
	Accepted int // connections accepted since New
	Active   int // connections open now
	Cut      int // connections ended by Cut, Refuse or Restart
}

// Proxy forwards every connection made to Addr to its target.
type Proxy struct {
	target string
	addr   string

	mu      sync.Mutex
	ln      net.Listener // nil while refusing
	links   map[*link]struct{}
	flowing chan struct{} // closed while traffic flows; open (blocking) while frozen
	delay   time.Duration // added before each chunk is written
	closed  bool
	stats   Stats

	wg sync.WaitGroup // the accept loop and every link's goroutines
}

// link is one proxied connection.
type link struct {
	client net.Conn
	up     net.Conn // nil until the target answered
	ctx    context.Context
	cancel context.CancelFunc // ends the link: its pipes stop waiting and return
}

// New listens on a free port of 127.0.0.1 and forwards every connection to target (host:port).
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	flowing := make(chan struct{})
	close(flowing)
	p := &Proxy{target: target, addr: ln.Addr().String(), links: map[*link]struct{}{}, flowing: flowing}
	p.mu.Lock()
	p.serve(ln)
	p.mu.Unlock()
	return p, nil
}

// Start is New for a test: it fails the test when the proxy cannot listen and closes the proxy
// when the test ends.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// Addr is the proxy's host:port; it stays the same across Refuse and Listen.
func (p *Proxy) Addr() string { return p.addr }

// Target is the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// Stats returns the proxy's connection counts.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.Active = len(p.links)
	return s
}

// Cut ends every open connection now, on both sides, and returns how many there were. New
// connections are still accepted (see Refuse).
func (p *Proxy) Cut(mode CutMode) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cutLocked(mode)
}

func (p *Proxy) cutLocked(mode CutMode) int {
	n := 0
	for l := range p.links {
		for _, c := range []net.Conn{l.client, l.up} {
			if c == nil {
				continue
			}
			if tc, ok := c.(*net.TCPConn); ok && mode == RST {
				_ = tc.SetLinger(0) // close sends RST instead of FIN
			}
			_ = c.Close()
		}
		l.cancel()
		delete(p.links, l)
		n++
	}
	p.stats.Cut += n
	return n
}

// Refuse cuts every connection (RST) and stops listening: connecting to Addr is refused until
// Listen. It returns how many connections it cut.
func (p *Proxy) Refuse() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		_ = p.ln.Close() // the accept loop returns
		p.ln = nil
	}
	return p.cutLocked(RST)
}

// Listen accepts connections on Addr again after Refuse (nothing to do when listening). It
// retries for a few seconds if the port is momentarily unavailable.
func (p *Proxy) Listen() error {
	deadline := time.Now().Add(relistenFor)
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return ErrClosed
		}
		if p.ln != nil {
			p.mu.Unlock()
			return nil
		}
		ln, err := net.Listen("tcp", p.addr)
		if err == nil {
			p.serve(ln)
			p.mu.Unlock()
			return nil
		}
		p.mu.Unlock()
		if time.Now().After(deadline) {
			return fmt.Errorf("faultproxy: listen on %s again: %w", p.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Restart is a server restart as its clients see it: every connection is cut (RST), connecting
// is refused for down, then the proxy accepts connections again. It blocks for down (or until
// ctx ends, after which it listens again at once) and returns how many connections it cut.
func (p *Proxy) Restart(ctx context.Context, down time.Duration) (int, error) {
	n := p.Refuse()
	timer := time.NewTimer(down)
	select {
	case <-timer.C:
	case <-ctx.Done():
		timer.Stop()
	}
	return n, p.Listen()
}

// Freeze stops forwarding in both directions without closing anything, on the open connections
// and on new ones (which are accepted, then left waiting): a peer that is stopped (SIGSTOP), or
// a connection gone half-open. Bytes sent meanwhile are held and go through on Resume.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.flowing:
		p.flowing = make(chan struct{})
	default: // frozen already
	}
}

// Slow delays every chunk of data, in each direction, by d before it is written: a
// request-response exchange takes 2·d longer (throughput drops to one read buffer per d).
// Zero ends the delay.
func (p *Proxy) Slow(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = max(d, 0)
}

// Resume ends Freeze and Slow: held bytes go through and traffic flows at full speed. It does
// not listen again after Refuse (see Listen).
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = 0
	p.thawLocked()
}

func (p *Proxy) thawLocked() {
	select {
	case <-p.flowing:
	default:
		close(p.flowing)
	}
}

// Close stops listening, cuts every connection and waits for the proxy's goroutines to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	p.cutLocked(RST)
	p.thawLocked()
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}

// serve starts the accept loop on ln; p.mu is held.
func (p *Proxy) serve(ln net.Listener) {
	p.ln = ln
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					continue
				}
				return // closed by Refuse or Close
			}
			p.mu.Lock()
			if p.closed || p.ln != ln {
				p.mu.Unlock()
				_ = c.Close()
				continue // the loop ends at the next Accept on the closed listener
			}
			ctx, cancel := context.WithCancel(context.Background())
			l := &link{client: c, ctx: ctx, cancel: cancel}
			p.links[l] = struct{}{}
			p.stats.Accepted++
			p.wg.Add(1)
			p.mu.Unlock()
			go p.handle(l)
		}
	}()
}

// handle connects l to the target and forwards until either side ends or l is cut.
func (p *Proxy) handle(l *link) {
	defer p.wg.Done()
	defer p.forget(l)
	// Frozen: the client is accepted, but nothing answers it, as with a stopped server.
	if !p.pass(l) {
		return
	}
	d := net.Dialer{Timeout: dialTimeout}
	up, err := d.DialContext(l.ctx, "tcp", p.target)
	if err != nil {
		return // the target is down: the client sees its connection closed
	}
	p.mu.Lock()
	if _, open := p.links[l]; !open { // cut while dialling
		p.mu.Unlock()
		_ = up.Close()
		return
	}
	l.up = up
	p.mu.Unlock()

	var pipes sync.WaitGroup
	pipes.Go(func() { p.pipe(l, up, l.client) })
	pipes.Go(func() { p.pipe(l, l.client, up) })
	<-l.ctx.Done() // a pipe ended (or the link was cut): end the other one too
	_ = l.client.Close()
	_ = up.Close()
	pipes.Wait()
}

// pipe copies src to dst, chunk by chunk, waiting before each write while the proxy is frozen
// or slowed. It ends the link when it stops.
func (p *Proxy) pipe(l *link, dst, src net.Conn) {
	defer l.cancel()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.pass(l) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// pass waits until data may flow on l: not frozen, and the delay served. It returns false when
// l was cut (or its other direction ended) meanwhile.
func (p *Proxy) pass(l *link) bool {
	for {
		p.mu.Lock()
		flowing, delay := p.flowing, p.delay
		p.mu.Unlock()
		select {
		case <-flowing:
		case <-l.ctx.Done():
			return false
		}
		if delay <= 0 {
			return true
		}
		timer := time.NewTimer(delay)
		select {
		case <-timer.C:
		case <-l.ctx.Done():
			timer.Stop()
			return false
		}
		// A freeze that began during the delay holds this chunk too.
		p.mu.Lock()
		flowing = p.flowing
		p.mu.Unlock()
		select {
		case <-flowing:
			return true
		default:
		}
	}
}

// forget closes what is left of l and drops it from the open links.
func (p *Proxy) forget(l *link) {
	l.cancel()
	_ = l.client.Close()
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}
