package actors

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/asynkron/protoactor-go/actor"

	"switchboard/store/audit"
)

// laneWait bounds waits that only run out when something hangs.
const laneWait = 10 * time.Second

// laneEnv is a handler pool over a pipeline with:
//   - pkg 1 (database lane): blocks until release is closed, ignoring its context, and counts its runs;
//   - pkg 2 (database lane): answers at once;
//   - pkg 11 (control lane): answers at once.
type laneEnv struct {
	sys     *actor.ActorSystem
	pool    *HandlerPool
	release chan struct{}
	runs    atomic.Int64 // runs of pkg 1
	metrics *metrics.Set
}

func newLaneEnv(t *testing.T, timeout time.Duration, sizes PoolSizes) *laneEnv {
	t.Helper()
	e := &laneEnv{release: make(chan struct{}), metrics: metrics.NewSet()}
	reg := NewRegistry()
	reg.MustRegister(
		Route{PkgID: 1, Name: "STUCK", Handler: func(context.Context, *Request) (any, any, error) {
			e.runs.Add(1)
			<-e.release
			return "done", nil, nil
		}},
		Route{PkgID: 2, Name: "QUICK", Handler: func(context.Context, *Request) (any, any, error) { return "quick", nil, nil }},
		Route{PkgID: 11, Name: "CONTROL", Lane: LaneControl, Handler: func(context.Context, *Request) (any, any, error) { return "control", nil, nil }},
	)
	pol, err := ParsePolicy([]byte(`{"pkg_ids":{"1":[],"2":[],"11":[]}}`))
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPipeline(PipelineConfig{Registry: reg, Policy: pol, Timeout: timeout, Logger: quietLogger(), Metrics: e.metrics})
	if err != nil {
		t.Fatal(err)
	}
	e.sys = actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return quietLogger() }))
	if e.pool, err = SpawnHandlerPool(e.sys.Root, p, context.Background(), sizes); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-e.release:
		default:
			close(e.release)
		}
		if err := e.pool.Stop(e.sys.Root); err != nil {
			t.Errorf("pool stop: %v", err)
		}
		e.sys.Shutdown()
	})
	return e
}

func laneReq(pkg int) *Request {
	return &Request{PkgID: pkg, ReqID: "id", Data: json.RawMessage(`{}`), Transport: "ws", User: &User{ID: "u"}, Admitted: time.Now()}
}

// ask sends req to the pool and returns the future of its answer.
func (e *laneEnv) ask(req *Request) *actor.Future {
	return e.sys.Root.RequestFuture(e.pool.PID, req, laneWait)
}

func answerOf(t *testing.T, f *actor.Future) *Response {
	t.Helper()
	res, err := f.Result()
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	return res.(*Response)
}

