package main

// End-to-end scenarios of dependencies failing under a running server, each through a fault
// proxy (store/faultproxy) on the link that fails:
//
//   - PostgreSQL restarted (every connection cut, connections refused for 5 s) under sustained
//     WebSocket writes: nothing hangs, every request is answered, every create answered OK is in
//     the table and every answered request has its audit row, once;
//   - PostgreSQL frozen (nothing answers, nothing closes) under WebSocket writes: every request
//     is answered within the handler timeout, requests that need no database are served at
//     once, and everything works again after the freeze;
//   - a WebSocket client gone half-open: reaped after about twice the ping interval, its slot in
//     the per-user connection limit freed;
//   - Redis cut, and frozen, mid-run: limits fail open (counted), /health says redis unhealthy,
//     and every limit applies again when Redis is back.
//
// Each test logs its figures (outage length, requests, answers, rows, losses).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"switchboard/config"
	"switchboard/store"
	"switchboard/store/faultproxy"
	"switchboard/store/redistest"
	"switchboard/store/storetest"
	sbclient "switchboard/transport/client"
)

// faultPG is a fresh PostgreSQL database behind a fault proxy: the server gets url (through
// the proxy); the test checks the tables through direct.
type faultPG struct {
	proxy  *faultproxy.Proxy
	url    string
	direct *store.DB
}

func newFaultPG(t *testing.T) faultPG {
	t.Helper()
	raw := storetest.PostgresURL(t)
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	p := faultproxy.Start(t, u.Host)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	direct, err := store.Open(ctx, raw, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = direct.Close() })
	u.Host = p.Addr()
	return faultPG{proxy: p, url: u.String(), direct: direct}
}

// faultAnswer is one request of a load client and what came back.
type faultAnswer struct {
	reqID  string
	name   string // CREATE_AUTHOR's name
	status int
	msg    string
	id     int64 // the created author's id (status 0)
	sent   time.Time
	took   time.Duration
}

// faultCall sends one request on the raw connection c and waits up to d for its answer. It
// never fails the test, so load goroutines may call it. The Redis-outage test uses it on the
// connections whose admission under the per-user limit it checks frame by frame.
func faultCall(c *wsClient, pkgID int, data any, d time.Duration) (envelope, error) {
	id := uuid.NewString()
	b, _ := json.Marshal(map[string]any{"pkg_id": pkgID, "req_id": id, "data": data})
	if err := c.conn.WriteString(string(b)); err != nil {
		return envelope{}, fmt.Errorf("write: %w", err)
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case raw := <-c.msgs:
			var e envelope
			if err := json.Unmarshal(raw, &e); err != nil {
				return envelope{}, fmt.Errorf("frame is not an envelope: %w: %s", err, raw)
			}
			if e.ReqID == id {
				return e, nil
			}
		case <-c.closed:
			return envelope{}, errors.New("connection closed")
		case <-timer.C:
			return envelope{}, fmt.Errorf("no answer within %s", d)
		}
	}
}

// writeLoad is several WebSocket clients, each sending CREATE_AUTHOR requests one after the
// other (the next when the last was answered, and at most one per writePace) until stop. The
// pace bounds what an outage queues in the audit writer: while the database is down every
// request fails fast, and unpaced clients would outrun any bounded queue (4 clients at 200/s
// for 5 s queue 4 000 entries; the writer holds 10 000).
type writeLoad struct {
	stop chan struct{}
	wg   sync.WaitGroup

	mu      sync.Mutex
	answers []faultAnswer
	hangs   []error // requests without an answer within the bound
}

// writePace is the least time between two requests of one writeLoad client.
const writePace = 5 * time.Millisecond

// startWriteLoad starts clients writers on s; a request unanswered after wait counts as a hang
// and ends its client.
func startWriteLoad(t *testing.T, s *testServer, clients int, wait time.Duration) *writeLoad {
	t.Helper()
	l := &writeLoad{stop: make(chan struct{})}
	tag := limRandomHex(3)
	for k := range clients {
		c := s.connect(t, s.token(t, fmt.Sprintf("writer-%d", k), "create-author"))
		l.wg.Go(func() {
			pace := time.NewTicker(writePace)
			defer pace.Stop()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				case <-pace.C:
				}
				a := faultAnswer{name: fmt.Sprintf("Fault %s %d-%d", tag, k, i), sent: time.Now()}
				ctx, cancel := context.WithTimeout(context.Background(), wait)
				e, err := c.tryCall(ctx, 3, map[string]any{"name": a.name})
				cancel()
				a.took = time.Since(a.sent)
				if err != nil {
					l.mu.Lock()
					l.hangs = append(l.hangs, fmt.Errorf("writer %d, request %d: %w", k, i, err))
					l.mu.Unlock()
					return
				}
				a.reqID, a.status, a.msg = e.ReqID, e.status(), e.msg()
				if a.status == 0 {
					var row authorRow
					if json.Unmarshal(e.Data, &row) == nil {
						a.id = row.ID
					}
				}
				l.mu.Lock()
				l.answers = append(l.answers, a)
				l.mu.Unlock()
			}
		})
	}
	t.Cleanup(func() { l.finish() })
	return l
}

