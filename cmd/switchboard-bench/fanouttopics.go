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
// The topic subscribers are raw receive-only gws sockets that read every frame: the checker
// needs the server's own frames (a duplicate, a seq that skips) which the Go client would absorb
// by design. They read a frame with one pass over its bytes (topicFrame.scan, which reads what
// json.Unmarshal would and checks the whole frame is JSON), so a frame costs a topic
// subscriber about what it costs a broadcast-to-all subscriber and the load tool's CPU does not
// cap the topic run below the other. Per subscriber it checks: every broadcast of its topic arrives (no loss), once (by
// the producer's serial in data.seq), in the producers' order, on its topic only, and with the
// topic's seq one more than the last (starting after the SUBSCRIBE answer's seq) in one epoch.

// topicFrame is what a topic subscriber reads of a frame: the SUBSCRIBE answer (status_code
// set; data is {"topic","seq","epoch","recovered"}) or a topic broadcast (data is the tool's
// payload: seq is the producer's serial, ts its send time). scan fills it.
type topicFrame struct {
	hasStatus bool // status_code present and not null: an answer
	status    int64
	hasMsg    bool
	msg       []byte
	topic     []byte
	seq       uint64 // the topic's seq
	epoch     []byte
	dataSeq   int64 // data.seq: the producer's serial in a broadcast, the topic's seq in the answer
	dataTS    int64 // data.ts
	dataEpoch []byte
}

// scan reads the fields of a frame as json.Unmarshal into
//
//	struct {
//		StatusCode *int    `json:"status_code"`
//		Msg        *string `json:"msg"`
//		Topic      string  `json:"topic"`
//		Seq        uint64  `json:"seq"`
//		Epoch      string  `json:"epoch"`
//		Data       struct {
//			Seq, TS int64
//			Epoch   string
//		} `json:"data"`
//	}
//
// would, at a fraction of the cost: it walks the frame once, checks all of it is JSON (any
// syntax error, trailing bytes or a field of the wrong type: false, as Unmarshal's error),
// skips every other member (in any order, at any depth), reads keys and strings with escapes
// through encoding/json (a rare path), and takes the last of duplicate keys. Two deliberate
// differences: keys match exactly (Unmarshal also takes "Topic" for "topic", the protocol has
// one spelling), and strings keep invalid UTF-8 as it came (Unmarshal replaces it with U+FFFD).
// The byte slices point into b unless the string had escapes.
func (f *topicFrame) scan(b []byte) bool {
	i := skipWS(b, 0)
	if i >= len(b) {
		return false
	}
	switch b[i] {
	case '{':
	case 'n': // null: Unmarshal leaves everything unset
		i, ok := literal(b, i, "null")
		return ok && skipWS(b, i) == len(b)
	default:
		return false
	}
	i, ok := members(b, i, 1, f.topField)
	return ok && skipWS(b, i) == len(b)
}

// topField reads the value at b[i] of the frame's member key and returns the index after it.
func (f *topicFrame) topField(key, b []byte, i, depth int) (int, bool) {
	switch string(key) {
	case "status_code":
		if isNull(b, i) {
			f.hasStatus = false
			return i + 4, true
		}
		f.hasStatus = true
		return intValue(b, i, &f.status)
	case "msg":
		if isNull(b, i) {
			f.hasMsg = false
			return i + 4, true
		}
		f.hasMsg = true
		return strValue(b, i, &f.msg)
	case "topic":
		return strValue(b, i, &f.topic)
	case "seq":
		return uintValue(b, i, &f.seq)
	case "epoch":
		return strValue(b, i, &f.epoch)
	case "data":
		switch {
		case isNull(b, i):
			return i + 4, true
		case b[i] != '{':
			return 0, false
		}
		return members(b, i, depth+1, f.dataField)
	}
	return skipValue(b, i, depth)
}

