package main

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"switchboard/config"
	"switchboard/store/storetest"
)

// BenchmarkControlDuringDatabaseStall measures the round trip of requests that need no database
// — SUBSCRIBE (no since), UNSUBSCRIBE, REFRESH_TOKEN, in turn, one at a time on one connection —
// while 80 writers on other connections are stuck behind LOCK TABLE authors (each writer sends
// its next CREATE as soon as the last one failed, so the database lane stays full). It reports
// the p50 and p99 of those round trips (docs/performance.md). Run it alone:
//
//	go test -run '^$' -bench ControlDuringDatabaseStall -benchtime 300x ./cmd/switchboard/
func BenchmarkControlDuringDatabaseStall(b *testing.B) {
	const writers = 80
	dbURL := storetest.PostgresURL(b)
	s := startServer(b, func(c *config.Config) {
		c.DatabaseURL = dbURL
		c.WSMessageRateLimit = 100_000_000
		c.RateLimitPerMinute = 100_000_000
	})
	db := rqOpen(b, dbURL)
	lock := rqLockAuthors(b, db)
	defer lock.release()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range writers {
		// Raw sockets: the figures in docs/performance.md were measured with them.
		c := s.dial(b, s.token(b, fmt.Sprintf("bench-stall-w%d", i/4), "create-author"))
		wg.Go(func() {
			for k := 0; ; k++ {
				f := rqRequest(3, fmt.Sprintf(`{"name":"bench-stall-%d-%d"}`, i, k))
				if rqSend(c, []rqFrame{f}) != nil {
					return
				}
				select {
				case <-stop:
					return
				case <-c.msgs:
				case <-time.After(time.Minute):
					return
				}
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()
	eventually(b, rqWait, "the writers stuck, 16 waiting for a database handler", func() bool {
		return rqWaitingOnLock(b, db) > 0 && s.scrapeMetric(b, `handler_requests_waiting{lane="database"}`) == "16"
	})

	tok := s.token(b, "bench-stall-control", "get-authors")
	c := s.dial(b, tok)
	frames := []string{`{"topic":"dashboards.bench"}`, `{"topic":"dashboards.bench"}`, fmt.Sprintf(`{"token":%q}`, tok)}
	pkgs := []int{10, 11, 12}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		f := rqRequest(pkgs[i%3], frames[i%3])
		start := time.Now()
		if err := rqSend(c, []rqFrame{f}); err != nil {
			b.Fatal(err)
		}
		got, _, err := rqAnswers(c, 1, rqWait)
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		if got[0].ReqID != f.id || got[0].status() != 0 {
			b.Fatalf("answered %+v", got[0])
		}
	}
	b.StopTimer()
	if stuck := rqWaitingOnLock(b, db); stuck == 0 {
		b.Fatal("the writers were no longer stuck at the end")
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
}
