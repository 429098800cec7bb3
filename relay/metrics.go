package relay

import (
	"context"
	"errors"

	"github.com/VictoriaMetrics/metrics"

	"switchboard/hub"
)

// Sources, the source label of the relay metrics.
const (
	sourceOutbox = "outbox"
	sourceInbox  = "inbox"
)

// counters are one source's series; created up front so dashboards see zeros, not gaps.
type counters struct {
	published, duplicate, dead, retries *metrics.Counter
	lag, leader                         *metrics.Gauge
}

func newCounters(set *metrics.Set, source string) counters {
	ev := func(outcome string) *metrics.Counter {
		return set.GetOrCreateCounter(`relay_events_total{source="` + source + `",outcome="` + outcome + `"}`)
	}
	c := counters{
		published: ev("published"),
		duplicate: ev("duplicate"),
		dead:      ev("dead_lettered"),
		retries:   set.GetOrCreateCounter(`relay_retries_total{source="` + source + `"}`),
		lag:       set.GetOrCreateGauge(`relay_lag_seconds{source="`+source+`"}`, nil),
	}
	if source == sourceOutbox { // the inbox has no leader: every node reads it
		c.leader = set.GetOrCreateGauge(`relay_leader{source="`+source+`"}`, nil)
	}
	return c
}

// publish publishes one checked event through h and counts it: done when the event is over with
// (published, or a duplicate the bus dropped), a reason when the bus refused it as invalid (it is
// to be dead-lettered), or err when it must be tried again later.
func (c counters) publish(ctx context.Context, h Publisher, msg *hub.Message) (done bool, reason string, err error) {
	_, err = h.Broadcast(ctx, msg)
	switch {
	case err == nil:
		c.published.Inc()
		return true, "", nil
	case errors.Is(err, hub.ErrDuplicate):
		c.duplicate.Inc()
		return true, "", nil
	case errors.Is(err, hub.ErrInvalidData):
		return false, err.Error(), nil
	default:
		return false, "", err
	}
}
