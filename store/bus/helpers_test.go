package bus

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"switchboard/store/redistest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	redistest.StopShared() // the shared Redis Cluster and Sentinel set, if a test started them
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// waitFor polls cond every 5 ms until it holds or timeout passes, and reports which.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// recorder is a deliver function that keeps what it got, and the goroutines it was called on.
type recorder struct {
	mu   sync.Mutex
	msgs []*Message
}

func (r *recorder) deliver(m *Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, m)
}

func (r *recorder) snapshot() []*Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*Message(nil), r.msgs...)
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

// waitLen waits until at least n messages arrived.
func (r *recorder) waitLen(t testing.TB, n int, timeout time.Duration) []*Message {
	t.Helper()
	if !waitFor(timeout, func() bool { return r.len() >= n }) {
		t.Fatalf("delivered %d messages within %s, want %d", r.len(), timeout, n)
	}
	return r.snapshot()
}

// logBuffer is a slog destination tests can read.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) count(substr string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), substr)
}

func (b *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// privateClient returns a client of srv that fails fast: a short dial timeout, no retries.
func privateClient(srv *redistest.Server) *redis.Client {
	return srv.Client(func(o *redis.Options) { o.DialTimeout, o.MaxRetries = 200*time.Millisecond, -1 })
}

// newRedisBus builds a Redis bus closed when the test ends.
func newRedisBus(t testing.TB, c redis.UniversalClient, prefix, node string, deliver func(*Message), opts ...Option) *Redis {
	t.Helper()
	b, err := NewRedis(c, prefix, node, deliver, opts...)
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// waitHealthy waits until b.Healthy is nil.
func waitHealthy(t testing.TB, b Bus, timeout time.Duration) {
	t.Helper()
	var err error
	if !waitFor(timeout, func() bool { err = b.Healthy(context.Background()); return err == nil }) {
		t.Fatalf("bus not healthy within %s: %v", timeout, err)
	}
}
