package main

// The request path end to end (docs/protocol.md §1.2, §8): answers in arrival order
// per connection, the control lane answering while every database handler is stuck behind a
// locked table, deadlines counted from admission, and the per-connection in-flight cap. The
// stalls are real: a second connection to the test's own PostgreSQL database holds
// LOCK TABLE authors IN ACCESS EXCLUSIVE MODE in an open transaction.

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun/driver/pgdriver"

	"switchboard/config"
	"switchboard/store/storetest"
	sbclient "switchboard/transport/client"
)

// rqWait bounds every wait of these tests that only runs out when something hangs.
const rqWait = 30 * time.Second

// rqFrame is one request frame and its req_id.
type rqFrame struct {
	id, text string
}

func rqRequest(pkgID int, data string) rqFrame {
	id := uuid.NewString()
	return rqFrame{id: id, text: fmt.Sprintf(`{"pkg_id":%d,"req_id":%q,"data":%s}`, pkgID, id, data)}
}

// rqBadFrame is a frame the read side answers itself (status 2, req_id echoed): pkg_id is not
// an integer.
func rqBadFrame() rqFrame {
	id := uuid.NewString()
	return rqFrame{id: id, text: fmt.Sprintf(`{"pkg_id":"one","req_id":%q}`, id)}
}

// rqSend writes every frame at once, without waiting for answers. The ordering, deadline and
// in-flight tests pipeline hand-made frames (bad ones among them) on a raw socket and read the
// answers in the order they leave the server, which the Go client would hide.
func rqSend(c *wsClient, frames []rqFrame) error {
	for _, f := range frames {
		if err := c.conn.WriteString(f.text); err != nil {
			return err
		}
	}
	return nil
}

// rqAnswers reads frames until n answers (frames with a status_code) arrived; broadcasts are
// returned apart, and all holds every frame in arrival order.
func rqAnswers(c *wsClient, n int, d time.Duration) (answers, all []envelope, err error) {
	deadline := time.After(d)
	for len(answers) < n {
		select {
		case b := <-c.msgs:
			var e envelope
			if err := json.Unmarshal(b, &e); err != nil {
				return answers, all, fmt.Errorf("frame is not an envelope: %v: %s", err, b)
			}
			all = append(all, e)
			if e.StatusCode != nil {
				answers = append(answers, e)
			}
		case <-deadline:
			return answers, all, fmt.Errorf("%d of %d answers within %s", len(answers), n, d)
		}
	}
	return answers, all, nil
}

// rqInOrder checks that answers echo frames' req_ids in the order the frames were sent.
func rqInOrder(frames []rqFrame, answers []envelope) error {
	if len(answers) != len(frames) {
		return fmt.Errorf("%d answers for %d requests", len(answers), len(frames))
	}
	for i, f := range frames {
		if answers[i].ReqID != f.id {
			return fmt.Errorf("answer %d is for %s, want %s (frame %s)", i, answers[i].ReqID, f.id, f.text)
		}
	}
	return nil
}

