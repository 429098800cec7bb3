package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"

	"switchboard/store"
)

// maxPerWorker bounds each closed-loop worker's requests in one phase, whatever the duration.
const maxPerWorker = 1_000_000

// rpcAnswer is what the tool reads from a response frame.
type rpcAnswer struct {
	status int64
	rows   int
	msg    string
}

// rpcClient is one WebSocket client of the closed loop: one request in flight at a time.
type rpcClient struct {
	baseHandler
	conn *gws.Conn
	resp chan rpcAnswer
}

func (c *rpcClient) OnMessage(_ *gws.Conn, m *gws.Message) {
	b := m.Bytes()
	status, ok := intField(b, statusKey)
	if !ok { // a broadcast, not an answer
		_ = m.Close()
		return
	}
	a := rpcAnswer{status: status, rows: bytes.Count(b, []byte(`"name":`))}
	if i := bytes.Index(b, []byte(`"msg":`)); status != 0 && i >= 0 {
		a.msg = string(b[i+len(`"msg":`):])
	}
	_ = m.Close()
	select {
	case c.resp <- a:
	default:
	}
}

// call sends one request frame and waits for its answer.
func (c *rpcClient) call(ctx context.Context, frame []byte) (rpcAnswer, error) {
	if err := c.conn.WriteMessage(gws.OpcodeText, frame); err != nil {
		return rpcAnswer{}, err
	}
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case a := <-c.resp:
		if a.status != 0 {
			return a, fmt.Errorf("status_code %d %s", a.status, a.msg)
		}
		return a, nil
	case <-t.C:
		return rpcAnswer{}, errors.New("no answer within 10s")
	case <-ctx.Done():
		return rpcAnswer{}, ctx.Err()
	}
}

func reqID(worker, k int) string { return fmt.Sprintf("%08x-0000-4000-8000-%012x", worker, k) }

func frame(pkgID int, id, data string) []byte {
	return []byte(`{"pkg_id":` + strconv.Itoa(pkgID) + `,"req_id":"` + id + `","data":` + data + `}`)
}

// phase is one closed-loop measurement: n workers calling fn until the duration is over.
type phase struct {
	target, mode string
	fn           func(ctx context.Context, worker, k int) error
}

