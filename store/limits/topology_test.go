package limits

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"switchboard/store/redistest"
)

// topologies runs f against the package's shared Redis Cluster and Sentinel set, through the
// clients SWITCHBOARD_REDIS_URL would give (two per test: two nodes).
func topologies(t *testing.T, f func(t *testing.T, a, b redis.UniversalClient)) {
	t.Run("cluster", func(t *testing.T) {
		cl := redistest.SharedCluster(t)
		a, b := cl.Client(), cl.Client()
		t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
		f(t, a, b)
	})
	t.Run("sentinel", func(t *testing.T) {
		s := redistest.SharedSentinel(t)
		a, b := s.Client(), s.Client()
		t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
		f(t, a, b)
	})
}

// The sliding window holds across two nodes on a cluster and a sentinel set: each Lua call
// touches one key, so it runs on whichever primary holds that key's slot.
func TestRateLimiterTopologies(t *testing.T) {
	topologies(t, func(t *testing.T, a, b redis.UniversalClient) {
		prefix := redistest.Prefix(t, a)
		la, lb := NewRedisRateLimiter(a, prefix), NewRedisRateLimiter(b, prefix)
		ctx := context.Background()
		const n = 6
		// Many users, so that the keys spread over every primary of the cluster.
		for u := 0; u < 20; u++ {
			id := "user-" + strconv.Itoa(u)
			for i := 0; i < n; i++ {
				lim := la
				if i%2 == 1 {
					lim = lb
				}
				d, err := lim.Allow(ctx, "ws", id, n, time.Minute)
				if err != nil || !d.Allowed || d.Remaining != n-1-i {
					t.Fatalf("%s request %d: %+v, %v", id, i+1, d, err)
				}
			}
			for _, lim := range []*RedisRateLimiter{la, lb} {
				if d, err := lim.Allow(ctx, "ws", id, n, time.Minute); err != nil || d.Allowed {
					t.Fatalf("%s over the limit: %+v, %v", id, d, err)
				}
			}
		}
	})
}

// The connection counter counts across two nodes; its heartbeat pipelines users whose keys lie
// in different slots, which the cluster client splits by node.
func TestConnCounterTopologies(t *testing.T) {
	topologies(t, func(t *testing.T, a, b redis.UniversalClient) {
		prefix := redistest.Prefix(t, a)
		na, nb := node(t, a, prefix, "node-a"), node(t, b, prefix, "node-b")
		ctx := context.Background()
		for u := 0; u < 20; u++ {
			user := "user-" + strconv.Itoa(u)
			mustAcquire(t, na, user, "c1", 2, true)
			mustAcquire(t, nb, user, "c2", 2, true)
			mustAcquire(t, nb, user, "c3", 2, false)
		}
		// Several heartbeats later every connection is still counted (the pipelined refresh
		// reached every slot), and none more.
		time.Sleep(3 * testTTL)
		for u := 0; u < 20; u++ {
			user := "user-" + strconv.Itoa(u)
			if n, err := na.Held(ctx, user); err != nil || n != 2 {
				t.Fatalf("%s holds %d, %v; want 2", user, n, err)
			}
		}
		if err := na.Release(ctx, "user-3", "c1"); err != nil {
			t.Fatal(err)
		}
		mustAcquire(t, nb, "user-3", "c3", 2, true)
	})
}
