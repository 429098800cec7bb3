package main

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The invariants of the stress scenario, as pure bookkeeping: what each client saw, checked
// against the wire contract (PROTOCOL §1.2 topic broadcasts, §1.4 SUBSCRIBE and the answers'
// order, §1.3 close codes). Nothing here does I/O; stresscheck_test.go drives it directly.

// Violation kinds: the report groups by these, so they are fixed texts.
const (
	vGap            = "topic gap (seq skipped, server did not say)"
	vDuplicate      = "topic duplicate or reordered seq"
	vEpochSilent    = "topic stream changed (new epoch) without recovered:false or 1013"
	vBeforeAnswer   = "topic message before its SUBSCRIBE answer"
	vNotSubscribed  = "topic message on a topic not subscribed"
	vNoSeq          = "topic message without seq"
	vRecoveredEpoch = "recovered:true from another epoch"
	vRecoveredBack  = "recovered:true but the answer's seq is behind since"
	vSubscribeError = "SUBSCRIBE answered with an unexpected status"
	vProducerOrder  = "one producer's broadcasts delivered out of order"
	vTail           = "subscriber never got the topic's last messages"
	vAnswerOrder    = "answer out of request order"
	vAnswerUnknown  = "answer to a req_id never sent or already answered"
	vAnswerPkg      = "answer with another pkg_id than its request"
	vAnswerStatus   = "answer with a status the contract does not allow here"
	vAnswerMissing  = "request never answered"
	vOwnWrite       = "GET after CREATE on the same connection missed the new row"
	vCloseCode      = "unexpected close code"
	vCloseEarly     = "closed with 4001 before the token expired"
	vUndecodable    = "frame that is not a JSON envelope"
	vServerPanic    = "server counted a connection panic"
	vServerExit     = "server did not stop cleanly"
	vServerDied     = "server process died during the run"
)

// violations counts invariant breaches by kind and keeps the first few examples of each.
type violations struct {
	mu       sync.Mutex
	counts   map[string]int
	examples map[string][]string
	total    atomic.Int64
	start    time.Time
}

const examplesPerKind = 5

func newViolations(start time.Time) *violations {
	return &violations{counts: map[string]int{}, examples: map[string][]string{}, start: start}
}

func (v *violations) add(kind, format string, args ...any) {
	v.total.Add(1)
	v.mu.Lock()
	defer v.mu.Unlock()
	v.counts[kind]++
	if len(v.examples[kind]) < examplesPerKind {
		at := time.Since(v.start).Seconds()
		v.examples[kind] = append(v.examples[kind], fmt.Sprintf("t=%.1fs %s", at, fmt.Sprintf(format, args...)))
	}
}

// violationKind is one line of the report: a kind, how often, and its first examples.
type violationKind struct {
	Kind     string   `json:"kind"`
	Count    int      `json:"count"`
	Examples []string `json:"examples"`
}

// snapshot returns the kinds, most frequent first.
func (v *violations) snapshot() []violationKind {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]violationKind, 0, len(v.counts))
	for k, n := range v.counts {
		out = append(out, violationKind{Kind: k, Count: n, Examples: append([]string(nil), v.examples[k]...)})
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Count > out[j].Count || out[i].Count == out[j].Count && out[i].Kind < out[j].Kind
	})
	return out
}

// Told kinds: the server said a subscriber may have missed messages. Counted, not violations.
const (
	toldRecoveredFalse = "SUBSCRIBE with since answered recovered:false"
	toldMissed         = "closed 1013 missed topic messages"
	toldSlow           = "closed 1013 slow consumer"
	toldUnavailable    = "SUBSCRIBE answered 1 Topic history unavailable (retried)"
)

// subAnswer is SUBSCRIBE's answer data.
type subAnswer struct {
	Topic     string `json:"topic"`
	Seq       uint64 `json:"seq"`
	Epoch     string `json:"epoch"` // "" from a server that has no epochs yet
	Recovered bool   `json:"recovered"`
}