// TestAnswersInArrivalOrder: several connections each pipeline CREATE/GET pairs (with frames the
// read side answers itself in between) over real sockets. Each connection's answers come in the
// order of its frames, and each GET sees the row its CREATE made just before.
func TestAnswersInArrivalOrder(t *testing.T) {
	const conns, pairs = 4, 30
	forEachBackend(t, func(c *config.Config) {
		c.WSMessageRateLimit = 1_000_000
		c.WSMaxConnsPerUser = conns
	}, func(t *testing.T, s *testServer) {
		tok := s.token(t, "rq-order", allAuthorRoles...)
		clients := make([]*wsClient, conns)
		for i := range clients {
			clients[i] = s.dial(t, tok)
		}
		var wg sync.WaitGroup
		errs := make([]error, conns)
		for i, c := range clients {
			wg.Go(func() { errs[i] = rqOrderRun(c, fmt.Sprintf("rq-order-%d", i), pairs) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("connection %d: %v", i, err)
			}
		}
	})
}

// rqOrderRun pipelines pairs CREATE/GET pairs (a bad frame after every fifth pair) on c and checks
// the answers.
func rqOrderRun(c *wsClient, prefix string, pairs int) error {
	var frames []rqFrame
	for i := range pairs {
		name := fmt.Sprintf("%s-%03d", prefix, i)
		frames = append(frames, rqRequest(3, fmt.Sprintf(`{"name":%q}`, name)),
			rqRequest(1, fmt.Sprintf(`{"filters":{"name":%q}}`, name)))
		if i%5 == 4 {
			frames = append(frames, rqBadFrame())
		}
	}
	if err := rqSend(c, frames); err != nil {
		return err
	}
	answers, _, err := rqAnswers(c, len(frames), rqWait)
	if err != nil {
		return err
	}
	if err := rqInOrder(frames, answers); err != nil {
		return err
	}
	for i := 0; i < len(answers); i++ {
		if answers[i].PkgID != 3 {
			if answers[i].status() != 2 {
				return fmt.Errorf("bad frame answered %d %s", answers[i].status(), answers[i].msg())
			}
			continue
		}
		created, listed := answers[i], answers[i+1]
		i++
		if created.status() != 0 || listed.status() != 0 {
			return fmt.Errorf("CREATE %d %s, GET %d %s", created.status(), created.msg(), listed.status(), listed.msg())
		}
		var row authorRow
		var rows []authorRow
		if err := json.Unmarshal(created.Data, &row); err != nil {
			return err
		}
		if err := json.Unmarshal(listed.Data, &rows); err != nil {
			return err
		}
		if len(rows) != 1 || rows[0] != row {
			return fmt.Errorf("GET right after CREATE %+v answered %s: it does not see its own write", row, listed.Data)
		}
	}
	return nil
}

// TestSubscribeAnswerKeepsItsPlace: SUBSCRIBE's answer is queued by the hub after the topic's
// history loads; an answer the read side makes at once for the frame right after it still comes
// after it, and so do the recovered messages.
func TestSubscribeAnswerKeepsItsPlace(t *testing.T) {
	s := startServer(t, func(c *config.Config) { c.WSMessageRateLimit = 1_000_000 })
	tok := s.token(t, "rq-sub", allAuthorRoles...)
	c := s.dial(t, tok)
	for i := range 3 {
		if e := c.call(3, map[string]any{"name": fmt.Sprintf("rq-sub-%d", i)}); e.status() != 0 {
			t.Fatalf("create: %d %s", e.status(), e.msg())
		}
	}
	// The epoch of the authors stream: a since is only recovered with the stream it belongs to.
	// The creates' events reach the topic through the outbox relay, after the answers: wait
	// until the stream holds all three.
	var stream struct {
		Seq   uint64 `json:"seq"`
		Epoch string `json:"epoch"`
	}
	eventually(t, rqWait, "the three author events in the authors stream", func() bool {
		e := c.call(10, map[string]any{"topic": "authors"})
		decodeData(t, e, &stream)
		if e.status() != 0 {
			t.Fatalf("SUBSCRIBE authors: %d %s", e.status(), e.msg())
		}
		// Live events before the UNSUBSCRIBE answer are skipped by call.
		if u := c.call(11, map[string]any{"topic": "authors"}); u.status() != 0 {
			t.Fatalf("UNSUBSCRIBE authors: %d %s", u.status(), u.msg())
		}
		return stream.Seq >= 3 && stream.Epoch != ""
	})
	for round := range 20 {
		frames := []rqFrame{
			rqRequest(10, fmt.Sprintf(`{"topic":"dashboards.rq%d"}`, round)),
			rqBadFrame(),
			rqRequest(10, fmt.Sprintf(`{"topic":"authors","since":0,"epoch":%q}`, stream.Epoch)),
			rqBadFrame(),
			rqRequest(11, `{"topic":"authors"}`),
			rqRequest(12, fmt.Sprintf(`{"token":%q}`, tok)),
		}
		if err := rqSend(c, frames); err != nil {
			t.Fatal(err)
		}
		answers, all, err := rqAnswers(c, len(frames), rqWait)
		if err != nil {
			t.Fatal(err)
		}
		if err := rqInOrder(frames, answers); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		// The three kept events come right after the answer of SUBSCRIBE authors since 0.
		for i, e := range all {
			if e.ReqID != frames[2].id {
				continue
			}
			if len(all) < i+4 {
				t.Fatalf("round %d: %d frames after SUBSCRIBE authors", round, len(all)-i-1)
			}
			for k, b := range all[i+1 : i+4] {
				if b.StatusCode != nil || b.Topic != "authors" || b.Seq != uint64(k+1) {
					t.Fatalf("round %d: frame %d after SUBSCRIBE authors is %+v, want the kept event seq %d", round, k+1, b, k+1)
				}
			}
		}
	}
}

// rqLock holds LOCK TABLE authors IN ACCESS EXCLUSIVE MODE on its own connection to a database,
// inside an open transaction, until release: every query on authors waits behind it.
type rqLock struct {
	db   *sql.DB
	tx   *sql.Tx
	once sync.Once
}

func rqOpen(t testing.TB, dbURL string) *sql.DB {
	t.Helper()
	db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(dbURL)))
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func rqLockAuthors(t testing.TB, db *sql.DB) *rqLock {
	t.Helper()
	// The transaction's context must outlive this call: database/sql rolls a transaction back
	// when its context ends.
	tx, err := db.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), rqWait)
	defer cancel()
	if _, err := tx.ExecContext(ctx, "LOCK TABLE authors IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	l := &rqLock{db: db, tx: tx}
	t.Cleanup(l.release)
	return l
}

