package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"
)

// runConnect opens N authenticated connections at concurrency C and reports the handshake rate
// and latency, then the server's RSS per idle connection.
func runConnect(ctx context.Context, o *options, rep *reporter) error {
	if uint64(o.n)+64 > o.nofile {
		rep.progress("warning: %d connections need more open files than the limit %d allows", o.n, o.nofile)
	}
	m, err := newMinter(o)
	if err != nil {
		return err
	}
	rep.progress("minting tokens for %d users (%d connections per user)", (o.n+o.perUser-1)/o.perUser, o.perUser)
	toks, err := m.userTokens(ctx, "bench-conn", o.n, o.perUser)
	if err != nil {
		return err
	}
	rssBefore, rssSrc, err := serverRSS(ctx, o)
	if err != nil {
		rep.progress("server RSS unavailable: %v", err)
	}
	memBefore, _ := scrape(ctx, o, memNames...)
	cpu := startCPU(o.serverPID)

	d := &dialer{url: o.url + "/web", readBuf: o.readBuf}
	var closed atomic.Int64
	var codes errorCounts
	h := &baseHandler{closed: &closed, codes: &codes}
	rep.progress("opening %d connections to %s, %d at a time", o.n, d.url, o.c)
	p := openPool(ctx, rep, d, o.n, o.c, o.duration,
		func(int) gws.Event { return h },
		func(i int) http.Header { return bearer(toks[i]) })
	defer p.close()
	wall := p.took
	cli, srv, oth := cpu.stop()
	res := &result{
		Scenario: "connect", Target: "switchboard", Mode: fmt.Sprintf("c=%d", o.c),
		N: o.n, C: o.c, NoFile: o.nofile, OK: p.ok, Failed: p.failed, Seconds: wall.Seconds(),
		PerSecond: float64(p.ok) / wall.Seconds(), Unit: "conns", Errors: p.errs.snapshot(),
		ClientCPU: cli, ServerCPU: srv, OtherCPU: oth,
	}
	res.setLatency(summarize(durationsToMicros(p.handshakes())))
	res.goal("≥ 6000 conns/s", res.PerSecond >= 6000 && p.failed == 0)
	res.Limit = limitGuess(res.ServerCPU, res.ClientCPU, res.OtherCPU, false)
	rep.progress("%d connections open in %s (%.0f/s), %d failed; idle for %s before reading RSS",
		p.ok, wall.Round(time.Millisecond), res.PerSecond, p.failed, o.settle)

	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(o.settle):
	}
	res.ClosedLater = closed.Load()
	if memAfter, err := scrape(ctx, o, memNames...); err == nil {
		if s := perConn(memBefore, memAfter, p.ok-res.ClosedLater); s != "" {
			res.note("%s", s)
		}
	}
	if res.ClosedLater > 0 {
		res.note("%d connections were closed by the server after the upgrade (%s; a per-user limit? raise SWITCHBOARD_WS_MAX_CONNECTIONS_PER_USER or lower --per-user)",
			res.ClosedLater, topErrors(codes.snapshot(), 3))
	}
	if rssBefore > 0 {
		if rssAfter, _, err := serverRSS(ctx, o); err == nil {
			live := p.ok - res.ClosedLater
			res.RSSBeforeMiB = float64(rssBefore) / (1 << 20)
			res.RSSAfterMiB = float64(rssAfter) / (1 << 20)
			res.RSSSource = rssSrc
			if live > 0 {
				res.RSSPerConnKiB = float64(rssAfter-rssBefore) / float64(live) / 1024
			}
			ok := res.RSSPerConnKiB <= 12
			res.Goal += fmt.Sprintf("; ≤ 12 KiB RSS/conn (%.1f)", res.RSSPerConnKiB)
			met := *res.GoalMet && ok
			res.GoalMet = &met
		}
	}
	rep.emit(res)
	return nil
}

// memNames are the Go runtime figures that explain where a connection's memory goes.
var memNames = []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes"}

// scrape fetches /metrics and returns the values of names that it has.
func scrape(ctx context.Context, o *options, names ...string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.http+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, n := range names {
		if v, ok := metricValue(body, n); ok {
			out[n] = v
		}
	}
	return out, nil
}

// perConn describes the growth of the runtime figures per live connection.
func perConn(before, after map[string]float64, live int64) string {
	if before == nil || after == nil || live <= 0 {
		return ""
	}
	d := func(n string) float64 { return (after[n] - before[n]) / float64(live) }
	return fmt.Sprintf("per connection: %.2f goroutines, heap in use %.1f KiB, stacks %.1f KiB (from /metrics)",
		d("go_goroutines"), d("go_memstats_heap_inuse_bytes")/1024, d("go_memstats_stack_inuse_bytes")/1024)
}

// serverRSS reads the server's resident set: /proc/<pid>/status with --server-pid, else
// process_resident_memory_bytes from /metrics.
func serverRSS(ctx context.Context, o *options) (int64, string, error) {
	if o.serverPID > 0 {
		v, err := procRSS(o.serverPID)
		return v, "/proc VmRSS", err
	}
	const name = "process_resident_memory_bytes"
	m, err := scrape(ctx, o, name)
	if err != nil {
		return 0, "", err
	}
	v, ok := m[name]
	if !ok {
		return 0, "", fmt.Errorf("no %s in /metrics", name)
	}
	return int64(v), "/metrics " + name, nil
}

// limitGuess names the likely bottleneck from CPU use (percent of one core; each side is
// pinned to one core in the documented runs).
func limitGuess(server, client, other float64, producerBound bool) string {
	switch {
	case server+client+other >= 180 && other >= 30:
		return fmt.Sprintf("CPU shared with other processes (%.0f%% of a core went to them)", other)
	case server >= 90 && client >= 90:
		return "server and client CPU (both cores busy)"
	case server >= 90:
		return "server CPU"
	case client >= 90:
		return "client CPU (the load tool)"
	case producerBound:
		return "the producer (HTTP POST round trips)"
	case server > 0:
		return "neither CPU saturated: latency-bound (round trips, scheduling)"
	}
	return ""
}
