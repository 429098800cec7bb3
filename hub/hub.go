package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/asynkron/protoactor-go/actor"
)

// CloseSlowConsumer is the close code for a connection over its send budget (PROTOCOL.md §1.3).
const CloseSlowConsumer = 1013

// Options configure a Hub.
type Options struct {
	PingInterval time.Duration // keepalive pings; 0 disables them
	Logger       *slog.Logger
	Metrics      *metrics.Set
}

// Hub is the handle producers and the transport use. It is safe for concurrent use.
type Hub struct {
	root    *actor.RootContext
	pid     *actor.PID
	active  atomic.Int64
	stopped atomic.Bool
	stop    chan struct{}
	ticker  sync.WaitGroup
	log     *slog.Logger
}

// Start spawns the hub actor and its keepalive ticker.
func Start(root *actor.RootContext, opts Options) *Hub {
	h := &Hub{root: root, stop: make(chan struct{}), log: opts.Logger}
	a := &hubActor{
		conns:   make(map[uint64]Conn),
		log:     opts.Logger,
		active:  &h.active,
		total:   opts.Metrics.GetOrCreateCounter("ws_broadcasts_total"),
		dur:     opts.Metrics.GetOrCreatePrometheusHistogram("ws_broadcast_duration_seconds"),
		dropped: opts.Metrics.GetOrCreateCounter(`ws_broadcast_encode_errors_total`),
	}
	opts.Metrics.GetOrCreateGauge("ws_connections_active", func() float64 { return float64(h.active.Load()) })
	h.pid = root.SpawnPrefix(actor.PropsFromProducer(func() actor.Actor { return a }), "hub")
	if opts.PingInterval > 0 {
		h.ticker.Add(1)
		go h.tick(opts.PingInterval)
	}
	return h
}

func (h *Hub) tick(every time.Duration) {
	defer h.ticker.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
			h.root.Send(h.pid, &pingAll{})
		}
	}
}

// Register adds a live connection.
func (h *Hub) Register(c Conn) { h.root.Send(h.pid, &register{conn: c}) }

// Unregister removes a connection; call it once the socket has closed.
func (h *Hub) Unregister(id uint64) { h.root.Send(h.pid, &unregister{id: id}) }

// Active returns the number of registered connections.
func (h *Hub) Active() int { return int(h.active.Load()) }

// Broadcast delivers msg to every registered connection. It returns once the hub has the
// message; delivery continues in the background and never blocks on a socket.
func (h *Hub) Broadcast(ctx context.Context, msg *Message) error {
	if h.stopped.Load() {
		return ErrStopped
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(msg.Data) == 0 {
		msg.Data = []byte("{}")
	} else if !json.Valid(msg.Data) {
		return ErrInvalidData
	}
	h.root.Send(h.pid, &broadcast{msg: msg})
	return nil
}

// Stop closes every connection with code and reason, then stops the hub actor and the
// ticker, waiting for both or until ctx ends.
func (h *Hub) Stop(ctx context.Context, code uint16, reason string) (closed int, err error) {
	if !h.stopped.CompareAndSwap(false, true) {
		return 0, nil
	}
	close(h.stop)
	h.ticker.Wait()
	timeout := time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(dl), time.Millisecond)
	}
	res, err := h.root.RequestFuture(h.pid, &closeAll{code: code, reason: reason}, timeout).Result()
	if err != nil {
		return 0, fmt.Errorf("hub: close connections: %w", err)
	}
	if err := h.root.PoisonFuture(h.pid).Wait(); err != nil {
		return 0, fmt.Errorf("hub: stop actor: %w", err)
	}
	return res.(*closedAll).count, nil
}

// hubActor owns the registry. Broadcasts iterate over a snapshot slice that is rebuilt only
// after the registry changed, so a steady stream of broadcasts costs no allocation per target.
type hubActor struct {
	conns map[uint64]Conn
	snap  []Conn
	dirty bool

	active                     *atomic.Int64
	log                        *slog.Logger
	sent, total, slow, dropped *metrics.Counter
	dur                        *metrics.PrometheusHistogram
}

func (a *hubActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started, *actor.Stopping, *actor.Stopped, *actor.Restarting:
	case *register:
		a.conns[m.conn.ID()] = m.conn
		a.changed()
	case *unregister:
		if _, ok := a.conns[m.id]; ok {
			delete(a.conns, m.id)
			a.changed()
		}
	case *broadcast:
		a.broadcast(m.msg)
	case *pingAll:
		for _, c := range a.snapshot() {
			c.Ping()
		}
	case *closeAll:
		n := len(a.conns)
		for _, c := range a.snapshot() {
			c.Close(m.code, m.reason)
		}
		clear(a.conns)
		a.changed()
		ctx.Respond(&closedAll{count: n})
	default:
		a.log.Warn("hub: unexpected message", "type", fmt.Sprintf("%T", m))
	}
}

func (a *hubActor) changed() {
	a.dirty = true
	a.active.Store(int64(len(a.conns)))
}

func (a *hubActor) snapshot() []Conn {
	if a.dirty {
		a.snap = a.snap[:0]
		for _, c := range a.conns {
			a.snap = append(a.snap, c)
		}
		a.dirty = false
	}
	return a.snap
}

// broadcast encodes msg once per codec and queues the frame on every target.
func (a *hubActor) broadcast(msg *Message) {
	start := time.Now()
	a.total.Inc()
	var (
		codecs [2]Codec // almost always one or two codecs: a linear scan beats a map
		frames [2][]byte
		extra  map[Codec][]byte
	)
	frameFor := func(c Codec) []byte {
		for i := range codecs {
			if codecs[i] == c {
				return frames[i]
			}
			if codecs[i] == nil {
				codecs[i] = c
				frames[i] = a.encode(c, msg)
				return frames[i]
			}
		}
		if extra == nil {
			extra = make(map[Codec][]byte)
		}
		f, ok := extra[c]
		if !ok {
			f = a.encode(c, msg)
			extra[c] = f
		}
		return f
	}
	gone := 0
	for _, c := range a.snapshot() {
		frame := frameFor(c.Codec())
		if frame == nil {
			continue
		}
		if c.Enqueue(frame) {
			continue
		}
		// Over budget or already closing: the connection closes itself (and counts a slow
		// consumer); drop it here so later broadcasts skip it.
		gone++
		delete(a.conns, c.ID())
	}
	if gone > 0 {
		a.changed()
	}
	a.dur.UpdateDuration(start)
}

func (a *hubActor) encode(c Codec, msg *Message) []byte {
	f, err := c.EncodeBroadcast(msg)
	if err != nil {
		a.dropped.Inc()
		a.log.Error("hub: encode broadcast", "pkg_id", msg.PkgID, "err", err)
		return nil
	}
	return f
}