func runPhase(ctx context.Context, o *options, rep *reporter, ph phase) *result {
	lats := make([][]time.Duration, o.n)
	var ok, failed atomic.Int64
	var errs errorCounts
	rep.progress("rpc: %s %s, %d clients for %s", ph.target, ph.mode, o.n, o.duration)
	pid := o.serverPID
	if ph.target == "direct" {
		pid = 0
	}
	cpu := startCPU(pid)
	start := time.Now()
	end := start.Add(o.duration)
	var wg sync.WaitGroup
	for w := range o.n {
		wg.Go(func() {
			for k := 0; k < maxPerWorker && ctx.Err() == nil && time.Now().Before(end); k++ {
				t := time.Now()
				if err := ph.fn(ctx, w, k); err != nil {
					failed.Add(1)
					errs.add(classify(err))
					if failed.Load() > 1000 && ok.Load() == 0 {
						return // nothing works: stop hammering
					}
					continue
				}
				lats[w] = append(lats[w], time.Since(t))
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	wall := time.Since(start)
	cli, srv, oth := cpu.stop()
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	res := &result{Scenario: "rpc", Target: ph.target, Mode: ph.mode, N: o.n, OK: ok.Load(), Failed: failed.Load(),
		Seconds: wall.Seconds(), PerSecond: float64(ok.Load()) / wall.Seconds(), Unit: "req",
		ClientCPU: cli, ServerCPU: srv, OtherCPU: oth, Errors: errs.snapshot()}
	res.setLatency(summarize(durationsToMicros(all)))
	res.P90ms = 0
	res.Limit = limitGuess(res.ServerCPU, res.ClientCPU, res.OtherCPU, false)
	if o.directDSN != "" {
		res.note("other processes include PostgreSQL")
	}
	rep.progress("rpc: %s %s: %.0f req/s, p50 %.2f ms, p99 %.2f ms, %d failed", ph.target, ph.mode, res.PerSecond, res.P50ms, res.P99ms, res.Failed)
	return res
}

// runRPC measures request/response over WebSocket and HTTP, and the Bun query directly.
func runRPC(ctx context.Context, o *options, rep *reporter) error {
	m, err := newMinter(o)
	if err != nil {
		return err
	}
	toks, err := m.userTokens(ctx, "bench-rpc", o.n, 1, "get-authors", "create-author")
	if err != nil {
		return err
	}
	clients := make([]*rpcClient, o.n)
	for i := range clients {
		clients[i] = &rpcClient{resp: make(chan rpcAnswer, 1)}
	}
	d := &dialer{url: o.url + "/web", readBuf: o.readBuf}
	p := openPool(ctx, rep, d, o.n, o.c, o.duration+o.timeout,
		func(i int) gws.Event { return clients[i] }, func(i int) http.Header { return bearer(toks[i]) })
	defer p.close()
	if p.failed > 0 {
		return fmt.Errorf("rpc: %d of %d clients could not connect: %s", p.failed, o.n, topErrors(p.errs.snapshot(), 3))
	}
	for i, c := range p.conns {
		clients[i].conn = c
	}
	rows, err := seedAuthors(ctx, o, clients[0])
	if err != nil {
		return fmt.Errorf("rpc: seeding authors: %w", err)
	}
	rep.progress("rpc: GET_AUTHORS answers %d rows", rows)

	httpc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil,
		MaxIdleConnsPerHost: o.n, MaxConnsPerHost: o.n, DisableCompression: true}}
	doHTTP := func(ctx context.Context, method, path, token string, body []byte) error {
		req, err := http.NewRequestWithContext(ctx, method, o.http+path, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := httpc.Do(req)
		if err != nil {
			return err
		}
		msg, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("HTTP %d %.100s", resp.StatusCode, msg)
		}
		return nil
	}
	run := fmt.Sprintf("%x", time.Now().UnixNano()&0xffffffffff)
	getFrame := func(w, k int) []byte { return frame(1, reqID(w, k), "{}") }

	var results []*result
	wsGet := runPhase(ctx, o, rep, phase{"switchboard", "ws GET_AUTHORS", func(ctx context.Context, w, k int) error {
		_, err := clients[w].call(ctx, getFrame(w, k))
		return err
	}})
	httpGet := runPhase(ctx, o, rep, phase{"switchboard", "http GET /authors", func(ctx context.Context, w, k int) error {
		return doHTTP(ctx, http.MethodGet, "/authors", toks[w], nil)
	}})
	results = append(results, wsGet, httpGet)
	var db *store.DB
	if o.directDSN != "" {
		if db, err = store.Open(ctx, o.directDSN, 10*time.Second); err != nil {
			return fmt.Errorf("rpc: --direct-dsn: %w", err)
		}
		defer db.Close()
		authors := store.NewAuthors(db)
		direct := runPhase(ctx, o, rep, phase{"direct", "bun List (same query)", func(ctx context.Context, w, k int) error {
			_, err := authors.List(ctx, store.AuthorFilter{})
			return err
		}})
		for _, r := range []*result{wsGet, httpGet} {
			if direct.PerSecond > 0 {
				r.Ratio, r.RatioOf = r.PerSecond/direct.PerSecond, " direct"
			}
		}
		wsGet.goal("≥ 70% of direct Bun", wsGet.Ratio >= 0.7 && wsGet.Failed == 0)
		results = append(results, direct)
	}
	for _, r := range []*result{wsGet, httpGet} {
		r.Rows = rows
	}
	wsCreate := runPhase(ctx, o, rep, phase{"switchboard", "ws CREATE_AUTHOR", func(ctx context.Context, w, k int) error {
		name := fmt.Sprintf("bench-%s-w%d-%d", run, w, k)
		_, err := clients[w].call(ctx, frame(3, reqID(w, k), `{"name":"`+name+`"}`))
		return err
	}})
	httpCreate := runPhase(ctx, o, rep, phase{"switchboard", "http POST /authors", func(ctx context.Context, w, k int) error {
		name := fmt.Sprintf("bench-%s-h%d-%d", run, w, k)
		return doHTTP(ctx, http.MethodPost, "/authors", toks[w], []byte(`{"name":"`+name+`"}`))
	}})
	results = append(results, wsCreate, httpCreate)
	if db != nil {
		// Keep the table as it was so the next run's GET_AUTHORS reads the same rows.
		res, err := db.Bun.NewDelete().Model((*store.Author)(nil)).Where("name LIKE ?", "bench-"+run+"-%").Exec(ctx)
		if err != nil {
			rep.progress("rpc: could not delete the authors this run created: %v", err)
		} else if n, err := res.RowsAffected(); err == nil {
			rep.progress("rpc: deleted the %d authors this run created", n)
		}
	} else {
		rep.progress("rpc: the authors this run created stay in the table (no --direct-dsn to delete them)")
	}
	for _, r := range results {
		if rateLimited(r.Errors) {
			r.note("rate limited: start the server with SWITCHBOARD_WS_MESSAGE_RATE_LIMIT and SWITCHBOARD_RATE_LIMIT_PER_MINUTE raised")
		}
		rep.emit(r)
	}
	return nil
}

// seedAuthors makes sure the table has o.seedRows rows and returns how many GET_AUTHORS answers.
func seedAuthors(ctx context.Context, o *options, c *rpcClient) (int, error) {
	a, err := c.call(ctx, frame(1, reqID(0xffff, 0), "{}"))
	if err != nil {
		return 0, err
	}
	for i := 0; a.rows+i < o.seedRows; i++ {
		// An existing equal name answers status 2: fine, the row is there.
		if _, err := c.call(ctx, frame(3, reqID(0xffff, i+1), fmt.Sprintf(`{"name":"bench-seed-%03d"}`, a.rows+i))); err != nil && !bytes.Contains([]byte(err.Error()), []byte("status_code 2")) {
			return 0, err
		}
	}
	if a, err = c.call(ctx, frame(1, reqID(0xffff, 1000), "{}")); err != nil {
		return 0, err
	}
	if a.rows > 1000 {
		return a.rows, fmt.Errorf("the authors table has %d rows: run rpc against a fresh database (GET_AUTHORS lists them all)", a.rows)
	}
	return a.rows, nil
}

func rateLimited(errs map[string]int) bool {
	for k := range errs {
		if strings.Contains(k, "Rate limit") || strings.Contains(k, "HTTP 429") {
			return true
		}
	}
	return false
}
