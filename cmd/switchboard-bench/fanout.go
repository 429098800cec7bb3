package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"

	"switchboard/transport/client"
)

// target is a broadcast server under test: Switchboard or the built-in naive baseline.
type target struct {
	name          string // switchboard | baseline
	ws            string // ws://…/web
	ws2           string // a second node's ws://…/web (subscribers alternate); "" for one node
	http          string // http://… (POST /api/broadcast)
	subHeader     func(i int) http.Header
	producerToken string // bearer token of the producers ("" for the baseline, which checks none)
	pid           int    // for CPU accounting; 0: unknown (in-process baseline)
}

// subscriber is one connection's handler in a fan-out run; its read goroutine is the only
// writer of d.
type subscriber struct {
	baseHandler
	d           *delivery
	warmed      atomic.Bool
	got         atomic.Int64
	complete    *atomic.Int64 // subscribers that received every broadcast
	sampleEvery int
}

func (s *subscriber) OnMessage(_ *gws.Conn, m *gws.Message) {
	s.onData(m.Bytes())
	_ = m.Close()
}

// onData records one broadcast (the whole frame, or its data object): on the raw socket's read
// goroutine or on the Go client's callback goroutine, never both.
func (s *subscriber) onData(b []byte) {
	now := time.Now().UnixNano()
	seq, ts, ok := seqTS(b)
	if !ok {
		s.warmed.Store(true) // a warm-up broadcast: this connection is registered
		return
	}
	if s.d.record(seq, ts, now, s.sampleEvery) {
		s.complete.Add(1)
	}
	s.got.Add(1)
}

// disconnected counts a Go client's connection that the server closed (the raw sockets count
// theirs in baseHandler.OnClose).
func (s *subscriber) disconnected(d client.Disconnect) {
	if d.Code == 0 || s.closed == nil {
		return
	}
	s.closed.Add(1)
	if s.codes != nil {
		s.codes.add(fmt.Sprintf("server closed %d %s", d.Code, d.Reason))
	}
}

// runFanout measures Switchboard and/or the baseline and prints the ratio when both ran.
func runFanout(ctx context.Context, o *options, rep *reporter, switchboard, baseline bool) error {
	var sb, base *result
	if switchboard {
		tg, err := switchboardTarget(ctx, o, rep, o.n)
		if err != nil {
			return err
		}
		if sb, err = fanoutOnce(ctx, o, rep, tg, 0); err != nil {
			return err
		}
		if !baseline {
			rep.emit(sb)
		}
	}
	if baseline {
		if switchboard {
			rep.progress("switchboard run done; letting it close the connections before the baseline run")
			sleepCtx(ctx, 3*time.Second)
		}
		srv, err := startBaseline(ctx, o, rep)
		if err != nil {
			return err
		}
		defer srv.stop()
		tg := &target{name: "baseline", ws: "ws://" + srv.addr + "/web", http: "http://" + srv.addr, pid: srv.pid,
			subHeader: func(int) http.Header { return http.Header{} }, producerToken: "baseline"}
		if base, err = fanoutOnce(ctx, o, rep, tg, 0); err != nil {
			return err
		}
		if srv.pid == 0 {
			base.note("baseline ran inside the load tool (no --pin): it shared the client's CPU, so the ratio favours Switchboard")
		}
	}
	if sb != nil && base != nil {
		compare(o, sb, base)
		rep.emit(sb)
	}
	if base != nil {
		rep.emit(base)
	}
	return nil
}

// switchboardTarget mints the tokens of n subscribers and of the producer.
func switchboardTarget(ctx context.Context, o *options, rep *reporter, n int) (*target, error) {
	m, err := newMinter(o)
	if err != nil {
		return nil, err
	}
	rep.progress("minting tokens for %d subscribers", n)
	toks, err := m.userTokens(ctx, "bench-sub", n, o.perUser)
	if err != nil {
		return nil, err
	}
	ptok, err := m.mint("bench-producer", "broadcast")
	if err != nil {
		return nil, err
	}
	name := "switchboard"
	var ws2 string
	if o.url2 != "" {
		name, ws2 = "switchboard-2nodes", o.url2+"/web"
	}
	return &target{name: name, ws: o.url + "/web", ws2: ws2, http: o.http, pid: o.serverPID,
		subHeader: func(i int) http.Header { return bearer(toks[i]) }, producerToken: ptok}, nil
}