func (e *laneEnv) waitRuns(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(laneWait)
	for e.runs.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d stuck handlers running", e.runs.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestControlLaneAnswersWhileDatabaseLaneIsStuck: every database actor is held and more database
// requests wait; control requests are answered all the same while the stuck ones hold them.
func TestControlLaneAnswersWhileDatabaseLaneIsStuck(t *testing.T) {
	e := newLaneEnv(t, time.Minute, PoolSizes{Database: 3, Control: 1})
	var stuck []*actor.Future
	for range 5 {
		stuck = append(stuck, e.ask(laneReq(1)))
	}
	e.waitRuns(t, 3)
	for range 10 {
		if r := answerOf(t, e.ask(laneReq(11))); r.Status != StatusOK || r.Data != "control" {
			t.Fatalf("control answered %+v", r)
		}
	}
	if n := e.runs.Load(); n != 3 {
		t.Fatalf("%d stuck handlers ran, want 3 (two wait for an actor)", n)
	}
	close(e.release)
	for _, f := range stuck {
		if r := answerOf(t, f); r.Status != StatusOK {
			t.Fatalf("stuck request answered %+v", r)
		}
	}
}

// TestLaneFreeActorTakesTheNextRequest: with one of two actors held, requests go to the other
// one instead of queueing behind the held one.
func TestLaneFreeActorTakesTheNextRequest(t *testing.T) {
	e := newLaneEnv(t, time.Minute, PoolSizes{Database: 2, Control: 1})
	held := e.ask(laneReq(1))
	e.waitRuns(t, 1)
	for range 20 {
		if r := answerOf(t, e.ask(laneReq(2))); r.Status != StatusOK || r.Data != "quick" {
			t.Fatalf("quick answered %+v", r)
		}
	}
	close(e.release)
	answerOf(t, held)
}

// TestLaneRefusesRequestsWhoseDeadlinePassed: a request waiting for the lane's only actor is
// answered 1 "Request timed out" when its deadline passes, while the actor is still held (its
// handler ignores its deadline), and never runs; one that arrives already past its deadline is
// answered at once.
func TestLaneRefusesRequestsWhoseDeadlinePassed(t *testing.T) {
	const timeout = 200 * time.Millisecond
	e := newLaneEnv(t, timeout, PoolSizes{Database: 1, Control: 1})
	held := e.ask(laneReq(1))
	e.waitRuns(t, 1)
	waiting := e.ask(laneReq(1))
	r := answerOf(t, waiting)
	if r.Status != StatusError || r.Msg != "Request timed out" || !errors.Is(r.Kind, ErrDeadline) {
		t.Fatalf("waiting request answered %+v", r)
	}
	late := laneReq(2)
	late.Admitted = time.Now().Add(-time.Hour)
	if r := answerOf(t, e.ask(late)); !errors.Is(r.Kind, ErrDeadline) {
		t.Fatalf("late request answered %+v", r)
	}
	if n := e.runs.Load(); n != 1 {
		t.Fatalf("the stuck handler ran %d times, want once", n)
	}
	var b strings.Builder
	e.metrics.WritePrometheus(&b)
	if !slices.Contains(strings.Split(b.String(), "\n"), `handler_requests_expired_total{lane="database"} 2`) {
		t.Fatalf("metrics:\n%s", b.String())
	}
	close(e.release)
	if r := answerOf(t, held); r.Status != StatusOK {
		t.Fatalf("held request answered %+v", r)
	}
	// The actor is free again and the refused request never runs.
	if r := answerOf(t, e.ask(laneReq(2))); r.Status != StatusOK {
		t.Fatalf("after: %+v", r)
	}
	if n := e.runs.Load(); n != 1 {
		t.Fatalf("the stuck handler ran %d times, want once", n)
	}
}

// TestPoolStopAnswersWaitingRequests: requests still waiting when the pool stops are answered 1
// "Server is shutting down".
func TestPoolStopAnswersWaitingRequests(t *testing.T) {
	e := newLaneEnv(t, time.Minute, PoolSizes{Database: 1, Control: 1})
	held := e.ask(laneReq(1))
	e.waitRuns(t, 1)
	waiting := e.ask(laneReq(2))
	stopped := make(chan error, 1)
	go func() { stopped <- e.pool.Stop(e.sys.Root) }()
	r := answerOf(t, waiting)
	if !errors.Is(r.Kind, ErrStopping) || r.Msg != "Server is shutting down" {
		t.Fatalf("waiting request answered %+v", r)
	}
	close(e.release)
	answerOf(t, held)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	// Stop is idempotent: the cleanup stops it again.
}

// panickyAuditor panics on every record: a fault in the pipeline's own steps, outside the
// handler's recover.
type panickyAuditor struct{}

func (panickyAuditor) Record(audit.Entry) { panic("audit broke") }

// TestHandlerActorSurvivesPipelinePanics: a panic in the pipeline's own steps is answered
// 1/"Internal error" and leaves the actor in its lane: a pool of one keeps answering.
func TestHandlerActorSurvivesPipelinePanics(t *testing.T) {
	reg := NewRegistry()
	reg.MustRegister(Route{PkgID: 2, Name: "QUICK", Handler: func(context.Context, *Request) (any, any, error) { return 1, nil, nil }})
	pol, err := ParsePolicy([]byte(`{"pkg_ids":{"2":[]}}`))
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPipeline(PipelineConfig{Registry: reg, Policy: pol, Auditor: panickyAuditor{}, Logger: quietLogger(), Metrics: metrics.NewSet()})
	if err != nil {
		t.Fatal(err)
	}
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return quietLogger() }))
	defer sys.Shutdown()
	pool, err := SpawnHandlerPool(sys.Root, p, context.Background(), PoolSizes{Database: 1, Control: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pool.Stop(sys.Root) }()
	for range 3 {
		res, err := sys.Root.RequestFuture(pool.PID, laneReq(2), laneWait).Result()
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		if r := res.(*Response); r.Msg != "Internal error" || r.For == nil {
			t.Fatalf("answered %+v", r)
		}
	}
}
