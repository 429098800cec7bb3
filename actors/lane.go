package actors

import (
	"container/heap"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/asynkron/protoactor-go/actor"
)

// lane is one bulkhead of handler actors (see HandlerPool). A request goes to an idle actor of
// its lane at once, or waits in the lane's queue for the first one that frees up — never behind
// one busy actor picked in turn, so a slow handler holds only its own actor. The queue is ordered
// by deadline, which is admission order (every request gets the same timeout). A request whose
// deadline passes while it waits is answered 1/"Request timed out" at that moment by the lane's
// sweeper and never runs: the wait for an actor is bounded by the deadline, whatever the handlers
// in front of it do.
//
// The queue has no bound of its own, and needs none: a connection actor has at most one request
// out at a time (answers keep their order) and every HTTP call waits for its answer, so the queue
// holds at most one request per open connection.
//
// The lane is shared by the goroutines that send requests (connection actors, HTTP handlers),
// its handler actors and its sweeper; mu guards everything below it.
type lane struct {
	id       Lane
	root     *actor.RootContext
	pipeline *Pipeline
	expired  *metrics.Counter

	mu      sync.Mutex
	idle    []*actor.PID
	waiting waitQueue
	seq     uint64 // orders waiters with equal deadlines
	closed  bool

	wake chan struct{} // capacity 1: the earliest deadline may have changed
	stop chan struct{}
	done chan struct{} // closed when the sweeper has returned
}

// waiter is one request waiting for an actor of its lane.
type waiter struct {
	msg      any // the message as it reached the pool (envelope included): forwarded as is
	req      *Request
	sender   *actor.PID // where the answer goes; nil for a request sent without a sender
	deadline time.Time
	seq      uint64
}

func newLane(id Lane, root *actor.RootContext, p *Pipeline) *lane {
	l := &lane{id: id, root: root, pipeline: p,
		expired: p.cfg.Metrics.GetOrCreateCounter(`handler_requests_expired_total{lane="` + id.String() + `"}`),
		wake:    make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	p.cfg.Metrics.GetOrCreateGauge(`handler_requests_waiting{lane="`+id.String()+`"}`, func() float64 {
		l.mu.Lock()
		defer l.mu.Unlock()
		return float64(l.waiting.Len())
	})
	go l.sweep()
	return l
}

// submit hands req (which arrived as msg from sender) to an idle actor, or queues it.
func (l *lane) submit(msg any, req *Request, sender *actor.PID) {
	deadline := l.pipeline.Deadline(req)
	if !time.Now().Before(deadline) {
		l.refuse(req, sender, timedOut)
		return
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.refuse(req, sender, stopping)
		return
	}
	if n := len(l.idle); n > 0 {
		pid := l.idle[n-1] // the most recently used actor: its worker's stack is warm
		l.idle = l.idle[:n-1]
		l.mu.Unlock()
		l.root.Send(pid, msg)
		return
	}
	l.seq++
	w := &waiter{msg: msg, req: req, sender: sender, deadline: deadline, seq: l.seq}
	heap.Push(&l.waiting, w)
	first := l.waiting[0] == w
	l.mu.Unlock()
	if first {
		l.poke()
	}
}

// release is called by a handler actor when it has answered: it takes the next waiting request
// that still has time, or goes back to the idle ones. Waiters found past their deadline on the way
// are answered.
func (l *lane) release(pid *actor.PID) {
	now := time.Now()
	var late []*waiter
	var next *waiter
	l.mu.Lock()
	for l.waiting.Len() > 0 {
		w := heap.Pop(&l.waiting).(*waiter)
		if now.Before(w.deadline) {
			next = w
			break
		}
		late = append(late, w)
	}
	if next == nil && !l.closed {
		l.idle = append(l.idle, pid)
	}
	l.mu.Unlock()
	if next != nil {
		l.root.Send(pid, next.msg)
	}
	for _, w := range late {
		l.refuse(w.req, w.sender, timedOut)
	}
}

// refuse answers a request that will not run.
func (l *lane) refuse(req *Request, sender *actor.PID, f *Failure) {
	if f == timedOut {
		l.expired.Inc()
	}
	resp := l.pipeline.refuse(req, f)
	if sender != nil {
		l.root.Send(sender, resp)
	}
}

func (l *lane) poke() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// sweep answers waiters whose deadline passed, at their deadline. It runs until close.
func (l *lane) sweep() {
	defer close(l.done)
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		l.mu.Lock()
		var next time.Time
		if l.waiting.Len() > 0 {
			next = l.waiting[0].deadline
		}
		l.mu.Unlock()
		var fire <-chan time.Time
		if !next.IsZero() {
			t.Reset(time.Until(next))
			fire = t.C
		}
		select {
		case <-l.stop:
			t.Stop()
			return
		case <-l.wake:
			t.Stop()
		case now := <-fire:
			l.expire(now)
		}
	}
}

// expire answers every waiter whose deadline is not after now.
func (l *lane) expire(now time.Time) {
	var late []*waiter
	l.mu.Lock()
	for l.waiting.Len() > 0 && !now.Before(l.waiting[0].deadline) {
		late = append(late, heap.Pop(&l.waiting).(*waiter))
	}
	l.mu.Unlock()
	for _, w := range late {
		l.refuse(w.req, w.sender, timedOut)
	}
}

// close stops taking requests, answers the waiting ones (the pool is stopping) and stops the
// sweeper, waiting for it.
func (l *lane) close() {
	l.mu.Lock()
	l.closed = true
	left := l.waiting
	l.waiting = nil
	l.idle = nil
	l.mu.Unlock()
	for _, w := range left {
		l.refuse(w.req, w.sender, stopping)
	}
	close(l.stop)
	<-l.done
}

// waitQueue is a min-heap of waiters by deadline, then by arrival.
type waitQueue []*waiter

func (q waitQueue) Len() int { return len(q) }
func (q waitQueue) Less(i, j int) bool {
	if !q[i].deadline.Equal(q[j].deadline) {
		return q[i].deadline.Before(q[j].deadline)
	}
	return q[i].seq < q[j].seq
}
func (q waitQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *waitQueue) Push(x any)   { *q = append(*q, x.(*waiter)) }
func (q *waitQueue) Pop() any {
	old := *q
	n := len(old)
	w := old[n-1]
	old[n-1] = nil
	*q = old[:n-1]
	if len(*q) == 0 {
		*q = nil // a burst's array is let go once it has drained
	}
	return w
}
