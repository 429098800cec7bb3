package actors

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"switchboard/hub"
)

// Socket is a connection's edge as its actor sees it: the bounded writer, the hub's handle
// on the same socket, the connection's codec and its in-flight accounting.
type Socket interface {
	hub.Conn
	// Send queues one complete frame without blocking; false means the connection is over its
	// send budget or closed (the socket closes itself in that case).
	Send(frame []byte) bool
	// EncodeResponse turns a Response into one complete frame in the connection's codec.
	EncodeResponse(*Response) ([]byte, error)
	// RequestDone is called once per request when its answer has been queued (or dropped), so
	// the socket's read side can admit the next one (in-flight cap).
	RequestDone()
}

// CloseTokenExpired is the close code for a connection whose token expired (PROTOCOL.md §3).
const CloseTokenExpired = 4001

// Topics is the hub's subscription side, as the connection actor uses it.
type Topics interface {
	Subscribe(*hub.SubscribeRequest)
	Unsubscribe(connID uint64, topic string)
}

// ConnDeps is what every connection actor shares; one value serves all connections.
type ConnDeps struct {
	Topics   Topics
	Handlers *actor.PID // the handler pool
	// Leeway is added to the token's expiry before the connection is closed, matching the
	// clock skew the verifier allows.
	Leeway time.Duration
	Logger *slog.Logger
}

// tokenExpired is the connection actor's own timer message; exp tells which token it was
// for, so a timer that lost the race with a refresh is ignored.
type tokenExpired struct{ exp time.Time }

// connStart hands a freshly spawned connection actor its socket and user; StartConn sends it
// before anyone else knows the actor's PID, so it is the first message the actor handles.
type connStart struct {
	sock Socket
	user *User
}

// connActor is the actor behind one socket: it owns the user (replaced by REFRESH_TOKEN) and
// the token's expiry timer, asks the handler pool, and queues the encoded answers on the
// socket's writer. It is kept small: thousands of idle connections each hold one.
type connActor struct {
	deps  *ConnDeps
	sock  Socket
	user  *User
	timer *time.Timer
}

// ConnProps returns the props every connection actor is spawned from (build it once): the
// actors share deps, and their mailboxes start without a preallocated ring.
func ConnProps(deps *ConnDeps) *actor.Props {
	return actor.PropsFromProducer(func() actor.Actor { return &connActor{deps: deps} },
		actor.WithMailbox(actor.UnboundedLockfree()))
}

// StartConn spawns the connection actor of sock for user from props (ConnProps).
func StartConn(root *actor.RootContext, props *actor.Props, sock Socket, user *User) *actor.PID {
	pid := root.SpawnPrefix(props, "conn")
	root.Send(pid, &connStart{sock: sock, user: user})
	return pid
}

func (a *connActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *connStart:
		a.sock, a.user = m.sock, m.user
		a.schedule(ctx)
	case *actor.Stopping:
		if a.timer != nil {
			a.timer.Stop()
		}
	case *actor.Started, *actor.Stopped, *actor.Restarting:
	case *Request:
		// The read side built m; the user is the connection's, whatever the frame said.
		m.User = a.user
		ctx.Request(a.deps.Handlers, m)
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
				a.deps.Topics.Unsubscribe(a.sock.ID(), e.Topic)
			}
		}
		a.deliver(m)
	case *tokenExpired:
		if a.user.ExpiresAt.Equal(m.exp) {
			a.sock.Close(CloseTokenExpired, "token expired")
		}
	default:
		a.deps.Logger.Warn("connection actor: unexpected message", "type", typeName(m))
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
	a.timer = time.AfterFunc(time.Until(exp.Add(a.deps.Leeway)), func() { root.Send(self, &tokenExpired{exp: exp}) })
}

// subscribe hands the subscription to the hub, which queues the answer (built by ack once the
// topic's stream and latest sequence are known), the recovered messages and then live ones, in
// that order. The request keeps its in-flight slot until the hub has queued the answer (Done),
// so a connection cannot have more history loads waiting than its in-flight cap.
func (a *connActor) subscribe(r *Response, in *SubscribeIntent) {
	sock, log := a.sock, a.deps.Logger
	ack := func(res hub.Answer) []byte {
		ans := &Response{PkgID: r.PkgID, ReqID: r.ReqID, Status: StatusOK,
			Data: subscribed{Topic: in.Topic, Seq: res.Latest, Epoch: res.Epoch, Recovered: res.Recovered}}
		switch {
		case errors.Is(res.Err, hub.ErrTooManyTopics):
			ans = &Response{PkgID: r.PkgID, ReqID: r.ReqID, Status: StatusInvalidData, Kind: ErrInvalid,
				Msg: "Too many topics on this connection"}
		case errors.Is(res.Err, hub.ErrUnsubscribed):
			ans = &Response{PkgID: r.PkgID, ReqID: r.ReqID, Status: StatusInvalidData, Kind: ErrInvalid,
				Msg: "Unsubscribed before the subscription completed"}
		case res.Err != nil:
			ans = &Response{PkgID: r.PkgID, ReqID: r.ReqID, Status: StatusError, Kind: ErrInternal,
				Msg: "Topic history unavailable"}
		}
		f, err := sock.EncodeResponse(ans)
		if err != nil {
			log.Error("encode subscribe answer", "err", err)
		}
		return f
	}
	a.deps.Topics.Subscribe(&hub.SubscribeRequest{Conn: a.sock, Topic: in.Topic, Since: in.Since, Epoch: in.Epoch,
		Ack: ack, Done: a.sock.RequestDone})
}

// subscribed is SUBSCRIBE's answer data.
type subscribed struct {
	Topic     string `json:"topic"`
	Seq       uint64 `json:"seq"`
	Epoch     string `json:"epoch"`
	Recovered bool   `json:"recovered"`
}

// deliver encodes and queues an answer. Answers that the read side produced without a handler
// (bad envelopes) come here too, so every frame leaves through one path in order.
func (a *connActor) deliver(r *Response) {
	defer a.sock.RequestDone()
	frame, err := a.sock.EncodeResponse(r)
	if err != nil {
		a.deps.Logger.Error("encode response", "pkg_id", r.PkgID, "err", err)
		frame, err = a.sock.EncodeResponse(&Response{PkgID: r.PkgID, ReqID: r.ReqID, Status: StatusError, Msg: "Internal error", Kind: ErrInternal})
		if err != nil {
			return
		}
	}
	a.sock.Send(frame)
}

func typeName(v any) string { return fmt.Sprintf("%T", v) }
