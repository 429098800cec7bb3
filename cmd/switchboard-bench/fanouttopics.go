package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/lxzan/gws"
)

// fanout --topics K: the subscribers spread over K topics dashboards.0…K-1 (subscriber i on
// topic i mod K), the producers publishing each broadcast on a topic drawn at random (seeded,
// so the tool knows in advance what each topic gets). It runs after the broadcast-to-all run of
// the same invocation and reports, next to it, the delivery rate and the rate of connect +
// SUBSCRIBE (the broadcast-to-all run reports connect alone).
//
// The topic subscribers are raw receive-only gws sockets that decode every frame: the checker
// needs the server's own frames (a duplicate, a seq that skips) which the Go client would absorb
// by design. Per subscriber it checks: every broadcast of its topic arrives (no loss), once (by
// the producer's serial in data.seq), in the producers' order, on its topic only, and with the
// topic's seq one more than the last (starting after the SUBSCRIBE answer's seq) in one epoch.

// topicFrame is what a topic subscriber reads of a frame: the SUBSCRIBE answer (status_code
// set; data is {"topic","seq","epoch","recovered"}) or a topic broadcast (data is the tool's
// payload: seq is the producer's serial, ts its send time).
type topicFrame struct {
	StatusCode *int    `json:"status_code"`
	Msg        *string `json:"msg"`
	Topic      string  `json:"topic"`
	Seq        uint64  `json:"seq"`
	Epoch      string  `json:"epoch"`
	Data       struct {
		Seq   int64  `json:"seq"`
		TS    int64  `json:"ts"`
		Epoch string `json:"epoch"`
	} `json:"data"`
}

// topicSub is one subscriber of the topic run; its read goroutine is the only writer of
// everything but the atomics and the answer channel.
type topicSub struct {
	baseHandler
	topic       string
	d           *delivery
	want        int // broadcasts its topic gets
	sampleEvery int
	complete    *atomic.Int64
	got         atomic.Int64
	answer      chan string // the SUBSCRIBE answer: "" for status 0, else the refusal

	answered                                bool
	epoch                                   string
	last                                    uint64 // the topic's seq of the last broadcast taken
	seqGaps, seqRepeats, wrongTopic, epochs int
	undecodable                             int
}

func (s *topicSub) OnMessage(_ *gws.Conn, m *gws.Message) {
	s.onFrame(m.Bytes(), time.Now().UnixNano())
	_ = m.Close()
}

// onFrame checks and accounts one frame received at now (unix nanos).
func (s *topicSub) onFrame(b []byte, now int64) {
	var f topicFrame
	err := json.Unmarshal(b, &f)
	switch {
	case err != nil:
		s.undecodable++
		return
	case f.StatusCode != nil:
		if s.answered {
			return
		}
		s.answered = true
		refusal := ""
		if *f.StatusCode != 0 {
			refusal = fmt.Sprintf("SUBSCRIBE %s: status %d", s.topic, *f.StatusCode)
			if f.Msg != nil {
				refusal += " " + *f.Msg
			}
		}
		s.last, s.epoch = uint64(f.Data.Seq), f.Data.Epoch
		s.answer <- refusal
		return
	case f.Topic == "":
		return // a broadcast to every connection: not this run's
	case f.Topic != s.topic:
		s.wrongTopic++
		return
	}
	switch {
	case s.epoch != "" && f.Epoch != s.epoch:
		s.epochs++ // the stream restarted under the run: its seq starts again
		s.epoch, s.last = f.Epoch, f.Seq
	case f.Seq <= s.last:
		s.seqRepeats++
	case f.Seq != s.last+1:
		s.seqGaps++
		s.last = f.Seq
	default:
		s.last = f.Seq
	}
	before := s.d.unique
	s.d.record(f.Data.Seq, f.Data.TS, now, s.sampleEvery)
	s.got.Add(1)
	if s.d.unique != before && s.d.unique == s.want {
		s.complete.Add(1)
	}
}

// topicName is topic k of the run.
func topicName(k int) string { return "dashboards." + strconv.Itoa(k) }

