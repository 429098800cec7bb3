package main

// End-to-end test of topic streams across Redis losing its data (docs/protocol.md §1.2 "epoch", §1.4
// SUBSCRIBE; docs/protocol.md §8 "Missed topic messages"): two nodes on a redis-server of the
// test's own, dashboards subscribed on both, a producer posting to one node without pause while
// the test FLUSHes the database, then kills redis-server and starts it again (no persistence).
// Every dashboard behaves like a real client: it keeps the epoch and seq of the last message it
// got, comes back after a close with since and epoch, retries a SUBSCRIBE that failed, and
// reloads when told recovered:false. Two of them are away during the FLUSH and come back once the
// new stream has passed the seq they had. The test checks that no dashboard ever gets a message
// that does not follow its position (a duplicate, another stream's message taken for the next
// one), that every broadcast the producer got accepted reaches every dashboard unless it was told
// recovered:false in between (no silent hole), that each was told about each loss, and that all
// of them end on the producer's last accepted broadcast. The dashboards read raw frames instead of
// using transport/client, which would absorb a duplicate or a hole after recovered:true and so
// hide the very server faults checked here (the Go client's own recovery is client_e2e_test.go).

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"switchboard/store/redistest"
)

// epDashboard is one client following a topic across connections.
type epDashboard struct {
	who   string
	node  *testServer
	token string
	topic string

	mu         sync.Mutex
	subscribed bool   // it had an answer: epoch and seq are its position
	epoch      string // the stream of its position ("" = none seen)
	seq        uint64
	lastN      uint64 // data.n of the last broadcast it got (the producer's counter)
	got        int    // broadcasts taken in order
	ns         []uint64
	toldAt     map[int]bool // told recovered:false after ns[:i]
	recovered  int          // answers to since that said recovered:true
	told       int          // answers to since that said recovered:false
	retries    int          // SUBSCRIBEs answered "Topic history unavailable", tried again
	closes     map[string]int
	violations []string
}

func (d *epDashboard) fail(format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.violations) < 20 {
		d.violations = append(d.violations, fmt.Sprintf(format, args...))
	}
}

// run connects, subscribes and follows the topic until stop, reconnecting after every close.
func (d *epDashboard) run(t testing.TB, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		c, err := d.node.tryDial(t, d.token, nil)
		if err != nil {
			d.fail("%s: dial: %v", d.who, err)
			if !epPause(stop, 100*time.Millisecond) {
				return
			}
			continue
		}
		if !d.session(c, stop) {
			return
		}
	}
}

// epPause waits d or until stop; false when stopped.
func epPause(stop <-chan struct{}, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-stop:
		return false
	case <-timer.C:
		return true
	}
}

// session follows the topic on one connection; false when stopped.
func (d *epDashboard) session(c *wsClient, stop <-chan struct{}) bool {
	reqID, withSince := d.subscribe(c)
	answered := false
	var retry <-chan time.Time
	for {
		select {
		case <-stop:
			_ = c.conn.WriteClose(1000, nil)
			return false
		case <-retry:
			retry = nil
			reqID, withSince = d.subscribe(c)
		case b := <-c.msgs:
			if again := d.frame(b, reqID, withSince, &answered); again {
				retry = time.After(100 * time.Millisecond)
			}
		case <-c.closed:
			for drained := false; !drained; { // frames read before the close come first
				select {
				case b := <-c.msgs:
					d.frame(b, reqID, withSince, &answered)
				default:
					drained = true
				}
			}
			c.mu.Lock()
			key := fmt.Sprintf("%d %s", c.closeCode, c.closeText)
			c.mu.Unlock()
			d.mu.Lock()
			d.closes[key]++
			d.mu.Unlock()
			if key != "1013 missed topic messages" {
				d.fail("%s: closed with %s", d.who, key)
			}
			return true
		}
	}
}