// count returns how many requests were answered with status (-1: any) since since.
func (l *writeLoad) count(status int, since time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, a := range l.answers {
		if (status < 0 || a.status == status) && !a.sent.Before(since) {
			n++
		}
	}
	return n
}

// finish stops the clients, waits for them and returns every answer.
func (l *writeLoad) finish() []faultAnswer {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.answers)
}

// expectTruthfulWrites checks the answers against the database: every create answered OK is in
// the table with its id and name, and every answered request has exactly one audit row with
// its status (waiting for the audit writer, which may still be catching up after an outage). It
// returns the number of creates answered with an error that committed all the same.
func expectTruthfulWrites(t *testing.T, db *store.DB, answers []faultAnswer) (committedDespiteError int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var authors []authorRow
	if err := db.Bun.NewRaw("SELECT id, name FROM authors").Scan(ctx, &authors); err != nil {
		t.Fatal(err)
	}
	byName := make(map[string]int64, len(authors))
	for _, a := range authors {
		byName[a.Name] = a.ID
	}
	for _, a := range answers {
		switch a.status {
		case 0:
			if id, ok := byName[a.name]; !ok || id != a.id {
				t.Errorf("create %q answered OK with id %d: in the table %v (id %d)", a.name, a.id, ok, id)
			}
		case 1:
			if a.msg != "Database error occurred" {
				t.Errorf("create %q answered 1 with %q", a.name, a.msg)
			}
			if _, ok := byName[a.name]; ok {
				committedDespiteError++
			}
		default:
			t.Errorf("create %q answered %d %q", a.name, a.status, a.msg)
		}
	}

	type auditKey struct {
		RequestID      string `bun:"request_id"`
		ResponseStatus int    `bun:"response_status"`
		N              int    `bun:"n"`
	}
	var missing, twice, wrong []string
	eventually(t, 60*time.Second, "an audit row for every answered request", func() bool {
		var rows []auditKey
		qctx, qcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer qcancel()
		if err := db.Bun.NewRaw("SELECT request_id, response_status, count(*) AS n FROM user_actions GROUP BY 1, 2").Scan(qctx, &rows); err != nil {
			t.Fatal(err)
		}
		got := make(map[string]auditKey, len(rows))
		for _, r := range rows {
			if prev, dup := got[r.RequestID]; dup {
				r.N += prev.N
			}
			got[r.RequestID] = r
		}
		missing, twice, wrong = missing[:0], twice[:0], wrong[:0]
		for _, a := range answers {
			r, ok := got[a.reqID]
			switch {
			case !ok:
				missing = append(missing, a.reqID)
			case r.N > 1:
				twice = append(twice, a.reqID)
			case r.ResponseStatus != a.status:
				wrong = append(wrong, fmt.Sprintf("%s: %d, answered %d", a.reqID, r.ResponseStatus, a.status))
			}
		}
		return len(missing) == 0
	})
	if len(twice) > 0 || len(wrong) > 0 {
		t.Errorf("audit rows: %d written more than once (%.200v), %d with another status (%.300v)", len(twice), twice, len(wrong), wrong)
	}
	return committedDespiteError
}

func statusCounts(answers []faultAnswer) (ok, failed int, slowest time.Duration) {
	for _, a := range answers {
		if a.status == 0 {
			ok++
		} else {
			failed++
		}
		slowest = max(slowest, a.took)
	}
	return ok, failed, slowest
}

