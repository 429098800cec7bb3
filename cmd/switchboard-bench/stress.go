package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"switchboard/transport/auth"
)

// The stress scenario: a bounded mixed run — subscribers holding topics across reconnections,
// churning connections that end in every way the contract names, pipelined request/response
// clients, producers broadcasting on topics and to everyone — with the private Redis killed
// and restarted empty (or flushed) mid-run, checking the contract's invariants as it goes and,
// at the end, that the server's goroutines and memory came back to their level before the run.

// durationList is a flag holding durations: "20s,40s", or the flag repeated.
type durationList []time.Duration

func (l *durationList) String() string {
	var parts []string
	for _, d := range *l {
		parts = append(parts, d.String())
	}
	return strings.Join(parts, ",")
}

func (l *durationList) Set(s string) error {
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		d, err := time.ParseDuration(part)
		if err != nil {
			return err
		}
		*l = append(*l, d)
	}
	return nil
}

// stressDefaults fills the stress scenario's defaults for the flags left unset and checks
// its own flags; set names the flags given on the command line.
func (o *options) stressDefaults(set map[string]bool) error {
	o.external = set["url"]
	if !set["n"] {
		o.n = 40
	}
	if o.duration == 0 {
		o.duration = 60 * time.Second
	}
	if o.rate == 0 {
		o.rate = 40
	}
	if !set["producers"] {
		o.producers = 2
	}
	if !set["topics"] {
		o.topics = 6
	}
	if !set["timeout"] {
		o.timeout = 30 * time.Second
	}
	dur := o.duration
	switch {
	case o.topics < 1 || o.topics > 100:
		return fmt.Errorf("--topics must be between 1 and 100 (a connection holds at most 100 subscriptions)")
	case o.topicsPerSub < 1 || o.topicsPerSub > o.topics:
		return fmt.Errorf("--topics-per-sub must be between 1 and --topics (%d)", o.topics)
	case o.churners < 0 || o.churners > 1000:
		return fmt.Errorf("--churners must be between 0 and 1000")
	case o.rpcClients < 0 || o.rpcClients > 1000:
		return fmt.Errorf("--rpc-clients must be between 0 and 1000")
	case o.rpcRate <= 0:
		return fmt.Errorf("--rpc-rate must be positive")
	case o.allRatio < 0 || o.allRatio > 1:
		return fmt.Errorf("--all-ratio must be between 0 and 1")
	case o.duration < 3*time.Second || o.duration > 24*time.Hour:
		return fmt.Errorf("stress: --duration must be between 3s and 24h")
	case o.redisDown <= 0:
		return fmt.Errorf("--redis-down must be positive")
	case o.external && (len(o.killAt) > 0 || len(o.flushAt) > 0):
		return errors.New("--kill-redis-at and --flush-redis-at need the self-contained mode (no --url): " +
			"the tool only kills or flushes a redis-server it started itself")
	}
	if o.dsn != "" {
		if err := loopbackOnly(o.dsn); err != nil {
			return err
		}
	}
	// Every fault ends with time left for the clients to catch up before the producers stop.
	kills := slices.Clone(o.killAt)
	slices.Sort(kills)
	for i, at := range kills {
		if at <= 0 || at+o.redisDown > dur-2*time.Second {
			return fmt.Errorf("--kill-redis-at %s: Redis must be back (after --redis-down %s) at least 2s before --duration %s ends", at, o.redisDown, dur)
		}
		if i > 0 && at < kills[i-1]+o.redisDown+time.Second {
			return fmt.Errorf("--kill-redis-at %s: the previous kill at %s is not over (--redis-down %s)", at, kills[i-1], o.redisDown)
		}
	}
	for _, at := range o.flushAt {
		if at <= 0 || at > dur-2*time.Second {
			return fmt.Errorf("--flush-redis-at %s must be within the run and at least 2s before its end", at)
		}
	}
	return nil
}

// stressTopics names the run's topics under dashboards.* (any user may subscribe, broadcast
// publishes); the run id keeps runs against a shared server apart.
func stressTopics(run string, k int) []string {
	out := make([]string, k)
	for i := range out {
		out[i] = fmt.Sprintf("dashboards.stress.%s.%d", run, i)
	}
	return out
}

