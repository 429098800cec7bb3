package bus

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"switchboard/store/redistest"
)

// BenchmarkRedisPublish measures what a broadcast costs Redis, on a redis-server of its own with
// nodes buses subscribed: a 100-byte message on a topic with history 100 (the publish script),
// or without history (one SPUBLISH), from 16 publishers. Besides ns/op it
// reports Redis's own CPU per broadcast (redis_us/op: used_cpu_sys + used_cpu_user of INFO cpu)
// and the bytes Redis sends per broadcast (out_B/op: to the publisher and every node), which is
// what sizes Redis in docs/sizing.md.
//
//	go test -run XXX -bench BenchmarkRedisPublish -benchtime 20000x ./store/bus
func BenchmarkRedisPublish(b *testing.B) {
	for _, history := range []int{100, 0} {
		for _, nodes := range []int{1, 4} {
			b.Run("history="+strconv.Itoa(history)+"/nodes="+strconv.Itoa(nodes), func(b *testing.B) {
				srv := redistest.StartServer(b)
				c := srv.Client()
				prefix := redistest.Prefix(b, c)
				var pub *Redis
				for i := 0; i < nodes; i++ {
					bus := newRedisBus(b, srv.Client(), prefix, "node-"+strconv.Itoa(i), func(*Message) {})
					waitHealthy(b, bus, 10*time.Second)
					pub = bus
				}
				data := json.RawMessage(`{"v":"` + strings.Repeat("x", 92) + `"}`) // 100 bytes
				ctx := context.Background()
				cpu0, out0 := redisCPU(b, c), redisOut(b, c)
				var seq atomic.Int64
				b.SetParallelism(8) // 16 publishers on 2 cores: Redis, not the round trip, is the bound
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						i := seq.Add(1)
						m := &Message{PkgID: 7, Data: data, Topic: "dashboards.t" + strconv.FormatInt(i%64, 10)}
						if _, _, err := pub.Publish(ctx, m, history); err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.StopTimer()
				b.ReportMetric((redisCPU(b, c)-cpu0)*1e6/float64(b.N), "redis_us/op")
				b.ReportMetric(float64(redisOut(b, c)-out0)/float64(b.N), "out_B/op")
			})
		}
	}
}

// redisCPU is the server's CPU time so far, in seconds.
func redisCPU(b *testing.B, c *redis.Client) float64 {
	info := c.Info(context.Background(), "cpu").Val()
	return infoFloat(info, "used_cpu_sys") + infoFloat(info, "used_cpu_user")
}

// redisOut is the bytes the server has written to its clients so far.
func redisOut(b *testing.B, c *redis.Client) int64 {
	return int64(infoFloat(c.Info(context.Background(), "stats").Val(), "total_net_output_bytes"))
}

func infoFloat(info, field string) float64 {
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}
