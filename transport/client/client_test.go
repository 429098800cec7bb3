package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func dialTest(t *testing.T, cfg Config) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// echo answers every request with status 0 and data {"pkg_id": n}.
func echo(fc *fakeConn, r fakeReq) { fc.answer(r, 0, map[string]int{"pkg_id": r.PkgID}, "") }

func TestRequestsMatchByReqIDBothFormats(t *testing.T) {
	for _, format := range []Format{JSON, Protobuf} {
		t.Run(format.String(), func(t *testing.T) {
			s := newFakeServer(t)
			// Hold two requests and answer them in reverse order: the client matches by req_id.
			var mu sync.Mutex
			var held []fakeReq
			s.set(func(s *fakeServer) {
				s.onRequest = func(fc *fakeConn, r fakeReq) {
					mu.Lock()
					defer mu.Unlock()
					held = append(held, r)
					if len(held) == 2 {
						echo(fc, held[1])
						echo(fc, held[0])
					}
				}
			})
			cfg := testConfig(s)
			cfg.Format = format
			c := dialTest(t, cfg)
			var wg sync.WaitGroup
			got := make([]int, 2)
			for i, pkg := range []int{1, 2} {
				wg.Go(func() {
					var out struct {
						PkgID int `json:"pkg_id"`
					}
					if err := c.Call(context.Background(), pkg, map[string]any{"i": i}, &out); err != nil {
						t.Errorf("pkg %d: %v", pkg, err)
					}
					got[i] = out.PkgID
				})
			}
			wg.Wait()
			if got[0] != 1 || got[1] != 2 {
				t.Fatalf("answers %v", got)
			}
		})
	}
}

func TestRequestTypedErrors(t *testing.T) {
	s := newFakeServer(t)
	s.set(func(s *fakeServer) {
		s.onRequest = func(fc *fakeConn, r fakeReq) {
			switch r.PkgID {
			case 3:
				fc.answer(r, 2, map[string]any{"errors": []FieldError{{Path: "/name", Message: "must not be empty"}}}, "Invalid data")
			case 20:
				fc.answer(r, 3, map[string]any{"missing_roles": []string{"admin"}}, "Permission denied")
			default:
				fc.answer(r, 1, nil, "Rate limit exceeded")
			}
		}
	})
	c := dialTest(t, testConfig(s))
	ctx := context.Background()

	_, err := c.Request(ctx, 3, map[string]string{"name": ""})
	var e *Error
	if !errors.As(err, &e) || e.Status != 2 || e.Msg != "Invalid data" || len(e.Errors) != 1 || e.Errors[0].Path != "/name" || !IsInvalidData(err) {
		t.Fatalf("status 2: %v", err)
	}
	_, err = c.Request(ctx, 20, nil)
	if !IsPermissionDenied(err) || !errors.As(err, &e) || string(e.Data) != `{"missing_roles":["admin"]}` {
		t.Fatalf("status 3: %v", err)
	}
	if _, err = c.Request(ctx, 1, nil); !IsRateLimited(err) {
		t.Fatalf("status 1: %v", err)
	}
}

func TestRequestTimesOutWhenNoAnswer(t *testing.T) {
	s := newFakeServer(t) // answers nothing
	c := dialTest(t, testConfig(s))
	_, err := c.Request(context.Background(), 1, nil, WithTimeout(50*time.Millisecond))
	if !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Request(ctx, 1, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled: %v", err)
	}
}

// A request in flight when the connection drops fails with ErrConnectionLost at once (it does
// not wait for its timeout); one made WithRetry is written again on the next connection.
func TestRequestsInFlightWhenConnectionDrops(t *testing.T) {
	s := newFakeServer(t)
	var seen atomic.Int32
	s.set(func(srv *fakeServer) {
		srv.onRequest = func(fc *fakeConn, r fakeReq) {
			if fc == s.conn(0) {
				if seen.Add(1) == 2 { // both requests are in flight: drop the connection
					fc.closeWith(1011, "internal error")
				}
				return
			}
			echo(fc, r)
		}
	})
	c := dialTest(t, testConfig(s))
	errs := make(chan error, 2)
	go func() {
		_, err := c.Request(context.Background(), 1, nil, WithTimeout(time.Minute))
		errs <- err
	}()
	go func() {
		_, err := c.Request(context.Background(), 2, nil, WithRetry(), WithTimeout(time.Minute))
		errs <- err
	}()
	var lost, ok int
	for range 2 {
		err := <-errs
		var ce *CloseError
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrConnectionLost) && errors.As(err, &ce) && ce.Code == 1011:
			lost++
		default:
			t.Fatalf("unexpected: %v", err)
		}
	}
	if lost != 1 || ok != 1 {
		t.Fatalf("lost %d, answered %d", lost, ok)
	}
	if n := s.connCount(); n != 2 {
		t.Fatalf("%d connections", n)
	}
}

