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

// SpawnHandlerPool starts size handler actors behind one round-robin PID. base is the context
// every handler call derives from; cancel it to abort in-flight calls at shutdown. Stop the
// pool with root.PoisonFuture(pid).Wait().
func SpawnHandlerPool(root *actor.RootContext, p *Pipeline, base context.Context, size int) *actor.PID {
	props := router.NewRoundRobinPool(size, actor.WithProducer(func() actor.Actor {
		return &handlerActor{pipeline: p, base: base, log: p.cfg.Logger}
	}))
	return root.SpawnPrefix(props, "handlers")
}