func authMint(user, clientID string, ttl time.Duration, roles ...string) auth.MintParams {
	return auth.MintParams{Subject: user, ClientID: clientID, Roles: roles, TTL: ttl}
}

// runStress runs the scenario and returns an error when an invariant was violated or the
// server did not come back to its baseline, so the exit status can gate a run.
func runStress(ctx context.Context, o *options, rep *reporter) error {
	env, err := setupStressEnv(ctx, o, rep)
	if err != nil {
		return err // setupStressEnv stopped what it had started
	}
	defer env.close(rep)
	mo := *o
	mo.dataDir = env.dataDir
	m, err := newMinter(&mo)
	if err != nil {
		return err
	}
	var rid [3]byte
	_, _ = rand.Read(rid[:])
	run := hex.EncodeToString(rid[:])
	topics := stressTopics(run, o.topics)
	d := &dialer{url: env.ws, readBuf: o.readBuf}
	p := newProbe(env)
	mint := func(user string, roles ...string) (string, error) {
		tok, _, err := m.dev.Mint(authMint(fmt.Sprintf("stress-%s-%s", run, user), m.clientID, m.ttl, roles...))
		return tok, err
	}

	// Warm the server up (first connection, subscription, broadcast, query) so that the
	// baseline is a server that has served, not one that has only started.
	st := newStressState(run, time.Now(), d, m)
	if err := stressWarmUp(ctx, st, env, topics[0], mint); err != nil {
		return fmt.Errorf("stress: warm-up: %w", err)
	}
	base, text0, err := baselineMem(ctx, p)
	if err != nil {
		return fmt.Errorf("stress: reading the server's baseline: %w", err)
	}
	rep.progress("baseline: %.0f goroutines, RSS %.1f MiB (anonymous %.1f), heap %.1f MiB (after forced collections: %v)",
		base.Goroutines, base.RSSMiB, base.AnonMiB, base.HeapMiB, base.GCForced)

	st = newStressState(run, time.Now(), d, m)
	var died func() bool
	if env.server != nil {
		proc := env.server.proc
		died = proc.exited
	}
	smp := startSampler(ctx, p, st, died, rep)
	deadline := st.start.Add(o.duration)
	hard := deadline.Add(o.timeout + 30*time.Second)
	rep.progress("stress run %s: %d subscribers × %d of %d topics, %d churners, %d rpc clients, %d producers at %g broadcasts/s, for %s",
		run, o.n, o.topicsPerSub, o.topics, o.churners, o.rpcClients, o.producers, o.rate, o.duration)

	subCtx, stopSubs := context.WithCancel(ctx)
	defer stopSubs()
	var subWG, workWG, faultWG sync.WaitGroup
	subs := make([]*stressSubscriber, o.n)
	subTopics := make([][]string, o.n)
	for i := range subs {
		tok, err := mint(fmt.Sprintf("sub-%d", i))
		if err != nil {
			return err
		}
		for k := range o.topicsPerSub {
			subTopics[i] = append(subTopics[i], topics[(i+k)%o.topics])
		}
		subs[i] = newStressSubscriber(st, i, tok, subTopics[i])
		subWG.Go(func() { subs[i].run(subCtx, hard) })
	}
	for i := range o.churners {
		tok, err := mint(fmt.Sprintf("churn-%d", i), "get-authors")
		if err != nil {
			return err
		}
		c := &churner{id: i, token: tok, st: st, env: env, topics: topics}
		workWG.Go(func() { c.run(ctx, deadline, 100_000) })
	}
	for i := range o.rpcClients {
		tok, err := mint(fmt.Sprintf("rpc-%d", i), "get-authors", "create-author", "delete-author")
		if err != nil {
			return err
		}
		w := &rpcWorker{id: i, token: tok, st: st, topics: topics, rate: o.rpcRate}
		workWG.Go(func() { w.run(ctx, deadline) })
	}
	// The producers start once the subscribers had a moment to subscribe.
	sleepCtx(ctx, 500*time.Millisecond)
	for i := range o.producers {
		tok, err := mint(fmt.Sprintf("prod-%d", i), "broadcast")
		if err != nil {
			return err
		}
		pr, err := newStressProducer(st, i, env.http, tok, topics, o.rate/float64(o.producers), o.allRatio)
		if err != nil {
			return err
		}
		workWG.Go(func() { pr.run(ctx, deadline) })
	}
	faultWG.Go(func() { runFaults(ctx, o, env, st, rep) })

	workWG.Wait()
	faultWG.Wait()
	if err := ctx.Err(); err != nil {
		// Interrupted (SIGINT): no verdict; the deferred close stops the server and Redis.
		stopSubs()
		subWG.Wait()
		smp.stop()
		return fmt.Errorf("stress: interrupted: %w", err)
	}
	rep.progress("workers done; checking that every subscriber reaches each topic's last message")
	witness, err := mint("witness")
	if err != nil {
		return err
	}
	final, err := finalPositions(ctx, st, witness, topics, o.timeout)
	if err != nil {
		st.v.add(vTail, "witness could not connect: %v", err)
	}
	tailNotes := waitTail(ctx, subs, subTopics, topics, final, o.timeout, st)
	stopSubs()
	subWG.Wait()

	rep.progress("every client closed; waiting (at most %s) for the server to settle", o.settleTimeout)
	end, settledIn, memOK, bounds := settle(ctx, p, base, o)
	samples := smp.stop()
	text1, _ := p.metrics(ctx)
	if panics := metricSeries(text1, "ws_connection_panics_total")["ws_connection_panics_total"] -
		metricSeries(text0, "ws_connection_panics_total")["ws_connection_panics_total"]; panics > 0 {
		st.v.add(vServerPanic, "ws_connection_panics_total rose by %.0f", panics)
	}
	serverCloses := seriesDelta(metricSeries(text0, "ws_closes_total"), metricSeries(text1, "ws_closes_total"))
	if env.server != nil {
		if died != nil && died() {
			st.v.add(vServerDied, "the server process had exited before the end of the run")
		} else if err := env.stopServer(); err != nil {
			st.v.add(vServerExit, "%v", err)
		}
	}

	var tot subTotals
	for _, s := range subs {
		s.mu.Lock()
		tot.gaps, tot.dups = tot.gaps+s.chk.gaps, tot.dups+s.chk.dups
		s.mu.Unlock()
	}
	r := buildStressReport(o, st, env, tot, base, end, peak(samples), settledIn, memOK, bounds, tailNotes, final, serverCloses)
	if o.plot != "" {
		spec := stressPlotSpec(run, o, samples, st.faults.snapshot(), st.start, base, bounds)
		if err := writePlotFile(o.plot, spec); err != nil {
			rep.progress("plot: %v", err)
		} else {
			r.Plot = o.plot
		}
	}
	res := stressResult(o, st, r)
	printStressReport(rep, r)
	rep.emit(res)
	switch {
	case r.ViolationsTotal > 0 && !memOK:
		return fmt.Errorf("stress: %d invariant violations, and the server did not come back to its baseline", r.ViolationsTotal)
	case r.ViolationsTotal > 0:
		return fmt.Errorf("stress: %d invariant violations", r.ViolationsTotal)
	case !memOK:
		return errors.New("stress: the server did not come back to its baseline (goroutines, RSS or heap)")
	}
	return nil
}

