package redisconn

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"switchboard/store/redistest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	redistest.StopShared()
	os.Exit(code)
}

// Ping through the URLs of each topology; a redis:// URL naming one cluster node is told to use
// redis-cluster://.
func TestPingTopologies(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl := redistest.SharedCluster(t)
	s := redistest.SharedSentinel(t)
	for _, raw := range []string{redistest.URL(t), cl.URL(), "redis://" + cl.Addrs()[0] + "," + cl.Addrs()[1], s.URL()} {
		tg, err := Parse(raw)
		if err != nil {
			t.Fatalf("Parse(%s): %v", raw, err)
		}
		c := tg.NewClient(Settings{DialTimeout: time.Second})
		if err := Ping(ctx, c); err != nil {
			t.Errorf("Ping(%s): %v", tg, err)
		}
		// A keyed script on the topology: the rate limiter's kind of call.
		if err := c.Eval(ctx, "return redis.call('SET', KEYS[1], 1, 'PX', 5000)", []string{"sbtest:redisconn:" + redistest.RandomHex(4)}).Err(); err != nil {
			t.Errorf("EVAL on %s: %v", tg, err)
		}
		_ = c.Close()
	}
	tg, _ := Parse("redis://" + cl.Addrs()[0])
	c := tg.NewClient(Settings{DialTimeout: time.Second})
	defer c.Close()
	if err := Ping(ctx, c); !errors.Is(err, ErrClusterNode) {
		t.Errorf("Ping of one cluster node through redis://: %v, want ErrClusterNode", err)
	}
}