// topicState is one subscriber's position in one topic's stream.
type topicState struct {
	subscribed bool   // an OK answer arrived on the current connection
	inFlight   bool   // a SUBSCRIBE is waiting for its answer
	sentSince  bool   // that SUBSCRIBE carried since (and epoch)
	known      bool   // seq and epoch name a position (from an answer or a message)
	seq        uint64 // last seq delivered (or the answer's latest)
	epoch      string
	lastN      map[int]uint64 // producer → last serial seen on this topic (producer order)
}

// subscriberCheck checks everything one subscriber receives across its reconnections: every
// topic message exactly once and in order (seq = last+1 in the same epoch) unless the server
// said otherwise — a SUBSCRIBE with since answered recovered:false, or a close 1013 followed by
// such a SUBSCRIBE. The caller serialises calls (one subscriber, one lock).
type subscriberCheck struct {
	who       string
	v         *violations
	topics    map[string]*topicState
	allLast   map[int]uint64 // broadcasts without topic: producer → last serial
	uncertain func(producer int, n uint64) bool

	delivered, gaps, dups, told int64
	toldBy                      map[string]int
}

func newSubscriberCheck(who string, topics []string, v *violations, uncertain func(int, uint64) bool) *subscriberCheck {
	c := &subscriberCheck{who: who, v: v, topics: map[string]*topicState{}, allLast: map[int]uint64{},
		uncertain: uncertain, toldBy: map[string]int{}}
	for _, t := range topics {
		c.topics[t] = &topicState{lastN: map[int]uint64{}}
	}
	if c.uncertain == nil {
		c.uncertain = func(int, uint64) bool { return false }
	}
	return c
}

// newConnection forgets the subscriptions (not the positions): a new socket starts with none.
func (c *subscriberCheck) newConnection() {
	for _, st := range c.topics {
		st.subscribed, st.inFlight, st.sentSince = false, false, false
	}
}

// subscribeData is the data of the SUBSCRIBE to send for topic: since (and the epoch, when the
// server named one) whenever the subscriber has a position, so it is told what it missed.
func (c *subscriberCheck) subscribeData(topic string) string {
	st := c.topics[topic]
	st.inFlight = true
	st.sentSince = st.known
	if !st.known {
		return fmt.Sprintf(`{"topic":%q}`, topic)
	}
	if st.epoch == "" { // a server without epochs takes since alone
		return fmt.Sprintf(`{"topic":%q,"since":%d}`, topic, st.seq)
	}
	return fmt.Sprintf(`{"topic":%q,"since":%d,"epoch":%q}`, topic, st.seq, st.epoch)
}

// needsSubscribe lists the topics without a subscription or one in flight on this connection.
func (c *subscriberCheck) needsSubscribe() []string {
	var out []string
	for t, st := range c.topics {
		if !st.subscribed && !st.inFlight {
			out = append(out, t)
		}
	}
	sort.Strings(out)
	return out
}

// noteTold counts one time the server said this subscriber may have missed messages.
func (c *subscriberCheck) noteTold(kind string) {
	c.told++
	c.toldBy[kind]++
}

// onAnswer handles SUBSCRIBE's answer. It returns true when the SUBSCRIBE should be sent again
// later (the history was unavailable: Redis down).
func (c *subscriberCheck) onAnswer(topic string, status int, msg string, a subAnswer) (retry bool) {
	st := c.topics[topic]
	if st == nil {
		c.v.add(vSubscribeError, "%s: answer for topic %q it never subscribed", c.who, topic)
		return false
	}
	st.inFlight = false
	switch {
	case status == 1 && msg == "Topic history unavailable":
		c.noteTold(toldUnavailable)
		return true
	case status != 0:
		c.v.add(vSubscribeError, "%s: SUBSCRIBE %s answered %d %q", c.who, topic, status, msg)
		return true
	}
	if a.Topic != topic {
		c.v.add(vSubscribeError, "%s: SUBSCRIBE %s answered for topic %q", c.who, topic, a.Topic)
	}
	st.subscribed = true
	if st.sentSince && a.Recovered {
		// The kept messages after since follow the answer: the position stays where it was.
		if a.Epoch != st.epoch {
			c.v.add(vRecoveredEpoch, "%s: %s since %d epoch %q answered recovered:true in epoch %q", c.who, topic, st.seq, st.epoch, a.Epoch)
			st.epoch, st.seq = a.Epoch, a.Seq
		} else if a.Seq < st.seq {
			c.v.add(vRecoveredBack, "%s: %s since %d answered recovered:true with seq %d", c.who, topic, st.seq, a.Seq)
			st.seq = a.Seq
		}
		return false
	}
	if st.sentSince {
		c.noteTold(toldRecoveredFalse)
	}
	// Not recovered (or nothing asked): the stream continues from the answer's position.
	st.known, st.seq, st.epoch = true, a.Seq, a.Epoch
	return false
}

