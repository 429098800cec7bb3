package main

// End-to-end tests of the Go client (transport/client) against whole Switchboard nodes started
// in-process by the harness (harness_test.go). They live here, not in transport/client, because
// only package main can start a node; starting the built binary instead would add a build per
// run, a token subcommand per token, and lose the race detector on the server's side.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"switchboard/config"
	"switchboard/store/redistest"
	sbclient "switchboard/transport/client"
)

// gcConfig is a client configuration for node s with a token of user, reconnecting fast.
func gcConfig(t testing.TB, s *testServer, user string, roles ...string) sbclient.Config {
	return sbclient.Config{
		URL: s.wsURL(""), Token: s.token(t, user, roles...),
		ReconnectMin: 10 * time.Millisecond, ReconnectMax: 200 * time.Millisecond,
		ConnLimitDelay: 100 * time.Millisecond, RequestTimeout: 10 * time.Second,
	}
}

// gcDial connects a client and closes it when the test ends.
func gcDial(t testing.TB, cfg sbclient.Config) *sbclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := sbclient.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("client Dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// gcMessages collects what a subscription gets; a Missed event is recorded as seq 0.
type gcMessages struct {
	mu     sync.Mutex
	msgs   []sbclient.Message
	missed []sbclient.Missed
	seqs   []uint64
}

func (g *gcMessages) onMessage(m sbclient.Message) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.msgs = append(g.msgs, m)
	g.seqs = append(g.seqs, m.Seq)
}

func (g *gcMessages) onMissed(m sbclient.Missed) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.missed = append(g.missed, m)
	g.seqs = append(g.seqs, 0)
}

func (g *gcMessages) wait(t testing.TB, n int) ([]uint64, []sbclient.Message, []sbclient.Missed) {
	t.Helper()
	eventually(t, 15*time.Second, fmt.Sprintf("%d callbacks", n), func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return len(g.seqs) >= n
	})
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]uint64(nil), g.seqs...), append([]sbclient.Message(nil), g.msgs...), append([]sbclient.Missed(nil), g.missed...)
}

// gcConsecutive reports whether seqs run from first upward by one.
func gcConsecutive(seqs []uint64, first uint64) bool {
	for i, q := range seqs {
		if q != first+uint64(i) {
			return false
		}
	}
	return true
}

// Requests and their typed errors, in both frame formats, and the author events of the same
// connection's subscription; a request too big for the server.
func TestGoClientRequestsAndTypedErrors(t *testing.T) {
	s := startServer(t, func(c *config.Config) { c.WSMaxMessageBytes = 1024 })
	t.Run("1009", func(t *testing.T) { gcOversizedRequest(t, s) })
	for _, format := range []sbclient.Format{sbclient.JSON, sbclient.Protobuf} {
		t.Run(format.String(), func(t *testing.T) {
			cfg := gcConfig(t, s, "gc-"+format.String(), "get-authors", "create-author")
			cfg.Format = format
			c := gcDial(t, cfg)
			ctx := context.Background()

			var events gcMessages
			sub, err := c.Subscribe(ctx, "authors", events.onMessage)
			if err != nil {
				t.Fatal(err)
			}
			name := "Le Guin " + format.String()
			var created struct {
				ID   int64  `json:"id"`
				Name string `json:"name"`
			}
			if err := c.Call(ctx, 3, map[string]string{"name": name}, &created); err != nil || created.Name != name {
				t.Fatalf("create: %+v %v", created, err)
			}
			var found []struct {
				ID int64 `json:"id"`
			}
			if err := c.Call(ctx, 1, map[string]any{"filters": map[string]any{"name": name}}, &found); err != nil || len(found) != 1 || found[0].ID != created.ID {
				t.Fatalf("get: %+v %v", found, err)
			}
			_, ms, _ := events.wait(t, 1)
			if ms[0].Topic != "authors" || ms[0].PkgID != 3 || ms[0].Seq == 0 || ms[0].Seq != sub.Position().Seq {
				t.Fatalf("event %+v, position %+v", ms[0], sub.Position())
			}

			_, err = c.Request(ctx, 3, map[string]string{"name": name})
			var e *sbclient.Error
			if !errors.As(err, &e) || !sbclient.IsInvalidData(err) || e.Msg != fmt.Sprintf("Author with name '%s' already exists", name) {
				t.Fatalf("duplicate: %v", err)
			}
			_, err = c.Request(ctx, 3, map[string]string{"name": ""})
			if !errors.As(err, &e) || e.Status != sbclient.StatusInvalidData || len(e.Errors) == 0 || e.Errors[0].Path != "/name" {
				t.Fatalf("empty name: %v", err)
			}
			if _, err = c.Request(ctx, 20, nil); !sbclient.IsPermissionDenied(err) {
				t.Fatalf("audit logs without admin: %v", err)
			}
			if _, err = c.Request(ctx, 99, nil); !errors.As(err, &e) || e.Status != sbclient.StatusError || e.Msg != "Unknown pkg_id 99" {
				t.Fatalf("unknown pkg_id: %v", err)
			}
			if _, err := c.Subscribe(ctx, "secret", events.onMessage); !sbclient.IsPermissionDenied(err) {
				t.Fatalf("topic outside the policy: %v", err)
			}
		})
	}
}