// runTopicFanout runs broadcast-to-all and then the topic run against Switchboard, and reports
// them side by side.
func runTopicFanout(ctx context.Context, o *options, rep *reporter) error {
	tg, err := switchboardTarget(ctx, o, rep, o.n)
	if err != nil {
		return err
	}
	all, err := fanoutOnce(ctx, o, rep, tg, 0)
	if err != nil {
		return err
	}
	rep.progress("broadcast-to-all run done; letting the server close its connections before the topic run")
	sleepCtx(ctx, 3*time.Second)
	top, err := fanoutTopics(ctx, o, rep, tg)
	if err != nil {
		return err
	}
	if all.PerSecond > 0 {
		top.Ratio, top.RatioOf = top.PerSecond/all.PerSecond, " broadcast-to-all msgs/s"
	}
	if all.ConnectPS > 0 && top.SubscribePS > 0 {
		top.note("connect + SUBSCRIBE %.0f conns/s; connect alone (broadcast-to-all run) %.0f conns/s", top.SubscribePS, all.ConnectPS)
	}
	if o.compare {
		all.note("the naive baseline has no topics: --topics runs without it")
	}
	rep.emit(all)
	rep.emit(top)
	return nil
}

// fanoutTopics measures one topic run: connect + SUBSCRIBE every subscriber, then
// o.messages × K broadcasts (o.messages per topic on average) on random topics.
func fanoutTopics(ctx context.Context, o *options, rep *reporter, tg *target) (*result, error) {
	n, k := o.n, o.topics
	b := min(o.messages*k, 1_000_000)
	rng := rand.New(rand.NewPCG(uint64(n), uint64(k)))
	topicOf := make([]int, b)
	perTopic := make([]int, k)
	for i := range topicOf {
		topicOf[i] = rng.IntN(k)
		perTopic[topicOf[i]]++
	}
	sampleEvery := max(1, (n*o.messages+o.maxSamples-1)/o.maxSamples)
	var complete, closed atomic.Int64
	var codes errorCounts
	subs := make([]*topicSub, n)
	for i := range subs {
		t := i % k
		subs[i] = &topicSub{baseHandler: baseHandler{closed: &closed, codes: &codes}, topic: topicName(t), want: perTopic[t],
			d: newDelivery(b, o.producers, perTopic[t]/sampleEvery+1), sampleEvery: sampleEvery, complete: &complete,
			answer: make(chan string, 1)}
	}
	// Subscribers whose topic gets nothing are complete from the start.
	for _, s := range subs {
		if s.want == 0 {
			complete.Add(1)
		}
	}

	rep.progress("[%s] connecting %d subscribers over %d topics, each subscribing before the next dial", tg.name, n, k)
	p, err := openSubscribed(ctx, rep, o, tg, subs)
	defer p.close()
	if err != nil {
		return nil, fmt.Errorf("[%s] %w", tg.name, err)
	}
	subTook := p.took
	prod, err := newProducer(tg, o.producers)
	if err != nil {
		return nil, err
	}
	mode := fmt.Sprintf("%d topics", k)
	if o.rate > 0 {
		mode += fmt.Sprintf(" %g/s", o.rate)
	}
	rep.progress("[%s] %d subscribers on %d topics; sending %d broadcasts of %d bytes on random topics", tg.name, n, k, b, o.size)
	cpu := startCPU(tg.pid)
	start := time.Now()
	sendDone := make(chan struct{})
	var sendEnd time.Time
	go func() {
		defer close(sendDone)
		prod.send(ctx, start, b, o.size, o.rate, start.Add(o.duration), func(i int) string { return topicName(topicOf[i]) })
		sendEnd = time.Now()
	}()
	got := func() int64 {
		var g int64
		for _, s := range subs {
			g += s.got.Load()
		}
		return g
	}
	waitDeliveries(ctx, rep, tg.name, prod, n, got, &complete, sendDone, o.timeout)
	wall := time.Since(start)
	<-sendDone
	cli, srv, oth := cpu.stop()
	// As in fanoutOnce, the subscribers' accounts are read once every one is complete (or the
	// timeout passed); the sockets close when this returns.
	res := &result{Scenario: "fanout", Target: tg.name, Mode: mode, N: n, C: o.c, Messages: b, Size: o.size, Rate: o.rate,
		Producers: o.producers, NoFile: o.nofile, Unit: "msgs", Topics: k,
		SubscribePS: float64(n) / subTook.Seconds()}
	var lastRecv int64
	var samples []uint32
	var gaps, repeats, wrong, epochs, undecodable int
	for _, s := range subs {
		res.Expected += int64(s.want)
		res.OK += int64(s.d.unique)
		res.Duplicated += int64(s.d.dup)
		res.OutOfOrder += int64(s.d.ooo)
		lastRecv = max(lastRecv, s.d.lastRecv)
		samples = append(samples, s.d.lat...)
		gaps += s.seqGaps
		repeats += s.seqRepeats
		wrong += s.wrongTopic + s.d.foreign
		epochs += s.epochs
		undecodable += s.undecodable
	}
	sent := prod.accepted.Load()
	res.Lost = res.Expected - res.OK
	for what, v := range map[string]int{"topic seq skipped ahead": gaps, "topic seq repeated": repeats,
		"message of another topic or run": wrong, "topic stream restarted (epoch)": epochs, "undecodable frames": undecodable} {
		if v > 0 {
			res.Errors = addErr(res.Errors, what, v)
		}
	}
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
	res.Limit = limitGuess(res.ServerCPU, res.ClientCPU, res.OtherCPU, o.rate == 0 && prodWindow >= window*9/10)
	clean := res.Lost == 0 && res.Duplicated == 0 && res.OutOfOrder == 0 && gaps+repeats+wrong+epochs+undecodable == 0
	res.goal("no loss, exactly once, seq order per topic", clean && sent == int64(b))
	if sent < int64(b) {
		res.note("only %d of %d broadcasts were accepted (%s): what was not sent counts as lost", sent, b, topErrors(prod.errs.snapshot(), 2))
	}
	if c := closed.Load(); c > 0 {
		res.note("%d subscribers were closed by the server during the run: %s", c, topErrors(codes.snapshot(), 3))
	}
	if sampleEvery > 1 {
		res.note("latency sampled on every %d-th broadcast", sampleEvery)
	}
	rep.progress("[%s] %d topics: %.0f msgs/s delivered, p50 %.1f ms, p99 %.1f ms, lost %d, dup %d, ooo %d, seq gaps %d, repeats %d; connect+SUBSCRIBE %.0f conns/s",
		tg.name, k, res.PerSecond, res.P50ms, res.P99ms, res.Lost, res.Duplicated, res.OutOfOrder, gaps, repeats, res.SubscribePS)
	return res, nil
}

