package actors

import (
	"container/heap"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// expiries tells connection actors that their token expired, with one timer for all of them:
// a heap of the connections' deadlines, earliest first, and a single time.Timer armed for the
// earliest. A timer and its closure per connection cost about 180 bytes of every idle
// connection; an entry here is part of the actor plus a slot of the heap's array.
type expiries struct {
	mu    sync.Mutex
	q     expiryHeap
	timer *time.Timer // made at the first deadline
	armed int64       // when timer fires (Unix nanoseconds); 0: not armed
}

// expiry is one connection's deadline, kept in its actor; its fields belong to expiries.mu.
type expiry struct {
	at   int64 // when to tell the actor (Unix nanoseconds): the token's exp plus the leeway
	exp  int64 // the token's exp (Unix nanoseconds), sent back in tokenExpired
	idx  int   // position in the heap; -1: not in it
	pid  *actor.PID
	root *actor.RootContext
}

// set (re)places e at the deadline at, for the token expiring at exp, to be told to pid.
func (x *expiries) set(e *expiry, root *actor.RootContext, pid *actor.PID, exp, at time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	e.at, e.exp, e.pid, e.root = at.UnixNano(), exp.UnixNano(), pid, root
	if e.idx >= 0 && e.idx < len(x.q) && x.q[e.idx] == e {
		heap.Fix(&x.q, e.idx)
	} else {
		heap.Push(&x.q, e)
	}
	if x.armed == 0 || e.at < x.armed {
		x.armLocked(e.at)
	}
}

// remove takes e out, if it is in.
func (x *expiries) remove(e *expiry) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if e.idx >= 0 && e.idx < len(x.q) && x.q[e.idx] == e {
		heap.Remove(&x.q, e.idx)
	}
	e.pid, e.root = nil, nil
}

// armLocked makes the timer fire at at. A timer left armed for an entry removed since fires
// for nothing and arms itself for the next.
func (x *expiries) armLocked(at int64) {
	x.armed = at
	d := time.Duration(at - time.Now().UnixNano())
	if x.timer == nil {
		x.timer = time.AfterFunc(d, x.fire)
		return
	}
	x.timer.Reset(d)
}

// due is a deadline reached, copied out of its entry so that it is sent without the lock.
type due struct {
	root *actor.RootContext
	pid  *actor.PID
	exp  int64
}

// fire tells every actor whose deadline has passed, and arms the timer for the next one.
func (x *expiries) fire() {
	var out []due
	x.mu.Lock()
	now := time.Now().UnixNano()
	for len(x.q) > 0 && x.q[0].at <= now {
		e := heap.Pop(&x.q).(*expiry)
		out = append(out, due{root: e.root, pid: e.pid, exp: e.exp})
	}
	x.armed = 0
	if len(x.q) > 0 {
		x.armLocked(x.q[0].at)
	}
	if len(x.q) == 0 && cap(x.q) > 64 && cap(x.q) > 4*len(x.q) {
		x.q = nil // let a large array go once it is empty
	}
	x.mu.Unlock()
	for _, d := range out {
		d.root.Send(d.pid, &tokenExpired{exp: time.Unix(0, d.exp)})
	}
}

// expiryHeap orders entries by deadline (container/heap), keeping each entry's idx.
type expiryHeap []*expiry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *expiryHeap) Push(v any) {
	e := v.(*expiry)
	e.idx = len(*h)
	*h = append(*h, e)
}
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.idx = -1
	return e
}
