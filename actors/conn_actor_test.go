package actors

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/asynkron/protoactor-go/actor"

	"switchboard/hub"
)

// fakeSocket is a Socket that records the frames queued on it as "<req_id>:<status>:<msg>".
type fakeSocket struct {
	mu     sync.Mutex
	frames []string
	done   int
}

func (s *fakeSocket) ID() uint64             { return 1 }
func (s *fakeSocket) Codec() hub.Codec       { return nil }
func (s *fakeSocket) Ping()                  {}
func (s *fakeSocket) Close(uint16, string)   {}
func (s *fakeSocket) Send(frame []byte) bool { return s.Enqueue(frame) }
func (s *fakeSocket) Enqueue(frame []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.frames = append(s.frames, string(frame))
	return true
}
func (s *fakeSocket) EncodeResponse(r *Response) ([]byte, error) {
	return []byte(fmt.Sprintf("%s:%d:%s", r.ReqID, r.Status, r.Msg)), nil
}
func (s *fakeSocket) RequestDone() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.done++
}

func (s *fakeSocket) snapshot() ([]string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.frames...), s.done
}

// waitFrames waits until the socket holds n frames and returns them.
func (s *fakeSocket) waitFrames(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.Now().Add(laneWait)
	for {
		f, _ := s.snapshot()
		if len(f) >= n {
			return f
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d frames: %v", len(f), n, f)
		}
		time.Sleep(time.Millisecond)
	}
}

// fakeTopics is the hub's subscription side: it hands each SubscribeRequest to the test, which
// answers it when it likes, as the hub does after a history load.
type fakeTopics struct{ subs chan *hub.SubscribeRequest }

func (f *fakeTopics) Subscribe(r *hub.SubscribeRequest) { f.subs <- r }
func (f *fakeTopics) Unsubscribe(uint64, string)        {}

// connEnv is a connection actor over a fake socket, with a handler pool whose pkg 5 sleeps
// data.ms milliseconds, pkg 2 answers at once, pkg 6 needs role "b", and
// SUBSCRIBE/UNSUBSCRIBE/REFRESH_TOKEN are the real routes (a token is its comma-separated roles).
type connEnv struct {
	sys    *actor.ActorSystem
	sock   *fakeSocket
	topics *fakeTopics
	pid    *actor.PID
}

func newConnEnv(t *testing.T) *connEnv { t.Helper(); return newConnEnvWith(t, nil) }

// newConnEnvWith is newConnEnv with edit applied to the connection actors' deps.
func newConnEnvWith(t *testing.T, edit func(*ConnDeps)) *connEnv {
	t.Helper()
	reg := NewRegistry()
	reg.MustRegister(
		Route{PkgID: 5, Name: "SLEEP", Handler: func(ctx context.Context, r *Request) (any, any, error) {
			var in struct{ MS int }
			_ = json.Unmarshal(r.Data, &in)
			select {
			case <-time.After(time.Duration(in.MS) * time.Millisecond):
			case <-ctx.Done():
			}
			return "slept", nil, nil
		}},
		Route{PkgID: 2, Name: "QUICK", Handler: func(context.Context, *Request) (any, any, error) { return "quick", nil, nil }},
		Route{PkgID: 6, Name: "NEEDS_B", Handler: func(context.Context, *Request) (any, any, error) { return "b", nil, nil }},
	)
	pol, err := ParsePolicy([]byte(`{"pkg_ids":{"5":[],"2":[],"6":["b"],"10":[],"11":[],"12":[]},
		"topics":[{"pattern":"t.*","subscribe":[],"history":10}]}`))
	if err != nil {
		t.Fatal(err)
	}
	reg.MustRegister(InLane(LaneControl, TopicRoutes(pol)...)...)
	reg.MustRegister(SessionRoutes(func(_ context.Context, tok string) (*User, error) {
		return &User{ID: "u", Roles: strings.Split(tok, ",")}, nil
	})...)
	p, err := NewPipeline(PipelineConfig{Registry: reg, Policy: pol, Timeout: time.Minute, Logger: quietLogger(), Metrics: metrics.NewSet()})
	if err != nil {
		t.Fatal(err)
	}
	e := &connEnv{sock: &fakeSocket{}, topics: &fakeTopics{subs: make(chan *hub.SubscribeRequest, 8)}}
	e.sys = actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return quietLogger() }))
	pool, err := SpawnHandlerPool(e.sys.Root, p, context.Background(), PoolSizes{Database: 8, Control: 2})
	if err != nil {
		t.Fatal(err)
	}
	deps := &ConnDeps{Topics: e.topics, Handlers: pool.PID, Logger: quietLogger()}
	if edit != nil {
		edit(deps)
	}
	props := ConnProps(deps)
	e.pid = StartConn(e.sys.Root, props, e.sock, &User{ID: "u"})
	t.Cleanup(func() {
		_ = e.sys.Root.StopFuture(e.pid).Wait()
		_ = pool.Stop(e.sys.Root)
		e.sys.Shutdown()
	})
	return e
}