// Publish goes through POST /api/broadcast with the client's token; the refusals are typed.
func TestGoClientPublish(t *testing.T) {
	s := startServer(t, nil)
	topic := "dashboards.gc" + limRandomHex(4)
	reader := gcDial(t, func() sbclient.Config {
		cfg := gcConfig(t, s, "gc-reader")
		cfg.Format = sbclient.Protobuf
		return cfg
	}())
	var got gcMessages
	if _, err := reader.Subscribe(context.Background(), topic, got.onMessage); err != nil {
		t.Fatal(err)
	}
	var everyone gcMessages
	cfg := gcConfig(t, s, "gc-producer", "broadcast")
	cfg.OnBroadcast = everyone.onMessage
	producer := gcDial(t, cfg)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		n, err := producer.Publish(ctx, topic, 7, map[string]int{"i": i})
		if err != nil || n != 1 {
			t.Fatalf("publish %d: %d %v", i, n, err)
		}
	}
	seqs, ms, _ := got.wait(t, 3)
	if !gcConsecutive(seqs, seqs[0]) || string(ms[2].Data) != `{"i":3}` || ms[2].PkgID != 7 {
		t.Fatalf("seqs %v, last %+v", seqs, ms[2])
	}
	// Without a topic: to every connection, the producer's own included.
	if _, err := producer.Publish(ctx, "", 8, map[string]bool{"all": true}); err != nil {
		t.Fatal(err)
	}
	if _, ms, _ := everyone.wait(t, 1); ms[0].PkgID != 8 || ms[0].Topic != "" {
		t.Fatalf("broadcast %+v", ms[0])
	}

	if _, err := producer.Publish(ctx, "authors", 3, map[string]int{}); !sbclient.IsPermissionDenied(err) {
		t.Fatalf("publish on authors: %v", err)
	}
	if _, err := reader.Publish(ctx, topic, 7, nil); !sbclient.IsPermissionDenied(err) {
		t.Fatalf("publish without the broadcast role: %v", err)
	}
	if _, err := producer.Publish(ctx, "bad topic!", 7, nil); !sbclient.IsInvalidData(err) {
		t.Fatalf("bad topic: %v", err)
	}
}

