package actors

import "sync"

// workerDispatcher is a protoactor Dispatcher that runs scheduled mailboxes on a fixed set of
// long-lived goroutines instead of starting a goroutine for every mailbox activation
// (protoactor's default). A fresh goroutine starts on the smallest stack and grows it again on
// every activation that goes deep (encoding an answer, the database driver); a worker keeps
// the stack it grew. Schedule never blocks: the queue has no bound, and a mailbox is scheduled
// at most once at a time, so it holds at most one entry per actor. The actors it serves must
// not block in Receive for long (a worker would be held). After close, a late activation (a
// message to a stopped actor) runs on a goroutine of its own.
//
// Work goes to the worker that parked last (a stack of idle workers), not to the one idle the
// longest (sync.Cond's order): under a light load the same few workers run everything, their
// stacks stay grown and their caches warm, and the rest stay parked on small stacks. With the
// other order a pool of 64 took every request to a worker whose stack the garbage collector had
// shrunk since its last turn, and grew it again (docs/performance.md).
type workerDispatcher struct {
	mu     sync.Mutex
	queue  []func()
	head   int
	idle   []*worker // parked workers, the most recently parked last
	closed bool
	wg     sync.WaitGroup
}

// worker is one goroutine of a workerDispatcher; wake (capacity 1) ends its park. A worker is on
// the idle stack at most once, and only the one who takes it off sends on wake.
type worker struct{ wake chan struct{} }

func newWorkerDispatcher(workers int) *workerDispatcher {
	d := &workerDispatcher{}
	for range max(workers, 1) {
		w := &worker{wake: make(chan struct{}, 1)}
		d.wg.Go(func() { d.work(w) })
	}
	return d
}

func (d *workerDispatcher) work(w *worker) {
	for {
		d.mu.Lock()
		for d.head == len(d.queue) && !d.closed {
			d.idle = append(d.idle, w)
			d.mu.Unlock()
			<-w.wake
			d.mu.Lock()
		}
		if d.head == len(d.queue) { // closed and drained
			d.mu.Unlock()
			return
		}
		fn := d.queue[d.head]
		d.queue[d.head] = nil
		d.head++
		if d.head == len(d.queue) {
			d.queue, d.head = d.queue[:0], 0
		}
		d.mu.Unlock()
		fn()
	}
}

// Schedule implements actor.Dispatcher.
func (d *workerDispatcher) Schedule(fn func()) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		go fn()
		return
	}
	d.queue = append(d.queue, fn)
	var w *worker
	if n := len(d.idle); n > 0 {
		w = d.idle[n-1]
		d.idle[n-1] = nil
		d.idle = d.idle[:n-1]
	}
	d.mu.Unlock()
	if w != nil {
		// A worker that was not parked may take fn first; the one woken then finds the queue
		// empty and parks again.
		w.wake <- struct{}{}
	}
}

// Throughput implements actor.Dispatcher: messages a mailbox handles before it yields its
// worker (protoactor's default).
func (d *workerDispatcher) Throughput() int { return 300 }

// close lets the workers finish what is queued and waits for them.
func (d *workerDispatcher) close() {
	d.mu.Lock()
	d.closed = true
	idle := d.idle
	d.idle = nil
	d.mu.Unlock()
	for _, w := range idle {
		w.wake <- struct{}{}
	}
	d.wg.Wait()
}

// Workers runs the mailboxes of the actors spawned with it (ConnDeps.Workers) on n long-lived
// goroutines instead of a goroutine per activation: each activation of a connection actor that
// answers a request goes deeper than a fresh goroutine's stack, which then grows, and growing a
// stack costs more than the rest of the activation (callgrind, docs/performance.md). Close stops
// the goroutines once the actors are stopped.
type Workers struct{ d *workerDispatcher }

// NewWorkers starts n (at least 1) worker goroutines.
func NewWorkers(n int) *Workers { return &Workers{d: newWorkerDispatcher(n)} }

// Close lets the workers finish what is queued and waits for them; later activations run on
// goroutines of their own.
func (w *Workers) Close() { w.d.close() }
