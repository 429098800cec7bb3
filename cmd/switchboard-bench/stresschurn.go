package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/lxzan/gws"
)

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
