package transport

import (
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"switchboard/actors"
)

// replyBox is where a façade call waits for the handler pool's answer: a process in protoactor's
// registry, as the future of RootContext.RequestFuture is, but registered once and used by one
// call after another (replyBoxes). A future registers a process under a fresh name, starts a
// timer and waits on a condition variable per call, then removes the process; the box saves
// about 3k instructions of a GET /authors (callgrind, docs/performance.md "Round four").
//
// The pool answers every request it is given, by its deadline (actors.HandlerPool); the box
// takes the answer whose For is the request it waits for and drops anything else. A call that
// gives up waiting (504) retires its box for good (dead), so an answer that comes later is
// dropped, never taken by another call.
type replyBox struct {
	pid   *actor.PID
	ch    chan *actors.Response // capacity 1: the pool answers once per request
	timer *time.Timer           // stopped while the box is free
	dead  atomic.Bool
}

// SendUserMessage implements actor.Process: the pool's answer arrives here, on the answering
// actor's goroutine. It never blocks.
func (b *replyBox) SendUserMessage(_ *actor.PID, message any) {
	if b.dead.Load() {
		return
	}
	_, msg, _ := actor.UnwrapEnvelope(message)
	if resp, ok := msg.(*actors.Response); ok {
		select {
		case b.ch <- resp:
		default: // not an answer this box waits for (it holds one already)
		}
	}
}

// SendSystemMessage implements actor.Process; nothing watches a box.
func (b *replyBox) SendSystemMessage(*actor.PID, any) {}

// Stop implements actor.Process; a box is retired by replyBoxes.
func (b *replyBox) Stop(*actor.PID) {}

// replyBoxes keeps the free boxes of a façade. Boxes are made on demand (one per call in
// flight at the peak, plus the free ones kept) and never shrink below the peak of kept ones:
// each is a registry entry, a channel and a stopped timer.
type replyBoxes struct {
	system *actor.ActorSystem
	free   chan *replyBox
}

// maxFreeReplyBoxes bounds the boxes kept for reuse; beyond it a box is removed once used.
const maxFreeReplyBoxes = 1024

func newReplyBoxes(system *actor.ActorSystem) *replyBoxes {
	return &replyBoxes{system: system, free: make(chan *replyBox, maxFreeReplyBoxes)}
}

// get returns a free box, registering a new one if none is.
func (r *replyBoxes) get() *replyBox {
	select {
	case b := <-r.free:
		return b
	default:
	}
	b := &replyBox{ch: make(chan *actors.Response, 1), timer: time.NewTimer(time.Hour)}
	b.timer.Stop()
	reg := r.system.ProcessRegistry
	b.pid, _ = reg.Add(b, "facade"+reg.NextId()) // NextId never repeats, so the name is free
	return b
}

// put returns a box after its call has taken its answer.
func (r *replyBoxes) put(b *replyBox) {
	select {
	case r.free <- b:
	default:
		r.retire(b)
	}
}

// retire removes a box for good: later answers to it are dropped.
func (r *replyBoxes) retire(b *replyBox) {
	b.dead.Store(true)
	r.system.ProcessRegistry.Remove(b.pid)
}

// ask sends req to the pool at pid with b's address as the sender and waits up to wait for
// its answer; false when none came in time (b is then retired).
func (r *replyBoxes) ask(root *actor.RootContext, pool *actor.PID, req *actors.Request, wait time.Duration) (*actors.Response, bool) {
	b := r.get()
	root.RequestWithCustomSender(pool, req, b.pid)
	b.timer.Reset(wait)
	for {
		select {
		case resp := <-b.ch:
			if resp.For != req {
				continue // not this request's answer (none should be: a box is reused only once answered)
			}
			b.timer.Stop()
			r.put(b)
			return resp, true
		case <-b.timer.C:
			r.retire(b)
			return nil, false
		}
	}
}
