package audit_test

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/uptrace/bun"

	"switchboard/store"
	"switchboard/store/audit"
)

// eventually polls cond every 10 ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func countRows(t *testing.T, db *store.DB) int {
	t.Helper()
	n, err := db.Bun.NewSelect().Model((*audit.Entry)(nil)).Count(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return int(n)
}

func counter(set *metrics.Set, name string) uint64 {
	return set.GetOrCreateCounter(name).Get()
}

// insertCounter is a bun query hook counting INSERTs into user_actions (one per batch).
type insertCounter struct{ n atomic.Int64 }

func (c *insertCounter) BeforeQuery(ctx context.Context, _ *bun.QueryEvent) context.Context {
	return ctx
}

func (c *insertCounter) AfterQuery(_ context.Context, ev *bun.QueryEvent) {
	if ev.Err == nil && strings.HasPrefix(ev.Query, `INSERT INTO "user_actions"`) {
		c.n.Add(1)
	}
}

func entry(user string) audit.Entry {
	return audit.Entry{UserID: user, Username: user + "-name", UserRoles: []string{"admin"}, ActionType: "GET_AUTHORS",
		Resource: "pkg:1", Outcome: audit.OutcomeSuccess, IPAddress: "127.0.0.1", UserAgent: "test",
		RequestID: "req", RequestData: []byte(`{}`), ResponseStatus: 0, DurationMS: 1.5}
}

func closeWriter(t testing.TB, w *audit.Writer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// lockedBuffer collects log output written from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