// Requests made while the client is between connections wait and go out on the next one.
func TestRequestsWaitForTheConnection(t *testing.T) {
	s := newFakeServer(t)
	var refuse atomic.Bool
	refuse.Store(true)
	s.set(func(s *fakeServer) {
		s.refuse = func(*http.Request) (int, string) {
			if refuse.Load() {
				return 503, `{"detail":"starting"}`
			}
			return 0, ""
		}
		s.onRequest = echo
	})
	var disconnects atomic.Int32
	cfg := testConfig(s)
	cfg.OnDisconnect = func(d Disconnect) {
		var he *HandshakeError
		if errors.As(d.Err, &he) && he.StatusCode == 503 && he.Detail == "starting" {
			disconnects.Add(1)
		}
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	eventually(t, "a refused attempt", func() bool { return disconnects.Load() > 0 })
	done := make(chan error, 1)
	go func() {
		_, err := c.Request(context.Background(), 1, nil)
		done <- err
	}()
	refuse.Store(false)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestHandshakeRefusals(t *testing.T) {
	t.Run("401 without GetToken", func(t *testing.T) {
		s := newFakeServer(t)
		s.set(func(s *fakeServer) {
			s.refuse = func(*http.Request) (int, string) { return 401, `{"detail":"Token expired"}` }
		})
		_, err := Dial(context.Background(), testConfig(s))
		var he *HandshakeError
		if !errors.Is(err, ErrUnauthorized) || !errors.As(err, &he) || he.Detail != "Token expired" {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("401 with GetToken", func(t *testing.T) {
		s := newFakeServer(t)
		s.set(func(s *fakeServer) {
			s.refuse = func(r *http.Request) (int, string) {
				if r.Header.Get("Authorization") != "Bearer fresh" {
					return 401, `{"detail":"Token expired"}`
				}
				return 0, ""
			}
		})
		cfg := testConfig(s)
		cfg.GetToken = func(context.Context) (string, error) { return "fresh", nil }
		dialTest(t, cfg)
		if toks := s.tokenList(); len(toks) != 2 || toks[0] != "tok-1" || toks[1] != "fresh" {
			t.Fatalf("tokens %v", toks)
		}
	})
	t.Run("403 stops", func(t *testing.T) {
		s := newFakeServer(t)
		s.set(func(s *fakeServer) {
			s.refuse = func(*http.Request) (int, string) { return 403, `{"detail":"Origin not allowed"}` }
		})
		c, err := New(testConfig(s))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		<-c.Done()
		var he *HandshakeError
		if !errors.As(c.Err(), &he) || he.StatusCode != 403 {
			t.Fatalf("Err %v", c.Err())
		}
		if _, err := c.Request(context.Background(), 1, nil); !errors.Is(err, ErrClosed) || !errors.As(err, &he) {
			t.Fatalf("request after the end: %v", err)
		}
	})
	t.Run("expired static token", func(t *testing.T) {
		s := newFakeServer(t)
		cfg := testConfig(s)
		cfg.Token = jwtWith(`{"exp":1000}`)
		if _, err := Dial(context.Background(), cfg); !errors.Is(err, ErrTokenExpired) {
			t.Fatalf("err %v", err)
		}
		if n := s.connCount(); n != 0 {
			t.Fatalf("dialed %d times with an expired token", n)
		}
	})
}

// Close codes: 1001 and 1013 come back at once, 1008 waits at least ConnLimitDelay, 4001 gets a
// fresh token first, and the client-fault codes stop the client after MaxClientFaults.
func TestCloseCodes(t *testing.T) {
	run := func(t *testing.T, code uint16, cfg func(*Config)) (*fakeServer, *Client, chan Disconnect) {
		s := newFakeServer(t)
		var n atomic.Int32
		s.set(func(s *fakeServer) {
			s.onOpen = func(fc *fakeConn) {
				if n.Add(1) <= 3 {
					fc.closeWith(code, "test")
				}
			}
		})
		events := make(chan Disconnect, 16)
		c := testConfig(s)
		c.OnDisconnect = func(d Disconnect) { events <- d }
		if cfg != nil {
			cfg(&c)
		}
		cl, err := New(c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Close() })
		return s, cl, events
	}
	t.Run("1008", func(t *testing.T) {
		_, _, events := run(t, 1008, func(c *Config) { c.ConnLimitDelay = 30 * time.Millisecond })
		d := <-events
		if d.Code != 1008 || d.Delay < 30*time.Millisecond || d.Final {
			t.Fatalf("%+v", d)
		}
	})
	for _, code := range []uint16{1001, 1013} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			s, c, events := run(t, code, nil)
			d := <-events
			if d.Code != code || d.Delay > time.Millisecond || d.Final {
				t.Fatalf("%+v", d)
			}
			if err := c.WaitConnected(context.Background()); err != nil {
				t.Fatal(err)
			}
			eventually(t, "the fourth connection", func() bool { return s.connCount() >= 4 })
		})
	}
	t.Run("4001", func(t *testing.T) {
		var calls atomic.Int32
		s, _, events := run(t, 4001, func(c *Config) {
			c.GetToken = func(context.Context) (string, error) { return fmt.Sprint("fresh-", calls.Add(1)), nil }
		})
		for i := 0; i < 3; i++ {
			if d := <-events; d.Code != 4001 || d.Final {
				t.Fatalf("%+v", d)
			}
		}
		eventually(t, "the fourth connection", func() bool { return s.connCount() >= 4 })
		if toks := s.tokenList(); toks[0] != "tok-1" || toks[1] != "fresh-1" || toks[2] != "fresh-2" || toks[3] != "fresh-3" {
			t.Fatalf("handshake tokens %v", toks)
		}
	})
	t.Run("4001 without GetToken", func(t *testing.T) {
		_, c, events := run(t, 4001, nil)
		if d := <-events; !d.Final {
			t.Fatalf("%+v", d)
		}
		<-c.Done()
		if !errors.Is(c.Err(), ErrTokenExpired) {
			t.Fatalf("Err %v", c.Err())
		}
	})
	t.Run("1009 three times", func(t *testing.T) {
		s, c, events := run(t, 1009, nil)
		for i := 1; i <= 3; i++ {
			d := <-events
			if d.Code != 1009 || d.Final != (i == 3) {
				t.Fatalf("close %d: %+v", i, d)
			}
		}
		<-c.Done()
		var ce *CloseError
		if !errors.Is(c.Err(), ErrRejected) || !errors.As(c.Err(), &ce) || ce.Code != 1009 {
			t.Fatalf("Err %v", c.Err())
		}
		if n := s.connCount(); n != 3 {
			t.Fatalf("%d connections after giving up", n)
		}
	})
}

// MaxMessageBytes refuses an oversized request locally; the connection and other requests are
// not affected.
func TestTooLargeRequestIsRefusedLocally(t *testing.T) {
	s := newFakeServer(t)
	s.set(func(s *fakeServer) { s.onRequest = echo })
	cfg := testConfig(s)
	cfg.MaxMessageBytes = 200
	c := dialTest(t, cfg)
	big := map[string]string{"name": string(make([]byte, 300))}
	if _, err := c.Request(context.Background(), 3, big); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err %v", err)
	}
	if _, err := c.Request(context.Background(), 1, nil); err != nil {
		t.Fatal(err)
	}
}

