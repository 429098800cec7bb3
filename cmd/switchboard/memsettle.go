package main

import (
	"log/slog"
	"runtime/debug"
	"time"
)

// A burst of new connections (a deploy, a restart of the clients' network) leaves garbage behind
// — handshake buffers, the first requests' frames and messages, the stacks their goroutines grew
// and dropped — and the runtime keeps the memory it needed for it: on an idle server no
// allocation triggers the next collection, and the scavenger only returns what lies above the
// heap goal. Once the number of connections has held still for a few seconds after growing by
// burstMin, the node collects and returns the free memory once (debug.FreeOSMemory: one
// collection per burst, not a share of every broadcast as a lower GOGC would cost).
const (
	burstMin   = 1000            // new connections since the last release that make a burst
	burstQuiet = 3               // ticks the count must hold still before the release
	burstGap   = 30              // ticks at least between two releases
	burstTick  = 1 * time.Second // how often the count is read
)

// burstSettle decides, one connection count a tick, when a burst is over.
type burstSettle struct {
	base  int // the count at the last release, or the lowest since
	last  int
	still int // ticks the count has held at last
	// gap is the fewest ticks between two releases: clients that connect and leave in waves
	// (a hostile user with many tokens, say) get at most one collection per gap from it.
	gap   int
	since int // ticks since the last release
}

// tick takes the current count and reports whether to release the burst's memory now.
func (b *burstSettle) tick(n int) bool {
	b.base = min(b.base, n)
	b.since++
	if n == b.last {
		b.still++
	} else {
		b.last, b.still = n, 0
	}
	if n-b.base >= burstMin && b.still >= burstQuiet && b.since > b.gap {
		b.base, b.since = n, 0
		return true
	}
	return false
}

// startBurstSettle reads count every burstTick and releases memory after each burst, until the
// returned stop is called (it waits for the goroutine).
func startBurstSettle(count func() int, log *slog.Logger) (stop func()) {
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(burstTick)
		defer t.Stop()
		b := &burstSettle{base: count(), gap: burstGap, since: burstGap}
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if n := count(); b.tick(n) {
					start := time.Now()
					debug.FreeOSMemory()
					log.Debug("memory of a connection burst returned", "connections", n, "took", time.Since(start))
				}
			}
		}
	}()
	return func() { close(done); <-exited }
}