// subscribe sends SUBSCRIBE, with since and epoch once the dashboard has a position.
func (d *epDashboard) subscribe(c *wsClient) (reqID string, withSince bool) {
	d.mu.Lock()
	data := map[string]any{"topic": d.topic}
	if d.subscribed {
		data["since"], data["epoch"], withSince = d.seq, d.epoch, true
	}
	d.mu.Unlock()
	reqID = uuid.NewString()
	b, _ := json.Marshal(map[string]any{"pkg_id": 10, "req_id": reqID, "data": data})
	_ = c.conn.WriteString(string(b)) // a failed write shows as the close
	return reqID, withSince
}

// frame handles one frame; it reports whether the SUBSCRIBE must be tried again.
func (d *epDashboard) frame(b []byte, reqID string, withSince bool, answered *bool) (retry bool) {
	var e envelope
	if err := json.Unmarshal(b, &e); err != nil {
		d.fail("%s: frame %s: %v", d.who, b, err)
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case e.ReqID == reqID && e.PkgID == 10:
		if e.status() == 1 && e.msg() == "Topic history unavailable" {
			d.retries++ // Redis is down: the client tries again
			return true
		}
		var a clSubAnswer
		if e.status() != 0 || json.Unmarshal(e.Data, &a) != nil || a.Topic != d.topic {
			d.violations = append(d.violations, fmt.Sprintf("%s: SUBSCRIBE answered %d %q %s", d.who, e.status(), e.msg(), e.Data))
			return false
		}
		*answered = true
		switch {
		case withSince && a.Recovered:
			d.recovered++
			if a.Epoch != d.epoch || a.Seq < d.seq {
				d.violations = append(d.violations, fmt.Sprintf("%s: recovered from %s/%d with the stream at %s/%d", d.who, d.epoch, d.seq, a.Epoch, a.Seq))
			}
			// The replay follows: the position stays until it comes.
		default:
			if withSince {
				d.told++
				d.toldAt[len(d.ns)] = true
			}
			// Not recovered (or a first subscription): the client reloads its state as of the
			// answer and follows the stream from there.
			d.subscribed, d.epoch, d.seq = true, a.Epoch, a.Seq
		}
	case e.StatusCode == nil && e.Topic == d.topic:
		var dd clData
		_ = json.Unmarshal(e.Data, &dd)
		next := e.Epoch == d.epoch && e.Seq == d.seq+1 || d.epoch == "" && d.seq == 0 && e.Seq == 1
		switch {
		case !*answered:
			d.violations = append(d.violations, fmt.Sprintf("%s: broadcast %s/%d before the SUBSCRIBE answer", d.who, e.Epoch, e.Seq))
		case e.Epoch == "" || !next:
			d.violations = append(d.violations, fmt.Sprintf("%s: at %s/%d got %s/%d (n %d): not the next message", d.who, d.epoch, d.seq, e.Epoch, e.Seq, dd.N))
		case dd.N <= d.lastN:
			d.violations = append(d.violations, fmt.Sprintf("%s: message n %d after n %d", d.who, dd.N, d.lastN))
		}
		d.epoch, d.seq, d.lastN = e.Epoch, e.Seq, max(d.lastN, dd.N)
		d.got++
		d.ns = append(d.ns, dd.N)
	default:
		d.violations = append(d.violations, fmt.Sprintf("%s: unexpected frame %s", d.who, b))
	}
	return false
}

type epSnapshot struct {
	epoch            string
	seq, lastN       uint64
	got, told, recov int
}

func (d *epDashboard) snapshot() epSnapshot {
	d.mu.Lock()
	defer d.mu.Unlock()
	return epSnapshot{epoch: d.epoch, seq: d.seq, lastN: d.lastN, got: d.got, told: d.told, recov: d.recovered}
}

// holes lists the broadcasts accepted by the server (in accepted) that d did not get although it
// was not told recovered:false between the ones it got before and after them.
func (d *epDashboard) holes(accepted map[uint64]bool) []uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []uint64
	for i := 1; i < len(d.ns); i++ {
		if d.toldAt[i] {
			continue
		}
		for n := d.ns[i-1] + 1; n < d.ns[i]; n++ {
			if accepted[n] {
				out = append(out, n)
			}
		}
	}
	return out
}