// compare puts the performance targets on the Switchboard result.
func compare(o *options, sb, base *result) {
	clean := sb.Lost == 0 && sb.OutOfOrder == 0 && sb.Duplicated == 0
	if o.rate == 0 {
		if base.PerSecond > 0 {
			sb.Ratio, sb.RatioOf = sb.PerSecond/base.PerSecond, " baseline msgs/s"
		}
		sb.goal("≥ 2.3× baseline, no loss/reorder", sb.Ratio >= 2.3 && clean)
		return
	}
	if base.P99ms > 0 {
		sb.Ratio, sb.RatioOf = sb.P99ms/base.P99ms, " baseline p99"
	}
	sb.goal("p99 ≤ baseline p99", sb.P99ms <= base.P99ms && clean)
}

// fanoutOnce runs one fan-out measurement against tg; slow extra connections never read.
func fanoutOnce(ctx context.Context, o *options, rep *reporter, tg *target, slow int) (*result, error) {
	n, b := o.n, o.messages
	sampleEvery := max(1, (n*b+o.maxSamples-1)/o.maxSamples)
	var complete, closed atomic.Int64
	var codes errorCounts
	subs := make([]*subscriber, n)
	for i := range subs {
		subs[i] = &subscriber{baseHandler: baseHandler{closed: &closed, codes: &codes}, complete: &complete, sampleEvery: sampleEvery,
			d: newDelivery(b, o.producers, b/sampleEvery+1)}
	}
	d := &dialer{url: tg.ws, alt: tg.ws2, readBuf: o.readBuf}
	rep.progress("[%s] opening %d subscribers (%s) to %s", tg.name, n, o.subClient, tg.ws)
	var p *pool
	if o.subClient == "go" && tg.name != "baseline" {
		p = openGoSubscribers(ctx, rep, o, tg, subs)
	} else {
		p = openPool(ctx, rep, d, n, o.c, o.duration, func(i int) gws.Event { return subs[i] }, tg.subHeader)
	}
	defer p.close()
	if p.ok == 0 {
		return nil, fmt.Errorf("[%s] no subscriber could connect: %s", tg.name, topErrors(p.errs.snapshot(), 3))
	}
	var live []*subscriber
	for i := range subs {
		if p.up(i) {
			live = append(live, subs[i])
		}
	}
	var stalled *pool
	if slow > 0 {
		rep.progress("[%s] opening %d slow consumers (they never read)", tg.name, slow)
		stalled = openPool(ctx, rep, &dialer{url: tg.ws, readBuf: o.readBuf, noRead: true}, slow, o.c, o.duration,
			func(int) gws.Event { return &baseHandler{} }, func(i int) http.Header { return tg.subHeader(n + i) })
		defer stalled.close()
	}
	slow0, _ := scrape(ctx, o, slowMetric)
	prod, err := newProducer(tg, o.producers)
	if err != nil {
		return nil, err
	}
	if err := warmUp(ctx, rep, prod, live, 30*time.Second); err != nil {
		return nil, fmt.Errorf("[%s] %w", tg.name, err)
	}

	mode := "asap"
	if o.rate > 0 {
		mode = fmt.Sprintf("%g/s", o.rate)
	}
	if slow > 0 {
		mode += fmt.Sprintf(" +%d slow", slow)
	}
	rep.progress("[%s] %d subscribers ready; sending %d broadcasts of %d bytes (%s, %d producer(s))", tg.name, len(live), b, o.size, mode, o.producers)
	cpu := startCPU(tg.pid)
	start := time.Now()
	sendDone := make(chan struct{})
	var sendEnd time.Time
	go func() {
		defer close(sendDone)
		prod.send(ctx, start, b, o.size, o.rate, start.Add(o.duration), nil)
		sendEnd = time.Now()
	}()
	got := func() int64 {
		var g int64
		for _, s := range live {
			g += s.got.Load()
		}
		return g
	}
	waitDeliveries(ctx, rep, tg.name, prod, len(live), got, &complete, sendDone, o.timeout)
	wall := time.Since(start)
	<-sendDone // the producers stop at the cap or with ctx; sendEnd is theirs until then
	cli, srv, oth := cpu.stop()

	res := &result{Scenario: "fanout", Target: tg.name, Mode: mode, N: len(live), C: o.c, Messages: b, Size: o.size,
		Rate: o.rate, Producers: o.producers, NoFile: o.nofile, Unit: "msgs", Failed: p.failed, Errors: p.errs.snapshot(),
		ConnectPS: float64(p.ok) / p.took.Seconds()}
	var lastRecv int64
	var samples []uint32
	for _, s := range live {
		res.OK += int64(s.d.unique)
		res.Duplicated += int64(s.d.dup)
		res.OutOfOrder += int64(s.d.ooo)
		lastRecv = max(lastRecv, s.d.lastRecv)
		samples = append(samples, s.d.lat...)
		if s.d.foreign > 0 {
			res.Errors = addErr(res.Errors, "foreign sequence numbers", s.d.foreign)
		}
	}
	sent := prod.accepted.Load()
	res.Expected = int64(len(live)) * int64(b)
	res.Lost = res.Expected - res.OK
	window := wall
	if lastRecv > 0 {
		window = time.Duration(lastRecv - start.UnixNano())
	}
	res.Seconds = window.Seconds()
	res.PerSecond = float64(res.OK) / window.Seconds()
	res.setLatency(summarize(samples))
	res.ClientCPU, res.ServerCPU, res.OtherCPU = cli, srv, oth
	prodWindow := sendEnd.Sub(start)
	res.ProducerPS = float64(sent) / prodWindow.Seconds()
	producerBound := o.rate == 0 && prodWindow >= window*9/10
	res.Limit = limitGuess(res.ServerCPU, res.ClientCPU, res.OtherCPU, producerBound)
	if o.rate > 0 {
		res.Limit = ""
	}
	if sent < int64(b) {
		res.note("only %d of %d broadcasts were accepted (%s)", sent, b, topErrors(prod.errs.snapshot(), 2))
	}
	if slow > 0 {
		res.Slow = slow
		if slow1, err := scrape(ctx, o, slowMetric); err == nil && slow0 != nil {
			res.SlowClosed = int64(slow1[slowMetric] - slow0[slowMetric])
		}
	}
	if c := closed.Load(); c > 0 {
		res.note("%d subscribers were closed by the server during the run: %s", c, topErrors(codes.snapshot(), 3))
	}
	if sampleEvery > 1 {
		res.note("latency sampled on every %d-th broadcast", sampleEvery)
	}
	rep.progress("[%s] %.0f msgs/s delivered, p50 %.1f ms, p99 %.1f ms, lost %d, dup %d, ooo %d, server cpu %.0f%%, client cpu %.0f%%, other processes %.0f%%",
		tg.name, res.PerSecond, res.P50ms, res.P99ms, res.Lost, res.Duplicated, res.OutOfOrder, res.ServerCPU, res.ClientCPU, res.OtherCPU)
	return res, nil
}

