package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync/atomic"
	"time"

	"switchboard/hub"
	"switchboard/store/bus"
)

// openBus starts the cluster bus: Redis sharded pub/sub when SWITCHBOARD_REDIS_URL is set (every
// node subscribes to every shard and delivers every broadcast to its own connections),
// in-process otherwise.
func (a *app) openBus(deliver func(*bus.Message)) error {
	opts := []bus.Option{bus.WithLogger(a.log), bus.WithMetrics(a.metrics)}
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

// hubPublisher publishes the handlers' domain events through the hub (and so the bus). It runs
// on the handler's goroutine after the write committed; a failure is logged, never returned.
type hubPublisher struct {
	hub *hub.Hub
	log *slog.Logger
}

func (p hubPublisher) Publish(ctx context.Context, topic string, pkgID int, data any) {
	b, err := json.Marshal(data)
	if err != nil {
		p.log.Error("domain event: encode", "topic", topic, "err", err)
		return
	}
	// The request may be cancelled the moment it is answered; the event must still go out.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if _, err := p.hub.Broadcast(ctx, &hub.Message{PkgID: pkgID, Data: b, Topic: topic}); err != nil {
		p.log.Warn("domain event not published", "topic", topic, "pkg_id", pkgID, "err", err)
	}
}
