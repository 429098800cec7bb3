package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The shutdown tests keep raw clients (wsClient): they check the exact close code of every
// socket and that no goroutine outlives the node, and transport/client would keep reconnecting.

// verifyNoGoroutineLeaks polls until no goroutine is left beyond those in ignore (captured
// before the server started), for up to d: goroutines on their way out (sockets being closed,
// the client side of closed connections, protoactor's one-period throttle timers) get that long
// to end. Nothing else is ignored: a stopped node must leave no goroutine of its own or of its
// libraries (protoactor, gws, bun/sqlite, jwx) behind.
func verifyNoGoroutineLeaks(t *testing.T, ignore goleak.Option, d time.Duration) {
	t.Helper()
	// Keep-alive connections of the test's own HTTP client to the (now closed) server.
	http.DefaultClient.CloseIdleConnections()
	var err error
	deadline := time.Now().Add(d)
	for {
		if err = goleak.Find(ignore); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines left after shutdown:\n%v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestShutdownClosesClientsWith1001AndLeavesNoGoroutines(t *testing.T) {
	ignore := goleak.IgnoreCurrent() // before the server exists
	s := startServer(t, nil)
	clients := []*wsClient{
		s.dial(t, s.token(t, "a", "get-authors", "create-author")),
		s.dial(t, s.token(t, "b", "get-authors")),
		s.dial(t, s.token(t, "c")),
	}
	s.waitHubActive(t, len(clients))
	// Exercise every part once so that everything a node starts is running: a handler call
	// (handler pool, database), a broadcast (hub, writers), plain HTTP.
	if r := clients[0].call(3, map[string]any{"name": "Octavia"}); r.status() != 0 {
		t.Fatalf("create: %+v", r)
	}
	mustPublish(t, s.publisher(t, s.token(t, "producer", "broadcast")), "", 1, map[string]int{"hello": 1})
	for _, c := range clients {
		if e := c.next(10 * time.Second); e.PkgID != 1 || e.StatusCode != nil {
			t.Fatalf("broadcast: %+v", e)
		}
	}
	if resp, b := s.do(t, http.MethodGet, "/health", "", ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("health: %d %s", resp.StatusCode, b)
	}

	start := time.Now()
	if err := s.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	t.Logf("shutdown took %s", time.Since(start).Round(time.Millisecond))
	for i, c := range clients {
		code, reason := c.closeStatus(10 * time.Second)
		if code != 1001 {
			t.Errorf("client %d: close %d %q, want 1001", i, code, reason)
		}
	}
	verifyNoGoroutineLeaks(t, ignore, 15*time.Second)
}

// TestShutdownWithRequestInFlight starts an HTTP request whose handler is running (it has asked
// for the body with 100 Continue) and then stops the node: the shutdown waits for the request,
// the request gets a complete answer, stop returns nil, and a WebSocket dial made while the
// shutdown is under way fails.
func TestShutdownWithRequestInFlight(t *testing.T) {
	for _, tc := range []struct {
		name, path, body string
		roles            []string
		check            func(t *testing.T, status int, body map[string]any)
	}{
		{
			// The handler pool and the database stop only after http.Server.Shutdown, so a
			// façade call that is already running completes normally.
			name: "create author", path: "/authors", body: `{"name":"Late Arrival"}`, roles: []string{"create-author"},
			check: func(t *testing.T, status int, body map[string]any) {
				if status != http.StatusOK || body["name"] != "Late Arrival" || body["id"] == nil {
					t.Fatalf("in-flight create answered %d %v, want 200 with the author", status, body)
				}
			},
		},
		{
			// The hub has stopped by the time the body arrives: 503, answered rather than cut.
			// 202 would do too (a node that still delivered it); anything else would not.
			name: "broadcast", path: "/api/broadcast", body: `{"pkg_id":3,"data":{"late":true}}`, roles: []string{"broadcast"},
			check: func(t *testing.T, status int, body map[string]any) {
				if status != http.StatusServiceUnavailable && status != http.StatusAccepted {
					t.Fatalf("in-flight broadcast answered %d %v, want 503 or 202", status, body)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ignore := goleak.IgnoreCurrent()
			s := startServer(t, nil)
			listener := s.dial(t, s.token(t, "listener"))
			s.waitHubActive(t, 1)
			host := strings.TrimPrefix(s.base, "http://")

			conn, err := net.DialTimeout("tcp", host, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
			fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"+
				"Content-Type: application/json\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n",
				tc.path, host, s.token(t, "producer", tc.roles...), len(tc.body))
			br := bufio.NewReader(conn)
			// Go's server sends 100 Continue when the handler first reads the body: from here on
			// the handler is running (authenticated and authorised) and waits for the test.
			cont, err := http.ReadResponse(br, nil)
			if err != nil || cont.StatusCode != http.StatusContinue {
				t.Fatalf("want 100 Continue, got %v %v", cont, err)
			}

			stopped := make(chan error, 1)
			go func() { stopped <- s.stop() }()

			// The shutdown has begun once the listener is closed (http.Server.Shutdown, after
			// the hub closed the WebSockets).
			eventually(t, 30*time.Second, "the listener to close", func() bool {
				c, err := net.DialTimeout("tcp", host, time.Second)
				if err != nil {
					return true
				}
				c.Close()
				return false
			})
			if code, _ := listener.closeStatus(10 * time.Second); code != 1001 {
				t.Errorf("listener closed with %d, want 1001", code)
			}
			if _, err := s.tryDial(t, s.token(t, "latecomer"), nil); err == nil {
				t.Fatalf("a WebSocket dial during shutdown succeeded")
			}
			select {
			case err := <-stopped:
				t.Fatalf("stop returned (%v) while a request was in flight", err)
			default:
			}

			// Finish the request: it gets a whole answer, and the shutdown completes.
			if _, err := io.WriteString(conn, tc.body); err != nil {
				t.Fatalf("write body: %v", err)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("in-flight request got no answer: %v", err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatalf("in-flight response body: %v", err)
			}
			var body map[string]any
			if err := json.Unmarshal(b, &body); err != nil {
				t.Fatalf("in-flight request answered %d %s: %v", resp.StatusCode, b, err)
			}
			t.Logf("in-flight request answered %d %s", resp.StatusCode, strings.TrimSpace(string(b)))
			tc.check(t, resp.StatusCode, body)

			select {
			case err := <-stopped:
				if err != nil {
					t.Fatalf("stop: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("stop did not return within 30s after the in-flight request finished")
			}
			conn.Close()
			verifyNoGoroutineLeaks(t, ignore, 15*time.Second)
		})
	}
}

// TestShutdownWithWebSocketRequestsInFlight stops the node while a client has handler requests
// outstanding: stop returns nil within the deadline and the client gets 1001 (answers that were
// not ready are dropped with the socket).
func TestShutdownWithWebSocketRequestsInFlight(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	s := startServer(t, nil)
	c := s.dial(t, s.token(t, "busy", "get-authors", "create-author"))
	s.waitHubActive(t, 1)
	for i := range 20 {
		c.sendText(fmt.Sprintf(`{"pkg_id":3,"req_id":"00000000-0000-4000-8000-%012d","data":{"name":"author %d"}}`, i, i))
	}
	if err := s.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if code, reason := c.closeStatus(10 * time.Second); code != 1001 {
		t.Fatalf("close %d %q, want 1001", code, reason)
	}
	verifyNoGoroutineLeaks(t, ignore, 15*time.Second)
}

// TestDialAfterShutdownBeganFails: once the WebSocket server is told to stop accepting, a
// handshake is answered 503 with a JSON detail and no upgrade; after the node stopped, the
// dial fails outright.
func TestDialAfterShutdownBeganFails(t *testing.T) {
	s := startServer(t, nil)
	tok := s.token(t, "late")
	s.app.ws.BeginShutdown()
	if _, err := s.tryDial(t, tok, nil); err == nil {
		t.Fatalf("dial after BeginShutdown succeeded")
	}
	_, resp, err := s.rawWSDial(t, tok)
	if err == nil || resp == nil {
		t.Fatalf("raw handshake after BeginShutdown: %v", err)
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	var d struct {
		Detail string `json:"detail"`
	}
	if resp.StatusCode != http.StatusServiceUnavailable || json.Unmarshal(b, &d) != nil || d.Detail == "" {
		t.Fatalf("handshake during shutdown answered %d %s, want 503 with a detail", resp.StatusCode, b)
	}
	if err := s.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if _, err := s.tryDial(t, tok, nil); err == nil {
		t.Fatalf("dial after stop succeeded")
	}
	var ne net.Error
	if _, _, err := s.rawWSDial(t, tok); err == nil || !(errors.As(err, &ne) || strings.Contains(err.Error(), "refused")) {
		t.Fatalf("raw dial after stop: %v, want a network error", err)
	}
}