// (a) PostgreSQL restarts under sustained WebSocket writes from several clients.
func TestFaultPostgresRestartUnderWrites(t *testing.T) {
	pg := newFaultPG(t)
	s := startServer(t, func(c *config.Config) {
		c.DatabaseURL = pg.url
		c.WSMessageRateLimit = 1_000_000
		c.HandlerTimeout = 5 * time.Second
	})
	const clients, down = 4, 5 * time.Second
	load := startWriteLoad(t, s, clients, s.cfg.HandlerTimeout+10*time.Second)

	eventually(t, 30*time.Second, "writes before the restart", func() bool { return load.count(0, time.Time{}) >= 100 })
	began := time.Now()
	cut, err := pg.proxy.Restart(context.Background(), down)
	if err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	eventually(t, 30*time.Second, "writes after the restart", func() bool { return load.count(0, back) >= 100 })
	answers := load.finish()
	if len(load.hangs) > 0 {
		t.Fatalf("%d requests not answered: %v", len(load.hangs), load.hangs)
	}
	committed := expectTruthfulWrites(t, pg.direct, answers)

	ok, failed, slowest := statusCounts(answers)
	during := 0
	for _, a := range answers {
		if a.status != 0 && !a.sent.Before(began) {
			during++
		}
	}
	if during == 0 {
		t.Errorf("no request failed while PostgreSQL was down: the outage did not happen")
	}
	t.Logf("PostgreSQL down %s (%d connections cut), %d clients: %d requests answered (%d OK, %d status 1 %q, "+
		"%d of those committed nonetheless), slowest answer %s, 0 unanswered; %d audit rows, 0 lost, 0 duplicated",
		down, cut, clients, len(answers), ok, failed, "Database error occurred", committed,
		slowest.Round(time.Millisecond), len(answers))
}

// (b) PostgreSQL freezes under WebSocket writes.
func TestFaultPostgresFrozenUnderWrites(t *testing.T) {
	pg := newFaultPG(t)
	const handlerTimeout = 4 * time.Second
	s := startServer(t, func(c *config.Config) {
		c.DatabaseURL = pg.url
		c.WSMessageRateLimit = 1_000_000
		c.RateLimitPerMinute = 1_000_000
		c.HandlerTimeout = handlerTimeout
	})
	const clients = 4
	load := startWriteLoad(t, s, clients, handlerTimeout+10*time.Second)
	other := s.connect(t, s.token(t, "bystander", "get-authors"))

	eventually(t, 30*time.Second, "writes before the freeze", func() bool { return load.count(0, time.Time{}) >= 50 })
	pg.proxy.Freeze()
	frozenAt := time.Now()

	// While frozen: requests that need no database are answered at once (well within the
	// handler timeout that the writers' requests wait out).
	quick := 3 * time.Second
	var sub *sbclient.Subscription
	for _, rq := range []struct {
		name string
		run  func() error
	}{
		{"SUBSCRIBE", func() (err error) { sub, err = other.subscribe("dashboards.faults"); return err }},
		{"UNSUBSCRIBE", func() error { return sub.Unsubscribe(t.Context()) }},
		{"unknown pkg_id", func() error { return expectAnswer(other.tryCall(t.Context(), 99, nil))(1) }},
		{"REFRESH_TOKEN", func() error {
			return expectAnswer(other.tryCall(t.Context(), 12, map[string]any{"token": s.token(t, "bystander", "get-authors")}))(0)
		}},
	} {
		start := time.Now()
		if err := rq.run(); err != nil {
			t.Fatalf("%s while PostgreSQL is frozen: %v", rq.name, err)
		}
		if took := time.Since(start); took > quick {
			t.Errorf("%s took %s while PostgreSQL is frozen (handler timeout %s)", rq.name, took, handlerTimeout)
		}
	}
	if resp, b := limRequest(t, s, http.MethodGet, "/livez", "", "", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("/livez while frozen: %d %s", resp.StatusCode, b)
	}
	if status, body := limHealth(t, s); status != http.StatusServiceUnavailable || body["database"] != "unhealthy" {
		t.Fatalf("/health while frozen: %d %v", status, body)
	}
	// The writers' requests time out, each answered 1 within the handler timeout.
	eventually(t, 30*time.Second, "writes failing while frozen", func() bool { return load.count(1, frozenAt) >= 2*clients })
	frozenFor := time.Since(frozenAt)
	pg.proxy.Resume()
	back := time.Now()
	eventually(t, 30*time.Second, "writes after the freeze", func() bool { return load.count(0, back) >= 50 })
	answers := load.finish()
	if len(load.hangs) > 0 {
		t.Fatalf("%d requests not answered: %v", len(load.hangs), load.hangs)
	}
	for _, a := range answers {
		if a.took > handlerTimeout+5*time.Second {
			t.Errorf("request %s answered after %s (handler timeout %s)", a.reqID, a.took, handlerTimeout)
		}
	}
	committed := expectTruthfulWrites(t, pg.direct, answers)
	if status, body := limHealth(t, s); status != http.StatusOK {
		t.Fatalf("/health after the freeze: %d %v", status, body)
	}
	ok, failed, slowest := statusCounts(answers)
	t.Logf("PostgreSQL frozen %s, %d clients, handler timeout %s: %d requests answered (%d OK, %d status 1, "+
		"%d of those committed nonetheless), slowest answer %s, 0 unanswered; requests without the database "+
		"answered within %s; %d audit rows, 0 lost, 0 duplicated",
		frozenFor.Round(time.Millisecond), clients, handlerTimeout, len(answers), ok, failed, committed,
		slowest.Round(time.Millisecond), quick, len(answers))
}

