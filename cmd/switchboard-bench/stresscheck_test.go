package main

import (
	"strings"
	"testing"
	"time"
)

// newTestCheck is a subscriber of topics a and b that has its first answers: a at seq 10 of
// epoch E1, b with no stream yet.
func newTestCheck(t *testing.T) (*subscriberCheck, *violations) {
	t.Helper()
	v := newViolations(time.Now())
	c := newSubscriberCheck("sub-1", []string{"a", "b"}, v, nil)
	c.newConnection()
	if got := c.subscribeData("a"); got != `{"topic":"a"}` {
		t.Fatalf("first SUBSCRIBE data = %s, want no since", got)
	}
	c.subscribeData("b")
	c.onAnswer("a", 0, "", subAnswer{Topic: "a", Seq: 10, Epoch: "E1"})
	c.onAnswer("b", 0, "", subAnswer{Topic: "b"})
	return c, v
}

func kinds(v *violations) map[string]int {
	out := map[string]int{}
	for _, k := range v.snapshot() {
		out[k.Kind] = k.Count
	}
	return out
}

func wantKinds(t *testing.T, v *violations, want map[string]int) {
	t.Helper()
	got := kinds(v)
	if len(got) != len(want) {
		t.Fatalf("violations = %v, want %v", got, want)
	}
	for k, n := range want {
		if got[k] != n {
			t.Fatalf("violations = %v, want %v", got, want)
		}
	}
}

func TestCheckInOrderIsClean(t *testing.T) {
	c, v := newTestCheck(t)
	for s := uint64(11); s <= 20; s++ {
		c.onTopicMessage("a", s, "E1", 0, s)
	}
	c.onTopicMessage("b", 1, "F1", 1, 1) // b had no stream: its first one starts at 1
	c.onTopicMessage("b", 2, "F1", 1, 2)
	wantKinds(t, v, nil)
	if c.delivered != 12 {
		t.Fatalf("delivered = %d, want 12", c.delivered)
	}
}

func TestCheckGapAndDuplicate(t *testing.T) {
	c, v := newTestCheck(t)
	c.onTopicMessage("a", 11, "E1", 0, 1)
	c.onTopicMessage("a", 14, "E1", 0, 2) // 12, 13 missing
	c.onTopicMessage("a", 14, "E1", 0, 3) // duplicate
	c.onTopicMessage("a", 12, "E1", 0, 4) // late
	c.onTopicMessage("a", 15, "E1", 0, 5) // in order again after 14
	wantKinds(t, v, map[string]int{vGap: 1, vDuplicate: 2})
	if c.gaps != 2 || c.dups != 2 {
		t.Fatalf("gaps %d dups %d, want 2 and 2", c.gaps, c.dups)
	}
	if seq, _, _ := c.position("a"); seq != 15 {
		t.Fatalf("position %d, want 15", seq)
	}
	ex := v.snapshot()[0].Examples[0]
	if !strings.Contains(ex, "sub-1") {
		t.Fatalf("example %q does not name the subscriber", ex)
	}
}

func TestCheckSilentEpochChangeIsAViolation(t *testing.T) {
	c, v := newTestCheck(t)
	c.onTopicMessage("a", 11, "E1", 0, 1)
	c.onTopicMessage("a", 1, "E2", 0, 2) // Redis restarted; the server did not say
	c.onTopicMessage("a", 2, "E2", 0, 3) // and the new stream continues: checked from there
	wantKinds(t, v, map[string]int{vEpochSilent: 1})
}

func TestCheckToldByRecoveredFalse(t *testing.T) {
	c, v := newTestCheck(t)
	c.onTopicMessage("a", 11, "E1", 0, 1)
	// Closed 1013 missed topic messages, reconnected: SUBSCRIBE since 11 in E1.
	c.noteTold(toldMissed)
	c.newConnection()
	if got := c.subscribeData("a"); got != `{"topic":"a","since":11,"epoch":"E1"}` {
		t.Fatalf("resubscribe data = %s", got)
	}
	if retry := c.onAnswer("a", 0, "", subAnswer{Topic: "a", Seq: 3, Epoch: "E2", Recovered: false}); retry {
		t.Fatal("an OK answer asked for a retry")
	}
	c.onTopicMessage("a", 4, "E2", 0, 5) // follows the answer's position
	wantKinds(t, v, nil)
	if c.told != 2 || c.toldBy[toldRecoveredFalse] != 1 || c.toldBy[toldMissed] != 1 {
		t.Fatalf("told %d %v", c.told, c.toldBy)
	}
}