// The token is refreshed on the live connection (pkg_id 12) ahead of its expiry, with a token
// from GetToken; the connection stays.
func TestTokenRefreshAhead(t *testing.T) {
	s := newFakeServer(t)
	refreshed := make(chan string, 8)
	s.set(func(s *fakeServer) {
		s.onRequest = func(fc *fakeConn, r fakeReq) {
			if r.PkgID == pkgRefreshToken {
				var d struct {
					Token string `json:"token"`
				}
				_ = json.Unmarshal(r.Data, &d)
				refreshed <- d.Token
				fc.answer(r, 0, map[string]string{"expires_at": "2030-01-01T00:00:00Z"}, "")
			}
		}
	})
	cfg := testConfig(s)
	// exp is in whole seconds and the client dials with a fresh token when less than a second
	// is left, so the token lives long enough to be dialed with on a loaded machine; the
	// refresh comes at half of what is left.
	cfg.Token = jwtWith(fmt.Sprintf(`{"exp":%d}`, time.Now().Add(6*time.Second).Unix()))
	next := jwtWith(fmt.Sprintf(`{"exp":%d}`, time.Now().Add(time.Hour).Unix()))
	cfg.GetToken = func(context.Context) (string, error) { return next, nil }
	dialTest(t, cfg)
	select {
	case tok := <-refreshed:
		if tok != next {
			t.Fatalf("refreshed with %q", tok)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no REFRESH_TOKEN")
	}
	if n := s.connCount(); n != 1 {
		t.Fatalf("%d connections", n)
	}
}

// Broadcasts without a topic go to OnBroadcast; a panicking callback does not stop the client.
func TestOnBroadcastAndPanickingCallback(t *testing.T) {
	s := newFakeServer(t)
	got := make(chan Message, 4)
	cfg := testConfig(s)
	cfg.OnBroadcast = func(m Message) {
		if string(m.Data) == `{"boom":true}` {
			panic("application bug")
		}
		got <- m
	}
	dialTest(t, cfg)
	eventually(t, "the connection", func() bool { return s.connCount() == 1 })
	fc := s.conn(0)
	fc.publish("", 0, "", map[string]bool{"boom": true})
	fc.publish("", 0, "", map[string]int{"n": 1})
	if m := <-got; string(m.Data) != `{"n":1}` || m.Topic != "" {
		t.Fatalf("%+v", m)
	}
}

// Close with requests waiting and a callback running returns once everything stopped.
func TestCloseFailsWaitingRequests(t *testing.T) {
	s := newFakeServer(t)
	c := dialTest(t, testConfig(s))
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := c.Request(context.Background(), 1, nil, WithTimeout(time.Minute))
			errs <- err
		}()
	}
	eventually(t, "three requests in flight", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.pending) == 3
	})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := <-errs; !errors.Is(err, ErrClosed) {
			t.Fatalf("err %v", err)
		}
	}
	if !errors.Is(c.Err(), ErrClosed) {
		t.Fatalf("Err %v", c.Err())
	}
	if _, err := c.Subscribe(context.Background(), "t", func(Message) {}); !errors.Is(err, ErrClosed) {
		t.Fatalf("subscribe after Close: %v", err)
	}
}

