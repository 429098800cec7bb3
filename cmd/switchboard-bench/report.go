package main

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// result is one measured figure set; it becomes one JSON line and one table row.
type result struct {
	Scenario string `json:"scenario"`          // connect | fanout | rpc | stress | headerflood
	Target   string `json:"target"`            // switchboard | baseline | direct
	Mode     string `json:"mode,omitempty"`    // asap | rate | ws GET_AUTHORS | http GET /authors | …
	Time     string `json:"time"`              // RFC 3339, end of the run
	GOMAXPRO int    `json:"client_gomaxprocs"` // the tool's cores

	N         int     `json:"n"`
	C         int     `json:"c,omitempty"`
	Messages  int     `json:"messages,omitempty"`
	Size      int     `json:"size,omitempty"`
	Rate      float64 `json:"rate,omitempty"`
	Producers int     `json:"producers,omitempty"`
	NoFile    uint64  `json:"nofile,omitempty"`

	OK        int64   `json:"ok"`
	Failed    int64   `json:"failed"`
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"per_second"` // conns/s, delivered messages/s or requests/s
	Unit      string  `json:"unit"`

	P50ms float64 `json:"p50_ms"`
	P90ms float64 `json:"p90_ms,omitempty"`
	P99ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`

	Expected int64 `json:"expected,omitempty"` // fanout: N × messages (topics: what each subscriber's topic got)
	Topics   int   `json:"topics,omitempty"`   // fanout --topics: subscribers spread over this many topics
	// ConnectPS is connections per second while the fan-out subscribers connected (dial and
	// upgrade); SubscribePS the same with a SUBSCRIBE answered after each dial (--topics).
	ConnectPS   float64 `json:"connect_per_second,omitempty"`
	SubscribePS float64 `json:"connect_subscribe_per_second,omitempty"`
	Lost        int64   `json:"lost"`
	Duplicated  int64   `json:"duplicated"`
	OutOfOrder  int64   `json:"out_of_order"`
	ProducerPS  float64 `json:"producer_per_second,omitempty"` // broadcasts accepted per second
	Slow        int     `json:"slow_consumers,omitempty"`      // extra connections that never read
	SlowClosed  int64   `json:"slow_closed,omitempty"`         // ws_slow_consumer_disconnects_total delta

	RSSBeforeMiB  float64 `json:"rss_before_mib,omitempty"`
	RSSAfterMiB   float64 `json:"rss_after_mib,omitempty"`
	RSSPeakMiB    float64 `json:"rss_peak_mib,omitempty"` // headerflood: highest while the peers were on
	RSSPerConnKiB float64 `json:"rss_per_conn_kib,omitempty"`
	RSSSource     string  `json:"rss_source,omitempty"`
	ClosedLater   int64   `json:"closed_by_server,omitempty"` // connect: upgraded, then closed

	ServerCPU float64 `json:"server_cpu_pct,omitempty"` // percent of one core over the run
	ClientCPU float64 `json:"client_cpu_pct"`
	OtherCPU  float64 `json:"other_cpu_pct"`  // every other process on the machine, same unit
	Rows      int     `json:"rows,omitempty"` // rpc GET_AUTHORS: rows per answer

	Ratio   float64 `json:"ratio,omitempty"` // against RatioOf
	RatioOf string  `json:"ratio_of,omitempty"`
	// BareP99Ratio is rpc's p99 over the bare baseline's p99 (Ratio is then the req/s ratio).
	BareP99Ratio float64 `json:"bare_p99_ratio,omitempty"`
	Goal         string  `json:"goal,omitempty"` // the performance target for this figure
	GoalMet      *bool   `json:"goal_met,omitempty"`
	Limit        string  `json:"limited_by,omitempty"` // best guess at what bounded the figure

	Errors map[string]int `json:"errors,omitempty"`
	Notes  []string       `json:"notes,omitempty"`

	Stress *stressReport `json:"stress,omitempty"` // the stress scenario's findings
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (r *result) setLatency(p percentiles) {
	r.P50ms, r.P90ms, r.P99ms, r.MaxMs = ms(p.P50), ms(p.P90), ms(p.P99), ms(p.Max)
}

func (r *result) goal(text string, met bool) {
	r.Goal, r.GoalMet = text, &met
}

func (r *result) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// reporter writes results as they come and the table at the end.
type reporter struct {
	stdout, stderr io.Writer
	jsonOnly       bool
	results        []*result
}

func newReporter(stdout, stderr io.Writer, jsonOnly bool) *reporter {
	return &reporter{stdout: stdout, stderr: &lockedWriter{w: stderr}, jsonOnly: jsonOnly}
}

// lockedWriter serialises writes: progress lines come from the scenario's goroutines (the
// stress sampler and its fault injector at once), and w need not be safe for concurrent use
// (a test's bytes.Buffer is not).
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (r *reporter) emit(res *result) {
	res.Time = time.Now().UTC().Format(time.RFC3339)
	res.GOMAXPRO = runtime.GOMAXPROCS(0)
	b, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintln(r.stderr, "encode result:", err)
		return
	}
	fmt.Fprintln(r.stdout, string(b))
	r.results = append(r.results, res)
}

