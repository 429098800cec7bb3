package audit

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// dropReason is why entries were dropped.
type dropReason int

const (
	dropQueueFull dropReason = iota // Record found the queue full
	dropClosed                      // Record was called after Close
	dropRejected                    // the database refused the row
	dropDBClosed                    // the database handle was closed under the writer
	dropShutdown                    // Close's context ended before the entry was written
	numDropReasons
)

// key is the reason's attribute in the warning line.
func (r dropReason) key() string {
	switch r {
	case dropQueueFull:
		return "queue_full"
	case dropClosed:
		return "after_close"
	case dropRejected:
		return "rejected_by_database"
	case dropDBClosed:
		return "database_closed"
	case dropShutdown:
		return "shutdown_deadline"
	}
	return "other"
}

// dropLog turns drops into at most one warning line per warnEvery, saying how many entries
// were dropped since the last line and why. add is called from Record's callers and from the
// writer goroutine at once.
type dropLog struct {
	log      *slog.Logger
	last     atomic.Int64 // unix nanoseconds of the last line
	pending  [numDropReasons]atomic.Int64
	errMu    sync.Mutex
	lastErr  string // the last refusal by the database since the last line
	flushing sync.Mutex
}

// add counts n drops for reason (err: the database's refusal, or nil) and writes the line when
// warnEvery has passed since the last one. total is audit_logs_dropped_total.
func (d *dropLog) add(n int, reason dropReason, err error, total uint64) {
	d.pending[reason].Add(int64(n))
	if err != nil {
		d.errMu.Lock()
		d.lastErr = err.Error()
		d.errMu.Unlock()
	}
	now := time.Now().UnixNano()
	last := d.last.Load()
	if now-last < int64(warnEvery) || !d.last.CompareAndSwap(last, now) {
		return
	}
	d.flush(total)
}

// flush writes the line now if anything was dropped since the last one.
func (d *dropLog) flush(total uint64) {
	d.flushing.Lock()
	defer d.flushing.Unlock()
	attrs := make([]any, 0, 2*numDropReasons+4)
	for r := range numDropReasons {
		if n := d.pending[r].Swap(0); n > 0 {
			attrs = append(attrs, r.key(), n)
		}
	}
	if len(attrs) == 0 {
		return
	}
	d.errMu.Lock()
	if d.lastErr != "" {
		attrs = append(attrs, "last_error", d.lastErr)
		d.lastErr = ""
	}
	d.errMu.Unlock()
	attrs = append(attrs, "dropped_total", total)
	d.log.Warn("audit entries dropped", attrs...)
}
