package faultproxy_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"switchboard/store/faultproxy"
)

// wait is the bound of every wait that only fails when something hangs.
const wait = 5 * time.Second

// quiet is how long a test listens for data that must not arrive.
const quiet = 300 * time.Millisecond

// echoServer answers every line with the same line until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(c, c) })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

type client struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &client{t: t, conn: c, r: bufio.NewReader(c)}
}

func (c *client) send(line string) {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(line + "\n")); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// read returns the next line, or the error after d.
func (c *client) read(d time.Duration) (string, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(d))
	s, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	return s[:len(s)-1], nil
}

func (c *client) expect(want string) {
	c.t.Helper()
	got, err := c.read(wait)
	if err != nil || got != want {
		c.t.Fatalf("read = %q, %v; want %q", got, err, want)
	}
}

// expectSilence fails when anything arrives within quiet.
func (c *client) expectSilence() {
	c.t.Helper()
	got, err := c.read(quiet)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		c.t.Fatalf("read = %q, %v; want nothing (a timeout)", got, err)
	}
}

// expectGone fails unless the connection ends (EOF or reset) within wait.
func (c *client) expectGone() {
	c.t.Helper()
	got, err := c.read(wait)
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		c.t.Fatalf("read = %q, %v; want the connection gone", got, err)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", wait, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// noLeak checks, at the end of the test, that every goroutine started since this call ended.
func noLeak(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		var err error
		deadline := time.Now().Add(wait)
		for time.Now().Before(deadline) {
			if err = goleak.Find(ignore); err == nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Error(err)
	})
}

func TestForwardsAndCloses(t *testing.T) {
	noLeak(t)
	p, err := faultproxy.New(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	a, b := dial(t, p.Addr()), dial(t, p.Addr())
	a.send("hello")
	b.send("world")
	a.expect("hello")
	b.expect("world")
	if s := p.Stats(); s.Accepted != 2 || s.Active != 2 || s.Cut != 0 {
		t.Fatalf("stats = %+v", s)
	}
	// A client that leaves ends its link.
	_ = b.conn.Close()
	eventually(t, "the closed link forgotten", func() bool { return p.Stats().Active == 1 })

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.read(wait); err == nil {
		t.Fatal("connection still open after Close")
	}
	if err := p.Close(); err != nil { // twice is fine
		t.Fatal(err)
	}
	if err := p.Listen(); !errors.Is(err, faultproxy.ErrClosed) {
		t.Fatalf("Listen after Close = %v", err)
	}
}

func TestCut(t *testing.T) {
	noLeak(t)
	p := faultproxy.Start(t, echoServer(t))
	for _, tc := range []struct {
		mode faultproxy.CutMode
		want func(error) bool
	}{
		{faultproxy.RST, func(err error) bool { return errors.Is(err, syscall.ECONNRESET) }},
		{faultproxy.FIN, func(err error) bool { return errors.Is(err, io.EOF) }},
	} {
		c := dial(t, p.Addr())
		c.send("before")
		c.expect("before")
		if n := p.Cut(tc.mode); n != 1 {
			t.Fatalf("Cut = %d, want 1", n)
		}
		if _, err := c.read(wait); !tc.want(err) {
			t.Fatalf("mode %d: read after Cut: %v", tc.mode, err)
		}
		// New connections still go through.
		d := dial(t, p.Addr())
		d.send("after")
		d.expect("after")
		_ = d.conn.Close()
		eventually(t, "no link left", func() bool { return p.Stats().Active == 0 })
	}
	if s := p.Stats(); s.Cut != 2 || s.Accepted != 4 {
		t.Fatalf("stats = %+v", s)
	}
}

func TestRefuseAndListen(t *testing.T) {
	noLeak(t)
	p := faultproxy.Start(t, echoServer(t))
	c := dial(t, p.Addr())
	c.send("x")
	c.expect("x")
	if n := p.Refuse(); n != 1 {
		t.Fatalf("Refuse = %d", n)
	}
	if _, err := c.read(wait); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after Refuse: %v", err)
	}
	if _, err := net.DialTimeout("tcp", p.Addr(), wait); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial while refusing: %v, want connection refused", err)
	}
	if err := p.Listen(); err != nil {
		t.Fatal(err)
	}
	if err := p.Listen(); err != nil { // listening already: nothing to do
		t.Fatal(err)
	}
	d := dial(t, p.Addr())
	d.send("back")
	d.expect("back")
}