// table prints the human summary of every result of this invocation.
func (r *reporter) table() {
	if r.jsonOnly || len(r.results) == 0 {
		return
	}
	w := tabwriter.NewWriter(r.stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(r.stdout)
	fmt.Fprintln(w, "scenario\ttarget\tmode\tN\tok\tfailed\trate/s\tp50 ms\tp90 ms\tp99 ms\tmax ms\tlost\tdup\tooo\tsrv cpu%\tcli cpu%\toth cpu%\tratio\tgoal\t")
	for _, s := range r.results {
		ratio, goal := "", ""
		if s.Ratio > 0 {
			ratio = fmt.Sprintf("%.2f×%s", s.Ratio, s.RatioOf)
		}
		if s.GoalMet != nil {
			goal = s.Goal + map[bool]string{true: " met", false: " NOT met"}[*s.GoalMet]
		}
		srv := ""
		if s.ServerCPU > 0 {
			srv = fmt.Sprintf("%.0f", s.ServerCPU)
		}
		lost, dup, ooo := "", "", ""
		if s.Scenario == "fanout" {
			lost, dup, ooo = fmt.Sprint(s.Lost), fmt.Sprint(s.Duplicated), fmt.Sprint(s.OutOfOrder)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%d\t%.0f %s\t%.2f\t%s\t%.2f\t%.2f\t%s\t%s\t%s\t%s\t%.0f\t%.0f\t%s\t%s\t\n",
			s.Scenario, s.Target, s.Mode, s.N, s.OK, s.Failed, s.PerSecond, s.Unit,
			s.P50ms, opt(s.P90ms), s.P99ms, s.MaxMs, lost, dup, ooo, srv, s.ClientCPU, s.OtherCPU, ratio, goal)
	}
	_ = w.Flush()
	for _, s := range r.results {
		var extra []string
		if s.RSSPerConnKiB > 0 {
			extra = append(extra, fmt.Sprintf("server RSS %.1f → %.1f MiB = %.2f KiB per connection (%s)", s.RSSBeforeMiB, s.RSSAfterMiB, s.RSSPerConnKiB, s.RSSSource))
		}
		if s.Slow > 0 {
			extra = append(extra, fmt.Sprintf("%d slow consumers, %d cut off by the server", s.Slow, s.SlowClosed))
		}
		if s.ProducerPS > 0 {
			extra = append(extra, fmt.Sprintf("producer %.0f broadcasts/s", s.ProducerPS))
		}
		if s.Rows > 0 {
			extra = append(extra, fmt.Sprintf("%d rows per answer", s.Rows))
		}
		if s.Limit != "" {
			extra = append(extra, "limited by: "+s.Limit)
		}
		if len(s.Errors) > 0 {
			extra = append(extra, "errors: "+topErrors(s.Errors, 3))
		}
		extra = append(extra, s.Notes...)
		if len(extra) > 0 {
			fmt.Fprintf(r.stdout, "%s/%s %s: %s\n", s.Scenario, s.Target, s.Mode, strings.Join(extra, "; "))
		}
	}
}

func opt(v float64) string {
	if v == 0 {
		return ""
	}
	return fmt.Sprintf("%.2f", v)
}

// topErrors renders the most frequent error kinds.
func topErrors(m map[string]int, n int) string {
	type kv struct {
		k string
		v int
	}
	var all []kv
	for k, v := range m {
		all = append(all, kv{k, v})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].v > all[j].v || all[i].v == all[j].v && all[i].k < all[j].k })
	var parts []string
	for i, e := range all {
		if i == n {
			parts = append(parts, fmt.Sprintf("… %d more kinds", len(all)-n))
			break
		}
		parts = append(parts, fmt.Sprintf("%d× %s", e.v, e.k))
	}
	return strings.Join(parts, ", ")
}

// errorCounts is a goroutine-safe tally of error kinds.
type errorCounts struct {
	mu sync.Mutex
	m  map[string]int
}

func (e *errorCounts) add(kind string) {
	e.mu.Lock()
	if e.m == nil {
		e.m = map[string]int{}
	}
	e.m[kind]++
	e.mu.Unlock()
}

func (e *errorCounts) snapshot() map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.m) == 0 {
		return nil
	}
	out := make(map[string]int, len(e.m))
	for k, v := range e.m {
		out[k] = v
	}
	return out
}

// classify shortens an error to a kind that groups well (no addresses or ports).
func classify(err error) string {
	s := err.Error()
	for _, k := range []string{"connection refused", "connection reset", "too many open files",
		"cannot assign requested address", "i/o timeout", "timeout", "EOF", "broken pipe"} {
		if strings.Contains(s, k) {
			return k
		}
	}
	if len(s) > 160 {
		s = s[:160]
	}
	return s
}
