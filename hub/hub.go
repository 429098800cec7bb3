package hub

import (
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/asynkron/protoactor-go/actor"

	"switchboard/store/bus"
)

// CloseSlowConsumer is the close code for a connection over its send budget (docs/protocol.md §1.3).
const CloseSlowConsumer = 1013

// Bus carries broadcasts between nodes (store/bus). Publish assigns the per-topic sequence
// when the topic keeps history; every node's hub, this one included, receives the message back
// through Deliver.
type Bus interface {
	Publish(ctx context.Context, m *Message, history int) (seq uint64, nodes int, err error)
	// History reads the topic's stream (epoch, latest seq) and its kept messages after since.
	History(ctx context.Context, topic string, since uint64) (Window, error)
}

// Resubscriber is implemented by a Bus that misses the messages published while its
// subscription is down (store/bus.Redis: Redis pub/sub keeps nothing for an absent subscriber).
// Start registers the hub with it, and after every (re)subscription the hub reads back from the
// history what the subscribers of topics with history missed (see gap.go). f is called before
// any message received through the new subscription is handed to Deliver, from the same
// goroutine.
type Resubscriber interface {
	OnSubscribed(f func()) (remove func())
}

// ImmediateHistory is implemented by a Bus whose History answers at once, without waiting on
// anything outside the process (store/bus.Memory). The hub reads such a bus's history on its
// own goroutine when a SUBSCRIBE needs it (MaxLoads does not apply), instead of handing the read
// to a loader goroutine and waiting for its answer: two goroutine hand-offs less per SUBSCRIBE.
type ImmediateHistory interface {
	ImmediateHistory() bool
}

// Options configure a Hub.
type Options struct {
	PingInterval time.Duration // keepalive pings; 0 disables them
	// Bus carries broadcasts; nil delivers them locally (one node, no topic history).
	Bus Bus
	// History returns how many messages a topic keeps (0: none).
	History func(topic string) int
	// MaxTopicsPerConn caps one connection's subscriptions (default 100).
	MaxTopicsPerConn int
	// MaxPending caps the live messages held for one subscription while its history loads
	// (default 10 000); past it the connection is closed as a slow consumer. It caps as well the
	// live messages a topic holds while it reads missed messages back (gap.go); past it the
	// topic's subscribers are closed with CloseMissedMessages.
	MaxPending int
	// MaxLoads caps the history reads for SUBSCRIBEs that run at once (default 16); the others
	// wait in a queue, in order, and one read serves every SUBSCRIBE of its topic waiting when it
	// starts (see hubActor.loads).
	MaxLoads int
	Logger   *slog.Logger
	Metrics  *metrics.Set
}

// Hub is the handle producers and the transport use. It is safe for concurrent use.
type Hub struct {
	root   *actor.RootContext
	pid    *actor.PID
	opts   Options
	active atomic.Int64
	// loadsWaiting is how many SUBSCRIBE history loads wait for a slot (MaxLoads), for the gauge.
	loadsWaiting atomic.Int64
	stopped      atomic.Bool
	stop         chan struct{}
	ctx          context.Context // history reads; cancelled by Stop
	cancel       context.CancelFunc
	bg           sync.WaitGroup // the ticker, the actor's loop, the loaders and fills
	log          *slog.Logger
	// fillSlots bounds the history fills running at once (a resubscription starts one per
	// topic with subscribers).
	fillSlots chan struct{}
	unhook    func() // removes the hub from the bus's OnSubscribed
	loop      *loop  // runs the hub actor's mailbox
	loadq     chan loadJob
	immediate bool // the bus's History answers at once: read on the actor (ImmediateHistory)
}

// loop is the hub actor's dispatcher: one long-lived goroutine runs its mailbox, instead of a
// goroutine per activation (protoactor's default), which started on the smallest stack and grew
// it again on most activations. A mailbox is scheduled at most once at a time, so the channel
// never fills; should it, or once the hub stopped, the activation runs on a goroutine of its own.
type loop struct {
	fns  chan func()
	stop chan struct{} // closed by Stop once the actor is stopped
}

