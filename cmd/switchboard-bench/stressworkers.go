package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/lxzan/gws"
)

// The stress scenario's workers. Each runs on one goroutine that its caller starts and waits
// for; each loop is bounded by a count and by a deadline, and ends early with ctx.

// backoff sleeps a little longer after each consecutive failure (100 ms … 2 s).
func backoff(ctx context.Context, failures int) {
	sleepCtx(ctx, min(time.Duration(1<<min(failures, 5))*100*time.Millisecond, 2*time.Second))
}

// maxConnects bounds one worker's connections over a run.
const maxConnects = 10_000

// --- subscribers ---------------------------------------------------------------------------

// stressSubscriber holds K topics for the whole run, reconnecting and resubscribing with since
// and epoch whenever the server closes it, and checks every topic message (subscriberCheck).
type stressSubscriber struct {
	id     int
	who    string
	token  string
	st     *stressState
	mu     sync.Mutex // guards chk, pending and conn: the read goroutine and the owner share them
	chk    *subscriberCheck
	pend   map[string]string // req_id → topic of a SUBSCRIBE in flight
	k      int
	closed bool // the owner closed the connection itself: its close is not the server's doing
}

func newStressSubscriber(st *stressState, id int, token string, topics []string) *stressSubscriber {
	s := &stressSubscriber{id: id, who: fmt.Sprintf("subscriber %d", id), token: token, st: st, pend: map[string]string{}}
	s.chk = newSubscriberCheck(s.who, topics, st.v, st.isUncertain)
	return s
}

// run keeps the subscriber connected until ctx ends (or hard passes), then closes it with 1000.
func (s *stressSubscriber) run(ctx context.Context, hard time.Time) {
	failures := 0
	for range maxConnects {
		if ctx.Err() != nil || time.Now().After(hard) {
			return
		}
		sc, err := dialStress(s.st, s.who, s.token, s.onFrame)
		if err != nil {
			failures++
			backoff(ctx, failures)
			continue
		}
		failures = 0
		s.mu.Lock()
		s.chk.newConnection()
		s.pend = map[string]string{}
		s.mu.Unlock()
		if s.serve(ctx, sc, hard) {
			return
		}
		sleepCtx(ctx, time.Duration(50+rand.IntN(200))*time.Millisecond)
	}
}

// serve subscribes and waits; true when the subscriber is done (ctx ended), false when the
// server closed the connection and the subscriber should come back.
func (s *stressSubscriber) serve(ctx context.Context, sc *sconn, hard time.Time) bool {
	retry := time.NewTicker(300 * time.Millisecond)
	defer retry.Stop()
	s.subscribeMissing(sc)
	stop := time.NewTimer(time.Until(hard))
	defer stop.Stop()
	for {
		select {
		case <-ctx.Done():
			s.closeAtEnd(sc)
			return true
		case <-stop.C:
			s.closeAtEnd(sc)
			return true
		case <-retry.C:
			s.subscribeMissing(sc)
		case <-sc.closed:
			s.serverClosed(sc.seen)
			return false
		}
	}
}

// subscribeMissing sends SUBSCRIBE for every topic without a subscription on this connection
// (at the start, and again after "Topic history unavailable").
func (s *stressSubscriber) subscribeMissing(sc *sconn) {
	var frames [][]byte
	s.mu.Lock()
	for _, t := range s.chk.needsSubscribe() {
		s.k++
		id := stressReqID('s', s.id, s.k)
		s.pend[id] = t
		frames = append(frames, request(pkgSubscribe, id, s.chk.subscribeData(t)))
	}
	s.mu.Unlock()
	for _, f := range frames { // outside the lock: a write may wait for the read side
		if sc.send(f) != nil {
			return
		}
	}
}

func (s *stressSubscriber) onFrame(e *envelope) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.StatusCode != nil {
		s.st.answers.Add(1)
		topic, ok := s.pend[e.ReqID]
		if !ok {
			s.st.v.add(vAnswerUnknown, "%s: req_id %q pkg %d", s.who, e.ReqID, e.PkgID)
			return
		}
		delete(s.pend, e.ReqID)
		var a subAnswer
		if *e.StatusCode == 0 {
			if err := json.Unmarshal(e.Data, &a); err != nil {
				s.st.v.add(vSubscribeError, "%s: SUBSCRIBE answer data %.80q: %v", s.who, e.Data, err)
			}
		}
		toldBefore := s.chk.told
		s.chk.onAnswer(topic, *e.StatusCode, e.msg(), a)
		if s.chk.told > toldBefore {
			kind := toldRecoveredFalse
			if *e.StatusCode != 0 {
				kind = toldUnavailable
			}
			s.st.noteTold(kind)
		}
		return
	}
	var p stressPayload
	if json.Unmarshal(e.Data, &p) != nil || p.Run != s.st.run {
		return // someone else's broadcast (a server shared with other runs)
	}
	s.st.delivered.Add(1)
	if e.Topic == "" {
		s.st.allMsgs.Add(1)
		s.chk.onAllMessage(p.P, p.N)
		return
	}
	s.st.topicMsgs.Add(1)
	s.chk.onTopicMessage(e.Topic, e.Seq, e.Epoch, p.P, p.N)
}

