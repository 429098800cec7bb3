package audit_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"switchboard/store/audit"
	"switchboard/store/storetest"
)

// BenchmarkWriterThroughput records b.N entries and waits until they are written: the cost of
// an entry on the writer's side (the INSERT, and on PostgreSQL the ids reserved before it), with
// full batches of the default size.
func BenchmarkWriterThroughput(b *testing.B) {
	for _, be := range storetest.Backends() {
		b.Run(be.Name, func(b *testing.B) {
			db := storetest.NewDB(b, be.URL(b))
			set := metrics.NewSet()
			w := audit.NewWriter(db, audit.WriterConfig{QueueSize: b.N + 1, FlushInterval: 10 * time.Millisecond, Metrics: set})
			entries := make([]audit.Entry, b.N)
			for i := range entries {
				entries[i] = numbered(i)
				entries[i].RequestData = []byte(fmt.Sprintf(`{"name":"author %d","filters":{"id":%d}}`, i, i))
			}
			b.ResetTimer()
			for i := range entries {
				w.Record(entries[i])
			}
			for counter(set, audit.MetricWritten) < uint64(b.N) {
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			closeWriter(b, w)
		})
	}
}