// send hands the actor a request, as the read side does.
func (e *connEnv) send(pkg int, id, data string) {
	e.sys.Root.Send(e.pid, &Request{PkgID: pkg, ReqID: id, Data: json.RawMessage(data), Transport: "ws"})
}

// sendBad hands the actor an answer the read side made itself.
func (e *connEnv) sendBad(id string) {
	e.sys.Root.Send(e.pid, &Response{ReqID: id, Status: StatusInvalidData, Msg: "Invalid data", Kind: ErrInvalid})
}

// TestConnAnswersInArrivalOrder: a slow request, then quick ones and answers the read side made
// itself: the answers leave in arrival order, one RequestDone each.
func TestConnAnswersInArrivalOrder(t *testing.T) {
	e := newConnEnv(t)
	var want []string
	for i := range 10 {
		id := "r" + strconv.Itoa(i)
		switch i % 3 {
		case 0:
			e.send(5, id, `{"ms":20}`)
			want = append(want, id+":0:")
		case 1:
			e.sendBad(id)
			want = append(want, id+":2:Invalid data")
		case 2:
			e.send(2, id, `{}`)
			want = append(want, id+":0:")
		}
	}
	got := e.sock.waitFrames(t, len(want))
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("frames\n got %v\nwant %v", got, want)
	}
	if _, done := e.sock.snapshot(); done != len(want) {
		t.Fatalf("RequestDone %d times for %d answers", done, len(want))
	}
}

// TestConnWaitsForTheHubToAnswerSubscribe: SUBSCRIBE's answer is queued by the hub; what arrives
// after it — a quick request, an answer the read side made — leaves only once the hub is done with it.
func TestConnWaitsForTheHubToAnswerSubscribe(t *testing.T) {
	e := newConnEnv(t)
	e.send(PkgSubscribe, "sub", `{"topic":"t.a"}`)
	e.sendBad("bad")
	e.send(2, "quick", `{}`)
	var sub *hub.SubscribeRequest
	select {
	case sub = <-e.topics.subs:
	case <-time.After(laneWait):
		t.Fatal("no SubscribeRequest")
	}
	if sub.Done == nil {
		t.Fatal("SubscribeRequest without Done")
	}
	// Nothing leaves while the hub has not answered: the next answers wait for it. (An absence
	// cannot be waited for; the subscribe request itself proves the actor is past the handler.)
	if f, _ := e.sock.snapshot(); len(f) != 0 {
		t.Fatalf("frames before the hub answered: %v", f)
	}
	// The hub answers: the answer, a recovered message, then Done.
	e.sock.Enqueue(sub.Ack(hub.Answer{Latest: 3, Epoch: "e", Recovered: true}))
	e.sock.Enqueue([]byte("recovered"))
	sub.Done()
	got := e.sock.waitFrames(t, 4)
	if got[1] != "recovered" || got[2] != "bad:2:Invalid data" || got[3] != "quick:0:" || !strings.HasPrefix(got[0], "sub:0:") {
		t.Fatalf("frames %v", got)
	}
}

// TestConnRefreshAppliesToTheNextRequest: the roles of a REFRESH_TOKEN apply to the request
// pipelined right after it on the same connection.
func TestConnRefreshAppliesToTheNextRequest(t *testing.T) {
	e := newConnEnv(t)
	e.send(6, "before", `{}`)
	e.send(PkgRefreshToken, "refresh", `{"token":"a,b"}`)
	e.send(6, "after", `{}`)
	got := e.sock.waitFrames(t, 3)
	if got[0] != "before:3:Permission denied" || got[1] != "refresh:0:" || got[2] != "after:0:" {
		t.Fatalf("frames %v", got)
	}
}

// TestConnAnswersOnWhenTheHubNeverSettles: should the hub never queue a SUBSCRIBE's answer, the
// connection's later answers leave after the settle wait instead of never; the hub's late Done
// then changes nothing.
func TestConnAnswersOnWhenTheHubNeverSettles(t *testing.T) {
	e := newConnEnvWith(t, func(d *ConnDeps) { d.SettleWait = 50 * time.Millisecond })
	e.send(PkgSubscribe, "sub", `{"topic":"t.a"}`)
	e.send(2, "quick", `{}`)
	var sub *hub.SubscribeRequest
	select {
	case sub = <-e.topics.subs:
	case <-time.After(laneWait):
		t.Fatal("no SubscribeRequest")
	}
	if got := e.sock.waitFrames(t, 1); got[0] != "quick:0:" {
		t.Fatalf("frames %v", got)
	}
	sub.Done() // late: the queue was released already
	e.send(2, "after", `{}`)
	if got := e.sock.waitFrames(t, 2); got[1] != "after:0:" {
		t.Fatalf("frames %v", got)
	}
}