func (l *rqLock) release() { l.once.Do(func() { _ = l.tx.Rollback() }) }

// rqCount runs a count(*) query.
func rqCount(t testing.TB, db *sql.DB, query string, args ...any) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), rqWait)
	defer cancel()
	var n int
	if err := db.QueryRowContext(ctx, query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// rqWaitingOnLock counts the database's sessions waiting for a lock.
func rqWaitingOnLock(t testing.TB, db *sql.DB) int {
	return rqCount(t, db, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`)
}

// rqQuiet waits until no other session of the database is doing anything: statements that
// waited behind the lock have then either committed or been rolled back.
func rqQuiet(t testing.TB, db *sql.DB) {
	t.Helper()
	eventually(t, rqWait, "the database's other sessions to go idle", func() bool {
		return rqCount(t, db, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND state IS DISTINCT FROM 'idle'`) == 0
	})
}

// rqWriters dials n connections (users of perUser connections each) that each send one
// CREATE_AUTHOR name-<i>; their answers arrive on the returned channel.
type rqWriter struct {
	i       int
	answer  envelope
	err     error
	arrived time.Time
}

func rqStartWriters(t *testing.T, s *testServer, n int, name string) (<-chan rqWriter, []*testClient) {
	t.Helper()
	clients := make([]*testClient, n)
	for i := range clients {
		clients[i] = s.connect(t, s.token(t, fmt.Sprintf("%s-user-%d", name, i/4), "create-author"))
	}
	out := make(chan rqWriter, n)
	for i, c := range clients {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), rqWait)
			defer cancel()
			answer, err := c.tryCall(ctx, 3, map[string]any{"name": fmt.Sprintf("%s-%d", name, i)})
			out <- rqWriter{i: i, answer: answer, err: err, arrived: time.Now()}
		}()
	}
	return out, clients
}