// onTopicMessage checks one topic broadcast: producer and serial come from its data.
func (c *subscriberCheck) onTopicMessage(topic string, seq uint64, epoch string, producer int, n uint64) {
	st := c.topics[topic]
	switch {
	case st == nil:
		c.v.add(vNotSubscribed, "%s: got %s seq %d", c.who, topic, seq)
		return
	case !st.subscribed:
		c.v.add(vBeforeAnswer, "%s: got %s seq %d before the answer", c.who, topic, seq)
		return
	case seq == 0:
		c.v.add(vNoSeq, "%s: got %s without seq", c.who, topic)
		return
	}
	c.delivered++
	switch {
	case epoch == st.epoch:
		switch {
		case seq == st.seq+1:
		case seq <= st.seq:
			c.dups++
			c.v.add(vDuplicate, "%s: %s seq %d after %d (epoch %q)", c.who, topic, seq, st.seq, epoch)
		default:
			c.gaps += int64(seq - st.seq - 1)
			c.v.add(vGap, "%s: %s seq %d after %d, %d missing (epoch %q)", c.who, topic, seq, st.seq, seq-st.seq-1, epoch)
		}
		st.seq = max(st.seq, seq)
	case st.epoch == "" && st.seq == 0:
		// The answer said the topic had no stream yet: the first one starts at 1.
		if seq != 1 {
			c.gaps += int64(seq - 1)
			c.v.add(vGap, "%s: %s first message of epoch %q is seq %d", c.who, topic, epoch, seq)
		}
		st.epoch, st.seq = epoch, seq
	default:
		c.v.add(vEpochSilent, "%s: %s seq %d epoch %q after seq %d epoch %q", c.who, topic, seq, epoch, st.seq, st.epoch)
		st.epoch, st.seq = epoch, seq
	}
	st.known = true
	c.producerOrder(st.lastN, "topic "+topic, producer, n)
}

// onAllMessage checks a broadcast without topic: these may be lost while a node's bus is down
// (PROTOCOL §8), but one producer's are never reordered or repeated.
func (c *subscriberCheck) onAllMessage(producer int, n uint64) {
	c.delivered++
	c.producerOrder(c.allLast, "broadcasts to all", producer, n)
}

// producerOrder: each producer waits for one POST's 202 before the next, so the server
// accepted its broadcasts in serial order and must deliver them in that order. A serial whose
// POST failed on the producer's side (it may have been published late, or not at all) is not
// judged.
func (c *subscriberCheck) producerOrder(last map[int]uint64, what string, producer int, n uint64) {
	if producer < 0 || c.uncertain(producer, n) {
		return
	}
	if prev, ok := last[producer]; ok && n <= prev {
		c.v.add(vProducerOrder, "%s: %s: producer %d serial %d after %d", c.who, what, producer, n, prev)
	}
	last[producer] = max(last[producer], n)
}

// position returns where the subscriber is in topic.
func (c *subscriberCheck) position(topic string) (seq uint64, epoch string, subscribed bool) {
	st := c.topics[topic]
	return st.seq, st.epoch, st.subscribed
}

