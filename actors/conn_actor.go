package actors

import (
	"fmt"
	"log/slog"

	"github.com/asynkron/protoactor-go/actor"
)

// Outbox is the connection's bounded writer, as the connection actor sees it.
type Outbox interface {
	// Send queues one complete frame without blocking; false means the connection is over its
	// send budget or closed (the outbox closes itself in that case).
	Send(frame []byte) bool
}

// Encoder turns a Response into one complete frame in the connection's codec.
type Encoder interface {
	EncodeResponse(*Response) ([]byte, error)
}

// ConnConfig is what a connection actor owns.
type ConnConfig struct {
	User     *User
	Outbox   Outbox
	Encoder  Encoder
	Handlers *actor.PID // the handler pool
	// Done is called once per request when its answer has been queued (or dropped), so the
	// socket's read side can admit the next one (in-flight cap).
	Done   func()
	Logger *slog.Logger
}

// connActor is the actor behind one socket: it owns the user and the in-flight requests,
// asks the handler pool, and queues the encoded answers on the socket's writer.
type connActor struct {
	cfg ConnConfig
}

// NewConnProps returns the props of a connection actor.
func NewConnProps(cfg ConnConfig) *actor.Props {
	return actor.PropsFromProducer(func() actor.Actor { return &connActor{cfg: cfg} })
}

func (a *connActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started, *actor.Stopping, *actor.Stopped, *actor.Restarting:
	case *Request:
		// The read side built m; the user is the connection's, whatever the frame said.
		m.User = a.cfg.User
		ctx.Request(a.cfg.Handlers, m)
	case *Response:
		a.deliver(m)
	default:
		a.cfg.Logger.Warn("connection actor: unexpected message", "type", typeName(m))
	}
}

// deliver encodes and queues an answer. Answers that the read side produced without a handler
// (bad envelopes) come here too, so every frame leaves through one path in order.
func (a *connActor) deliver(r *Response) {
	defer a.cfg.Done()
	frame, err := a.cfg.Encoder.EncodeResponse(r)
	if err != nil {
		a.cfg.Logger.Error("encode response", "pkg_id", r.PkgID, "err", err)
		frame, err = a.cfg.Encoder.EncodeResponse(&Response{PkgID: r.PkgID, ReqID: r.ReqID, Status: StatusError, Msg: "Internal error", Kind: ErrInternal})
		if err != nil {
			return
		}
	}
	a.cfg.Outbox.Send(frame)
}

func typeName(v any) string { return fmt.Sprintf("%T", v) }