// epProducer posts broadcasts to one node without pause until stopped; n counts every attempt,
// accepted the last n that was answered 202, and all the n answered 202.
type epProducer struct {
	mu       sync.Mutex
	n        uint64
	accepted uint64
	refused  int
	all      map[uint64]bool
}

func (p *epProducer) run(s *testServer, token, topic string, stop <-chan struct{}) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		p.mu.Lock()
		p.n++
		n := p.n
		p.mu.Unlock()
		status, _, _, err := clPost(s, token, clBroadcastBody(topic, "ep", n))
		p.mu.Lock()
		if err == nil && status == http.StatusAccepted {
			p.accepted = n
			p.all[n] = true
		} else {
			p.refused++ // Redis down: 503
		}
		p.mu.Unlock()
	}
}

func (p *epProducer) last() (n, accepted uint64, refused int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n, p.accepted, p.refused
}

func TestTopicStreamSurvivesRedisDataLoss(t *testing.T) {
	rs := redistest.StartServer(t)
	nodes := clNodes(t, 2, rs.URL())
	tag := limRandomHex(5)
	topic := "dashboards.ep" + tag
	admin := rs.Client()
	viewer := nodes[1].token(t, "ep-viewer-"+tag)
	clWaitHealth(t, 30*time.Second, "start", http.StatusOK, "healthy", nodes...)

	// Each dashboard runs until its own stop; the late ones are stopped and started again, with
	// the position they had.
	const stayers, late = 8, 2
	var (
		dashes []*epDashboard
		stops  = make([]chan struct{}, stayers+late)
		dones  = make([]chan struct{}, stayers+late)
	)
	start := func(i int) {
		stops[i], dones[i] = make(chan struct{}), make(chan struct{})
		go func(d *epDashboard, stop, done chan struct{}) { defer close(done); d.run(t, stop) }(dashes[i], stops[i], dones[i])
	}
	stop := func(i int) {
		select {
		case <-stops[i]:
		default:
			close(stops[i])
		}
		<-dones[i]
	}
	for i := range stayers + late {
		who := fmt.Sprintf("node %d/dashboard %d", i%2, i)
		if i >= stayers {
			who += " (away during the FLUSH)"
		}
		dashes = append(dashes, &epDashboard{who: who, node: nodes[i%2], token: viewer, topic: topic,
			closes: map[string]int{}, toldAt: map[int]bool{}})
		start(i)
	}
	prod := &epProducer{all: map[uint64]bool{}}
	stopProd, prodDone := make(chan struct{}), make(chan struct{})
	stopProducer := func() {
		select {
		case <-stopProd:
		default:
			close(stopProd)
		}
		<-prodDone
	}
	defer func() { // whatever ended the test: stop everything, then report the findings
		stopProducer()
		for i := range dashes {
			stop(i)
		}
		for _, d := range dashes {
			d.mu.Lock()
			for _, v := range d.violations {
				t.Error(v)
			}
			d.mu.Unlock()
			if h := d.holes(prod.all); len(h) > 0 {
				t.Errorf("%s: silent hole: %d accepted broadcasts never arrived and it was not told (n %v…)", d.who, len(h), h[:min(len(h), 10)])
			}
		}
	}()

	// progress waits until each dashboard of which has taken k more broadcasts than it had and has
	// been told about losses at least told times.
	progress := func(phase string, k, told int, which []*epDashboard) {
		t.Helper()
		base := make([]epSnapshot, len(which))
		for i, d := range which {
			base[i] = d.snapshot()
		}
		clWaitFor(t, 60*time.Second, phase, func() (bool, string) {
			for i, d := range which {
				s := d.snapshot()
				if s.got < base[i].got+k || s.told < told {
					return false, fmt.Sprintf("%s: %+v (was %+v)", d.who, s, base[i])
				}
			}
			return true, ""
		})
	}

	// Every dashboard has its first answer before anything is published, so each follows the
	// topic's first stream from its seq 1.
	clWaitFor(t, 30*time.Second, "every dashboard subscribed", func() (bool, string) {
		for _, d := range dashes {
			d.mu.Lock()
			ok := d.subscribed
			d.mu.Unlock()
			if !ok {
				return false, d.who
			}
		}
		return true, ""
	})
	producer := nodes[0].token(t, "ep-producer-"+tag, "broadcast")
	go func() { defer close(prodDone); prod.run(nodes[0], producer, topic, stopProd) }()
	progress("the first stream flows", 20, 0, dashes)
	first := dashes[0].snapshot().epoch

	// The late dashboards go away, keeping their position.
	var lateSeq uint64
	for i := stayers; i < stayers+late; i++ {
		stop(i)
		lateSeq = max(lateSeq, dashes[i].snapshot().seq)
	}

	// 1. FLUSHDB: the counter starts again under a new epoch while every bus stays subscribed.
	flushed := time.Now()
	if err := admin.FlushDB(context.Background()).Err(); err != nil { // the test's own server
		t.Fatal(err)
	}
	progress("every dashboard told after FLUSHDB, and following the new stream", 20, 1, dashes[:stayers])
	t.Logf("FLUSHDB: every dashboard told and 20 broadcasts further after %s", time.Since(flushed).Round(time.Millisecond))
	second := dashes[0].snapshot().epoch
	if second == "" || second == first {
		t.Fatalf("epoch after FLUSHDB %q, before %q", second, first)
	}
	// The late ones come back once the new stream has passed the seq they had: by seq alone their
	// since would look recoverable.
	clWaitFor(t, 60*time.Second, "the new stream past the late dashboards' seq", func() (bool, string) {
		s := dashes[0].snapshot()
		return s.epoch == second && s.seq > lateSeq+5, fmt.Sprintf("at %d, want past %d", s.seq, lateSeq+5)
	})
	for i := stayers; i < stayers+late; i++ {
		start(i)
	}
	progress("the late dashboards told and following the new stream", 10, 1, dashes[stayers:])

	// 2. redis-server killed and started again, without its data.
	rs.Kill()
	killed := time.Now()
	clWaitHealth(t, 30*time.Second, "Redis killed", http.StatusServiceUnavailable, "unhealthy", nodes...)
	rs.Restart()
	progress("every dashboard told after the restart, and following the new stream", 20, 2, dashes)
	t.Logf("restart: every dashboard told and 20 broadcasts further %s after the kill", time.Since(killed).Round(time.Millisecond))
	if third := dashes[0].snapshot().epoch; third == "" || third == second || third == first {
		t.Fatalf("epoch after the restart %q, before %q and %q", third, second, first)
	}

	// Every broadcast the producer got accepted reaches every dashboard, unless it was told.
	stopProducer()
	n, accepted, refused := prod.last()
	clWaitFor(t, 60*time.Second, "every dashboard at the last accepted broadcast", func() (bool, string) {
		for _, d := range dashes {
			if s := d.snapshot(); s.lastN < accepted {
				return false, fmt.Sprintf("%s at n %d, want %d", d.who, s.lastN, accepted)
			}
		}
		return true, ""
	})
	for i := range dashes {
		stop(i)
	}
	t.Logf("producer: %d broadcasts posted, last accepted n %d, %d refused (Redis down)", n, accepted, refused)
	for _, d := range dashes {
		s := d.snapshot()
		d.mu.Lock()
		t.Logf("%s: %d broadcasts in order, %d told recovered:false, %d recovered, %d SUBSCRIBEs retried, closes %v",
			d.who, s.got, s.told, s.recov, d.retries, d.closes)
		d.mu.Unlock()
	}
}