// dataField reads the value at b[i] of the data object's member key.
func (f *topicFrame) dataField(key, b []byte, i, depth int) (int, bool) {
	switch string(key) {
	case "seq":
		return intValue(b, i, &f.dataSeq)
	case "ts":
		return intValue(b, i, &f.dataTS)
	case "epoch":
		return strValue(b, i, &f.dataEpoch)
	}
	return skipValue(b, i, depth)
}

// maxDepth is encoding/json's nesting limit.
const maxDepth = 10000

// members walks the object at b[i] == '{' (at nesting depth), calling field with each key and
// the index of its value, which field reads and returns the index after. It returns the index
// after the object.
func members(b []byte, i, depth int, field func(key, b []byte, i, depth int) (int, bool)) (int, bool) {
	if depth > maxDepth {
		return 0, false
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, true
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return 0, false
		}
		var key []byte
		var ok bool
		if key, i, ok = str(b, i); !ok {
			return 0, false
		}
		if i = skipWS(b, i); i >= len(b) || b[i] != ':' {
			return 0, false
		}
		if i = skipWS(b, i+1); i >= len(b) {
			return 0, false
		}
		if i, ok = field(key, b, i, depth); !ok {
			return 0, false
		}
		if i = skipWS(b, i); i >= len(b) {
			return 0, false
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case '}':
			return i + 1, true
		default:
			return 0, false
		}
	}
}

// skipValue checks the JSON value at b[i] (at nesting depth) and returns the index after it.
func skipValue(b []byte, i, depth int) (int, bool) {
	if i >= len(b) {
		return 0, false
	}
	switch c := b[i]; {
	case c == '"':
		end, _, ok := skipString(b, i)
		return end, ok
	case c == '{':
		return members(b, i, depth+1, skipMember)
	case c == '[':
		if depth+1 > maxDepth {
			return 0, false
		}
		i = skipWS(b, i+1)
		if i < len(b) && b[i] == ']' {
			return i + 1, true
		}
		for {
			var ok bool
			if i, ok = skipValue(b, i, depth+1); !ok {
				return 0, false
			}
			if i = skipWS(b, i); i >= len(b) {
				return 0, false
			}
			switch b[i] {
			case ',':
				i = skipWS(b, i+1)
			case ']':
				return i + 1, true
			default:
				return 0, false
			}
		}
	case c == 't':
		return literal(b, i, "true")
	case c == 'f':
		return literal(b, i, "false")
	case c == 'n':
		return literal(b, i, "null")
	case c == '-' || c >= '0' && c <= '9':
		end, _, ok := number(b, i)
		return end, ok
	}
	return 0, false
}

func skipMember(_, b []byte, i, depth int) (int, bool) { return skipValue(b, i, depth) }

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
}

func literal(b []byte, i int, lit string) (int, bool) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return 0, false
	}
	return i + len(lit), true
}

func isNull(b []byte, i int) bool { return len(b)-i >= 4 && string(b[i:i+4]) == "null" }

// plain marks the bytes a JSON string holds as they are: not a quote, a backslash or a control
// character.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// skipString checks the JSON string at b[i] == '"' and returns the index after it and whether
// it has escapes.
func skipString(b []byte, i int) (end int, escaped, ok bool) {
	for i++; ; i++ {
		for i < len(b) && plain[b[i]] {
			i++
		}
		if i >= len(b) || b[i] != '\\' {
			break
		}
		escaped = true
		if i++; i >= len(b) {
			return 0, false, false
		}
		switch b[i] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		case 'u':
			if len(b)-i < 5 {
				return 0, false, false
			}
			for _, h := range b[i+1 : i+5] {
				if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
					return 0, false, false
				}
			}
			i += 4
		default:
			return 0, false, false
		}
	}
	if i >= len(b) || b[i] != '"' {
		return 0, false, false // the end of the frame, or a control character
	}
	return i + 1, escaped, true
}

