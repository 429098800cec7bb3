package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
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