func (l *loop) Schedule(fn func()) {
	select {
	case <-l.stop:
		go fn()
		return
	default:
	}
	select {
	case l.fns <- fn:
	default:
		go fn()
	}
}

func (l *loop) Throughput() int { return 300 }

func (l *loop) run(wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		select {
		case fn := <-l.fns:
			fn()
		case <-l.stop:
			for { // what was scheduled before the stop still runs
				select {
				case fn := <-l.fns:
					fn()
				default:
					return
				}
			}
		}
	}
}

// Start spawns the hub actor and its keepalive ticker.
func Start(root *actor.RootContext, opts Options) *Hub {
	if opts.History == nil {
		opts.History = func(string) int { return 0 }
	}
	if opts.MaxTopicsPerConn <= 0 {
		opts.MaxTopicsPerConn = 100
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = 10000
	}
	if opts.MaxLoads <= 0 {
		opts.MaxLoads = 16
	}
	h := &Hub{root: root, opts: opts, stop: make(chan struct{}), log: opts.Logger,
		fillSlots: make(chan struct{}, maxFills), unhook: func() {}}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	a := &hubActor{
		hub:     h,
		conns:   make(map[uint64]*member),
		topics:  make(map[string]*topic),
		loads:   list.New(),
		log:     opts.Logger,
		total:   opts.Metrics.GetOrCreateCounter("ws_broadcasts_total"),
		dur:     opts.Metrics.GetOrCreatePrometheusHistogram("ws_broadcast_duration_seconds"),
		dropped: opts.Metrics.GetOrCreateCounter(`ws_broadcast_encode_errors_total`),
		slow:    opts.Metrics.GetOrCreateCounter("ws_slow_consumer_disconnects_total"),

		filledOK:  opts.Metrics.GetOrCreateCounter(`ws_topic_fills_total{result="recovered"}`),
		fillLost:  opts.Metrics.GetOrCreateCounter(`ws_topic_fills_total{result="lost"}`),
		gapClosed: opts.Metrics.GetOrCreateCounter("ws_topic_gap_disconnects_total"),
	}
	opts.Metrics.GetOrCreateGauge("ws_connections_active", func() float64 { return float64(h.active.Load()) })
	opts.Metrics.GetOrCreateGauge("ws_topic_history_loads_waiting", func() float64 { return float64(h.loadsWaiting.Load()) })
	h.loop = &loop{fns: make(chan func(), 8), stop: make(chan struct{})}
	if ih, ok := opts.Bus.(ImmediateHistory); ok && ih.ImmediateHistory() {
		h.immediate = true
	} else if opts.Bus != nil {
		h.loadq = make(chan loadJob, opts.MaxLoads)
		for range opts.MaxLoads {
			h.bg.Add(1)
			go h.loader()
		}
	}
	h.bg.Add(1)
	go h.loop.run(&h.bg)
	h.pid = root.SpawnPrefix(actor.PropsFromProducer(func() actor.Actor { return a }, actor.WithDispatcher(h.loop)), "hub")
	if rs, ok := opts.Bus.(Resubscriber); ok {
		h.unhook = rs.OnSubscribed(func() {
			if !h.stopped.Load() {
				h.root.Send(h.pid, &resync{})
			}
		})
	}
	if opts.PingInterval > 0 {
		h.bg.Add(1)
		go h.tick(opts.PingInterval)
	}
	return h
}

// pingSlice is roughly how often the keepalive ticks: each tick pings the connections of one
// slice, so that N connections cost N/interval pings per second in small steady batches
// rather than N writes at once every interval (which a broadcast would wait behind).
const pingSlice = 100 * time.Millisecond

// pingSlices is how many slices the connections are pinged in over one interval.
func pingSlices(every time.Duration) int {
	return int(min(max(every/pingSlice, 1), 256))
}

func (h *Hub) tick(every time.Duration) {
	defer h.bg.Done()
	k := pingSlices(every)
	t := time.NewTicker(every / time.Duration(k))
	defer t.Stop()
	for i := 0; ; i = (i + 1) % k {
		select {
		case <-h.stop:
			return
		case <-t.C:
			h.root.Send(h.pid, &pingAll{slice: uint64(i), of: uint64(k)})
		}
	}
}

