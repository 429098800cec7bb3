package actors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"

	"github.com/asynkron/protoactor-go/actor"
)

// handlerActor is stateless: it answers each *Request with the Pipeline's *Response, then tells
// its lane it is free. Its lane sends it one request at a time.
type handlerActor struct {
	pipeline *Pipeline
	lane     *lane
	base     context.Context // cancelled at shutdown so running handlers stop early
	log      *slog.Logger
}

func (a *handlerActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started, *actor.Stopping, *actor.Stopped, *actor.Restarting:
	case *Request:
		ctx.Respond(a.handle(m))
		a.lane.release(ctx.Self())
	default:
		a.log.Warn("handler actor: unexpected message", "type", typeName(m))
	}
}

// handle runs the pipeline. Handle recovers the handler's panics; this also covers its own
// steps, because an answer lost to a restart would leave the connection waiting for it (its
// next requests queue behind it) and the lane one actor short.
func (a *handlerActor) handle(m *Request) (resp *Response) {
	defer func() {
		if v := recover(); v != nil {
			a.log.Error("handler actor: pipeline panicked", "pkg_id", m.PkgID, "req_id", m.ReqID,
				"panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			resp = &Response{PkgID: m.PkgID, ReqID: m.ReqID, Status: StatusError, Msg: "Internal error", Kind: ErrInternal, For: m}
		}
	}()
	return a.pipeline.Handle(a.base, m)
}

// PoolSizes are the handler actors of each lane.
type PoolSizes struct {
	Database int // SWITCHBOARD_HANDLER_POOL_SIZE
	Control  int // SWITCHBOARD_CONTROL_POOL_SIZE
}

// HandlerPool is the handler actors, in one lane per Lane, behind one PID: a request sent (or
// Requested) to PID goes to the lane of its pkg_id (Registry.Lane) and is answered to its sender.
// The lanes are bulkheads: database handlers stuck on a stalled database hold their own lane's
// actors only, and SUBSCRIBE, UNSUBSCRIBE and REFRESH_TOKEN keep being answered from the other.
type HandlerPool struct {
	PID     *actor.PID
	system  *actor.ActorSystem
	lanes   [laneCount]*lane
	actors  []*actor.PID
	workers [laneCount]*workerDispatcher
	stop    sync.Once
	stopErr error
}

// SpawnHandlerPool starts the lanes' handler actors. base is the context every handler call
// derives from; cancel it to abort in-flight calls at shutdown. Stop the pool with Stop.
//
// Each lane's actors run their mailboxes on as many long-lived goroutines (workerDispatcher): a
// handler goes deep (the database driver, JSON, schema validation), and a fresh goroutine per
// activation would grow its stack from the smallest size on every request.
func SpawnHandlerPool(root *actor.RootContext, p *Pipeline, base context.Context, sizes PoolSizes) (*HandlerPool, error) {
	h := &HandlerPool{system: root.ActorSystem()}
	for id, size := range [laneCount]int{LaneDatabase: sizes.Database, LaneControl: sizes.Control} {
		size = max(size, 1)
		l := newLane(Lane(id), root, p)
		d := newWorkerDispatcher(size)
		props := actor.PropsFromProducer(func() actor.Actor {
			return &handlerActor{pipeline: p, lane: l, base: base, log: p.cfg.Logger}
		}, actor.WithDispatcher(d))
		for range size {
			pid := root.SpawnPrefix(props, "handler-"+Lane(id).String())
			h.actors = append(h.actors, pid)
			l.idle = append(l.idle, pid) // before the front exists: nothing else touches l yet
		}
		h.lanes[id], h.workers[id] = l, d
	}
	reg := h.system.ProcessRegistry
	pid, ok := reg.Add(&poolFront{lanes: h.lanes, registry: p.cfg.Registry, log: p.cfg.Logger}, "handlers"+reg.NextId())
	if !ok {
		h.stopActors(root)
		return nil, errors.New("handler pool: process name taken")
	}
	h.PID = pid
	return h, nil
}

// Stop stops taking requests (those still waiting are answered 1, "Server is shutting down"),
// stops the handler actors, waiting for the requests they are running, then their goroutines.
// Calling it again returns the first call's result.
func (h *HandlerPool) Stop(root *actor.RootContext) error {
	h.stop.Do(func() {
		h.system.ProcessRegistry.Remove(h.PID)
		for _, l := range h.lanes {
			l.close()
		}
		h.stopErr = h.stopActors(root)
	})
	return h.stopErr
}

func (h *HandlerPool) stopActors(root *actor.RootContext) error {
	futures := make([]*actor.Future, 0, len(h.actors))
	for _, pid := range h.actors {
		futures = append(futures, root.PoisonFuture(pid))
	}
	var errs []error
	for _, f := range futures {
		errs = append(errs, f.Wait())
	}
	for _, d := range h.workers {
		if d != nil {
			d.close()
		}
	}
	return errors.Join(errs...)
}

// poolFront is the pool's address. It is a process in protoactor's registry rather than an
// actor, as protoactor's own routers are, so routing a request to its lane runs on the sender's
// goroutine with no mailbox in between; the lane forwards the message as it came, so the
// handler's answer goes straight back to the sender.
type poolFront struct {
	lanes    [laneCount]*lane
	registry *Registry
	log      *slog.Logger
}

func (f *poolFront) SendUserMessage(_ *actor.PID, message any) {
	_, msg, sender := actor.UnwrapEnvelope(message)
	req, ok := msg.(*Request)
	if !ok {
		f.log.Warn("handler pool: unexpected message", "type", typeName(msg))
		return
	}
	f.lanes[f.registry.Lane(req.PkgID)].submit(message, req, sender)
}

// SendSystemMessage ignores system messages: nothing watches the pool, and Stop stops it.
func (f *poolFront) SendSystemMessage(*actor.PID, any) {}

// Stop is protoactor's stop of the process; HandlerPool.Stop does the work.
func (f *poolFront) Stop(*actor.PID) {}
