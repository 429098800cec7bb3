package transport

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"switchboard/actors"
)

// fakePool is a process that hands every request it gets, with its sender, to the test, which
// answers when and how it likes.
type fakePool struct{ got chan fakeAsk }

type fakeAsk struct {
	req    *actors.Request
	sender *actor.PID
}

func (p *fakePool) SendUserMessage(_ *actor.PID, message any) {
	_, msg, sender := actor.UnwrapEnvelope(message)
	p.got <- fakeAsk{req: msg.(*actors.Request), sender: sender}
}
func (p *fakePool) SendSystemMessage(*actor.PID, any) {}
func (p *fakePool) Stop(*actor.PID)                   {}

func newFakePool(t *testing.T) (*actor.RootContext, *actor.PID, *fakePool) {
	t.Helper()
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}))
	t.Cleanup(sys.Shutdown)
	p := &fakePool{got: make(chan fakeAsk, 4)}
	pid, ok := sys.ProcessRegistry.Add(p, "fake-pool")
	if !ok {
		t.Fatal("register the fake pool")
	}
	return sys.Root, pid, p
}

// TestReplyBoxes: a call gets its own request's answer; an answer for another request is not
// taken for it; a box is reused once answered; a call that gives up retires its box, so the
// answer that comes after is dropped and never reaches a later call.
func TestReplyBoxes(t *testing.T) {
	root, pool, fake := newFakePool(t)
	boxes := newReplyBoxes(root.ActorSystem())

	type result struct {
		resp *actors.Response
		ok   bool
	}
	call := func(req *actors.Request, wait time.Duration) <-chan result {
		out := make(chan result, 1)
		go func() {
			resp, ok := boxes.ask(root, pool, req, wait)
			out <- result{resp, ok}
		}()
		return out
	}

	// Answered: a stray answer first (another request's), then its own.
	req1 := &actors.Request{ReqID: "1"}
	done := call(req1, time.Hour)
	a1 := <-fake.got
	if a1.req != req1 || a1.sender == nil {
		t.Fatalf("the pool got %+v", a1)
	}
	root.Send(a1.sender, &actors.Response{ReqID: "other", For: &actors.Request{ReqID: "other"}})
	root.Send(a1.sender, &actors.Response{ReqID: "1", For: req1})
	if r := <-done; !r.ok || r.resp.For != req1 || r.resp.ReqID != "1" {
		t.Fatalf("call 1: %+v", r)
	}

	// The box is reused.
	req2 := &actors.Request{ReqID: "2"}
	done = call(req2, time.Hour)
	a2 := <-fake.got
	if a2.sender.Id != a1.sender.Id {
		t.Errorf("second call's box %s, first %s: not reused", a2.sender.Id, a1.sender.Id)
	}
	root.Send(a2.sender, &actors.Response{ReqID: "2", For: req2})
	if r := <-done; !r.ok || r.resp.For != req2 {
		t.Fatalf("call 2: %+v", r)
	}

	// Not answered in time: the call gives up and its box is retired.
	req3 := &actors.Request{ReqID: "3"}
	done = call(req3, time.Millisecond)
	a3 := <-fake.got
	if r := <-done; r.ok {
		t.Fatalf("call 3 answered: %+v", r)
	}
	// Its late answer goes nowhere: the next call has a new box and gets its own answer only.
	root.Send(a3.sender, &actors.Response{ReqID: "3", For: req3})
	req4 := &actors.Request{ReqID: "4"}
	done = call(req4, time.Hour)
	a4 := <-fake.got
	if a4.sender.Id == a3.sender.Id {
		t.Errorf("the retired box %s was used again", a3.sender.Id)
	}
	if _, ok := root.ActorSystem().ProcessRegistry.Get(a3.sender); ok {
		t.Errorf("the retired box %s is still registered", a3.sender.Id)
	}
	root.Send(a4.sender, &actors.Response{ReqID: "4", For: req4})
	if r := <-done; !r.ok || r.resp.For != req4 {
		t.Fatalf("call 4: %+v", r)
	}
}
