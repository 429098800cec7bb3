package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"
)

// stressReport is everything a stress run found; it is printed as tables and carried in the
// run's JSON line (field "stress").
type stressReport struct {
	Run          string  `json:"run"`
	Mode         string  `json:"mode"` // self-contained | external
	Subscribers  int     `json:"subscribers"`
	Topics       int     `json:"topics"`
	TopicsPerSub int     `json:"topics_per_subscriber"`
	Churners     int     `json:"churners"`
	RPCClients   int     `json:"rpc_clients"`
	Producers    int     `json:"producers"`
	Rate         float64 `json:"broadcasts_per_second"`
	Seconds      float64 `json:"seconds"`

	Published     int64          `json:"broadcasts_accepted"`
	PublishFailed int64          `json:"broadcasts_failed"`
	PublishErrors map[string]int `json:"broadcast_errors,omitempty"`
	Delivered     int64          `json:"delivered"`
	TopicMessages int64          `json:"delivered_topic"`
	AllMessages   int64          `json:"delivered_to_all"`
	Gaps          int64          `json:"seq_missing"`
	Dups          int64          `json:"seq_repeated"`
	Answers       int64          `json:"answers"`
	Connects      int64          `json:"connections"`
	ConnectFailed int64          `json:"connections_failed"`
	ConnectErrors map[string]int `json:"connection_errors,omitempty"`

	Closes       map[string]int     `json:"closes"`                  // as the clients saw them
	ServerCloses map[string]float64 `json:"server_closes,omitempty"` // ws_closes_total over the run
	Told         map[string]int     `json:"told,omitempty"`

	ViolationsTotal int64                    `json:"violations_total"`
	Violations      []violationKind          `json:"violations,omitempty"`
	Faults          []faultReport            `json:"faults,omitempty"`
	TailNotes       []string                 `json:"tail_notes,omitempty"`
	TopicEnds       map[string]topicPosition `json:"topic_ends,omitempty"` // each topic's last seq and epoch

	Baseline       memPoint  `json:"baseline"`
	Peak           memPoint  `json:"peak"`
	End            memPoint  `json:"end"`
	Bounds         memBounds `json:"bounds"`
	SettledSeconds float64   `json:"settled_seconds"`
	MemOK          bool      `json:"memory_back_to_baseline"`
	Pass           bool      `json:"pass"`
	Plot           string    `json:"plot,omitempty"`
}

// faultReport is one fault and what the clients saw from it until faultSeenFor after it ended.
type faultReport struct {
	Kind  string         `json:"kind"`
	AtS   float64        `json:"at_s"`
	DownS float64        `json:"down_s,omitempty"`
	Err   string         `json:"error,omitempty"`
	Seen  map[string]int `json:"clients_saw,omitempty"`
}

// faultSeenFor is how long after a fault its consequences are attributed to it.
const faultSeenFor = 10 * time.Second

// subTotals sums the subscribers' checks.
type subTotals struct{ gaps, dups int64 }

func buildStressReport(o *options, st *stressState, env *stressEnv, tot subTotals, base, end, pk memPoint, settled time.Duration,
	memOK bool, b memBounds, tailNotes []string, ends map[string]topicPosition, serverCloses map[string]float64) *stressReport {
	mode := "self-contained"
	if o.external {
		mode = "external"
	}
	r := &stressReport{Run: st.run, Mode: mode, Subscribers: o.n, Topics: o.topics, TopicsPerSub: o.topicsPerSub,
		Churners: o.churners, RPCClients: o.rpcClients, Producers: o.producers, Rate: o.rate, Seconds: o.duration.Seconds(),
		Published: st.published.Load(), PublishFailed: st.publishFailed.Load(), PublishErrors: st.pubErrs.snapshot(),
		Delivered: st.delivered.Load(), TopicMessages: st.topicMsgs.Load(), AllMessages: st.allMsgs.Load(),
		Gaps: tot.gaps, Dups: tot.dups, Answers: st.answers.Load(),
		Connects: st.dials.Load(), ConnectFailed: st.dialFails.Load(), ConnectErrors: st.dialErrs.snapshot(),
		Closes: st.closes.snapshot(), ServerCloses: serverCloses, Told: st.told.snapshot(),
		ViolationsTotal: st.v.total.Load(), Violations: st.v.snapshot(), TailNotes: tailNotes, TopicEnds: ends,
		Baseline: base, Peak: pk, End: end, Bounds: b, SettledSeconds: settled.Seconds(), MemOK: memOK}
	for _, f := range st.faults.snapshot() {
		fr := faultReport{Kind: f.Kind, AtS: f.At.Sub(st.start).Seconds(), Err: f.Err}
		until := f.At
		if !f.End.IsZero() {
			until = f.End
			if f.Kind == "redis-kill" {
				fr.DownS = f.End.Sub(f.At).Seconds()
			}
		}
		fr.Seen = st.events.between(f.At, until.Add(faultSeenFor))
		r.Faults = append(r.Faults, fr)
	}
	r.Pass = r.ViolationsTotal == 0 && memOK
	return r
}

