package actors

import (
	"context"
	"log/slog"
	"sync"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/router"
)

// handlerActor is stateless: it answers each *Request with the Pipeline's *Response. Several
// run behind a round-robin router so slow handlers (database calls) run side by side.
type handlerActor struct {
	pipeline *Pipeline
	base     context.Context // cancelled at shutdown so running handlers stop early
	log      *slog.Logger
}

func (a *handlerActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started, *actor.Stopping, *actor.Stopped, *actor.Restarting:
	case *Request:
		ctx.Respond(a.pipeline.Handle(a.base, m))
	default:
		a.log.Warn("handler actor: unexpected message", "type", typeName(m))
	}
}

// HandlerPool is the pool of handler actors: PID routes each request to one of them.
type HandlerPool struct {
	PID     *actor.PID
	workers *workerDispatcher
}

// SpawnHandlerPool starts size handler actors behind one round-robin PID. base is the context
// every handler call derives from; cancel it to abort in-flight calls at shutdown. Stop the
// pool with Stop.
//
// The actors' mailboxes run on size long-lived goroutines rather than on a fresh goroutine
// each time a mailbox has work (protoactor's default): a handler goes deep (the database
// driver, JSON, schema validation), and a fresh goroutine grows its stack from the smallest
// size on every request.
func SpawnHandlerPool(root *actor.RootContext, p *Pipeline, base context.Context, size int) *HandlerPool {
	size = max(size, 1)
	d := newWorkerDispatcher(size, 2*size+2)
	props := router.NewRoundRobinPool(size, actor.WithProducer(func() actor.Actor {
		return &handlerActor{pipeline: p, base: base, log: p.cfg.Logger}
	}), actor.WithDispatcher(d))
	return &HandlerPool{PID: root.SpawnPrefix(props, "handlers"), workers: d}
}

// Stop stops the handler actors, waiting for the requests they are running, then their
// worker goroutines.
func (h *HandlerPool) Stop(root *actor.RootContext) error {
	err := root.PoisonFuture(h.PID).Wait()
	h.workers.close()
	return err
}

// workerDispatcher is a protoactor Dispatcher that runs scheduled mailboxes on a fixed set of
// goroutines. A mailbox is scheduled at most once at a time, so a queue as long as the number
// of mailboxes it serves never makes Schedule wait. After close, mailboxes still scheduled
// (a late message to a stopped actor) run on goroutines of their own.
type workerDispatcher struct {
	mu     sync.RWMutex // held shared around a send, exclusively to close the queue
	closed bool
	q      chan func()
	wg     sync.WaitGroup
}

func newWorkerDispatcher(workers, queue int) *workerDispatcher {
	d := &workerDispatcher{q: make(chan func(), queue)}
	for range workers {
		d.wg.Go(func() {
			for fn := range d.q {
				fn()
			}
		})
	}
	return d
}

// Schedule implements actor.Dispatcher.
func (d *workerDispatcher) Schedule(fn func()) {
	d.mu.RLock()
	if d.closed {
		d.mu.RUnlock()
		go fn()
		return
	}
	d.q <- fn
	d.mu.RUnlock()
}

// Throughput implements actor.Dispatcher: messages a mailbox handles before it yields its
// goroutine (protoactor's default).
func (d *workerDispatcher) Throughput() int { return 300 }

// close lets the workers finish what is queued and waits for them.
func (d *workerDispatcher) close() {
	d.mu.Lock()
	if !d.closed {
		d.closed = true
		close(d.q)
	}
	d.mu.Unlock()
	d.wg.Wait()
}
