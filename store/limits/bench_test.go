package limits

import (
	"context"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"switchboard/store/redistest"
)

// benchCallers matches redis-benchmark -c 64 in bench.sh.
const benchCallers = 64

// benchLimiter runs lim from ~64 goroutines over 1024 users and reports checks/s and p99
// latency. Limit and window are set so that (almost) every check is admitted: the write path,
// the expensive one.
func benchLimiter(b *testing.B, lim RateLimiter) {
	ids := make([]string, 1024)
	for i := range ids {
		ids[i] = "user-" + strconv.Itoa(i)
	}
	var (
		mu      sync.Mutex
		lat     []time.Duration
		allowed atomic.Int64
		next    atomic.Uint64
	)
	b.SetParallelism((benchCallers + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		mine := make([]time.Duration, 0, 4096)
		ctx := context.Background()
		for pb.Next() {
			t := time.Now()
			d, err := lim.Allow(ctx, "bench", ids[next.Add(1)%uint64(len(ids))], 1_000_000, time.Second)
			mine = append(mine, time.Since(t))
			if err != nil {
				b.Error(err)
				return
			}
			if d.Allowed {
				allowed.Add(1)
			}
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	b.StopTimer()
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "checks/s")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(100*float64(allowed.Load())/float64(len(lat)), "allowed-%")
}

func BenchmarkRedisRateLimiter(b *testing.B) {
	c := redistest.Client(b, func(o *redis.Options) { o.PoolSize = benchCallers })
	lim := NewRedisRateLimiter(c, redistest.Prefix(b, c), WithTimeout(time.Second))
	benchLimiter(b, lim)
}

func BenchmarkMemoryRateLimiter(b *testing.B) {
	lim := NewMemoryRateLimiter()
	defer lim.Close()
	benchLimiter(b, lim)
}