// rpcPending is one request waiting for its answer.
type rpcPending struct {
	reqID string
	pkgID int
	name  string // CREATE_AUTHOR / GET by name: the author's name
	sent  time.Time
}

// rpcAnswerCheck checks one connection's answers: each matches the oldest unanswered request
// (req_id and pkg_id), so answers come in request order (PROTOCOL §1.2), and carries a status
// the contract allows for that request.
type rpcAnswerCheck struct {
	who     string
	v       *violations
	pending []rpcPending
	created map[string]int64 // name → id, from CREATE answers
}

func newRPCAnswerCheck(who string, v *violations) *rpcAnswerCheck {
	return &rpcAnswerCheck{who: who, v: v, created: map[string]int64{}}
}

func (r *rpcAnswerCheck) sent(p rpcPending) { r.pending = append(r.pending, p) }

// rpcFrame is what the check reads from an answer.
type rpcFrame struct {
	reqID  string
	pkgID  int
	status int
	msg    string
	rows   []authorRow // GET_AUTHORS
	id     int64       // CREATE_AUTHOR
}

type authorRow struct {
	ID   int64  `json:"id"`
	Name string `json:"name"`
}

// answer matches one answer to the oldest pending request; it returns that request (ok false
// when the answer matched nothing).
func (r *rpcAnswerCheck) answer(f rpcFrame) (rpcPending, bool) {
	idx := -1
	for i, p := range r.pending {
		if p.reqID == f.reqID {
			idx = i
			break
		}
	}
	if idx < 0 {
		r.v.add(vAnswerUnknown, "%s: req_id %q pkg %d status %d", r.who, f.reqID, f.pkgID, f.status)
		return rpcPending{}, false
	}
	p := r.pending[idx]
	if idx > 0 {
		r.v.add(vAnswerOrder, "%s: answer to %s (pkg %d) came before %d earlier request(s), first %s (pkg %d)",
			r.who, p.reqID, p.pkgID, idx, r.pending[0].reqID, r.pending[0].pkgID)
	}
	r.pending = append(r.pending[:idx], r.pending[idx+1:]...)
	if f.pkgID != p.pkgID {
		r.v.add(vAnswerPkg, "%s: request %s pkg %d answered with pkg %d", r.who, p.reqID, p.pkgID, f.pkgID)
	}
	if !statusAllowed(p.pkgID, f.status, f.msg) {
		r.v.add(vAnswerStatus, "%s: pkg %d answered %d %q", r.who, p.pkgID, f.status, f.msg)
	}
	switch {
	case p.pkgID == pkgCreate && f.status == 0:
		r.created[p.name] = f.id
	case p.pkgID == pkgGet && p.name != "" && f.status == 0:
		// Sent right after the CREATE of that name on this connection: it must see the row.
		if _, ok := r.created[p.name]; ok && !hasAuthor(f.rows, p.name) {
			r.v.add(vOwnWrite, "%s: GET name %q answered %d rows without it", r.who, p.name, len(f.rows))
		}
	}
	return p, true
}

// overdue returns the requests sent before cutoff that are still unanswered.
func (r *rpcAnswerCheck) overdue(cutoff time.Time) []rpcPending {
	var out []rpcPending
	for _, p := range r.pending {
		if p.sent.Before(cutoff) {
			out = append(out, p)
		}
	}
	return out
}

func hasAuthor(rows []authorRow, name string) bool {
	for _, a := range rows {
		if a.Name == name {
			return true
		}
	}
	return false
}

const (
	pkgGet         = 1
	pkgCreate      = 3
	pkgDelete      = 5
	pkgSubscribe   = 10
	pkgUnsubscribe = 11
)

// statusAllowed is the contract's list of answers for the requests the stress clients send;
// a rate-limit answer is always allowed (an external server may keep its limits).
func statusAllowed(pkgID, status int, msg string) bool {
	if status == 0 || status == 1 && msg == "Rate limit exceeded" {
		return true
	}
	switch pkgID {
	case pkgCreate: // names are unique per run, but a conflict is a legal answer
		return status == 2 && strings.HasPrefix(msg, "Author with name ")
	case pkgDelete:
		return status == 1 && strings.HasPrefix(msg, "Author with ID ")
	case pkgSubscribe:
		return status == 1 && msg == "Topic history unavailable" ||
			status == 2 && msg == "Unsubscribed before the subscription completed"
	}
	return false
}