// TestSubscribeEpochValidation: an epoch that is not a string of at most 64 characters is
// invalid data (2, at /epoch); any other string is only compared — one the topic never had is
// not recovered, and the answer names the topic's stream.
func TestSubscribeEpochValidation(t *testing.T) {
	s := startServer(t, nil)
	c := s.dial(t, s.token(t, "ep-validate")) // raw: epochs the Go client cannot send (a number, null)
	for _, data := range []map[string]any{
		{"topic": "dashboards.v", "since": 0, "epoch": strings.Repeat("a", 65)},
		{"topic": "dashboards.v", "since": 0, "epoch": 5},
		{"topic": "dashboards.v", "epoch": nil},
	} {
		r := c.call(10, data)
		var d struct {
			Errors []struct{ Path string } `json:"errors"`
		}
		decodeData(t, r, &d)
		if r.status() != 2 || r.msg() != "Invalid data" || len(d.Errors) == 0 || d.Errors[0].Path != "/epoch" {
			t.Fatalf("SUBSCRIBE %v: %d %q %s, want 2 Invalid data at /epoch", data, r.status(), r.msg(), r.Data)
		}
	}
	for _, epoch := range []string{"", strings.Repeat("z", 64), `"}],<script>`, "\u00e9t\u00e9"} {
		r := c.call(10, map[string]any{"topic": "dashboards.v", "since": 0, "epoch": epoch})
		var a clSubAnswer
		decodeData(t, r, &a)
		if r.status() != 0 || a.Recovered || a.Epoch != "" || a.Seq != 0 {
			t.Fatalf("SUBSCRIBE since 0 in epoch %q on a topic without a stream: %d %s", epoch, r.status(), r.Data)
		}
	}
}