// openSubscribed dials the subscribers o.c at a time; each worker sends SUBSCRIBE right after
// its handshake and waits for the answer before dialing the next. Any failure ends the run: a
// subscriber missing from its topic would read as loss.
func openSubscribed(ctx context.Context, rep *reporter, o *options, tg *target, subs []*topicSub) (*pool, error) {
	n := len(subs)
	p := &pool{conns: make([]*gws.Conn, n), handshake: make([]time.Duration, n)}
	d := &dialer{url: tg.ws, alt: tg.ws2, readBuf: o.readBuf}
	var next, done atomic.Int64
	var firstErr error
	var once sync.Once
	fail := func(err error) { once.Do(func() { firstErr = err }) }
	deadline := time.Now().Add(o.duration)
	start := time.Now()
	var wg sync.WaitGroup
	for range min(o.c, n) {
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(deadline) && atomic.LoadInt64(&p.failed) == 0 {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				s := subs[i]
				t0 := time.Now()
				c, _, err := d.dial(s, tg.subHeader(i))
				if err != nil {
					atomic.AddInt64(&p.failed, 1)
					fail(fmt.Errorf("subscriber %d: dial: %w", i, err))
					return
				}
				p.conns[i] = c
				sub := `{"pkg_id":10,"req_id":"` + uuid.NewString() + `","data":{"topic":"` + s.topic + `"}}`
				if err := c.WriteMessage(gws.OpcodeText, []byte(sub)); err != nil {
					atomic.AddInt64(&p.failed, 1)
					fail(fmt.Errorf("subscriber %d: SUBSCRIBE: %w", i, err))
					return
				}
				select {
				case refusal := <-s.answer:
					if refusal != "" {
						atomic.AddInt64(&p.failed, 1)
						fail(fmt.Errorf("subscriber %d: %s", i, refusal))
						return
					}
				case <-time.After(30 * time.Second):
					atomic.AddInt64(&p.failed, 1)
					fail(fmt.Errorf("subscriber %d: no SUBSCRIBE answer within 30s", i))
					return
				case <-ctx.Done():
					return
				}
				p.handshake[i] = time.Since(t0)
				atomic.AddInt64(&p.ok, 1)
				if k := done.Add(1); k%1000 == 0 {
					rep.progress("connect + SUBSCRIBE: %d/%d", k, n)
				}
			}
		})
	}
	wg.Wait()
	p.took = time.Since(start)
	if firstErr != nil {
		return p, firstErr
	}
	if err := ctx.Err(); err != nil {
		return p, err
	}
	if int(p.ok) != n {
		return p, fmt.Errorf("only %d of %d subscribers connected and subscribed within --duration %s", p.ok, n, o.duration)
	}
	return p, nil
}
