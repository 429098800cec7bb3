package main

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"switchboard/config"
	"switchboard/store/inbox"
	"switchboard/store/redistest"
	"switchboard/store/storetest"
)

// BenchmarkRelayThroughput compares how fast background producers' events get onto the bus
// on one node with PostgreSQL and Redis, per event, to the topic dashboards.bench (history
// 100): POST /api/broadcast from one client posting one after another; outbox rows committed
// beforehand and relayed (b.N rows, timed until the outbox is empty); stream inbox entries
// added beforehand (timed until the stream is empty). ns/op is per event; events/s is reported.
//
//	go test -run '^$' -bench BenchmarkRelayThroughput -benchtime 5000x ./cmd/switchboard
func BenchmarkRelayThroughput(b *testing.B) {
	dsn := storetest.PostgresURL(b)
	rc := redistest.Client(b)
	prefix := redistest.Prefix(b, rc)
	s := startServerLogged(b, func(c *config.Config) {
		c.DatabaseURL, c.RedisURL, c.RedisPrefix = dsn, redistest.URL(b), prefix
		c.RateLimitPerMinute = 1 << 30
	}, slog.New(slog.DiscardHandler))
	ctx := context.Background()
	const topic = "dashboards.bench"
	tok := s.token(b, "bench", "broadcast")

	b.Run("api-broadcast", func(b *testing.B) {
		pub := s.publisher(b, tok) // the Go client's Publisher: one POST after another
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := pub.Publish(ctx, topic, 7, map[string]int{"n": i}); err != nil {
				b.Fatalf("broadcast: %v", err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})

	b.Run("outbox", func(b *testing.B) {
		db := s.app.db.Bun
		b.StopTimer()
		if _, err := db.NewRaw("INSERT INTO switchboard_outbox (topic, pkg_id, data) "+
			"SELECT ?, 7, json_build_object('n', g) FROM generate_series(1, ?) g", topic, b.N).Exec(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		for {
			var n int
			if err := db.NewRaw("SELECT count(*) FROM switchboard_outbox").Scan(ctx, &n); err != nil {
				b.Fatal(err)
			}
			if n == 0 {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})

	b.Run("inbox", func(b *testing.B) {
		stream := inbox.New(rc, prefix, "").Stream
		b.StopTimer()
		for done := 0; done < b.N; {
			_, err := rc.Pipelined(ctx, func(p redis.Pipeliner) error {
				for i := 0; i < 1000 && done < b.N; i, done = i+1, done+1 {
					p.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []string{"topic", topic, "pkg_id", "7", "data", fmt.Sprintf(`{"n": %d}`, done)}})
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		for rc.XLen(ctx, stream).Val() > 0 {
			time.Sleep(2 * time.Millisecond)
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})
}