// str reads the JSON string at b[i] == '"': its contents (a slice of b, or, with escapes, a
// decoded copy) and the index after it.
func str(b []byte, i int) ([]byte, int, bool) {
	end, escaped, ok := skipString(b, i)
	if !ok {
		return nil, 0, false
	}
	if !escaped {
		return b[i+1 : end-1], end, true
	}
	var s string
	if json.Unmarshal(b[i:end], &s) != nil {
		return nil, 0, false
	}
	return []byte(s), end, true
}

// strValue reads a string member into *v: null leaves it as it was, another type is an error.
func strValue(b []byte, i int, v *[]byte) (int, bool) {
	switch {
	case isNull(b, i):
		return i + 4, true
	case b[i] != '"':
		return 0, false
	}
	s, end, ok := str(b, i)
	if ok {
		*v = s
	}
	return end, ok
}

// number checks the JSON number at b[i] and returns the index after it and whether it is an
// integer (no fraction, no exponent).
func number(b []byte, i int) (end int, integer, ok bool) {
	digits := func(i int) int {
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i
	}
	if b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return 0, false, false
	case b[i] == '0':
		i++
	case b[i] >= '1' && b[i] <= '9':
		i = digits(i + 1)
	default:
		return 0, false, false
	}
	integer = true
	if i < len(b) && b[i] == '.' {
		integer = false
		j := digits(i + 1)
		if j == i+1 {
			return 0, false, false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		integer = false
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(i)
		if j == i {
			return 0, false, false
		}
		i = j
	}
	return i, integer, true
}

// intValue reads an int64 member into *v as strconv.ParseInt would: null leaves it as it was,
// a fraction, an exponent, an overflow or another type is an error.
func intValue(b []byte, i int, v *int64) (int, bool) {
	return integerValue(b, i, v, 18, func(s string) (int64, error) { return strconv.ParseInt(s, 10, 64) })
}

// uintValue reads a uint64 member into *v as strconv.ParseUint would.
func uintValue(b []byte, i int, v *uint64) (int, bool) {
	return integerValue(b, i, v, 19, func(s string) (uint64, error) { return strconv.ParseUint(s, 10, 64) })
}

// integerValue is intValue and uintValue: up to fast digits without a sign are summed in place
// (they cannot overflow T), anything longer goes through parse.
func integerValue[T int64 | uint64](b []byte, i int, v *T, fast int, parse func(string) (T, error)) (int, bool) {
	if isNull(b, i) {
		return i + 4, true
	}
	end, integer, ok := number(b, i)
	if !ok || !integer {
		return 0, false
	}
	if tok := b[i:end]; len(tok) <= fast && tok[0] != '-' {
		var n T
		for _, c := range tok {
			n = n*10 + T(c-'0')
		}
		*v = n
		return end, true
	}
	n, err := parse(string(b[i:end]))
	if err != nil {
		return 0, false
	}
	*v = n
	return end, true
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
	switch {
	case !f.scan(b):
		s.undecodable++
		return
	case f.hasStatus:
		if s.answered {
			return
		}
		s.answered = true
		refusal := ""
		if f.status != 0 {
			refusal = fmt.Sprintf("SUBSCRIBE %s: status %d", s.topic, f.status)
			if f.hasMsg {
				refusal += " " + string(f.msg)
			}
		}
		s.last, s.epoch = uint64(f.dataSeq), string(f.dataEpoch)
		s.answer <- refusal
		return
	case len(f.topic) == 0:
		return // a broadcast to every connection: not this run's
	case string(f.topic) != s.topic:
		s.wrongTopic++
		return
	}
	switch {
	case s.epoch != "" && string(f.epoch) != s.epoch:
		s.epochs++ // the stream restarted under the run: its seq starts again
		s.epoch, s.last = string(f.epoch), f.seq
	case f.seq <= s.last:
		s.seqRepeats++
	case f.seq != s.last+1:
		s.seqGaps++
		s.last = f.seq
	default:
		s.last = f.seq
	}
	before := s.d.unique
	s.d.record(f.dataSeq, f.dataTS, now, s.sampleEvery)
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