func TestRestart(t *testing.T) {
	noLeak(t)
	p := faultproxy.Start(t, echoServer(t))
	c := dial(t, p.Addr())
	c.send("x")
	c.expect("x")
	const down = 300 * time.Millisecond
	start := time.Now()
	refused := make(chan error, 1)
	go func() {
		// Dialling while the proxy is down is refused.
		deadline := time.Now().Add(wait)
		for {
			c, err := net.DialTimeout("tcp", p.Addr(), wait)
			if errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
				refused <- err
				return
			}
			if err == nil {
				_ = c.Close() // connected before the restart began
			} // else reset: caught in the listener's backlog as it closed
			time.Sleep(5 * time.Millisecond)
		}
	}()
	n, err := p.Restart(context.Background(), down)
	if err != nil || n < 1 { // the dialling goroutine's connections may be cut too
		t.Fatalf("Restart = %d, %v", n, err)
	}
	if took := time.Since(start); took < down {
		t.Fatalf("Restart returned after %s, before its %s", took, down)
	}
	if err := <-refused; !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial during the restart: %v", err)
	}
	d := dial(t, p.Addr())
	d.send("back")
	d.expect("back")

	// A cancelled context ends the outage at once.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.Restart(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	e := dial(t, p.Addr())
	e.send("again")
	e.expect("again")
}

func TestFreezeAndResume(t *testing.T) {
	noLeak(t)
	p := faultproxy.Start(t, echoServer(t))
	old := dial(t, p.Addr())
	old.send("warm")
	old.expect("warm")

	p.Freeze()
	p.Freeze() // twice is fine
	old.send("held")
	old.expectSilence()
	// A new connection is accepted but nothing answers.
	fresh := dial(t, p.Addr())
	fresh.send("held too")
	fresh.expectSilence()
	// Nothing was closed.
	if s := p.Stats(); s.Active != 2 || s.Cut != 0 {
		t.Fatalf("stats while frozen = %+v", s)
	}

	p.Resume()
	old.expect("held")
	fresh.expect("held too")
	old.send("flowing")
	old.expect("flowing")
}

func TestCutWhileFrozen(t *testing.T) {
	noLeak(t)
	p := faultproxy.Start(t, echoServer(t))
	c := dial(t, p.Addr())
	c.send("x")
	c.expect("x")
	p.Freeze()
	c.send("held")
	fresh := dial(t, p.Addr()) // waits before even dialling the target
	eventually(t, "the frozen connection accepted", func() bool { return p.Stats().Accepted == 2 })
	if n := p.Cut(faultproxy.RST); n != 2 {
		t.Fatalf("Cut = %d, want 2", n)
	}
	c.expectGone()
	fresh.expectGone()
	p.Resume()
	d := dial(t, p.Addr())
	d.send("y")
	d.expect("y")
}

func TestSlow(t *testing.T) {
	noLeak(t)
	p := faultproxy.Start(t, echoServer(t))
	c := dial(t, p.Addr())
	const delay = 150 * time.Millisecond
	p.Slow(delay)
	start := time.Now()
	c.send("slow")
	c.expect("slow")
	// Only a lower bound: each direction waits delay before writing.
	if took := time.Since(start); took < 2*delay {
		t.Fatalf("round trip took %s with %s added per direction", took, delay)
	}
	p.Resume()
	c.send("fast")
	c.expect("fast")
}

func TestTargetDown(t *testing.T) {
	noLeak(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	_ = ln.Close() // nothing listens there
	p := faultproxy.Start(t, target)
	dial(t, p.Addr()).expectGone()
	eventually(t, "the link forgotten", func() bool { return p.Stats().Active == 0 })
}

// Close while a connection is frozen and while another waits for a slow write: nothing is left
// running.
func TestCloseWhileFrozenAndSlow(t *testing.T) {
	noLeak(t)
	p, err := faultproxy.New(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	a := dial(t, p.Addr())
	a.send("x")
	a.expect("x")
	p.Slow(time.Hour)
	a.send("stuck in the delay")
	p.Freeze()
	b := dial(t, p.Addr())
	b.send("stuck in the freeze")
	eventually(t, "both accepted", func() bool { return p.Stats().Accepted == 2 })
	done := make(chan struct{})
	go func() { _ = p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("Close hangs")
	}
}
