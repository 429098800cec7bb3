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
type workerDispatcher struct {
	mu     sync.Mutex
	ready  sync.Cond
	queue  []func()
	head   int
	closed bool
	wg     sync.WaitGroup
}

func newWorkerDispatcher(workers int) *workerDispatcher {
	d := &workerDispatcher{}
	d.ready.L = &d.mu
	for range max(workers, 1) {
		d.wg.Go(d.work)
	}
	return d
}

func (d *workerDispatcher) work() {
	for {
		d.mu.Lock()
		for d.head == len(d.queue) && !d.closed {
			d.ready.Wait()
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
	d.mu.Unlock()
	d.ready.Signal()
}

// Throughput implements actor.Dispatcher: messages a mailbox handles before it yields its
// worker (protoactor's default).
func (d *workerDispatcher) Throughput() int { return 300 }

// close lets the workers finish what is queued and waits for them.
func (d *workerDispatcher) close() {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	d.ready.Broadcast()
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
