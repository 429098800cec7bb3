// Package sysstats publishes a node's live figures once a second on the topic sys.stats, for the
// dashboard: connections, messages per second in and out, broadcasts per second and their mean
// fan-out time, and rate-limit refusals. The figures are read from the node's own metrics (the
// same series /metrics serves), so the page and Prometheus never disagree.
//
// The stats of a node go to the subscribers on that node only (hub.Deliver, not the bus): each
// node describes itself and names itself in "node"; the cluster-wide view is Prometheus's.
//
// Concurrency contract: a Publisher owns one goroutine, started by Start and ended by Stop,
// which waits for it. Its sampling never blocks on a socket: Deliver only queues a message for
// the hub actor.
package sysstats

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/prometheus/common/expfmt"

	"switchboard/hub"
)

// Topic is the topic the stats are delivered on; PkgID is the pkg_id of those broadcasts (a
// server-sent pkg_id: requests with it are answered "Unknown pkg_id").
const (
	Topic = "sys.stats"
	PkgID = 30
)

// Metrics is where the figures are read: the node's *metrics.Set.
type Metrics interface{ WritePrometheus(w io.Writer) }

// Deliverer hands a message to this node's subscribers without counting it among the
// broadcasts it reports on: *hub.Hub.
type Deliverer interface{ DeliverUncounted(m *hub.Message) }

// Config configures a Publisher.
type Config struct {
	Node     string        // this node's name, sent in every message
	Metrics  Metrics       // the node's metrics
	Hub      Deliverer     // where the messages go
	Interval time.Duration // 1s by default
	Logger   *slog.Logger
}

// Stats is the data of one sys.stats broadcast. Rates are per second over the interval since
// the previous message (IntervalS).
type Stats struct {
	Node        string    `json:"node"`
	At          time.Time `json:"at"`
	IntervalS   float64   `json:"interval_s"`
	Connections int64     `json:"connections"` // WebSocket connections open on this node
	// Frames received from and sent to WebSocket clients (answers and broadcasts), per second.
	MessagesInPerS  float64 `json:"messages_in_per_s"`
	MessagesOutPerS float64 `json:"messages_out_per_s"`
	// Broadcasts delivered by this node's hub per second (this stream's own left out), and their
	// mean fan-out time (encode once, queue on every target): null without broadcasts.
	BroadcastsPerS  float64  `json:"broadcasts_per_s"`
	BroadcastMeanMS *float64 `json:"broadcast_mean_ms"`
	// Requests refused for a rate limit (every limit type), per second and since the node started.
	RateLimitHitsPerS  float64 `json:"rate_limit_hits_per_s"`
	RateLimitHitsTotal uint64  `json:"rate_limit_hits_total"`
}

// Publisher samples and delivers the stats until Stop.
type Publisher struct {
	cfg  Config
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// Start takes the first sample (the base of the first rates) and starts the publishing goroutine.
func Start(cfg Config) *Publisher {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	p := &Publisher{cfg: cfg, stop: make(chan struct{}), done: make(chan struct{})}
	prev := read(cfg.Metrics, cfg.Logger)
	go p.run(prev)
	return p
}

// Stop ends the goroutine and waits for it; it may be called more than once.
func (p *Publisher) Stop() {
	p.once.Do(func() { close(p.stop) })
	<-p.done
}

func (p *Publisher) run(prev sample) {
	defer close(p.done)
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		cur := read(p.cfg.Metrics, p.cfg.Logger)
		data, err := json.Marshal(compute(p.cfg.Node, prev, cur))
		if err != nil {
			p.cfg.Logger.Error("sys.stats: encode", "err", err)
			continue
		}
		p.cfg.Hub.DeliverUncounted(&hub.Message{PkgID: PkgID, Topic: Topic, Data: data})
		prev = cur
	}
}

// sample is what one reading of the metrics holds.
type sample struct {
	at                 time.Time
	connections        float64
	in, out            float64
	broadcasts         float64
	durSum, durCount   float64
	rateLimitHitsTotal float64
}

// Series read; a sample sums every label set of each.
const (
	seriesConnections = "ws_connections_active"
	seriesIn          = "ws_messages_received_total"
	seriesOut         = "ws_messages_sent_total"
	seriesBroadcasts  = "ws_broadcasts_total"
	seriesDurSum      = "ws_broadcast_duration_seconds_sum"
	seriesDurCount    = "ws_broadcast_duration_seconds_count"
	seriesRateLimit   = "rate_limit_hits_total"
)

// read parses the metrics' Prometheus text (with the library Prometheus itself uses, rather than
// by hand) and keeps the series the stats need. A series not registered yet reads 0.
func read(m Metrics, log *slog.Logger) sample {
	s := sample{at: time.Now()}
	var buf bytes.Buffer
	m.WritePrometheus(&buf)
	var parser expfmt.TextParser
	families, err := parser.TextToMetricFamilies(&buf)
	if err != nil {
		log.Warn("sys.stats: metrics text does not parse", "err", err)
	}
	sum := func(name string) float64 {
		f := families[name]
		if f == nil {
			return 0
		}
		total := 0.0
		for _, m := range f.GetMetric() {
			switch {
			case m.GetUntyped() != nil:
				total += m.GetUntyped().GetValue()
			case m.GetCounter() != nil:
				total += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				total += m.GetGauge().GetValue()
			}
		}
		return total
	}
	s.connections = sum(seriesConnections)
	s.in, s.out = sum(seriesIn), sum(seriesOut)
	s.broadcasts = sum(seriesBroadcasts)
	s.durSum, s.durCount = sum(seriesDurSum), sum(seriesDurCount)
	s.rateLimitHitsTotal = sum(seriesRateLimit)
	return s
}

// compute turns two samples into the rates between them.
func compute(node string, prev, cur sample) Stats {
	secs := cur.at.Sub(prev.at).Seconds()
	if secs <= 0 {
		secs = 1e-9
	}
	rate := func(a, b float64) float64 {
		if b < a { // a counter that went back (never expected): no rate rather than a negative one
			return 0
		}
		return round3((b - a) / secs)
	}
	st := Stats{
		Node: node, At: cur.at.UTC(), IntervalS: round3(secs),
		Connections:        int64(cur.connections),
		MessagesInPerS:     rate(prev.in, cur.in),
		MessagesOutPerS:    rate(prev.out, cur.out),
		BroadcastsPerS:     rate(prev.broadcasts, cur.broadcasts),
		RateLimitHitsPerS:  rate(prev.rateLimitHitsTotal, cur.rateLimitHitsTotal),
		RateLimitHitsTotal: uint64(cur.rateLimitHitsTotal),
	}
	if n := cur.durCount - prev.durCount; n > 0 {
		mean := round3((cur.durSum - prev.durSum) / n * 1000)
		st.BroadcastMeanMS = &mean
	}
	return st
}

// round3 keeps three decimals: the page plots them, and shorter JSON is cheaper to send.
func round3(v float64) float64 { return math.Round(v*1000) / 1000 }