// closeSeen is how a connection ended, as the client saw it.
type closeSeen struct {
	code   int // 0: no close frame (the TCP connection ended without one)
	reason string
	at     time.Time
}

func (c closeSeen) String() string {
	if c.code == 0 && c.at.IsZero() {
		return "stayed open"
	}
	if c.code == 0 {
		return "no close frame"
	}
	if c.reason == "" {
		return fmt.Sprint(c.code)
	}
	return fmt.Sprintf("%d %s", c.code, c.reason)
}

// Churner actions: what a short-lived connection does before it ends, and so which close the
// contract prescribes.
const (
	actNormal    = "normal"     // requests, then close 1000: the server answers 1000
	actDrop      = "drop"       // requests, then the TCP connection is dropped: nothing to see
	actTooBig    = "too-big"    // a frame over the size limit: 1009
	actBinary    = "binary"     // a binary frame on a JSON connection: 1003
	actBadUTF8   = "bad-utf8"   // a text frame that is not UTF-8: 1007
	actExpire    = "expire"     // a token that expires in seconds: 4001 after exp (plus leeway)
	actOverLimit = "over-limit" // one connection more than the per-user limit: 1008
)

// closeExpectation is what the contract allows an action to end with.
type closeExpectation struct {
	code   int
	reason string // "" = any reason
}

var closeExpected = map[string]closeExpectation{
	actNormal:    {1000, ""},
	actTooBig:    {1009, ""},
	actBinary:    {1003, ""},
	actBadUTF8:   {1007, ""},
	actExpire:    {4001, "token expired"},
	actOverLimit: {1008, "Maximum concurrent connections exceeded"},
}

// closeVerdict judges how an action's connection ended: "" when the contract allows it, else
// the violation's kind and detail. A connection that holds a topic subscription may also be
// closed 1013 "missed topic messages" at any moment (the server lost track of the topic), and
// the over-limit connection may stay open while Redis is unreachable or lost its counters (the
// limit fails open, PROTOCOL §4); open is got.at zero.
func closeVerdict(action string, got closeSeen, subscribed, faulted bool, exp time.Time, leeway time.Duration) (kind, detail string) {
	if subscribed && got.code == 1013 && got.reason == closeMissedReason {
		return "", ""
	}
	want, ok := closeExpected[action]
	if !ok {
		return "", ""
	}
	wanted := closeSeen{code: want.code, reason: want.reason, at: time.Unix(1, 0)}
	if action == actOverLimit && got.at.IsZero() {
		if faulted {
			return "", ""
		}
		return vCloseCode, fmt.Sprintf("%s: want %s, the connection stayed open", action, wanted)
	}
	if got.code != want.code || want.reason != "" && got.reason != want.reason {
		return vCloseCode, fmt.Sprintf("%s: want %s, got %s", action, wanted, got)
	}
	if action == actExpire {
		switch {
		case got.at.Before(exp):
			return vCloseEarly, fmt.Sprintf("closed 4001 %s before exp", exp.Sub(got.at).Round(time.Millisecond))
		case got.at.After(exp.Add(leeway + expireSlack)):
			return vCloseCode, fmt.Sprintf("%s: 4001 came %s after exp (leeway %s)", action, got.at.Sub(exp).Round(time.Millisecond), leeway)
		}
	}
	return "", ""
}

// expireSlack is how late after exp+leeway a 4001 may come: "a few seconds" (PROTOCOL §3).
const expireSlack = 5 * time.Second

// closeMissedReason and closeSlowReason are the server's 1013 reasons (PROTOCOL §1.3, §8).
const (
	closeMissedReason = "missed topic messages"
	closeSlowReason   = "slow consumer"
)
