package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"switchboard/transport/client"
)

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
	pub      *client.Publisher
	hc       *http.Client
	topics   []string
	rate     float64 // this producer's broadcasts per second
	allRatio float64
}

func newStressProducer(st *stressState, id int, httpBase, token string, topics []string, rate, allRatio float64) (*stressProducer, error) {
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1, DisableCompression: true}
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	pub, err := client.NewPublisher(client.PublisherConfig{BaseURL: httpBase, Token: token, HTTPClient: hc})
	if err != nil {
		return nil, err
	}
	return &stressProducer{id: id, st: st, pub: pub, hc: hc, topics: topics, rate: rate, allRatio: allRatio}, nil
}

func (p *stressProducer) run(ctx context.Context, deadline time.Time) {
	defer p.hc.CloseIdleConnections() // an idle keep-alive connection holds a server goroutine
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
		if err := p.post(ctx, topic, stressPayload{Run: p.st.run, P: p.id, N: n}); err != nil {
			p.st.publishFailed.Add(1)
			p.st.pubErrs.add(err.Error())
			p.st.events.add("broadcast refused or failed")
			p.st.markUncertain(p.id, n)
			continue
		}
		p.st.published.Add(1)
	}
}

// post publishes one broadcast; the error is short and from a small set (it is counted by text).
func (p *stressProducer) post(ctx context.Context, topic string, data any) error {
	_, err := p.pub.Publish(ctx, topic, 100, data)
	var e *client.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &e):
		return fmt.Errorf("HTTP %d", e.HTTPStatus)
	default:
		return fmt.Errorf("POST: %s", classify(err))
	}
}