func TestCheckRecoveredTrueReplays(t *testing.T) {
	c, v := newTestCheck(t)
	c.onTopicMessage("a", 11, "E1", 0, 1)
	c.newConnection()
	c.subscribeData("a")
	c.onAnswer("a", 0, "", subAnswer{Topic: "a", Seq: 14, Epoch: "E1", Recovered: true})
	for s := uint64(12); s <= 16; s++ { // 12–14 replayed, then live
		c.onTopicMessage("a", s, "E1", 0, s)
	}
	wantKinds(t, v, nil)
	if c.told != 0 {
		t.Fatalf("told = %d after a recovery", c.told)
	}
}

func TestCheckRecoveredTrueWithAHoleIsCaught(t *testing.T) {
	c, v := newTestCheck(t)
	c.onTopicMessage("a", 11, "E1", 0, 1)
	c.newConnection()
	c.subscribeData("a")
	c.onAnswer("a", 0, "", subAnswer{Topic: "a", Seq: 14, Epoch: "E1", Recovered: true})
	c.onTopicMessage("a", 13, "E1", 0, 2) // 12 never replayed
	wantKinds(t, v, map[string]int{vGap: 1})

	c2, v2 := newTestCheck(t)
	c2.newConnection()
	c2.subscribeData("a")
	c2.onAnswer("a", 0, "", subAnswer{Topic: "a", Seq: 2, Epoch: "E9", Recovered: true})
	wantKinds(t, v2, map[string]int{vRecoveredEpoch: 1})
}

func TestCheckServerWithoutEpochs(t *testing.T) {
	v := newViolations(time.Now())
	c := newSubscriberCheck("s", []string{"a"}, v, nil)
	c.newConnection()
	c.subscribeData("a")
	c.onAnswer("a", 0, "", subAnswer{Topic: "a", Seq: 5}) // no epoch field: ""
	c.onTopicMessage("a", 6, "", 0, 1)
	c.newConnection()
	if got := c.subscribeData("a"); got != `{"topic":"a","since":6}` {
		t.Fatalf("data = %s, want since without epoch", got)
	}
	c.onAnswer("a", 0, "", subAnswer{Topic: "a", Seq: 6, Recovered: true})
	c.onTopicMessage("a", 7, "", 0, 2)
	// The sequence restarting without any notice is still caught: a duplicate seq in epoch "".
	c.onTopicMessage("a", 1, "", 0, 3)
	wantKinds(t, v, map[string]int{vDuplicate: 1})
}

func TestCheckMessagesOutsideSubscriptions(t *testing.T) {
	v := newViolations(time.Now())
	c := newSubscriberCheck("s", []string{"a"}, v, nil)
	c.newConnection()
	c.subscribeData("a")
	c.onTopicMessage("a", 1, "E", 0, 1) // before the answer
	c.onTopicMessage("z", 1, "E", 0, 1) // never subscribed
	c.onAnswer("a", 0, "", subAnswer{Topic: "a", Seq: 1, Epoch: "E"})
	c.onTopicMessage("a", 0, "", 0, 1) // no seq on a history topic
	wantKinds(t, v, map[string]int{vBeforeAnswer: 1, vNotSubscribed: 1, vNoSeq: 1})
}

func TestCheckHistoryUnavailableRetries(t *testing.T) {
	v := newViolations(time.Now())
	c := newSubscriberCheck("s", []string{"a"}, v, nil)
	c.newConnection()
	c.subscribeData("a")
	if !c.onAnswer("a", 1, "Topic history unavailable", subAnswer{}) {
		t.Fatal("no retry after history unavailable")
	}
	if got := c.needsSubscribe(); len(got) != 1 {
		t.Fatalf("needsSubscribe = %v", got)
	}
	if c.onAnswer("a", 3, "Permission denied", subAnswer{}); len(kinds(v)) != 1 {
		t.Fatalf("violations %v", kinds(v))
	}
}

func TestCheckProducerOrder(t *testing.T) {
	uncertain := func(p int, n uint64) bool { return p == 1 && n == 7 }
	v := newViolations(time.Now())
	c := newSubscriberCheck("s", []string{"a"}, v, uncertain)
	c.onAllMessage(1, 5)
	c.onAllMessage(2, 1)
	c.onAllMessage(1, 7) // its POST failed at the producer: not judged
	c.onAllMessage(1, 6)
	c.onAllMessage(1, 6) // repeated
	c.onAllMessage(1, 4) // older
	wantKinds(t, v, map[string]int{vProducerOrder: 2})
}

