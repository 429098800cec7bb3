package relay

import (
	"github.com/VictoriaMetrics/metrics"
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