// serverClosed judges a close the subscriber did not ask for: 1013 (missed topic messages,
// slow consumer) is the server telling it to resubscribe with since; anything else breaks the
// contract for a client that reads everything and sends only valid SUBSCRIBEs.
func (s *stressSubscriber) serverClosed(seen closeSeen) {
	s.st.noteClose("subscriber (server closed)", seen)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case seen.code == 1013 && seen.reason == closeMissedReason:
		s.chk.noteTold(toldMissed)
		s.st.noteTold(toldMissed)
	case seen.code == 1013 && seen.reason == closeSlowReason:
		s.chk.noteTold(toldSlow)
		s.st.noteTold(toldSlow)
	default:
		s.st.v.add(vCloseCode, "%s: closed by the server with %s", s.who, seen)
		s.st.events.add("subscriber closed " + seen.String())
	}
}

// closeAtEnd closes with 1000 and checks the server's answer.
func (s *stressSubscriber) closeAtEnd(sc *sconn) {
	seen := sc.closeNormal(5 * time.Second)
	s.st.noteClose("subscriber (closed 1000 at the end)", seen)
	s.mu.Lock()
	subscribed := false
	for _, st := range s.chk.topics {
		subscribed = subscribed || st.subscribed
	}
	s.mu.Unlock()
	if kind, detail := closeVerdict(actNormal, seen, subscribed, false, time.Time{}, 0); kind != "" {
		s.st.v.add(kind, "%s: %s", s.who, detail)
	}
}

// position reports where the subscriber is in topic.
func (s *stressSubscriber) position(topic string) (uint64, string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.chk.position(topic)
}

// --- churners ------------------------------------------------------------------------------

// churnPlan is the churners' cycle of actions: mostly ordinary short sessions, and each
// contract close once in a while.
var churnPlan = []string{actNormal, actDrop, actNormal, actTooBig, actNormal, actBinary, actDrop, actBadUTF8,
	actNormal, actExpire, actNormal, actOverLimit}

// churner opens short-lived connections, does a few requests on some, and ends each in one of
// the ways of churnPlan, checking the close code the contract prescribes.
type churner struct {
	id     int
	token  string
	st     *stressState
	env    *stressEnv
	topics []string
	k      int
}

func (c *churner) run(ctx context.Context, deadline time.Time, maxCycles int) {
	for i := 0; i < maxCycles && ctx.Err() == nil && time.Now().Before(deadline); i++ {
		action := churnPlan[(c.id+i)%len(churnPlan)]
		start := time.Now()
		var err error
		switch action {
		case actExpire:
			err = c.expire(ctx)
		case actOverLimit:
			err = c.overLimit(ctx)
		default:
			err = c.session(ctx, action, start)
		}
		if err != nil {
			c.st.events.add("churner could not connect")
		}
		sleepCtx(ctx, time.Duration(20+rand.IntN(100))*time.Millisecond)
	}
}