// Register adds a live connection.
func (h *Hub) Register(c Conn) { h.root.Send(h.pid, &register{conn: c}) }

// Unregister removes a connection and its subscriptions; call it once the socket has closed.
func (h *Hub) Unregister(id uint64) { h.root.Send(h.pid, &unregister{id: id}) }

// Active returns the number of registered connections.
func (h *Hub) Active() int { return int(h.active.Load()) }

// Broadcast publishes msg: to every connection, or to the subscribers of msg.Topic. With a bus
// it is published once and delivered by every node (nodes tells how many were listening);
// the call waits for the bus, never for a socket. A msg.Key already published on its topic
// within the bus's dedup window publishes nothing: ErrDuplicate.
func (h *Hub) Broadcast(ctx context.Context, msg *Message) (nodes int, err error) {
	if h.stopped.Load() {
		return 0, ErrStopped
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if len(msg.Data) == 0 {
		msg.Data = []byte("{}")
	} else if !json.Valid(msg.Data) {
		return 0, ErrInvalidData
	}
	if h.opts.Bus == nil {
		h.Deliver(msg)
		return 1, nil
	}
	history := 0
	if msg.Topic != "" {
		history = h.opts.History(msg.Topic)
	}
	_, nodes, err = h.opts.Bus.Publish(ctx, msg, history)
	switch {
	case errors.Is(err, bus.ErrInvalidArgument):
		return 0, fmt.Errorf("%w: %w", ErrInvalidData, err)
	case errors.Is(err, bus.ErrDuplicate):
		return 0, ErrDuplicate
	case err != nil:
		return 0, fmt.Errorf("%w: %w", ErrBusUnavailable, err)
	}
	return nodes, nil
}

// Deliver hands a message that came off the bus to the local connections. The bus calls it
// from its receiving goroutine; it does not block.
func (h *Hub) Deliver(msg *Message) { h.root.Send(h.pid, &deliver{msg: msg}) }

// DeliverUncounted is Deliver for the node's own monitoring (hub/sysstats): the message reaches
// the local subscribers of its topic like any other, and stays out of ws_broadcasts_total and
// ws_broadcast_duration_seconds, which it reports on. It does not block.
func (h *Hub) DeliverUncounted(msg *Message) {
	h.root.Send(h.pid, &deliver{msg: msg, uncounted: true})
}

// SubscribeRequest asks the hub to add Conn to Topic. With Since and Epoch (the stream the
// client's since belongs to), the kept messages after Since are delivered first when they are
// all still kept and Epoch is the topic's current stream.
//
// The hub calls Ack exactly once per request, when the answer is due, and queues the frame it
// returns on Conn before any message of the topic that follows it; then, once the recovered
// messages and the live ones held meanwhile are queued after it, it calls Done (when set): the
// connection may answer its next request from then on. It only skips Ack when Conn is no
// longer registered (it still calls Done) or the hub stops. A
// second SUBSCRIBE to the same topic on the same connection while the first one's history still
// loads waits for the first one's answer, then re-runs the recovery from its own Since; an
// UNSUBSCRIBE meanwhile answers every SUBSCRIBE still waiting with ErrUnsubscribed.
type SubscribeRequest struct {
	Conn  Conn
	Topic string
	Since *uint64
	Epoch string
	Ack   func(Answer) []byte
	Done  func()
}

// Answer is what the hub tells a SUBSCRIBE.
type Answer struct {
	// Latest is the topic's latest seq and Epoch its stream; 0 and "" on a topic without history,
	// or without a stream yet (nothing published, or the history expired or was lost).
	Latest uint64
	Epoch  string
	// Recovered: the request gave Since and Epoch, Epoch is the topic's stream, and every message
	// after Since is still kept; they follow the answer.
	Recovered bool
	// Err is set when the subscription did not happen: ErrTooManyTopics, ErrHistory (the history
	// could not be read) or ErrUnsubscribed.
	Err error
}

// finish calls the request's Done, if any.
func (r *SubscribeRequest) finish() {
	if r.Done != nil {
		r.Done()
	}
}

// Subscribe adds a subscription (see SubscribeRequest). Subscribing again to a topic re-runs the
// recovery from the new request's Since.
func (h *Hub) Subscribe(req *SubscribeRequest) { h.root.Send(h.pid, &subscribe{req: req}) }

// Unsubscribe removes a subscription; removing one that does not exist is not an error.
func (h *Hub) Unsubscribe(connID uint64, topic string) {
	h.root.Send(h.pid, &unsubscribe{id: connID, topic: topic})
}

// Stop closes every connection with code and reason, then stops the hub actor and its
// goroutines, waiting for them or until ctx ends.
func (h *Hub) Stop(ctx context.Context, code uint16, reason string) (closed int, err error) {
	if !h.stopped.CompareAndSwap(false, true) {
		return 0, nil
	}
	close(h.stop)
	h.unhook()
	timeout := time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(dl), time.Millisecond)
	}
	res, err := h.root.RequestFuture(h.pid, &closeAll{code: code, reason: reason}, timeout).Result()
	h.cancel() // history reads still running are of no use now
	if err != nil {
		close(h.loop.stop) // later activations run on goroutines of their own
		return 0, fmt.Errorf("hub: close connections: %w", err)
	}
	if err := h.root.PoisonFuture(h.pid).Wait(); err != nil {
		close(h.loop.stop)
		return 0, fmt.Errorf("hub: stop actor: %w", err)
	}
	close(h.loop.stop)
	h.bg.Wait()
	return res.(*closedAll).count, nil
}

