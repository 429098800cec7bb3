package bus

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// RedisURLEnv names the Redis the integration tests use (default redis://127.0.0.1:6379/0).
const RedisURLEnv = "SWITCHBOARD_TEST_REDIS_URL"

// redisClient connects to the test Redis and closes the client when the test ends. Without a
// reachable server the test is skipped, or fails when CI=true.
func redisClient(t testing.TB) *redis.Client {
	t.Helper()
	url := os.Getenv(RedisURLEnv)
	if url == "" {
		url = "redis://127.0.0.1:6379/0"
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("%s: %v", RedisURLEnv, err)
	}
	opt.ContextTimeoutEnabled = true
	c := redis.NewClient(opt)
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		msg := "Redis at " + opt.Addr + " is unreachable (" + err.Error() + "); start it with: " +
			`redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no` +
			" or set " + RedisURLEnv
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return c
}

// testPrefix returns a key prefix unique to this test and deletes its keys when the test ends
// (registered after the client, so it runs before the client is closed).
func testPrefix(t testing.TB, c redis.UniversalClient) string {
	t.Helper()
	prefix := "sbtest:" + randomHex(6) + ":"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		iter := c.Scan(ctx, 0, prefix+"*", 500).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
		if err := iter.Err(); err != nil {
			t.Errorf("delete test keys %s*: %v", prefix, err)
		}
	})
	return prefix
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
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

// privateRedis is a redis-server child process on its own port, for tests that kill
// connections or restart Redis without disturbing the shared one.
type privateRedis struct {
	t    testing.TB
	bin  string
	port int
	cmd  *exec.Cmd
}

func newPrivateRedis(t testing.TB) *privateRedis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		msg := "redis-server binary not found; the resubscribe tests need it"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	p := &privateRedis{t: t, bin: bin, port: port}
	t.Cleanup(p.stop)
	p.start()
	return p
}

func (p *privateRedis) addr() string { return "127.0.0.1:" + strconv.Itoa(p.port) }

func (p *privateRedis) start() {
	p.t.Helper()
	p.cmd = exec.Command(p.bin, "--port", strconv.Itoa(p.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning")
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("start redis-server: %v", err)
	}
	ok := waitFor(5*time.Second, func() bool {
		conn, err := net.DialTimeout("tcp", p.addr(), 100*time.Millisecond)
		if err == nil {
			_ = conn.Close()
		}
		return err == nil
	})
	if !ok {
		p.t.Fatalf("redis-server on %s did not start", p.addr())
	}
}

// stop kills the server (as a crash would) and waits for it to exit.
func (p *privateRedis) stop() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
	p.cmd = nil
}

// client returns a client of the private server, closed when the test ends.
func (p *privateRedis) client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: p.addr(), ContextTimeoutEnabled: true,
		DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	p.t.Cleanup(func() { _ = c.Close() })
	return c
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