// (c) A WebSocket client whose connection goes half-open (nothing arrives from it, nothing
// closes) is reaped after about twice the ping interval, and its slot in the per-user
// connection limit is freed.
func TestFaultHalfOpenClientIsReaped(t *testing.T) {
	limBackends(t, func(t *testing.T, r *limRedis, url string) {
		const ping = 300 * time.Millisecond
		s := startServer(t, func(c *config.Config) {
			c.RedisURL = url
			c.WSPingInterval = ping
			c.WSMaxConnsPerUser = 1
			c.RateLimitPerMinute = 1000 // handshakes
		})
		p := faultproxy.Start(t, strings.TrimPrefix(s.base, "http://"))
		u := limUser(r, "halfopen")
		tok := s.token(t, u, "get-authors")
		c, err := s.tryDialVia(t, p.Addr(), tok, nil) // raw: a client that would reconnect is no half-open peer
		if err != nil {
			t.Fatal(err)
		}
		expectStatus(t, c.call(1, nil), 0, "")
		expectConnLimited(t, s, tok) // the one slot is taken
		eventually(t, e2eWait, "only the proxied connection open", func() bool { return s.app.hub.Active() == 1 })

		p.Freeze()
		frozenAt := time.Now()
		eventually(t, 30*time.Second, "the half-open connection reaped", func() bool { return s.app.hub.Active() == 0 })
		reapedAfter := time.Since(frozenAt)
		if reapedAfter < ping {
			t.Fatalf("reaped %s after the freeze, before one ping interval (%s)", reapedAfter, ping)
		}
		d := eventuallyAdmitted(t, s, tok)
		freedAfter := time.Since(frozenAt)
		expectStatus(t, d.call(1, nil), 0, "")
		// End the frozen link so the client's cleanup does not wait for a close that cannot come.
		_ = p.Close()
		t.Logf("ping interval %s: half-open connection reaped %s after it went silent, its slot usable after %s",
			ping, reapedAfter.Round(time.Millisecond), freedAfter.Round(time.Millisecond))
	})
}