func TestRPCAnswerOrder(t *testing.T) {
	v := newViolations(time.Now())
	r := newRPCAnswerCheck("rpc-1", v)
	now := time.Now()
	r.sent(rpcPending{reqID: "r1", pkgID: pkgCreate, name: "n1", sent: now})
	r.sent(rpcPending{reqID: "r2", pkgID: pkgGet, name: "n1", sent: now})
	r.sent(rpcPending{reqID: "r3", pkgID: pkgUnsubscribe, sent: now})
	r.sent(rpcPending{reqID: "r4", pkgID: pkgSubscribe, sent: now})
	r.answer(rpcFrame{reqID: "r1", pkgID: pkgCreate, id: 9})
	r.answer(rpcFrame{reqID: "r2", pkgID: pkgGet, rows: []authorRow{{9, "n1"}}})
	r.answer(rpcFrame{reqID: "r4", pkgID: pkgSubscribe, status: 1, msg: "Topic history unavailable"}) // before r3
	r.answer(rpcFrame{reqID: "r3", pkgID: pkgUnsubscribe})
	r.answer(rpcFrame{reqID: "r3", pkgID: pkgUnsubscribe}) // twice
	wantKinds(t, v, map[string]int{vAnswerOrder: 1, vAnswerUnknown: 1})

	v2 := newViolations(time.Now())
	r2 := newRPCAnswerCheck("rpc-2", v2)
	r2.sent(rpcPending{reqID: "c", pkgID: pkgCreate, name: "x", sent: now})
	r2.sent(rpcPending{reqID: "g", pkgID: pkgGet, name: "x", sent: now})
	r2.sent(rpcPending{reqID: "u", pkgID: pkgUnsubscribe, sent: now.Add(-time.Minute)})
	r2.answer(rpcFrame{reqID: "c", pkgID: pkgCreate, id: 1})
	r2.answer(rpcFrame{reqID: "g", pkgID: pkgGet}) // did not see its own write
	if len(r2.overdue(now.Add(-time.Second))) != 1 {
		t.Fatal("the old request is not overdue")
	}
	r2.answer(rpcFrame{reqID: "u", pkgID: pkgGet, status: 3, msg: "Permission denied"})
	wantKinds(t, v2, map[string]int{vOwnWrite: 1, vAnswerPkg: 1, vAnswerStatus: 1})
}

func TestCloseVerdict(t *testing.T) {
	now := time.Now()
	exp := now.Add(2 * time.Second)
	cases := []struct {
		name               string
		action             string
		got                closeSeen
		subscribed, faults bool
		wantKind           string
	}{
		{"normal echo", actNormal, closeSeen{code: 1000, at: now}, false, false, ""},
		{"normal, other code", actNormal, closeSeen{code: 1011, reason: "internal error", at: now}, false, false, vCloseCode},
		{"normal, missed topic while subscribed", actNormal, closeSeen{code: 1013, reason: closeMissedReason, at: now}, true, false, ""},
		{"normal, missed topic, not subscribed", actNormal, closeSeen{code: 1013, reason: closeMissedReason, at: now}, false, false, vCloseCode},
		{"too big", actTooBig, closeSeen{code: 1009, reason: "message too big", at: now}, false, false, ""},
		{"binary", actBinary, closeSeen{code: 1003, at: now}, false, false, ""},
		{"binary, no close frame", actBinary, closeSeen{at: now}, false, false, vCloseCode},
		{"bad utf-8", actBadUTF8, closeSeen{code: 1007, at: now}, false, false, ""},
		{"expire in time", actExpire, closeSeen{code: 4001, reason: "token expired", at: exp.Add(time.Second)}, false, false, ""},
		{"expire early", actExpire, closeSeen{code: 4001, reason: "token expired", at: exp.Add(-time.Second)}, false, false, vCloseEarly},
		{"expire late", actExpire, closeSeen{code: 4001, reason: "token expired", at: exp.Add(time.Second + expireSlack + time.Second)}, false, false, vCloseCode},
		{"over limit", actOverLimit, closeSeen{code: 1008, reason: "Maximum concurrent connections exceeded", at: now}, false, false, ""},
		{"over limit, open in a fault", actOverLimit, closeSeen{}, false, true, ""},
		{"over limit, open", actOverLimit, closeSeen{}, false, false, vCloseCode},
		{"drop", actDrop, closeSeen{}, false, false, ""},
	}
	for _, c := range cases {
		kind, detail := closeVerdict(c.action, c.got, c.subscribed, c.faults, exp, time.Second)
		if kind != c.wantKind {
			t.Errorf("%s: kind %q (%s), want %q", c.name, kind, detail, c.wantKind)
		}
	}
}

func TestViolationExamplesAreBounded(t *testing.T) {
	v := newViolations(time.Now())
	for i := range 20 {
		v.add(vGap, "example %d", i)
	}
	s := v.snapshot()
	if len(s) != 1 || s[0].Count != 20 || len(s[0].Examples) != examplesPerKind || v.total.Load() != 20 {
		t.Fatalf("snapshot %+v", s)
	}
}
