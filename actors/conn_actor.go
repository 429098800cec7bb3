package actors

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
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

// CloseTokenExpired is the close code for a connection whose token expired (docs/protocol.md §3).
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
	// Workers, when set, run the connection actors' mailboxes; nil: a goroutine per activation
	// (protoactor's default).
	Workers *Workers
	// SettleWait bounds how long a connection's later answers wait for the hub to queue a
	// SUBSCRIBE's answer (subscribeSettleWait when zero).
	SettleWait time.Duration

	// expiries closes the connections whose token expired (one timer for all); ConnProps
	// makes it.
	expiries *expiries
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
// the token's expiry (its entry in the shared expiries), asks the handler pool, and queues the encoded answers on the
// socket's writer. It is kept small: thousands of idle connections each hold one.
//
// Answers leave in the order the requests arrived (docs/protocol.md §1.2): the actor runs its
// connection's requests one at a time. queue holds what the read side handed over, in arrival
// order — requests, and the answers the read side made itself for frames it could not decode —
// and its head is the request being run while busy. A request is sent to the handler pool once
// the answer before it is queued on the socket, so a GET sent after a CREATE sees its row, and a
// REFRESH_TOKEN's new roles apply to the next request. SUBSCRIBE's answer is queued by the hub
// (after the topic's history loads): the queue waits until the hub says it is (settled). The
// read side's in-flight cap bounds the queue.
type connActor struct {
	deps  *ConnDeps
	sock  Socket
	user  *User
	exp   expiry // the token's deadline in deps.expiries
	queue arrivals
	busy  bool
	// settled is handed to the hub with a SUBSCRIBE (set just before subscribe runs); overdue
	// releases the queue should the hub never call it.
	settled func()
	overdue *time.Timer
}

// subscribeSettled says the hub has queued the answer of the SUBSCRIBE req (and the recovered
// messages after it), or dropped it with its connection; subscribeOverdue says it has not done so
// in time.
type (
	subscribeSettled struct{ req *Request }
	subscribeOverdue struct{ req *Request }
)

// subscribeSettleWait bounds how long a connection's later answers wait for the hub to queue a
// SUBSCRIBE's answer. The hub settles every subscription (its history read is bounded by 5 s);
// this only keeps a connection from stalling for good if it ever did not.
const subscribeSettleWait = 30 * time.Second

func (d *ConnDeps) settleWait() time.Duration {
	if d.SettleWait > 0 {
		return d.SettleWait
	}
	return subscribeSettleWait
}

// ConnProps returns the props every connection actor is spawned from (build it once): the
// actors share deps, and their mailboxes hold nothing while empty (connMailbox).
func ConnProps(deps *ConnDeps) *actor.Props {
	if deps.expiries == nil {
		deps.expiries = &expiries{}
	}
	opts := []actor.PropsOption{actor.WithMailbox(newConnMailbox)}
	if deps.Workers != nil {
		opts = append(opts, actor.WithDispatcher(deps.Workers.d))
	}
	return actor.PropsFromProducer(func() actor.Actor { return &connActor{deps: deps} }, opts...)
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
		a.deps.expiries.remove(&a.exp)
		if a.overdue != nil {
			a.overdue.Stop()
		}
	case *actor.Started, *actor.Stopped, *actor.Restarting:
	case *Request:
		// Admission: the deadline runs from here (the read side may have stamped it already),
		// however long the request then waits behind the connection's earlier ones.
		if m.Admitted.IsZero() {
			m.Admitted = time.Now()
		}
		a.queue.push(m)
		a.next(ctx)
	case *Response:
		if a.busy && m.For != nil && m.For == a.queue.peek() {
			a.answered(ctx, m)
		} else {
			a.queue.push(m) // the read side's answer to a frame it could not decode
		}
		a.next(ctx)
	case *subscribeSettled:
		a.release(ctx, m.req)
	case *subscribeOverdue:
		if a.busy && a.queue.peek() == m.req {
			a.deps.Logger.Warn("connection actor: the hub did not queue a SUBSCRIBE answer in time; answering the next requests",
				"req_id", m.req.ReqID, "waited", a.deps.settleWait())
		}
		a.release(ctx, m.req)
	case *tokenExpired:
		if a.user.ExpiresAt.Equal(m.exp) {
			a.sock.Close(CloseTokenExpired, "token expired")
		}
	default:
		a.deps.Logger.Warn("connection actor: unexpected message", "type", typeName(m))
	}
}