// (d) Redis cut, then frozen, mid-run.
func TestFaultRedisCutAndFrozen(t *testing.T) {
	rc := redistest.Client(t)
	prefix := redistest.Prefix(t, rc)
	p := faultproxy.Start(t, rc.Options().Addr)
	const wsLimit = 5
	s := startServer(t, func(c *config.Config) {
		c.RedisURL = "redis://" + p.Addr() + "/0"
		c.RedisPrefix = prefix
		c.WSMessageRateLimit = wsLimit
		c.WSMaxConnsPerUser = 1
		c.RateLimitPerMinute = 1000 // handshakes and /health polls
	})
	user := func(base string) string { return base + "-" + limRandomHex(4) }
	health := func(want int) func() bool {
		return func() bool {
			status, body := limHealth(t, s)
			if want == http.StatusOK {
				return status == want && body["redis"] == "healthy" && body["pubsub"] == "healthy"
			}
			return status == want && body["redis"] == "unhealthy"
		}
	}
	// limitsApply: a user's sixth frame in a minute is refused, and a second connection too.
	limitsApply := func(phase string) {
		t.Helper()
		tok := s.token(t, user("limited"), "get-authors")
		c := expectConnAdmitted(t, s, tok) // one frame
		for i := 2; i <= wsLimit; i++ {
			expectStatus(t, c.call(1, nil), 0, "")
		}
		if e := c.call(1, nil); e.status() != 1 || e.msg() != "Rate limit exceeded" {
			t.Fatalf("%s: frame %d answered %+v, want the rate limit", phase, wsLimit+1, e)
		}
		expectConnLimited(t, s, tok)
		closeClient(t, c)
	}
	// failsOpen: more frames than the limit, and two connections, all admitted; every frame
	// answered within a bound far below the test's (the limiter gives Redis 250 ms).
	failsOpen := func(phase string) (frames int, slowest time.Duration) {
		t.Helper()
		tok := s.token(t, user("open"), "get-authors")
		c1 := expectConnAdmitted(t, s, tok)
		c2 := expectConnAdmitted(t, s, tok)
		for range 2 * wsLimit {
			for _, c := range []*wsClient{c1, c2} {
				start := time.Now()
				e, err := faultCall(c, 1, nil, e2eWait)
				if err != nil || e.status() != 0 {
					t.Fatalf("%s: frame answered %+v, %v; want 0 (failing open)", phase, e, err)
				}
				slowest = max(slowest, time.Since(start))
				frames++
			}
		}
		closeClient(t, c1)
		closeClient(t, c2)
		return frames + 2, slowest
	}
	metric := func(name string) float64 { return limMetric(t, s, name) }

	eventually(t, 30*time.Second, "/health all healthy at start", health(http.StatusOK))
	limitsApply("Redis up")

	// Cut: every connection reset, connecting refused, as when Redis crashes.
	openBefore, errsBefore := metric("rate_limit_fail_open_total"), metric(`redis_errors_total{operation="rate_limit"}`)
	cut := p.Refuse()
	eventually(t, 30*time.Second, "/health to say redis unhealthy after the cut", health(http.StatusServiceUnavailable))
	cutFrames, cutSlowest := failsOpen("Redis cut")
	cutOpen := metric("rate_limit_fail_open_total") - openBefore
	if cutOpen < float64(cutFrames) || metric(`redis_errors_total{operation="rate_limit"}`)-errsBefore < float64(cutFrames) {
		t.Errorf("Redis cut: %d frames, rate_limit_fail_open_total +%v", cutFrames, cutOpen)
	}
	if err := p.Listen(); err != nil {
		t.Fatal(err)
	}
	cutBack := time.Now()
	eventually(t, 30*time.Second, "/health all healthy after the cut", health(http.StatusOK))
	cutRecovery := time.Since(cutBack)
	limitsApply("Redis back after the cut")

	// Freeze: Redis stops answering, nothing closes (a stopped process, a half-open link).
	openBefore = metric("rate_limit_fail_open_total")
	connOpenBefore := metric("conn_limit_fail_open_total")
	p.Freeze()
	eventually(t, 30*time.Second, "/health to say redis unhealthy while frozen", health(http.StatusServiceUnavailable))
	frozenFrames, frozenSlowest := failsOpen("Redis frozen")
	frozenOpen := metric("rate_limit_fail_open_total") - openBefore
	if frozenOpen < float64(frozenFrames) || metric("conn_limit_fail_open_total")-connOpenBefore < 1 {
		t.Errorf("Redis frozen: %d frames, rate_limit_fail_open_total +%v, conn_limit_fail_open_total +%v",
			frozenFrames, frozenOpen, metric("conn_limit_fail_open_total")-connOpenBefore)
	}
	if frozenSlowest > 3*time.Second {
		t.Errorf("a frame took %s while Redis was frozen", frozenSlowest)
	}
	p.Resume()
	frozenBack := time.Now()
	eventually(t, 30*time.Second, "/health all healthy after the freeze", health(http.StatusOK))
	frozenRecovery := time.Since(frozenBack)
	limitsApply("Redis back after the freeze")

	t.Logf("Redis cut (%d connections reset, refused): %d frames failed open (rate_limit_fail_open_total +%v), slowest %s, healthy %s after it came back; "+
		"Redis frozen: %d frames failed open (+%v), slowest %s, healthy %s after it thawed; limits applied again both times",
		cut, cutFrames, cutOpen, cutSlowest.Round(time.Millisecond), cutRecovery.Round(time.Millisecond),
		frozenFrames, frozenOpen, frozenSlowest.Round(time.Millisecond), frozenRecovery.Round(time.Millisecond))
}

// expectAnswer turns an answer into an error unless its status is the one wanted.
func expectAnswer(e envelope, err error) func(status int) error {
	return func(status int) error {
		if err != nil {
			return err
		}
		if e.status() != status {
			return fmt.Errorf("answered %d %q, want %d", e.status(), e.msg(), status)
		}
		return nil
	}
}