// stressWarmUp exercises each path once: a connection that subscribes and reads, and a
// broadcast on a topic and to everyone.
func stressWarmUp(ctx context.Context, st *stressState, env *stressEnv, topic string, mint func(string, ...string) (string, error)) error {
	tok, err := mint("warmup", "get-authors", "broadcast")
	if err != nil {
		return err
	}
	got := make(chan struct{}, 4)
	sc, err := dialStress(st, "warm-up", tok, func(e *envelope) {
		if e.StatusCode != nil {
			select {
			case got <- struct{}{}:
			default:
			}
		}
	})
	if err != nil {
		return err
	}
	_ = sc.send(request(pkgSubscribe, stressReqID('u', 0, 1), fmt.Sprintf(`{"topic":%q}`, topic)))
	_ = sc.send(request(pkgGet, stressReqID('u', 0, 2), `{"filters":{"id":1}}`))
	for range 2 {
		select {
		case <-got:
		case <-time.After(10 * time.Second):
			return errors.New("no answer within 10s")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	pr, err := newStressProducer(st, -1, env.http, tok, []string{topic}, 1, 0)
	if err != nil {
		return err
	}
	defer pr.hc.CloseIdleConnections()
	for _, to := range []string{topic, ""} {
		if err := pr.post(ctx, to, map[string]string{"run": "warm-up"}); err != nil {
			return fmt.Errorf("broadcast: %w", err)
		}
	}
	if seen := sc.closeNormal(5 * time.Second); seen.code != 1000 {
		return fmt.Errorf("close 1000 answered with %s", seen)
	}
	return nil
}

// baselineMem measures the idle server three times after forced collections and keeps the
// median of each figure.
func baselineMem(ctx context.Context, p *probe) (memPoint, []byte, error) {
	var pts []memPoint
	var text []byte
	for range 3 {
		sleepCtx(ctx, 300*time.Millisecond)
		m, t, err := p.mem(ctx, true)
		if err != nil {
			return memPoint{}, nil, err
		}
		pts, text = append(pts, m), t
	}
	med := func(f func(memPoint) float64) float64 {
		v := []float64{f(pts[0]), f(pts[1]), f(pts[2])}
		slices.Sort(v)
		return v[1]
	}
	return memPoint{Goroutines: med(func(m memPoint) float64 { return m.Goroutines }),
		RSSMiB:   med(func(m memPoint) float64 { return m.RSSMiB }),
		AnonMiB:  med(func(m memPoint) float64 { return m.AnonMiB }),
		HeapMiB:  med(func(m memPoint) float64 { return m.HeapMiB }),
		GCForced: pts[2].GCForced}, text, nil
}

// memBounds are the levels the server must come back under after the run.
type memBounds struct {
	Goroutines float64 `json:"goroutines"`
	AnonMiB    float64 `json:"rss_anon_mib"`
	HeapMiB    float64 `json:"heap_alloc_mib,omitempty"` // 0: not judged (no forced collection)
}

// boundsFor: goroutines within 5 % + 20 of the baseline (pools and timers that legitimately
// differ by a few); anonymous RSS within --rss-slack MiB or half the baseline, whichever is
// more; the live heap after forced collections within --heap-slack MiB or half the baseline.
// File-backed RSS (the binary's code and data, paged in when a path first runs) is not
// memory the server holds on to and is left out. docs/performance.md explains the sizes.
func boundsFor(base memPoint, o *options) memBounds {
	b := memBounds{Goroutines: base.Goroutines*1.05 + 20, AnonMiB: base.AnonMiB + max(o.rssSlackMiB, 0.5*base.AnonMiB)}
	if base.GCForced {
		b.HeapMiB = base.HeapMiB + max(o.heapSlackMiB, 0.5*base.HeapMiB)
	}
	return b
}

// holds reports whether m is within the bounds.
func (b memBounds) holds(m memPoint) bool {
	return m.Goroutines <= b.Goroutines && m.AnonMiB <= b.AnonMiB && (b.HeapMiB == 0 || m.HeapMiB <= b.HeapMiB)
}

// settle polls the server once a second, forcing collections each time when it can, until its
// figures have settled — goroutines unchanged and anonymous RSS within 0.5 MiB over three
// readings — within their bounds, or --settle-timeout passes; it judges the last reading. A
// reading taken right after the last client closed is a transient: the runtime is still giving
// back what the connections held.
func settle(ctx context.Context, p *probe, base memPoint, o *options) (memPoint, time.Duration, bool, memBounds) {
	b := boundsFor(base, o)
	start := time.Now()
	var last memPoint
	have, stable := false, 0
	for i := 0; i < 10_000 && ctx.Err() == nil; i++ {
		if m, _, err := p.mem(ctx, true); err == nil {
			if have && m.Goroutines == last.Goroutines && math.Abs(m.AnonMiB-last.AnonMiB) < 0.5 {
				stable++
			} else {
				stable = 0
			}
			last, have = m, true
			if stable >= 2 && b.holds(m) {
				return m, time.Since(start), true, b
			}
		}
		if time.Since(start) >= o.settleTimeout {
			break
		}
		sleepCtx(ctx, time.Second)
	}
	return last, time.Since(start), have && b.holds(last), b
}

// runFaults injects the planned Redis faults at their times from the start of the run.
func runFaults(ctx context.Context, o *options, env *stressEnv, st *stressState, rep *reporter) {
	type step struct {
		at   time.Duration
		kind string
	}
	var steps []step
	for _, at := range o.killAt {
		steps = append(steps, step{at, "redis-kill"})
	}
	for _, at := range o.flushAt {
		steps = append(steps, step{at, "redis-flush"})
	}
	slices.SortFunc(steps, func(a, b step) int { return int(a.at - b.at) })
	for _, s := range steps {
		sleepCtx(ctx, time.Until(st.start.Add(s.at)))
		if ctx.Err() != nil || env.redis == nil {
			return
		}
		switch s.kind {
		case "redis-kill":
			i := st.faults.begin(s.kind, time.Now())
			env.redis.kill()
			rep.progress("fault: redis-server killed (SIGKILL) at %s; back in %s, empty", s.at, o.redisDown)
			sleepCtx(ctx, o.redisDown)
			if ctx.Err() != nil {
				return
			}
			err := env.redis.start(ctx)
			st.faults.end(i, time.Now(), err)
			if err != nil {
				rep.progress("fault: redis-server did not come back: %v", err)
			} else {
				rep.progress("fault: redis-server restarted (empty)")
			}
		case "redis-flush":
			i := st.faults.begin(s.kind, time.Now())
			err := env.redis.flushAll()
			st.faults.end(i, time.Now(), err)
			rep.progress("fault: FLUSHALL on the private redis-server at %s (%v)", s.at, err)
		}
	}
}

// waitTail waits (bounded) until every subscriber stands at the last message of each of its
// topics, then records a violation for each one that does not: it lost the tail of a stream
// without being told. It returns notes about topics that could not be judged.
func waitTail(ctx context.Context, subs []*stressSubscriber, subTopics [][]string, all []string,
	final map[string]topicPosition, limit time.Duration, st *stressState) []string {
	var notes []string
	judged := map[string]bool{}
	for _, t := range all {
		switch pos, ok := final[t]; {
		case !ok:
			notes = append(notes, t+": the witness got no SUBSCRIBE answer, so its end was not judged")
		case pos.Seq == 0 && pos.Epoch == "":
			notes = append(notes, t+": no stream at the end (nothing published since its history was lost), not judged")
		default:
			judged[t] = true
		}
	}
	behind := func() []string {
		var out []string
		for i, s := range subs {
			for _, t := range subTopics[i] {
				if !judged[t] {
					continue
				}
				seq, epoch, subscribed := s.position(t)
				if f := final[t]; !subscribed || epoch != f.Epoch || seq < f.Seq {
					out = append(out, fmt.Sprintf("subscriber %d at %s seq %d epoch %q (subscribed %v), the topic ends at seq %d epoch %q",
						i, t, seq, epoch, subscribed, f.Seq, f.Epoch))
				}
			}
		}
		return out
	}
	end := time.Now().Add(limit)
	var left []string
	for i := 0; i < 100_000 && ctx.Err() == nil; i++ {
		if left = behind(); len(left) == 0 || time.Now().After(end) {
			break
		}
		sleepCtx(ctx, 100*time.Millisecond)
	}
	for _, l := range left {
		st.v.add(vTail, "%s", l)
	}
	return notes
}

// writePlotFile writes the SVG figure of the run's samples.
func writePlotFile(path string, spec plotSpec) error {
	if !strings.HasSuffix(strings.ToLower(path), ".svg") {
		return fmt.Errorf("--plot %s: only .svg is written", path)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	err = writeSVG(f, spec)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