// next runs the queue until it waits for a handler or the hub: ready answers are queued on the
// socket, and the first request is sent to the handler pool.
func (a *connActor) next(ctx actor.Context) {
	for !a.busy && a.queue.len() > 0 {
		switch m := a.queue.peek().(type) {
		case *Response:
			a.queue.pop()
			a.deliver(m)
		case *Request:
			// The user is the connection's as it is now, whatever the frame said: a REFRESH_TOKEN
			// answered before this request already applies.
			m.User = a.user
			a.busy = true
			ctx.Request(a.deps.Handlers, m)
		}
	}
}

// answered handles the handler pool's answer to the request at the head of the queue.
func (a *connActor) answered(ctx actor.Context, m *Response) {
	if m.Status == StatusOK {
		if m.Refreshed != nil {
			a.user = m.Refreshed
			a.schedule(ctx)
		}
		switch e := m.Effect.(type) {
		case *SubscribeIntent:
			// The hub queues the answer; the queue waits for it (settled).
			self, root, req := ctx.Self(), ctx.ActorSystem().Root, m.For
			a.settled = func() { root.Send(self, &subscribeSettled{req: req}) }
			a.overdue = time.AfterFunc(a.deps.settleWait(), func() { root.Send(self, &subscribeOverdue{req: req}) })
			a.subscribe(m, e)
			a.settled = nil
			return
		case *UnsubscribeIntent:
			a.deps.Topics.Unsubscribe(a.sock.ID(), e.Topic)
		}
	}
	a.queue.pop()
	a.busy = false
	a.deliver(m)
}

// release ends the wait for the hub's answer to the SUBSCRIBE req and runs the queue on.
func (a *connActor) release(ctx actor.Context, req *Request) {
	if !a.busy || a.queue.peek() != req {
		return // already released (settled after overdue, or the other way round)
	}
	if a.overdue != nil {
		a.overdue.Stop()
		a.overdue = nil
	}
	a.queue.pop()
	a.busy = false
	a.next(ctx)
}

// schedule (re)sets the connection's deadline for the current user's token: its expiry plus
// the leeway; none for a token without one.
func (a *connActor) schedule(ctx actor.Context) {
	exp := a.user.ExpiresAt
	if exp.IsZero() {
		a.deps.expiries.remove(&a.exp)
		return
	}
	a.deps.expiries.set(&a.exp, ctx.ActorSystem().Root, ctx.Self(), exp, exp.Add(a.deps.Leeway))
}

// subscribe hands the subscription to the hub, which queues the answer (built by ack once the
// topic's stream and latest sequence are known), the recovered messages and then live ones, in
// that order. The request keeps its in-flight slot until the hub has queued the answer and the
// recovered messages (Done), so a connection cannot have more history loads waiting than its
// in-flight cap; Done also settles the connection's queue, which then answers the next request.
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
	settled := a.settled
	a.deps.Topics.Subscribe(&hub.SubscribeRequest{Conn: a.sock, Topic: in.Topic, Since: in.Since, Epoch: in.Epoch,
		Ack: ack, Done: func() {
			sock.RequestDone()
			if settled != nil {
				settled()
			}
		}})
}

// subscribed is SUBSCRIBE's answer data.
type subscribed struct {
	Topic     string `json:"topic"`
	Seq       uint64 `json:"seq"`
	Epoch     string `json:"epoch"`
	Recovered bool   `json:"recovered"`
}

// AppendJSON appends what json.Marshal makes of s (JSONAppender), without its reflection.
func (s subscribed) AppendJSON(b []byte) []byte {
	b = append(b, `{"topic":`...)
	b = appendMarshalledString(b, s.Topic)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, s.Seq, 10)
	b = append(b, `,"epoch":`...)
	b = appendMarshalledString(b, s.Epoch)
	b = append(b, `,"recovered":`...)
	b = strconv.AppendBool(b, s.Recovered)
	return append(b, '}')
}

// appendMarshalledString appends json.Marshal(s): the text itself between quotes when it is
// printable ASCII with nothing to escape (HTML's <, > and & included), json.Marshal's own
// output otherwise.
func appendMarshalledString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
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
