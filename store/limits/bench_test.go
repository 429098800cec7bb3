package limits

import (
	"context"
	"runtime"
	"slices"
	"strconv"
	"strings"
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

// BenchmarkConnHeartbeat measures the connection counter's steady load on Redis: one heartbeat
// of a node holding 10 000 users with 1 or 4 connections each, on a redis-server of its own. It
// reports
// Redis's CPU per user refreshed (redis_us/user) and per connection (redis_us/conn), which
// docs/sizing.md multiplies out for a deployment.
//
//	go test -run XXX -bench BenchmarkConnHeartbeat -benchtime 5x ./store/limits
func BenchmarkConnHeartbeat(b *testing.B) {
	for _, perUser := range []int{1, 4} {
		b.Run("conns_per_user="+strconv.Itoa(perUser), func(b *testing.B) { benchHeartbeat(b, 10000, perUser) })
	}
}

func benchHeartbeat(b *testing.B, users, perUser int) {
	srv := redistest.StartServer(b)
	c := srv.Client()
	prefix := redistest.Prefix(b, c)
	n := NewRedisConnCounter(c, prefix, "node-a", WithTimeout(10*time.Second))
	ctx := context.Background()
	for u := 0; u < users; u++ {
		for k := 0; k < perUser; k++ {
			if ok, err := n.Acquire(ctx, "u"+strconv.Itoa(u), "c"+strconv.Itoa(k), perUser); err != nil || !ok {
				b.Fatalf("Acquire: %v %v", ok, err)
			}
		}
	}
	cpu := func() float64 {
		info := c.Info(ctx, "cpu").Val()
		var sum float64
		for _, line := range strings.Split(info, "\r\n") {
			for _, f := range []string{"used_cpu_sys:", "used_cpu_user:"} {
				if v, ok := strings.CutPrefix(line, f); ok {
					x, _ := strconv.ParseFloat(v, 64)
					sum += x
				}
			}
		}
		return sum
	}
	cpu0 := cpu()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		n.beat(ctx)
	}
	b.StopTimer()
	per := (cpu() - cpu0) * 1e6 / float64(b.N)
	b.ReportMetric(per/float64(users), "redis_us/user")
	b.ReportMetric(per/float64(users*perUser), "redis_us/conn")
}