// stressResult is the run as the other scenarios' JSON line and table row.
func stressResult(o *options, st *stressState, r *stressReport) *result {
	mode := r.Mode
	var faults []string
	for _, f := range r.Faults {
		faults = append(faults, fmt.Sprintf("%s@%.0fs", f.Kind, f.AtS))
	}
	if len(faults) > 0 {
		mode += " " + strings.Join(faults, ",")
	}
	res := &result{Scenario: "stress", Target: "switchboard", Mode: mode, N: o.n, Rate: o.rate, Producers: o.producers,
		OK: r.Delivered, Failed: r.ViolationsTotal, Seconds: r.Seconds, PerSecond: float64(r.Delivered) / r.Seconds,
		Unit: "msgs", Lost: r.Gaps, Duplicated: r.Dups,
		RSSBeforeMiB: r.Baseline.RSSMiB, RSSAfterMiB: r.End.RSSMiB, RSSSource: "/metrics process_resident_memory_bytes", Stress: r}
	if st != nil && r.Mode == "self-contained" {
		res.RSSSource = "/proc VmRSS"
	}
	res.goal("no invariant violated; goroutines and RSS back to baseline", r.Pass)
	for _, v := range r.Violations {
		res.Errors = addErr(res.Errors, v.Kind, v.Count)
	}
	res.Notes = append(res.Notes, r.TailNotes...)
	return res
}

// printStressReport prints the run's tables (unless --json-only).
func printStressReport(rep *reporter, r *stressReport) {
	if rep.jsonOnly {
		return
	}
	out := rep.stdout
	verdict := "PASS"
	if !r.Pass {
		verdict = "FAIL"
	}
	fmt.Fprintf(out, "\nstress run %s (%s), %.0fs: %s\n", r.Run, r.Mode, r.Seconds, verdict)
	fmt.Fprintf(out, "%d subscribers × %d of %d topics, %d churners, %d rpc clients, %d producers at %g broadcasts/s\n\n",
		r.Subscribers, r.TopicsPerSub, r.Topics, r.Churners, r.RPCClients, r.Producers, r.Rate)

	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "totals\tcount\tper second\t")
	row := func(name string, n int64) { fmt.Fprintf(w, "%s\t%d\t%.1f\t\n", name, n, float64(n)/r.Seconds) }
	row("broadcasts accepted (202)", r.Published)
	row("broadcasts refused or failed", r.PublishFailed)
	row("deliveries to subscribers", r.Delivered)
	row("  on topics", r.TopicMessages)
	row("  to everyone", r.AllMessages)
	row("answers to requests", r.Answers)
	row("connections opened", r.Connects)
	row("connections that failed to open", r.ConnectFailed)
	row("topic seqs missing (not told)", r.Gaps)
	row("topic seqs repeated or late", r.Dups)
	_ = w.Flush()
	if len(r.PublishErrors) > 0 {
		fmt.Fprintf(out, "broadcast failures: %s\n", topErrors(r.PublishErrors, 4))
	}
	if len(r.ConnectErrors) > 0 {
		fmt.Fprintf(out, "connection failures: %s\n", topErrors(r.ConnectErrors, 4))
	}

	fmt.Fprintln(out, "\ncloses, as the clients saw them")
	w = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	for _, k := range sortedKeys(r.Closes) {
		fmt.Fprintf(w, "  %s\t%d\t\n", k, r.Closes[k])
	}
	_ = w.Flush()
	if len(r.ServerCloses) > 0 {
		var parts []string
		for _, k := range sortedKeys(r.ServerCloses) {
			parts = append(parts, fmt.Sprintf("%s %+.0f", strings.TrimPrefix(k, "ws_closes_total"), r.ServerCloses[k]))
		}
		fmt.Fprintf(out, "server's ws_closes_total over the run: %s\n", strings.Join(parts, ", "))
	}
	if len(r.Told) > 0 {
		fmt.Fprintln(out, "\ntold by the server (allowed: the client resubscribes with since and epoch)")
		w = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		for _, k := range sortedKeys(r.Told) {
			fmt.Fprintf(w, "  %s\t%d\t\n", k, r.Told[k])
		}
		_ = w.Flush()
	}

	if len(r.Faults) > 0 {
		fmt.Fprintln(out, "\nfaults injected")
		for _, f := range r.Faults {
			line := fmt.Sprintf("  t=%.1fs %s", f.AtS, f.Kind)
			if f.DownS > 0 {
				line += fmt.Sprintf(", down %.1fs, restarted empty", f.DownS)
			}
			if f.Err != "" {
				line += ", ERROR " + f.Err
			}
			seen := "nothing"
			if len(f.Seen) > 0 {
				seen = joinCounts(f.Seen)
			}
			fmt.Fprintf(out, "%s; clients saw within %s after: %s\n", line, faultSeenFor, seen)
		}
	}

	fmt.Fprintf(out, "\nviolations: %d\n", r.ViolationsTotal)
	for _, v := range r.Violations {
		fmt.Fprintf(out, "  %d× %s\n", v.Count, v.Kind)
		for _, e := range v.Examples {
			fmt.Fprintf(out, "      %s\n", e)
		}
	}
	for _, n := range r.TailNotes {
		fmt.Fprintf(out, "  note: %s\n", n)
	}
	var ends []string
	for _, t := range sortedKeys(r.TopicEnds) {
		e := r.TopicEnds[t]
		ends = append(ends, fmt.Sprintf("%s seq %d epoch %q", t[strings.LastIndexByte(t, '.')+1:], e.Seq, e.Epoch))
	}
	if len(ends) > 0 {
		fmt.Fprintf(out, "topic ends (last seq and epoch, read by a fresh SUBSCRIBE): %s\n", strings.Join(ends, ", "))
	}

	fmt.Fprintln(out)
	w = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "server\tbaseline\tpeak\tafter the run\tbound\t")
	fmt.Fprintf(w, "goroutines\t%.0f\t%.0f\t%.0f\t%.0f\t\n", r.Baseline.Goroutines, r.Peak.Goroutines, r.End.Goroutines, r.Bounds.Goroutines)
	fmt.Fprintf(w, "RSS MiB (not judged)\t%.1f\t%.1f\t%.1f\t\t\n", r.Baseline.RSSMiB, r.Peak.RSSMiB, r.End.RSSMiB)
	fmt.Fprintf(w, "anonymous RSS MiB\t%.1f\t%.1f\t%.1f\t%.1f\t\n", r.Baseline.AnonMiB, r.Peak.AnonMiB, r.End.AnonMiB, r.Bounds.AnonMiB)
	heapBound := "not judged"
	if r.Bounds.HeapMiB > 0 {
		heapBound = fmt.Sprintf("%.1f", r.Bounds.HeapMiB)
	}
	fmt.Fprintf(w, "live heap MiB\t%.1f\t%.1f\t%.1f\t%s\t\n", r.Baseline.HeapMiB, r.Peak.HeapMiB, r.End.HeapMiB, heapBound)
	_ = w.Flush()
	back := "back within the bounds"
	if !r.MemOK {
		back = "NOT back within the bounds"
	}
	gc := ""
	if r.End.GCForced {
		gc = ", measured right after forced collections"
	}
	fmt.Fprintf(out, "%s, settled %.1fs after the last client closed%s\n", back, r.SettledSeconds, gc)
	if r.Plot != "" {
		fmt.Fprintf(out, "plot: %s\n", r.Plot)
	}
}