// loadHistory reads a topic's history after since off the actor for the subscriptions refs and
// reports back to it. The actor runs at most MaxLoads reads at once, so the queue of the
// loaders never fills.
func (h *Hub) loadHistory(topic string, since uint64, refs []loadRef) {
	h.loadq <- loadJob{topic: topic, since: since, refs: refs}
}

type loadJob struct {
	topic string
	since uint64
	refs  []loadRef
}

// loader is one of the MaxLoads goroutines that read SUBSCRIBEs' history (rather than a goroutine
// per SUBSCRIBE, which grew a fresh stack every time). It ends when the hub stops.
func (h *Hub) loader() {
	defer h.bg.Done()
	for {
		select {
		case <-h.stop:
			return
		case j := <-h.loadq:
			w, err := h.history(j.topic, j.since)
			h.root.Send(h.pid, &historyLoaded{topic: j.topic, refs: j.refs, w: w, err: err})
		}
	}
}

// history reads topic's history after since within historyTimeout. A panic in the bus is an
// error of this read (logged): the loader or fill goes on, and the process does not end.
func (h *Hub) history(topic string, since uint64) (w Window, err error) {
	ctx, cancel := context.WithTimeout(h.ctx, historyTimeout)
	defer cancel()
	defer func() {
		if v := recover(); v != nil {
			h.log.Error("hub: topic history read panicked", "topic", topic, "since", since, "panic", v)
			w, err = Window{}, fmt.Errorf("hub: topic history read panicked: %v", v)
		}
	}()
	return h.opts.Bus.History(ctx, topic, since)
}

const (
	historyTimeout = 5 * time.Second
	// maxFills history fills run at once; the others wait for a slot.
	maxFills = 8
)

// fillRetry are the pauses between the attempts of a fill: a fill that fails costs the topic's
// subscribers their connections, so a passing error is tried again.
var fillRetry = []time.Duration{100 * time.Millisecond, 500 * time.Millisecond}

// fill reads the history of topic after since for a gap, off the actor, and reports back to it.
func (h *Hub) fill(topic string, since, id uint64) {
	h.bg.Add(1)
	go func() {
		defer h.bg.Done()
		select {
		case h.fillSlots <- struct{}{}:
		case <-h.stop:
			return
		}
		defer func() { <-h.fillSlots }()
		res := &filled{topic: topic, id: id, since: since}
		for attempt := 0; ; attempt++ {
			res.w, res.err = h.history(topic, since)
			if res.err == nil || attempt == len(fillRetry) || errors.Is(res.err, bus.ErrInvalidArgument) {
				break
			}
			t := time.NewTimer(fillRetry[attempt])
			select {
			case <-t.C:
			case <-h.stop:
				t.Stop()
				return
			}
		}
		h.root.Send(h.pid, res)
	}()
}