func addErr(m map[string]int, k string, v int) map[string]int {
	if m == nil {
		m = map[string]int{}
	}
	m[k] += v
	return m
}

// warmUp broadcasts marker messages until every subscriber has received one, so measuring
// starts with every connection registered in the server's hub.
func warmUp(ctx context.Context, rep *reporter, prod *producer, subs []*subscriber, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		if err := prod.post(ctx, "", []byte(`{"w":1}`)); err != nil {
			return fmt.Errorf("warm-up broadcast: %w", err)
		}
		for range 10 {
			sleepCtx(ctx, 50*time.Millisecond)
			ready := 0
			for _, s := range subs {
				if s.warmed.Load() {
					ready++
				}
			}
			if ready == len(subs) {
				sleepCtx(ctx, 200*time.Millisecond) // let the last warm-up frames drain
				return nil
			}
		}
	}
	return fmt.Errorf("warm-up: not every subscriber received a broadcast within %s", limit)
}

// waitDeliveries prints progress until every subscriber has every broadcast, or the timeout
// after sending ended.
func waitDeliveries(ctx context.Context, rep *reporter, name string, prod *producer, subs int, got func() int64,
	complete *atomic.Int64, sendDone <-chan struct{}, timeout time.Duration) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var giveUp <-chan time.Time
	lastPrint := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sendDone:
			sendDone = nil
			giveUp = time.After(timeout)
		case <-giveUp:
			rep.progress("[%s] timeout: %d of %d subscribers complete", name, complete.Load(), subs)
			return
		case <-tick.C:
			if sendDone == nil && complete.Load() == int64(subs) {
				return
			}
			if time.Since(lastPrint) >= time.Second {
				lastPrint = time.Now()
				rep.progress("[%s] sent %d, delivered %d, complete subscribers %d/%d",
					name, prod.accepted.Load(), got(), complete.Load(), subs)
			}
		}
	}
}