// TestSubscribeWhileRedisDown: with Redis gone, SUBSCRIBE to a topic with history cannot read
// it: each is answered 1/Topic history unavailable — more of them at once than the connection's
// in-flight cap, none lost — and the connection stays usable; once Redis is back the same
// SUBSCRIBE works.
func TestSubscribeWhileRedisDown(t *testing.T) {
	rs := redistest.StartServer(t)
	s := clNodes(t, 1, rs.URL())[0]
	c := s.dial(t, s.token(t, "ep-down")) // raw: 40 SUBSCRIBEs in flight at once, answers read as they come
	if r := c.call(10, map[string]any{"topic": "dashboards.down"}); r.status() != 0 {
		t.Fatalf("SUBSCRIBE with Redis up: %d %q", r.status(), r.msg())
	}
	rs.Kill()
	const n = 40 // over SWITCHBOARD_WS_MAX_IN_FLIGHT (32)
	ids := map[string]bool{}
	for i := range n {
		id := uuid.NewString()
		ids[id] = true
		b, _ := json.Marshal(map[string]any{"pkg_id": 10, "req_id": id,
			"data": map[string]any{"topic": fmt.Sprintf("dashboards.down%d", i), "since": 3, "epoch": "0123456789abcdef"}})
		c.sendText(string(b))
	}
	for range n {
		e := c.next(30 * time.Second)
		if !ids[e.ReqID] || e.status() != 1 || e.msg() != "Topic history unavailable" {
			t.Fatalf("answer %d %q %+v %s, want 1 Topic history unavailable to one of the SUBSCRIBEs", e.status(), e.msg(), e, e.Data)
		}
		delete(ids, e.ReqID)
	}
	if r := c.call(11, map[string]any{"topic": "dashboards.down0"}); r.status() != 0 {
		t.Fatalf("UNSUBSCRIBE after the failures: %d %q", r.status(), r.msg())
	}
	rs.Restart()
	clWaitFor(t, 30*time.Second, "SUBSCRIBE to work again", func() (bool, string) {
		r := c.call(10, map[string]any{"topic": "dashboards.down0", "since": 3, "epoch": "0123456789abcdef"})
		var a clSubAnswer
		_ = json.Unmarshal(r.Data, &a)
		return r.status() == 0 && !a.Recovered, fmt.Sprintf("%d %q %s", r.status(), r.msg(), r.Data)
	})
}
