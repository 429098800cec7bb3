package main

import (
	"context"
	"errors"
	"os"

	"switchboard/actors"
	"switchboard/relay"
	"switchboard/store/inbox"
	"switchboard/store/outbox"
)

// relays are the background producers' relays this node runs: the outbox relay always (it
// relays only while it holds the cluster's lease), the stream inbox with Redis only.
type relays struct {
	outbox *relay.Outbox
	inbox  *relay.Inbox // nil without Redis
}

// haltEnv is a test hook: when set (to anything), the outbox relay stops dead after publishing
// its first batch and before deleting the rows, so that a test can kill the node right there.
// It is not a SWITCHBOARD_ variable: nothing in production sets it.
const haltEnv = "SB_TEST_RELAY_HALT_AFTER_PUBLISH"

// startRelays starts the outbox relay (and, with Redis, the stream inbox) after the hub: they
// publish through it.
func (a *app) startRelays(policy *actors.Policy) error {
	rules, err := actors.NewBroadcasts(policy, a.cfg.MaxRequestBytes)
	if err != nil {
		return err
	}
	cfg := relay.OutboxConfig{
		Outbox: outbox.New(a.db.Bun), Hub: a.hub, Rules: rules,
		PollInterval: a.cfg.OutboxPoll, StuckAfter: a.cfg.RelayStuckAfter, MaxBytes: a.cfg.MaxRequestBytes,
		Logger: a.log, Metrics: a.metrics,
	}
	if _, ok := os.LookupEnv(haltEnv); ok {
		cfg.AfterPublish = func(ctx context.Context, n int) {
			a.log.Warn("outbox relay halted after publishing, before deleting (test hook "+haltEnv+")", "rows", n)
			<-ctx.Done()
		}
	}
	a.relays.outbox = relay.StartOutbox(cfg)
	if a.redis != nil {
		a.relays.inbox = relay.StartInbox(relay.InboxConfig{
			Inbox: inbox.New(a.redis, a.cfg.RedisPrefix, a.node), Hub: a.hub, Rules: rules,
			ClaimAfter: a.cfg.InboxClaimAfter, Logger: a.log, Metrics: a.metrics,
		})
	}
	return nil
}

// wake tells the outbox relay that this node committed rows (the authors' events).
func (r *relays) wake() {
	if r.outbox != nil {
		r.outbox.Wake()
	}
}

// leading reports whether this node relays the outbox now (its own writes then skip the NOTIFY).
func (r *relays) leading() bool { return r.outbox != nil && r.outbox.Leading() }

// healthy is /health's relay check.
func (r *relays) healthy() func(context.Context) error {
	return func(ctx context.Context) error {
		if r.outbox == nil {
			return errors.New("outbox relay not started")
		}
		return r.outbox.Healthy(ctx)
	}
}

// stop ends the relays and waits for them; a no-op for those never started or already stopped.
func (r *relays) stop() {
	if r.inbox != nil {
		r.inbox.Stop()
	}
	if r.outbox != nil {
		r.outbox.Stop()
	}
}