// A node restarts (same data directory, same Redis): the client reconnects, resubscribes with
// since and epoch, and gets what was published meanwhile (through another node), once and in
// order, then live messages.
func TestGoClientSubscribeRecoversAcrossRestart(t *testing.T) {
	rc := redistest.Client(t)
	prefix := redistest.Prefix(t, rc)
	redisURL := redistest.URL(t)
	shared := t.TempDir()
	node := func(addr, db string) func(*config.Config) {
		return func(c *config.Config) {
			c.DataDir, c.DatabaseURL, c.RedisURL, c.RedisPrefix = shared, db, redisURL, prefix
			if addr != "" {
				c.Addr = addr
			}
		}
	}
	dbA := "sqlite://" + t.TempDir() + "/a.db"
	a := startServer(t, node(restartableAddr(t), dbA))
	b := startServer(t, node("", "sqlite://"+t.TempDir()+"/b.db"))
	topic := "dashboards.gc" + limRandomHex(4)

	var disconnects []sbclient.Disconnect
	var dmu sync.Mutex
	cfg := gcConfig(t, a, "gc-reader")
	cfg.OnDisconnect = func(d sbclient.Disconnect) {
		dmu.Lock()
		disconnects = append(disconnects, d)
		dmu.Unlock()
	}
	c := gcDial(t, cfg)
	var got gcMessages
	sub, err := c.Subscribe(context.Background(), topic, got.onMessage, sbclient.OnMissed(got.onMissed))
	if err != nil {
		t.Fatal(err)
	}
	producer := gcDial(t, gcConfig(t, b, "gc-producer", "broadcast"))
	publish := func(n int) {
		for range n {
			if _, err := producer.Publish(context.Background(), topic, 7, map[string]int{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(3)
	seqs, ms, _ := got.wait(t, 3)
	first, epoch := seqs[0], ms[0].Epoch

	addr := strings.TrimPrefix(a.base, "http://")
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "the client to notice", func() bool { return !c.Connected() })
	publish(2) // while the client is away
	startServer(t, node(addr, dbA))
	if err := c.WaitConnected(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "the replay", func() bool { return sub.Position().Seq == first+4 })
	publish(1)
	seqs, ms, missed := got.wait(t, 6)
	if !gcConsecutive(seqs, first) || len(seqs) != 6 || len(missed) != 0 || !sub.Recovered() {
		t.Fatalf("seqs %v missed %+v recovered %v", seqs, missed, sub.Recovered())
	}
	for _, m := range ms {
		if m.Epoch != epoch {
			t.Fatalf("epoch changed without a restart of the stream: %+v (first %q)", m, epoch)
		}
	}
	dmu.Lock()
	defer dmu.Unlock()
	if len(disconnects) == 0 || disconnects[0].Code != 1001 {
		t.Fatalf("disconnects %+v", disconnects)
	}
}

// A single node on the in-process bus restarts: the history is gone with it, so the
// resubscribe cannot recover and OnMissed is told, then the new stream follows.
func TestGoClientSubscribeLostAcrossRestartTellsOnMissed(t *testing.T) {
	shared := t.TempDir()
	db := "sqlite://" + t.TempDir() + "/a.db"
	a := startServer(t, func(c *config.Config) { c.DataDir, c.DatabaseURL, c.Addr = shared, db, restartableAddr(t) })
	topic := "dashboards.gc" + limRandomHex(4)
	c := gcDial(t, gcConfig(t, a, "gc-reader", "broadcast"))
	var got gcMessages
	sub, err := c.Subscribe(context.Background(), topic, got.onMessage, sbclient.OnMissed(got.onMissed))
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := c.Publish(context.Background(), topic, 7, map[string]int{}); err != nil {
			t.Fatal(err)
		}
	}
	got.wait(t, 3)
	addr := strings.TrimPrefix(a.base, "http://")
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
	startServer(t, func(c *config.Config) { c.DataDir, c.DatabaseURL, c.Addr = shared, db, addr })
	eventually(t, 15*time.Second, "the resubscribe", func() bool { return c.Stats().Missed == 1 })
	if _, err := c.Publish(context.Background(), topic, 7, map[string]int{}); err != nil {
		t.Fatal(err)
	}
	seqs, ms, missed := got.wait(t, 5)
	if seqs[3] != 0 || len(missed) != 1 || missed[0].From.Seq != seqs[2] || ms[3].Seq != missed[0].Now.Seq+1 || sub.Recovered() {
		t.Fatalf("seqs %v missed %+v", seqs, missed)
	}
}

// Token expiry on a node without leeway: 4001 and a fresh token, or a refresh ahead of it.
func TestGoClientTokens(t *testing.T) {
	s := startServer(t, func(c *config.Config) { c.JWTLeeway = 0 })
	t.Run("4001 gets a fresh token", func(t *testing.T) { gcTokenExpired(t, s) })
	t.Run("refreshed ahead", func(t *testing.T) { gcTokenRefreshedAhead(t, s) })
}

// Redis restarts without its data: the topic's stream starts again (a new epoch, where the
// server sends epochs). The node closes the subscribers with 1013 or answers the resubscribe
// with recovered: false; either way OnMissed is told and the new stream follows.
func TestGoClientRedisRestartTellsOnMissed(t *testing.T) {
	rs := redistest.StartServer(t)
	a := startServer(t, func(c *config.Config) { c.RedisURL = rs.URL() })
	topic := "dashboards.gc" + limRandomHex(4)
	c := gcDial(t, gcConfig(t, a, "gc-reader", "broadcast"))
	var got gcMessages
	if _, err := c.Subscribe(context.Background(), topic, got.onMessage, sbclient.OnMissed(got.onMissed)); err != nil {
		t.Fatal(err)
	}
	publish := func() {
		// Retried: the node's Redis connections come back on their own after the restart.
		var err error
		eventually(t, 20*time.Second, "a publish to be accepted", func() bool {
			_, err = c.Publish(context.Background(), topic, 7, map[string]int{})
			return err == nil
		})
	}
	for range 3 {
		publish()
	}
	seqs, ms, _ := got.wait(t, 3)
	rs.Kill()
	rs.Restart()
	eventually(t, 30*time.Second, "the Missed event", func() bool { return c.Stats().Missed >= 1 })
	publish()
	seqs, ms2, missed := got.wait(t, 5)
	last := ms2[len(ms2)-1]
	if seqs[3] != 0 || len(missed) != 1 || missed[0].From != (sbclient.Position{Seq: ms[2].Seq, Epoch: ms[2].Epoch}) ||
		last.Seq != missed[0].Now.Seq+1 {
		t.Fatalf("seqs %v missed %+v last %+v", seqs, missed, last)
	}
	if ms[0].Epoch != "" && (last.Epoch == "" || last.Epoch == ms[0].Epoch) {
		t.Fatalf("the new stream has epoch %q, the old one %q", last.Epoch, ms[0].Epoch)
	}
}

// 4001: the server ends the connection when the token expires; the client gets a fresh token
// from GetToken, reconnects and resubscribes. (Refreshing ahead is off here, so 4001 happens.)
func gcTokenExpired(t *testing.T, s *testServer) {
	var calls atomic.Int32
	cfg := gcConfig(t, s, "gc-expiring")
	cfg.Token = s.tokenTTL(t, "gc-expiring", 2*time.Second, "get-authors")
	cfg.GetToken = func(context.Context) (string, error) {
		calls.Add(1)
		return s.tokenTTL(t, "gc-expiring", time.Hour, "get-authors"), nil
	}
	cfg.RefreshBefore = -1
	closes := make(chan sbclient.Disconnect, 8)
	cfg.OnDisconnect = func(d sbclient.Disconnect) { closes <- d }
	c := gcDial(t, cfg)
	var got gcMessages
	if _, err := c.Subscribe(context.Background(), "authors", got.onMessage); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-closes:
		if d.Code != 4001 || d.Reason != "token expired" || d.Final {
			t.Fatalf("disconnect %+v", d)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no 4001 within 30s of a 2s token")
	}
	if err := c.WaitConnected(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Request(context.Background(), 1, nil); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 1 || c.Stats().Connects != 2 {
		t.Fatalf("GetToken called %d times, %d connections", calls.Load(), c.Stats().Connects)
	}
}

// With GetToken, the token is refreshed on the live connection (pkg_id 12) ahead of its expiry:
// the connection outlives the first token.
func gcTokenRefreshedAhead(t *testing.T, s *testServer) {
	ttl := 4 * time.Second
	cfg := gcConfig(t, s, "gc-refresh")
	cfg.Token = s.tokenTTL(t, "gc-refresh", ttl, "get-authors")
	expires := time.Now().Add(ttl)
	var calls atomic.Int32
	cfg.GetToken = func(context.Context) (string, error) {
		calls.Add(1)
		return s.tokenTTL(t, "gc-refresh", time.Hour, "get-authors", "create-author"), nil
	}
	c := gcDial(t, cfg)
	eventually(t, 15*time.Second, "the refresh", func() bool { return calls.Load() == 1 })
	// Past the first token's expiry (and the server's check after it): still the first
	// connection, with the new token's roles.
	eventually(t, 20*time.Second, "the first token's expiry to pass", func() bool { return time.Now().After(expires.Add(2 * time.Second)) })
	if _, err := c.Request(context.Background(), 3, map[string]string{"name": "Refreshed " + limRandomHex(3)}); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.Connects != 1 || st.Disconnects != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// 1008: the user is at the connection limit; the client waits at least ConnLimitDelay between
// attempts and connects once a slot frees.
func TestGoClientConnectionLimitBacksOff(t *testing.T) {
	s := startServer(t, func(c *config.Config) { c.WSMaxConnsPerUser = 1 })
	first := gcDial(t, gcConfig(t, s, "gc-limited"))
	cfg := gcConfig(t, s, "gc-limited")
	cfg.ConnLimitDelay = 300 * time.Millisecond
	events := make(chan sbclient.Disconnect, 64)
	cfg.OnDisconnect = func(d sbclient.Disconnect) {
		select {
		case events <- d:
		default:
		}
	}
	second, err := sbclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	d := <-events
	if d.Code != 1008 || d.Reason != "Maximum concurrent connections exceeded" || d.Delay < cfg.ConnLimitDelay || d.Final {
		t.Fatalf("disconnect %+v", d)
	}
	_ = first.Close()
	if err := second.WaitConnected(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := second.Subscribe(context.Background(), "dashboards.gc", func(sbclient.Message) {}); err != nil {
		t.Fatal(err)
	}
}

// A request too big for the server (1009) fails with the close code and does not loop: the
// client reconnects and the next request is answered.
func gcOversizedRequest(t *testing.T, s *testServer) {
	c := gcDial(t, gcConfig(t, s, "gc-big", "create-author"))
	_, err := c.Request(context.Background(), 3, map[string]string{"name": strings.Repeat("x", 2048)}, sbclient.WithRetry())
	var ce *sbclient.CloseError
	if !errors.Is(err, sbclient.ErrConnectionLost) || !errors.As(err, &ce) || ce.Code != 1009 {
		t.Fatalf("err %v", err)
	}
	if _, err := c.Request(context.Background(), 3, map[string]string{"name": "Small " + limRandomHex(3)}); err != nil {
		t.Fatal(err)
	}
	// Set to the server's limit, the client refuses it alone, before the wire.
	cfg := gcConfig(t, s, "gc-big", "create-author")
	cfg.MaxMessageBytes = 1024
	c2 := gcDial(t, cfg)
	if _, err := c2.Request(context.Background(), 3, map[string]string{"name": strings.Repeat("x", 2048)}); !errors.Is(err, sbclient.ErrTooLarge) {
		t.Fatalf("err %v", err)
	}
}

// Close leaves none of the client's goroutines behind (the server's side of the connection
// winds down too).
func TestGoClientCloseLeavesNoGoroutine(t *testing.T) {
	s := startServer(t, nil)
	// A round trip first, so that the node's own goroutines (its listener's included) are all
	// started before the snapshot.
	if resp, _ := s.do(t, "GET", "/livez", "", ""); resp.StatusCode != 200 {
		t.Fatalf("livez %d", resp.StatusCode)
	}
	ignore := goleak.IgnoreCurrent()
	cfg := gcConfig(t, s, "gc-leak", "get-authors", "broadcast")
	cfg.OnBroadcast = func(sbclient.Message) {}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := sbclient.Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(ctx, "authors", func(sbclient.Message) {}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Request(ctx, 1, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, "", 1, map[string]int{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := goleak.Find(ignore); err != nil {
		t.Fatal(err)
	}
}