// TestControlAnsweredWhileDatabaseStalled: 80 writers are stuck behind a locked authors table
// (64 in the database lane's actors, 16 waiting for one). Another user's SUBSCRIBE, UNSUBSCRIBE
// and REFRESH_TOKEN are answered while they are, before any writer's deadline runs out; then every
// writer is answered 1 at its deadline, and none of their rows is committed after the lock goes.
func TestControlAnsweredWhileDatabaseStalled(t *testing.T) {
	const writers, timeout = 80, 4 * time.Second
	dbURL := storetest.PostgresURL(t)
	s := startServer(t, func(c *config.Config) {
		c.DatabaseURL = dbURL
		c.HandlerTimeout = timeout
		c.WSMessageRateLimit = 1_000_000
		c.WSMaxConnsPerUser = 10
	})
	db := rqOpen(t, dbURL)
	other := s.connect(t, s.token(t, "rq-control", "get-authors"))
	reader := s.connect(t, s.token(t, "rq-reader", "get-authors"))

	lock := rqLockAuthors(t, db)
	began := time.Now()
	answers, _ := rqStartWriters(t, s, writers, "rq-stall")
	eventually(t, rqWait, "writers stuck behind the lock, 16 waiting for a database handler", func() bool {
		return rqWaitingOnLock(t, db) > 0 && s.scrapeMetric(t, `handler_requests_waiting{lane="database"}`) == "16"
	})
	stuckAfter := time.Since(began)

	// A read of another user waits as well (database lane), bounded by its own deadline.
	type rqAnswer struct {
		e   envelope
		err error
	}
	getDone := make(chan rqAnswer, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), rqWait)
		defer cancel()
		e, err := reader.tryCall(ctx, 1, map[string]any{})
		getDone <- rqAnswer{e, err}
	}()

	var sub *sbclient.Subscription
	control := []struct {
		name string
		run  func() error
	}{
		{"SUBSCRIBE dashboards", func() (err error) { sub, err = other.subscribe("dashboards.rq-stall"); return err }},
		{"UNSUBSCRIBE dashboards", func() error { return sub.Unsubscribe(t.Context()) }},
		{"REFRESH_TOKEN", func() error {
			e := other.call(12, map[string]any{"token": s.token(t, "rq-control", "get-authors")})
			if e.status() != 0 {
				return fmt.Errorf("status %d %s", e.status(), e.msg())
			}
			return nil
		}},
		{"SUBSCRIBE authors", func() (err error) { sub, err = other.subscribe("authors"); return err }},
		{"UNSUBSCRIBE authors", func() error { return sub.Unsubscribe(t.Context()) }},
	}
	for _, f := range control {
		sent := time.Now()
		if err := f.run(); err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		// The behavioural bound: answered while every writer is still stuck.
		select {
		case w := <-answers:
			t.Fatalf("writer %d answered (%d %s) before the control request %s was", w.i, w.answer.status(), w.answer.msg(), f.name)
		default:
		}
		t.Logf("%s answered in %s while the writers were stuck", f.name, time.Since(sent).Round(time.Microsecond))
	}

	// Every writer answers 1 once its deadline passes.
	for range writers {
		var w rqWriter
		select {
		case w = <-answers:
		case <-time.After(rqWait):
			t.Fatal("a writer got no answer")
		}
		if w.err != nil {
			t.Fatalf("writer %d: %v", w.i, w.err)
		}
		if w.answer.status() != 1 || (w.answer.msg() != "Database error occurred" && w.answer.msg() != "Request timed out") {
			t.Fatalf("writer %d answered %d %q, want 1", w.i, w.answer.status(), w.answer.msg())
		}
		if took := w.arrived.Sub(began); took < timeout-time.Second {
			t.Fatalf("writer %d answered after %s, before its deadline", w.i, took)
		}
	}
	if got := <-getDone; got.err != nil || got.e.status() != 1 {
		t.Fatalf("the stuck GET: %+v %v", got.e, got.err)
	}
	t.Logf("writers stuck after %s; all answered 1 by %s", stuckAfter.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))

	// None of them commits once the lock goes: they were told they failed.
	lock.release()
	rqQuiet(t, db)
	if n := rqCount(t, db, `SELECT count(*) FROM authors WHERE name LIKE 'rq-stall-%'`); n != 0 {
		t.Fatalf("%d writers that were answered 1 committed after the lock was released", n)
	}
	// The server works again.
	w := s.connect(t, s.token(t, "rq-after", "create-author"))
	if e := w.call(3, map[string]any{"name": "rq-after"}); e.status() != 0 {
		t.Fatalf("create after the stall: %d %s", e.status(), e.msg())
	}
}