// producer POSTs broadcasts over keep-alive HTTP connections, through the Go client's
// Publisher (transport/client): a producer that never receives needs no WebSocket.
type producer struct {
	pub      *client.Publisher
	workers  int
	accepted atomic.Int64
	errs     errorCounts
}

func newProducer(tg *target, workers int) (*producer, error) {
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: workers + 1, DisableCompression: true, ForceAttemptHTTP2: false}
	pub, err := client.NewPublisher(client.PublisherConfig{BaseURL: tg.http, Token: tg.producerToken,
		HTTPClient: &http.Client{Transport: tr, Timeout: 10 * time.Second}})
	if err != nil {
		return nil, err
	}
	return &producer{pub: pub, workers: workers}, nil
}

// post publishes data (a JSON object) with pkg_id 100 on topic ("" for every connection).
func (p *producer) post(ctx context.Context, topic string, data []byte) error {
	_, err := p.pub.Publish(ctx, topic, 100, json.RawMessage(data))
	var e *client.Error
	if errors.As(err, &e) && e.HTTPStatus == http.StatusTooManyRequests {
		return fmt.Errorf("POST /api/broadcast: %w (raise SWITCHBOARD_RATE_LIMIT_PER_MINUTE on the server)", err)
	}
	if err != nil {
		return fmt.Errorf("POST /api/broadcast: %w", err)
	}
	return nil
}

// send posts broadcasts 0…b-1 (on topicOf(i), or to every connection when topicOf is nil):
// worker k sends k, k+P, k+2P…, each after the previous one was
// accepted, so the server's order within a worker is the sequence order. With rate > 0,
// broadcast i leaves at start + i/rate. Sending stops at the first error or at capAt.
func (p *producer) send(ctx context.Context, start time.Time, b, size int, rate float64, capAt time.Time, topicOf func(int) string) {
	var wg sync.WaitGroup
	for k := range p.workers {
		wg.Go(func() {
			var data []byte
			for seq := k; seq < b && ctx.Err() == nil && time.Now().Before(capAt); seq += p.workers {
				if rate > 0 {
					at := start.Add(time.Duration(float64(seq) / rate * float64(time.Second)))
					sleepCtx(ctx, time.Until(at))
				}
				data = payload(data, seq, time.Now().UnixNano(), size)
				topic := ""
				if topicOf != nil {
					topic = topicOf(seq)
				}
				if err := p.post(ctx, topic, data); err != nil {
					p.errs.add(classify(err))
					return
				}
				p.accepted.Add(1)
			}
		})
	}
	wg.Wait()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
