package actors

import (
	"context"
	"log/slog"

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
// The actors' mailboxes run on size long-lived goroutines (workerDispatcher): a handler goes
// deep (the database driver, JSON, schema validation), and a fresh goroutine per activation
// would grow its stack from the smallest size on every request.
func SpawnHandlerPool(root *actor.RootContext, p *Pipeline, base context.Context, size int) *HandlerPool {
	size = max(size, 1)
	d := newWorkerDispatcher(size)
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