// TestDeadlineCountsFromAdmission: a request's deadline starts when the server takes it in, not
// when a handler picks it up. With one database handler and the authors table locked:
//   - six CREATEs pipelined on one connection each get what is left of their own deadline: the
//     first fails at its deadline, and those whose deadline has passed when their turn comes are
//     answered 1 "Request timed out" without running;
//   - an HTTP POST /authors queued for the handler meanwhile is answered by its deadline (500 or
//     503), not 504 after the façade gave up while it still ran;
//   - none of them commits after the lock is released.
func TestDeadlineCountsFromAdmission(t *testing.T) {
	const timeout, burst = 2 * time.Second, 6
	dbURL := storetest.PostgresURL(t)
	s := startServer(t, func(c *config.Config) {
		c.DatabaseURL = dbURL
		c.HandlerTimeout = timeout
		c.HandlerPoolSize = 1
		c.WSMessageRateLimit = 1_000_000
		c.RateLimitPerMinute = 1_000_000
	})
	db := rqOpen(t, dbURL)
	tok := s.token(t, "rq-deadline", "create-author", "get-authors")
	c := s.dial(t, tok)

	lock := rqLockAuthors(t, db)
	frames := make([]rqFrame, burst)
	for i := range frames {
		frames[i] = rqRequest(3, fmt.Sprintf(`{"name":"rq-deadline-ws-%d"}`, i))
	}
	began := time.Now()
	if err := rqSend(c, frames); err != nil {
		t.Fatal(err)
	}
	eventually(t, rqWait, "the first CREATE waiting on the lock", func() bool { return rqWaitingOnLock(t, db) > 0 })

	type httpResult struct {
		status int
		body   string
		took   time.Duration
	}
	httpDone := make(chan httpResult, 1)
	go func() {
		began := time.Now()
		req, _ := http.NewRequest(http.MethodPost, s.base+"/authors", strings.NewReader(`{"name":"rq-deadline-http"}`))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			httpDone <- httpResult{status: -1, body: err.Error()}
			return
		}
		var b strings.Builder
		_, _ = fmt.Fprint(&b, resp.Header.Get("Retry-After"), " ")
		buf := make([]byte, 512)
		n, _ := resp.Body.Read(buf)
		b.Write(buf[:n])
		_ = resp.Body.Close()
		httpDone <- httpResult{status: resp.StatusCode, body: b.String(), took: time.Since(began)}
	}()

	answers, _, err := rqAnswers(c, burst, rqWait)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(began)
	if err := rqInOrder(frames, answers); err != nil {
		t.Fatal(err)
	}
	expectStatus(t, answers[0], 1, "Database error occurred")
	expired := 0
	for _, e := range answers[1:] {
		if e.status() != 1 || (e.msg() != "Request timed out" && e.msg() != "Database error occurred") {
			t.Fatalf("a CREATE behind the stuck one answered %d %q, want 1", e.status(), e.msg())
		}
		if e.msg() == "Request timed out" {
			expired++
		}
	}
	if expired == 0 {
		t.Fatal("no CREATE was refused for its spent deadline: each ran with a fresh timeout")
	}
	if took > timeout+time.Second {
		t.Fatalf("the burst took %s to answer: the deadlines did not count from admission (%s)", took, timeout)
	}
	t.Logf("burst of %d answered in %s, %d of them refused unrun", burst, took.Round(time.Millisecond), expired)

	var h httpResult
	select {
	case h = <-httpDone:
	case <-time.After(rqWait):
		t.Fatal("POST /authors got no answer")
	}
	if h.status != http.StatusInternalServerError && h.status != http.StatusServiceUnavailable {
		t.Fatalf("POST /authors answered %d %s after %s, want 500 or 503 by its deadline", h.status, h.body, h.took)
	}
	if h.took > timeout+time.Second/2 {
		t.Fatalf("POST /authors answered after %s, past its deadline (%s)", h.took, timeout)
	}
	t.Logf("POST /authors: %d %s after %s", h.status, h.body, h.took.Round(time.Millisecond))

	lock.release()
	rqQuiet(t, db)
	if n := rqCount(t, db, `SELECT count(*) FROM authors WHERE name LIKE 'rq-deadline-%'`); n != 0 {
		t.Fatalf("%d of the requests answered with an error committed after the lock was released", n)
	}
}

// TestInFlightCapHoldsFramesInTheSocket: with SWITCHBOARD_WS_MAX_IN_FLIGHT 4 and the authors table
// locked, a connection pipelines 12 CREATEs. Only the first 4 are taken in (read off the socket,
// their deadlines running); the rest stay in the socket until answers go out. So when the first
// four have failed at their deadline and the lock is gone, the other eight — admitted only then,
// with time to spare — all commit. Without the cap all twelve would have been admitted at once and
// run out of time together.
func TestInFlightCapHoldsFramesInTheSocket(t *testing.T) {
	const inFlight, total, timeout = 4, 12, 3 * time.Second
	dbURL := storetest.PostgresURL(t)
	s := startServer(t, func(c *config.Config) {
		c.DatabaseURL = dbURL
		c.HandlerTimeout = timeout
		c.WSMaxInFlight = inFlight
		c.WSMessageRateLimit = 1_000_000
	})
	db := rqOpen(t, dbURL)
	c := s.dial(t, s.token(t, "rq-cap", "create-author"))
	lock := rqLockAuthors(t, db)
	frames := make([]rqFrame, total)
	for i := range frames {
		frames[i] = rqRequest(3, fmt.Sprintf(`{"name":"rq-cap-%02d"}`, i))
	}
	if err := rqSend(c, frames); err != nil {
		t.Fatal(err)
	}
	first, _, err := rqAnswers(c, inFlight, rqWait)
	if err != nil {
		t.Fatal(err)
	}
	lock.release()
	rest, _, err := rqAnswers(c, total-inFlight, rqWait)
	if err != nil {
		t.Fatal(err)
	}
	if err := rqInOrder(frames, append(first, rest...)); err != nil {
		t.Fatal(err)
	}
	for i, e := range first {
		if e.status() != 1 {
			t.Fatalf("request %d (taken in while the table was locked) answered %d %s, want 1", i, e.status(), e.msg())
		}
	}
	for i, e := range rest {
		if e.status() != 0 {
			t.Fatalf("request %d (held in the socket by the cap) answered %d %s, want 0", inFlight+i, e.status(), e.msg())
		}
	}
	rqQuiet(t, db)
	if n := rqCount(t, db, `SELECT count(*) FROM authors WHERE name LIKE 'rq-cap-%'`); n != total-inFlight {
		t.Fatalf("%d rows, want the %d requests answered 0", n, total-inFlight)
	}
}
