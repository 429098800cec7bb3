package actors

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"switchboard/hub"
)

// Outbox is the connection's bounded writer, as the connection actor sees it.
type Outbox interface {
	// Send queues one complete frame without blocking; false means the connection is over its
	// send budget or closed (the outbox closes itself in that case).
	Send(frame []byte) bool
	// Close starts closing the connection with a close frame; it does not wait.
	Close(code uint16, reason string)
}

// Encoder turns a Response into one complete frame in the connection's codec.
type Encoder interface {
	EncodeResponse(*Response) ([]byte, error)
}

// CloseTokenExpired is the close code for a connection whose token expired (PROTOCOL.md §3).
const CloseTokenExpired = 4001

// Topics is the hub's subscription side, as the connection actor uses it.
type Topics interface {
	Subscribe(*hub.SubscribeRequest)
	Unsubscribe(connID uint64, topic string)
}

// ConnConfig is what a connection actor owns.
type ConnConfig struct {
	User     *User
	Outbox   Outbox
	Conn     hub.Conn // the same socket, as the hub addresses it
	Topics   Topics
	Encoder  Encoder
	Handlers *actor.PID // the handler pool
	// Leeway is added to the token's expiry before the connection is closed, matching the
	// clock skew the verifier allows.
	Leeway time.Duration
	// Done is called once per request when its answer has been queued (or dropped), so the
	// socket's read side can admit the next one (in-flight cap).
	Done   func()
	Logger *slog.Logger
}

// tokenExpired is the connection actor's own timer message; exp tells which token it was
// for, so a timer that lost the race with a refresh is ignored.
type tokenExpired struct{ exp time.Time }

// connActor is the actor behind one socket: it owns the user (replaced by REFRESH_TOKEN) and
// the token's expiry timer, asks the handler pool, and queues the encoded answers on the
// socket's writer.
type connActor struct {
	cfg   ConnConfig
	user  *User
	timer *time.Timer
}

// NewConnProps returns the props of a connection actor.
func NewConnProps(cfg ConnConfig) *actor.Props {
	return actor.PropsFromProducer(func() actor.Actor { return &connActor{cfg: cfg, user: cfg.User} })
}

func (a *connActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.schedule(ctx)
	case *actor.Stopping:
		if a.timer != nil {
			a.timer.Stop()
		}
	case *actor.Stopped, *actor.Restarting:
	case *Request:
		// The read side built m; the user is the connection's, whatever the frame said.
		m.User = a.user
		ctx.Request(a.cfg.Handlers, m)
	case *Response:
		if m.Status == StatusOK {
			if m.Refreshed != nil {
				a.user = m.Refreshed
				a.schedule(ctx)
			}
			switch e := m.Effect.(type) {
			case *SubscribeIntent:
				a.subscribe(m, e)
				return
			case *UnsubscribeIntent:
				a.cfg.Topics.Unsubscribe(a.cfg.Conn.ID(), e.Topic)
			}
		}
		a.deliver(m)
	case *tokenExpired:
		if a.user.ExpiresAt.Equal(m.exp) {
			a.cfg.Outbox.Close(CloseTokenExpired, "token expired")
		}
	default:
		a.cfg.Logger.Warn("connection actor: unexpected message", "type", typeName(m))
	}
}

// schedule (re)arms the expiry timer for the current user's token.
func (a *connActor) schedule(ctx actor.Context) {
	if a.timer != nil {
		a.timer.Stop()
	}
	exp := a.user.ExpiresAt
	if exp.IsZero() {
		return
	}
	self, root := ctx.Self(), ctx.ActorSystem().Root
	a.timer = time.AfterFunc(time.Until(exp.Add(a.cfg.Leeway)), func() { root.Send(self, &tokenExpired{exp: exp}) })
}

// subscribe hands the subscription to the hub, which queues the answer (built by ack once the
// topic's latest sequence is known), the recovered messages and then live ones, in that order.
func (a *connActor) subscribe(r *Response, in *SubscribeIntent) {
	defer a.cfg.Done()
	enc, log := a.cfg.Encoder, a.cfg.Logger
	ack := func(latest uint64, recovered bool, err error) []byte {
		ans := &Response{PkgID: r.PkgID, ReqID: r.ReqID, Status: StatusOK,
			Data: subscribed{Topic: in.Topic, Seq: latest, Recovered: recovered}}
		switch {
		case errors.Is(err, hub.ErrTooManyTopics):
			ans = &Response{PkgID: r.PkgID, ReqID: r.ReqID, Status: StatusInvalidData, Kind: ErrInvalid,
				Msg: "Too many topics on this connection"}
		case err != nil:
			ans = &Response{PkgID: r.PkgID, ReqID: r.ReqID, Status: StatusError, Kind: ErrInternal,
				Msg: "Topic history unavailable"}
		}
		f, err := enc.EncodeResponse(ans)
		if err != nil {
			log.Error("encode subscribe answer", "err", err)
		}
		return f
	}
	a.cfg.Topics.Subscribe(&hub.SubscribeRequest{Conn: a.cfg.Conn, Topic: in.Topic, Since: in.Since, Ack: ack})
}

// subscribed is SUBSCRIBE's answer data.
type subscribed struct {
	Topic     string `json:"topic"`
	Seq       uint64 `json:"seq"`
	Recovered bool   `json:"recovered"`
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
