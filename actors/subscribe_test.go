package actors

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"switchboard/hub"
)

// subSocket is a Socket that records what the connection actor does with it.
type subSocket struct {
	mu    sync.Mutex
	done  int
	sent  [][]byte
	codec hub.Codec
}

func (s *subSocket) ID() uint64           { return 1 }
func (s *subSocket) Codec() hub.Codec     { return s.codec }
func (s *subSocket) Enqueue([]byte) bool  { return true }
func (s *subSocket) Ping()                {}
func (s *subSocket) Close(uint16, string) {}
func (s *subSocket) Send(f []byte) bool {
	s.mu.Lock()
	s.sent = append(s.sent, f)
	s.mu.Unlock()
	return true
}
func (s *subSocket) EncodeResponse(r *Response) ([]byte, error) {
	return json.Marshal(map[string]any{"req_id": r.ReqID, "status": r.Status, "data": r.Data, "msg": r.Msg})
}
func (s *subSocket) RequestDone() { s.mu.Lock(); s.done++; s.mu.Unlock() }

func (s *subSocket) doneCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done
}

// subTopics records the SubscribeRequests it is given.
type subTopics struct {
	mu   sync.Mutex
	reqs []*hub.SubscribeRequest
}

func (t *subTopics) Subscribe(r *hub.SubscribeRequest) {
	t.mu.Lock()
	t.reqs = append(t.reqs, r)
	t.mu.Unlock()
}
func (t *subTopics) Unsubscribe(uint64, string) {}

func (t *subTopics) wait(tb testing.TB, n int) []*hub.SubscribeRequest {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		t.mu.Lock()
		got := append([]*hub.SubscribeRequest(nil), t.reqs...)
		t.mu.Unlock()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%d subscriptions reached the hub, want %d", len(got), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSubscribeHoldsInFlightSlotUntilAnswered: a SUBSCRIBE keeps its connection's in-flight slot
// until the hub has queued its answer (Done), so a client cannot start history loads without
// bound; the request carries since and epoch, and the answer names the epoch.
func TestSubscribeHoldsInFlightSlotUntilAnswered(t *testing.T) {
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return quietLogger() }))
	defer sys.Shutdown()
	topics := &subTopics{}
	sock := &subSocket{}
	fence := &fenceLog{}
	since := uint64(41)
	// The handler pool's part: the SUBSCRIBE passed its checks.
	handler := sys.Root.Spawn(actor.PropsFromFunc(func(ctx actor.Context) {
		if r, ok := ctx.Message().(*Request); ok {
			ctx.Respond(&Response{PkgID: PkgSubscribe, ReqID: r.ReqID, Status: StatusOK, For: r,
				Effect: &SubscribeIntent{Topic: "dashboards.a", Since: &since, Epoch: "9c41e2d07b5a8f36"}})
		}
	}))
	pid := StartConn(sys.Root, ConnProps(&ConnDeps{Topics: topics, Handlers: handler, Logger: slog.New(fence)}), sock, &User{ID: "u"})
	sys.Root.Send(pid, &Request{PkgID: PkgSubscribe, ReqID: "r1", Data: json.RawMessage(`{}`)})
	req := topics.wait(t, 1)[0]
	if req.Topic != "dashboards.a" || req.Since == nil || *req.Since != 41 || req.Epoch != "9c41e2d07b5a8f36" || req.Done == nil {
		t.Fatalf("request %+v", req)
	}
	// A message the actor only logs: once it is logged, the SUBSCRIBE has been handled in full.
	sys.Root.Send(pid, struct{ fence int }{})
	deadline := time.Now().Add(10 * time.Second)
	for !fence.seen() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !fence.seen() {
		t.Fatal("the connection actor did not get to the fence")
	}
	if n := sock.doneCount(); n != 0 {
		t.Fatalf("RequestDone called %d times before the hub answered, want 0 (the SUBSCRIBE's slot is held)", n)
	}
	for _, tc := range []struct {
		ans  hub.Answer
		want string
	}{
		{hub.Answer{Latest: 44, Epoch: "9c41e2d07b5a8f36", Recovered: true},
			`{"data":{"topic":"dashboards.a","seq":44,"epoch":"9c41e2d07b5a8f36","recovered":true},"msg":"","req_id":"r1","status":0}`},
		{hub.Answer{}, `{"data":{"topic":"dashboards.a","seq":0,"epoch":"","recovered":false},"msg":"","req_id":"r1","status":0}`},
		{hub.Answer{Err: hub.ErrUnsubscribed}, `{"data":null,"msg":"Unsubscribed before the subscription completed","req_id":"r1","status":2}`},
		{hub.Answer{Err: hub.ErrTooManyTopics}, `{"data":null,"msg":"Too many topics on this connection","req_id":"r1","status":2}`},
		{hub.Answer{Err: hub.ErrHistory}, `{"data":null,"msg":"Topic history unavailable","req_id":"r1","status":1}`},
	} {
		if got := string(req.Ack(tc.ans)); got != tc.want {
			t.Errorf("Ack(%+v) = %s, want %s", tc.ans, got, tc.want)
		}
	}
	req.Done()
	if n := sock.doneCount(); n != 1 {
		t.Fatalf("RequestDone called %d times after the hub's Done, want 1", n)
	}
}

// fenceLog is a slog handler that notes when the connection actor logged an unexpected message.
type fenceLog struct {
	mu  sync.Mutex
	hit bool
}

func (f *fenceLog) Enabled(context.Context, slog.Level) bool { return true }
func (f *fenceLog) WithAttrs([]slog.Attr) slog.Handler       { return f }
func (f *fenceLog) WithGroup(string) slog.Handler            { return f }
func (f *fenceLog) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "unexpected message") {
		f.mu.Lock()
		f.hit = true
		f.mu.Unlock()
	}
	return nil
}

func (f *fenceLog) seen() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hit
}

// TestSubscribedAppendJSON compares subscribed's own encoding with json.Marshal's.
func TestSubscribedAppendJSON(t *testing.T) {
	strs := []string{"", "dashboards.hot", "e-1f2a", `q"\`, "<a&b>", "\x00\x1f\x7f", "é日本", "\xff\xfe", "\u2028\u2029", "x y"}
	for i, topic := range strs {
		for j, epoch := range strs {
			s := subscribed{Topic: topic, Seq: uint64(i*1000 + j), Epoch: epoch, Recovered: (i+j)%2 == 0}
			want, err := json.Marshal(s)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.AppendJSON([]byte("x")); string(got) != "x"+string(want) {
				t.Errorf("AppendJSON %+v = %s, json.Marshal %s", s, got[1:], want)
			}
		}
	}
	if got, want := (subscribed{Seq: 1<<64 - 1}).AppendJSON(nil), `{"topic":"","seq":18446744073709551615,"epoch":"","recovered":false}`; string(got) != want {
		t.Errorf("max seq: %s", got)
	}
}
