package main

import (
	"context"
	"sync/atomic"

	"switchboard/hub"
	"switchboard/store/bus"
)

// openBus starts the cluster bus: Redis sharded pub/sub when SWITCHBOARD_REDIS_URL is set (every
// node subscribes to every shard and delivers every broadcast to its own connections),
// in-process otherwise.
func (a *app) openBus(deliver func(*bus.Message)) error {
	opts := []bus.Option{bus.WithLogger(a.log), bus.WithMetrics(a.metrics), bus.WithDedupWindow(a.cfg.DedupWindow)}
	if a.redis == nil {
		a.bus = bus.NewMemory(deliver, opts...)
		return nil
	}
	opts = append(opts, bus.WithShards(a.cfg.RedisBusShards))
	b, err := bus.NewRedis(a.redis, a.cfg.RedisPrefix, a.node, deliver, opts...)
	if err != nil {
		return err
	}
	a.bus = b
	return nil
}

// busHealthy is /health's pubsub check: the bus's own probe, with Redis only ("disabled"
// without it, as docs/protocol.md §2 says).
func (a *app) busHealthy() func(context.Context) error {
	if a.redis == nil {
		return nil
	}
	return a.bus.Healthy
}

// lateDeliver hands bus messages to the hub once it exists: the bus starts first (the hub
// needs it), and nothing is delivered before the server serves.
type lateDeliver struct{ hub atomic.Pointer[hub.Hub] }

func (l *lateDeliver) Deliver(m *bus.Message) {
	if h := l.hub.Load(); h != nil {
		h.Deliver(m)
	}
}