// The client pings; a server that stops answering (nothing arrives for ReadTimeout) is taken
// for dead and replaced.
func TestKeepaliveDropsASilentServer(t *testing.T) {
	s := newFakeServer(t)
	s.set(func(s *fakeServer) { s.silent = true })
	cfg := testConfig(s)
	cfg.PingInterval, cfg.ReadTimeout = 20*time.Millisecond, 200*time.Millisecond
	events := make(chan Disconnect, 4)
	cfg.OnDisconnect = func(d Disconnect) {
		select {
		case events <- d:
		default:
		}
	}
	dialTest(t, cfg)
	d := <-events
	if d.Code != 0 || d.Err == nil {
		t.Fatalf("%+v", d)
	}
	if s.pings.Load() == 0 {
		t.Fatal("the client sent no ping")
	}
}

// A server ping is answered with a pong carrying its payload.
func TestKeepaliveAnswersPings(t *testing.T) {
	s := newFakeServer(t)
	dialTest(t, testConfig(s))
	eventually(t, "the connection", func() bool { return s.connCount() == 1 })
	fc := s.conn(0)
	pongs := make(chan struct{}, 1)
	fc.ws.Session().Store("pong", pongs)
	if err := fc.ws.WritePing([]byte("p1")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-pongs:
	case <-time.After(10 * time.Second):
		t.Fatal("no pong")
	}
}

// After a node's 1001 the client moves on to the next URL.
func TestFallbackURLs(t *testing.T) {
	a, b := newFakeServer(t), newFakeServer(t)
	a.set(func(s *fakeServer) { s.onOpen = func(fc *fakeConn) { fc.closeWith(1001, "going away") } })
	b.set(func(s *fakeServer) { s.onRequest = echo })
	cfg := testConfig(a)
	cfg.FallbackURLs = []string{b.url()}
	var connected []string
	var mu sync.Mutex
	cfg.OnConnected = func(c Connected) {
		mu.Lock()
		connected = append(connected, c.URL)
		mu.Unlock()
	}
	c := dialTest(t, cfg)
	eventually(t, "a connection to b", func() bool { return b.connCount() > 0 })
	if _, err := c.Request(context.Background(), 1, nil); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if connected[0] != a.url() || connected[len(connected)-1] != b.url() {
		t.Fatalf("connected to %v", connected)
	}
}

// Close while the server is unreachable returns at once and leaves nothing behind.
func TestCloseWhileReconnecting(t *testing.T) {
	s := newFakeServer(t)
	cfg := testConfig(s)
	s.close()
	cfg.ReconnectMin, cfg.ReconnectMax = time.Hour, time.Hour
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "a failed attempt", func() bool { return c.Stats().Disconnects > 0 })
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := Dial(ctx, cfg); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial to a closed server: %v", err)
	}
}