// session connects, subscribes to a topic and reads one author (for the actions that keep
// the connection healthy), then ends the connection the action's way.
func (c *churner) session(ctx context.Context, action string, start time.Time) error {
	who := fmt.Sprintf("churner %d", c.id)
	rc := newRPCAnswerCheck(who, c.st.v)
	var mu sync.Mutex
	answered := make(chan struct{}, 8)
	subscribed := false
	sc, err := dialStress(c.st, who, c.token, func(e *envelope) {
		if e.StatusCode == nil {
			return
		}
		c.st.answers.Add(1)
		mu.Lock()
		p, ok := rc.answer(rpcFrame{reqID: e.ReqID, pkgID: e.PkgID, status: *e.StatusCode, msg: e.msg()})
		if ok && p.pkgID == pkgSubscribe && *e.StatusCode == 0 {
			subscribed = true
		}
		mu.Unlock()
		select {
		case answered <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return err
	}
	if action == actNormal || action == actDrop {
		c.k++
		frames := []rpcPending{
			{reqID: stressReqID('c', c.id, 2*c.k), pkgID: pkgSubscribe},
			{reqID: stressReqID('c', c.id, 2*c.k+1), pkgID: pkgGet},
		}
		data := []string{fmt.Sprintf(`{"topic":%q}`, c.topics[rand.IntN(len(c.topics))]), `{"filters":{"id":1}}`}
		for i, p := range frames {
			p.sent = time.Now()
			mu.Lock()
			rc.sent(p)
			mu.Unlock()
			_ = sc.send(request(p.pkgID, p.reqID, data[i]))
		}
		for range frames {
			select {
			case <-answered:
			case <-sc.closed:
			case <-time.After(10 * time.Second):
				c.st.v.add(vAnswerMissing, "%s: no answer within 10s", who)
			case <-ctx.Done():
			}
		}
	}
	var seen closeSeen
	switch action {
	case actDrop:
		sc.drop()
		c.st.noteClose("churner "+action, sc.seen)
		return nil
	case actNormal:
		seen = sc.closeNormal(5 * time.Second)
	case actTooBig:
		_ = sc.c.WriteMessage(gws.OpcodeText, bytes.Repeat([]byte("x"), c.env.maxMsg+1))
		seen = c.awaitClose(sc)
	case actBinary:
		_ = sc.c.WriteMessage(gws.OpcodeBinary, []byte{0x08, 0x01})
		seen = c.awaitClose(sc)
	case actBadUTF8:
		_ = sc.c.WriteMessage(gws.OpcodeText, []byte("{\"pkg_id\":1,\"req_id\":\"\xff\xfe\"}"))
		seen = c.awaitClose(sc)
	}
	c.st.noteClose("churner "+action, seen)
	mu.Lock()
	sub := subscribed
	mu.Unlock()
	if kind, detail := closeVerdict(action, seen, sub, c.st.faults.overlaps(start, time.Now()), time.Time{}, 0); kind != "" {
		c.st.v.add(kind, "churner %d: %s", c.id, detail)
	}
	return nil
}

// awaitClose waits (bounded) for the server to close the connection; a connection still open
// is dropped and reported as no close frame.
func (c *churner) awaitClose(sc *sconn) closeSeen {
	if !sc.waitClosed(10 * time.Second) {
		sc.drop()
		return closeSeen{at: time.Now()}
	}
	return sc.seen
}

// expire connects with a token that expires in 2 s and expects 4001 "token expired" no earlier
// than exp and at most leeway plus a few seconds after it.
func (c *churner) expire(ctx context.Context) error {
	c.k++
	user := fmt.Sprintf("stress-%s-exp-%d-%d", c.st.run, c.id, c.k)
	tok, exp, err := c.st.minter.dev.Mint(authMint(user, c.st.minter.clientID, 2*time.Second))
	if err != nil {
		return err
	}
	sc, err := dialStress(c.st, "churner expire", tok, nil)
	if err != nil {
		return err
	}
	var seen closeSeen
	wait := time.Until(exp) + c.env.leeway + expireSlack + 2*time.Second
	select {
	case <-sc.closed:
		seen = sc.seen
	case <-time.After(wait):
		sc.drop()
		seen = closeSeen{at: time.Now()}
	case <-ctx.Done():
		sc.drop()
		return nil
	}
	c.st.noteClose("churner "+actExpire, seen)
	if kind, detail := closeVerdict(actExpire, seen, false, false, exp, c.env.leeway); kind != "" {
		c.st.v.add(kind, "churner %d: %s", c.id, detail)
	}
	return nil
}

// overLimit opens the per-user limit's worth of connections for a fresh user, each confirmed
// by an answer (so the server has counted it), then one more: that one must be closed 1008,
// the others must stay open — unless a Redis fault made the limit fail open meanwhile.
func (c *churner) overLimit(ctx context.Context) error {
	c.k++
	user := fmt.Sprintf("stress-%s-lim-%d-%d", c.st.run, c.id, c.k)
	tok, _, err := c.st.minter.dev.Mint(authMint(user, c.st.minter.clientID, time.Hour))
	if err != nil {
		return err
	}
	start := time.Now()
	var conns []*sconn
	defer func() {
		for _, sc := range conns {
			seen := sc.closeNormal(5 * time.Second)
			c.st.noteClose("churner over-limit (closing the ones within the limit)", seen)
			if kind, detail := closeVerdict(actNormal, seen, false, false, time.Time{}, 0); kind != "" {
				c.st.v.add(kind, "churner %d: %s", c.id, detail)
			}
		}
	}()
	for i := range c.env.connLimit {
		answered := make(chan struct{}, 1)
		sc, err := dialStress(c.st, "churner over-limit", tok, func(e *envelope) {
			if e.StatusCode != nil {
				c.st.answers.Add(1)
				select {
				case answered <- struct{}{}:
				default:
				}
			}
		})
		if err != nil {
			return err
		}
		conns = append(conns, sc)
		_ = sc.send(request(pkgUnsubscribe, stressReqID('l', c.id, c.k*16+i), `{"topic":"dashboards.none"}`))
		select {
		case <-answered:
		case <-sc.closed:
		case <-time.After(10 * time.Second):
		case <-ctx.Done():
			return nil
		}
	}
	extra, err := dialStress(c.st, "churner over-limit", tok, nil)
	if err != nil {
		return err
	}
	var seen closeSeen
	if extra.waitClosed(3 * time.Second) {
		seen = extra.seen
	} else {
		extra.drop() // stayed open: seen.at stays zero
	}
	faulted := c.st.faults.overlaps(start, time.Now())
	c.st.noteClose("churner over-limit (one more than the limit)", seen)
	if kind, detail := closeVerdict(actOverLimit, seen, false, faulted, time.Time{}, 0); kind != "" {
		c.st.v.add(kind, "churner %d: %s", c.id, detail)
	}
	for i, sc := range conns {
		select {
		case <-sc.closed:
			if !faulted {
				c.st.v.add(vCloseCode, "churner %d: over-limit: connection %d within the limit was closed: %s", c.id, i+1, sc.seen)
			}
		default:
		}
	}
	return nil
}

// --- request/response clients --------------------------------------------------------------

// rpcWorker sends pipelined batches of requests on one connection and checks that the answers
// match the requests in order (rpcAnswerCheck): CREATE_AUTHOR then a GET_AUTHORS of that name
// (the connection reads its own write), DELETE_AUTHOR of the previous batch's rows, and
// SUBSCRIBE/UNSUBSCRIBE of a topic, at about rate requests a second.
type rpcWorker struct {
	id     int
	token  string
	st     *stressState
	topics []string
	rate   float64
	k      int
}

func (w *rpcWorker) run(ctx context.Context, deadline time.Time) {
	who := fmt.Sprintf("rpc %d", w.id)
	var toDelete []int64
	failures := 0
	for range maxConnects {
		if ctx.Err() != nil || !time.Now().Before(deadline) {
			return
		}
		rc := newRPCAnswerCheck(who, w.st.v)
		var mu sync.Mutex
		subscribed := map[string]bool{}
		answered := make(chan struct{}, 64)
		sc, err := dialStress(w.st, who, w.token, func(e *envelope) {
			if e.StatusCode == nil {
				return // broadcasts on the topics it subscribed: not this worker's business
			}
			w.st.answers.Add(1)
			f := rpcFrame{reqID: e.ReqID, pkgID: e.PkgID, status: *e.StatusCode, msg: e.msg()}
			if f.status == 0 {
				switch e.PkgID {
				case pkgGet:
					_ = json.Unmarshal(e.Data, &f.rows)
				case pkgCreate:
					var a authorRow
					_ = json.Unmarshal(e.Data, &a)
					f.id = a.ID
				}
			}
			mu.Lock()
			p, ok := rc.answer(f)
			if ok && f.status == 0 {
				switch p.pkgID {
				case pkgCreate:
					toDelete = append(toDelete, f.id)
				case pkgSubscribe:
					subscribed[p.name] = true
				case pkgUnsubscribe:
					delete(subscribed, p.name)
				}
			}
			mu.Unlock()
			select {
			case answered <- struct{}{}:
			default:
			}
		})
		if err != nil {
			failures++
			backoff(ctx, failures)
			continue
		}
		failures = 0
		closedByServer := w.batches(ctx, deadline, sc, rc, &mu, answered, &toDelete)
		mu.Lock()
		sub := len(subscribed) > 0
		mu.Unlock()
		if closedByServer {
			// Only a subscribed connection may be closed under it (1013 missed topic messages).
			w.st.noteClose("rpc (server closed)", sc.seen)
			if sub && sc.seen.code == 1013 && sc.seen.reason == closeMissedReason {
				w.st.noteTold(toldMissed)
			} else {
				w.st.v.add(vCloseCode, "%s: closed by the server with %s", who, sc.seen)
			}
			continue
		}
		seen := sc.closeNormal(5 * time.Second)
		w.st.noteClose("rpc (closed 1000 at the end)", seen)
		if kind, detail := closeVerdict(actNormal, seen, sub, false, time.Time{}, 0); kind != "" {
			w.st.v.add(kind, "%s: %s", who, detail)
		}
		return
	}
}

// batches runs batches until the deadline; true when the server closed the connection.
func (w *rpcWorker) batches(ctx context.Context, deadline time.Time, sc *sconn, rc *rpcAnswerCheck,
	mu *sync.Mutex, answered <-chan struct{}, toDelete *[]int64) bool {
	next := time.Now()
	for b := 0; b < 1_000_000 && ctx.Err() == nil && time.Now().Before(deadline); b++ {
		mu.Lock()
		dels := *toDelete
		*toDelete = nil
		mu.Unlock()
		batch := w.batch(dels)
		for _, r := range batch {
			mu.Lock()
			rc.sent(r.p)
			mu.Unlock()
			if sc.send(request(r.p.pkgID, r.p.reqID, r.data)) != nil {
				break
			}
		}
		wait := time.NewTimer(10 * time.Second)
	waiting:
		for {
			mu.Lock()
			left := len(rc.pending)
			mu.Unlock()
			if left == 0 {
				break
			}
			select {
			case <-answered:
			case <-sc.closed:
				wait.Stop()
				return true
			case <-wait.C:
				break waiting
			case <-ctx.Done():
				break waiting
			}
		}
		wait.Stop()
		mu.Lock()
		overdue := rc.overdue(time.Now().Add(-10 * time.Second))
		mu.Unlock()
		for _, p := range overdue {
			w.st.v.add(vAnswerMissing, "rpc %d: pkg %d req_id %s", w.id, p.pkgID, p.reqID)
		}
		if len(overdue) > 0 {
			sc.drop() // a connection that lost an answer is not trusted further
			return false
		}
		next = next.Add(time.Duration(float64(len(batch)) / w.rate * float64(time.Second)))
		if d := time.Until(next); d > 0 {
			sleepCtx(ctx, d)
		} else {
			next = time.Now()
		}
	}
	// The rows this worker created and has not deleted yet: one last batch of deletes.
	mu.Lock()
	dels := *toDelete
	*toDelete = nil
	mu.Unlock()
	for _, id := range dels {
		w.k++
		p := rpcPending{reqID: stressReqID('r', w.id, w.k), pkgID: pkgDelete, sent: time.Now()}
		mu.Lock()
		rc.sent(p)
		mu.Unlock()
		_ = sc.send(request(pkgDelete, p.reqID, fmt.Sprintf(`{"id":%d}`, id)))
	}
	for i := 0; i < len(dels); i++ {
		select {
		case <-answered:
		case <-sc.closed:
			return true
		case <-time.After(10 * time.Second):
			return false
		}
	}
	return false
}

type rpcReq struct {
	p    rpcPending
	data string
}

// batch builds the next batch: create, read it back, delete earlier rows, (un)subscribe.
func (w *rpcWorker) batch(dels []int64) []rpcReq {
	now := time.Now()
	next := func(pkg int, name, data string) rpcReq {
		w.k++
		return rpcReq{rpcPending{reqID: stressReqID('r', w.id, w.k), pkgID: pkg, name: name, sent: now}, data}
	}
	name := fmt.Sprintf("stress-%s-r%d-%d", w.st.run, w.id, w.k)
	out := []rpcReq{
		next(pkgCreate, name, fmt.Sprintf(`{"name":%q}`, name)),
		next(pkgGet, name, fmt.Sprintf(`{"filters":{"name":%q}}`, name)),
	}
	for _, id := range dels {
		out = append(out, next(pkgDelete, "", fmt.Sprintf(`{"id":%d}`, id)))
	}
	topic := w.topics[rand.IntN(len(w.topics))]
	if rand.IntN(2) == 0 {
		out = append(out, next(pkgSubscribe, topic, fmt.Sprintf(`{"topic":%q}`, topic)))
	} else {
		out = append(out, next(pkgUnsubscribe, topic, fmt.Sprintf(`{"topic":%q}`, topic)))
	}
	return out
}

// --- producers -----------------------------------------------------------------------------

// stressProducer posts broadcasts at its share of the rate: most on a random topic, some to
// everyone. Its data carries the run, the producer and a serial, which the subscribers use for
// the producer-order check.
type stressProducer struct {
	id       int
	st       *stressState
	url      string
	header   http.Header
	client   *http.Client
	topics   []string
	rate     float64 // this producer's broadcasts per second
	allRatio float64
}

func newStressProducer(st *stressState, id int, httpBase, token string, topics []string, rate, allRatio float64) *stressProducer {
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1, DisableCompression: true}
	return &stressProducer{id: id, st: st, url: httpBase + "/api/broadcast", header: bearer(token),
		client: &http.Client{Transport: tr, Timeout: 5 * time.Second}, topics: topics, rate: rate, allRatio: allRatio}
}

func (p *stressProducer) run(ctx context.Context, deadline time.Time) {
	defer p.client.CloseIdleConnections() // an idle keep-alive connection holds a server goroutine
	interval := time.Duration(float64(time.Second) / p.rate)
	next := time.Now()
	for n := uint64(1); n <= 10_000_000 && ctx.Err() == nil; n++ {
		if d := time.Until(next); d > 0 {
			sleepCtx(ctx, d)
		}
		if !time.Now().Before(deadline) || ctx.Err() != nil {
			return
		}
		next = next.Add(interval)
		if time.Until(next) < -time.Second { // far behind (a stalled POST): do not burst
			next = time.Now()
		}
		topic := ""
		if rand.Float64() >= p.allRatio {
			topic = p.topics[rand.IntN(len(p.topics))]
		}
		body := fmt.Sprintf(`{"pkg_id":100,"data":{"run":%q,"p":%d,"n":%d}`, p.st.run, p.id, n)
		if topic != "" {
			body += fmt.Sprintf(`,"topic":%q`, topic)
		}
		body += "}"
		if err := p.post(ctx, body); err != nil {
			p.st.publishFailed.Add(1)
			p.st.pubErrs.add(err.Error())
			p.st.events.add("broadcast refused or failed")
			p.st.markUncertain(p.id, n)
			continue
		}
		p.st.published.Add(1)
	}
}

func (p *stressProducer) post(ctx context.Context, body string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader([]byte(body)))
	if err != nil {
		return err
	}
	for k, v := range p.header {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return fmt.Errorf("POST: %s", classify(err))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// --- the end of the run --------------------------------------------------------------------

// topicPosition is a topic's latest seq and its epoch.
type topicPosition struct {
	Seq   uint64 `json:"seq"`
	Epoch string `json:"epoch"`
}

// finalPositions subscribes a fresh connection to every topic (no since) and returns each
// topic's latest position from the answers; topics whose answer did not come within d are
// left out.
func finalPositions(ctx context.Context, st *stressState, token string, topics []string, d time.Duration) (map[string]topicPosition, error) {
	var mu sync.Mutex
	out := map[string]topicPosition{}
	pending := map[string]string{}
	got := make(chan struct{}, len(topics))
	sc, err := dialStress(st, "witness", token, func(e *envelope) {
		if e.StatusCode == nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		t, ok := pending[e.ReqID]
		if !ok {
			return
		}
		delete(pending, e.ReqID)
		if *e.StatusCode == 0 {
			var a subAnswer
			if json.Unmarshal(e.Data, &a) == nil {
				out[t] = topicPosition{a.Seq, a.Epoch}
			}
		}
		got <- struct{}{}
	})
	if err != nil {
		return nil, err
	}
	defer func() { st.noteClose("witness (closed 1000 at the end)", sc.closeNormal(5*time.Second)) }()
	end := time.Now().Add(d)
	k := 0
	for round := 0; round < 100 && time.Now().Before(end) && ctx.Err() == nil; round++ {
		mu.Lock()
		var missing []string
		for _, t := range topics {
			if _, ok := out[t]; !ok {
				missing = append(missing, t)
			}
		}
		for _, t := range missing {
			k++
			id := stressReqID('w', 0, k)
			pending[id] = t
			_ = sc.send(request(pkgSubscribe, id, fmt.Sprintf(`{"topic":%q}`, t)))
		}
		mu.Unlock()
		if len(missing) == 0 {
			break
		}
		for range missing {
			select {
			case <-got:
			case <-time.After(time.Until(end)):
			case <-ctx.Done():
			}
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	res := make(map[string]topicPosition, len(out))
	for k, v := range out {
		res[k] = v
	}
	return res, nil
}
