package actors

import (
	"sync"
	"sync/atomic"
	"testing"
)

// Every scheduled function runs once, whichever worker takes it, with senders on many
// goroutines at once; close waits for what is queued; later ones still run.
func TestWorkerDispatcherRunsEverything(t *testing.T) {
	d := newWorkerDispatcher(4)
	const senders, each = 8, 500
	var ran atomic.Int64
	var done sync.WaitGroup
	done.Add(senders * each)
	var wg sync.WaitGroup
	for range senders {
		wg.Go(func() {
			for range each {
				d.Schedule(func() { ran.Add(1); done.Done() })
			}
		})
	}
	wg.Wait()
	done.Wait()
	if got := ran.Load(); got != senders*each {
		t.Fatalf("ran %d, want %d", got, senders*each)
	}
	// One at a time: each wakes a parked worker.
	for range 100 {
		ch := make(chan struct{})
		d.Schedule(func() { close(ch) })
		<-ch
	}
	block := make(chan struct{})
	var queued atomic.Int64
	for range 10 {
		d.Schedule(func() { <-block; queued.Add(1) })
	}
	close(block)
	d.close()
	if got := queued.Load(); got != 10 {
		t.Fatalf("close returned with %d of 10 queued functions run", got)
	}
	late := make(chan struct{})
	d.Schedule(func() { close(late) })
	<-late
}