// stressPlotSpec is the run's figure: RSS (and heap), goroutines, and the delivery and
// request rates over time, with the faults marked.
func stressPlotSpec(run string, o *options, samples []stressSample, faults []fault, start time.Time, base memPoint, b memBounds) plotSpec {
	n := len(samples)
	t := make([]float64, n)
	rss, anon, heap, gor := make([]float64, n), make([]float64, n), make([]float64, n), make([]float64, n)
	del, req := make([]float64, n), make([]float64, n)
	for i, s := range samples {
		t[i], rss[i], anon[i], heap[i], gor[i], del[i], req[i] = s.T, s.RSSMiB, s.AnonMiB, s.HeapMiB, s.Goroutines, s.DeliveredPS, s.RequestsPS
	}
	spec := plotSpec{
		Title: fmt.Sprintf("switchboard-bench stress %s: %d subscribers, %d churners, %d rpc clients, %g broadcasts/s",
			run, o.n, o.churners, o.rpcClients, o.rate),
		Panels: []plotPanel{
			{Title: "server memory (MiB)", Series: []plotSeries{
				{Name: "RSS", Color: "#1f77b4", T: t, V: rss},
				{Name: "anonymous RSS", Color: "#17becf", T: t, V: anon},
				{Name: "heap allocated", Color: "#aec7e8", T: t, V: heap}},
				Refs: []plotRef{{V: base.AnonMiB, Label: "anonymous RSS baseline"}, {V: b.AnonMiB, Label: "anonymous RSS bound after the run", Color: "#d62728"}}},
			{Title: "server goroutines", Series: []plotSeries{{Name: "goroutines", Color: "#ff7f0e", T: t, V: gor}},
				Refs: []plotRef{{V: base.Goroutines, Label: "baseline"}, {V: b.Goroutines, Label: "bound after the run", Color: "#d62728"}}},
			{Title: "per second", Series: []plotSeries{
				{Name: "deliveries", Color: "#2ca02c", T: t, V: del},
				{Name: "answers", Color: "#9467bd", T: t, V: req}}},
		},
	}
	for _, f := range faults {
		at := f.At.Sub(start).Seconds()
		switch f.Kind {
		case "redis-kill":
			spec.Marks = append(spec.Marks, plotMark{T: at, Label: "redis kill -9", Color: "#d62728"})
			if !f.End.IsZero() {
				spec.Marks = append(spec.Marks, plotMark{T: f.End.Sub(start).Seconds(), Label: "redis back, empty", Color: "#2ca02c"})
			}
		default:
			spec.Marks = append(spec.Marks, plotMark{T: at, Label: "FLUSHALL", Color: "#e377c2"})
		}
	}
	spec.Marks = append(spec.Marks, plotMark{T: o.duration.Seconds(), Label: "load stops", Color: "#7f7f7f"})
	return spec
}
