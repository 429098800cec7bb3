// Package redistest gives tests of any package Redis to run against: the shared test Redis
// (127.0.0.1:6379, or URLEnv) with a key prefix of the test's own, a redis-server child process
// of the test's own that may be killed and started again, and a TCP listener that never answers.
// Import it only from _test.go files.
//
// Without a reachable Redis, or without the redis-server binary, a test is skipped, or fails
// when CI=true.
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// URLEnv names the environment variable holding the URL of the shared test Redis.
const URLEnv = "SWITCHBOARD_TEST_REDIS_URL"

// DefaultURL is used when URLEnv is unset.
const DefaultURL = "redis://127.0.0.1:6379/0"

// SkipOrFail skips the test with msg, or fails it when CI=true.
func SkipOrFail(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// URL returns the URL of the shared test Redis after checking that it answers (skips, or fails
// under CI=true, when it does not).
func URL(t testing.TB) string {
	t.Helper()
	Client(t)
	return rawURL()
}

func rawURL() string {
	if url := os.Getenv(URLEnv); url != "" {
		return url
	}
	return DefaultURL
}

// Client connects to the shared test Redis (ContextTimeoutEnabled, then tweak applied) and
// closes the client when the test ends. Without a reachable server the test is skipped, or fails
// when CI=true.
func Client(t testing.TB, tweak ...func(*redis.Options)) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL(rawURL())
	if err != nil {
		t.Fatalf("%s: %v", URLEnv, err)
	}
	opt.ContextTimeoutEnabled = true
	for _, f := range tweak {
		f(opt)
	}
	c := redis.NewClient(opt)
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		SkipOrFail(t, "Redis at "+opt.Addr+" is unreachable ("+err.Error()+"); start it with: "+
			`redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no`+
			" or set "+URLEnv)
	}
	return c
}

// Prefix returns a key prefix unique to this test ("sbtest:<random>:") and deletes the keys
// under it, through c, when the test ends. Call it after creating c, so that the keys are deleted
// before c is closed.
func Prefix(t testing.TB, c redis.UniversalClient) string {
	t.Helper()
	prefix := "sbtest:" + RandomHex(6) + ":"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		del := func(ctx context.Context, node redis.UniversalClient) error {
			iter := node.Scan(ctx, 0, prefix+"*", 500).Iterator()
			for iter.Next(ctx) {
				node.Del(ctx, iter.Val())
			}
			return iter.Err()
		}
		var err error
		if cc, ok := c.(*redis.ClusterClient); ok {
			// SCAN reads one node; the keys are spread over every primary.
			err = cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return del(ctx, node) })
		} else {
			err = del(ctx, c)
		}
		if err != nil {
			t.Errorf("delete test keys %s*: %v", prefix, err)
		}
	})
	return prefix
}

// RandomHex returns n random bytes in hex.
func RandomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Server is a redis-server child process on a random port of 127.0.0.1, which the test may kill
// and start again on the same port. It is killed when the test ends.
type Server struct {
	t    testing.TB
	bin  string
	port int
	dir  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartServer starts a redis-server of the test's own and waits until it answers PING (skips,
// or fails under CI=true, without the binary). Call it before starting what uses it, so that it
// is killed after that stopped.
func StartServer(t testing.TB) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		SkipOrFail(t, "redis-server is not installed (needed for a Redis of the test's own): "+err.Error())
	}
	s := &Server{t: t, bin: bin, dir: t.TempDir()}
	t.Cleanup(s.Kill)
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s.port = ln.Addr().(*net.TCPAddr).Port
		_ = ln.Close()
		if lastErr = s.launch(); lastErr == nil {
			return s
		}
	}
	t.Fatalf("start redis-server: %v", lastErr)
	return nil
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// URL is the server's redis:// URL (database 0).
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// launch runs redis-server on s.port and waits until it answers PING.
func (s *Server) launch() error {
	cmd := exec.Command(s.bin, "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir, "--daemonize", "no", "--loglevel", "warning")
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), DialTimeout: time.Second, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-done:
			s.mu.Lock()
			s.cmd = nil
			s.mu.Unlock()
			return fmt.Errorf("redis-server on port %d exited at start (port taken?)", s.port)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("redis-server on port %d does not answer PING: %v", s.port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Restart starts redis-server again on the same port (after Kill) and waits until it answers
// PING.
func (s *Server) Restart() {
	s.t.Helper()
	if err := s.launch(); err != nil {
		s.t.Fatal(err)
	}
}

// Kill sends SIGKILL (as a crash would: no shutdown, no save) and waits for the process to
// exit. It does nothing when the server is not running.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		s.t.Errorf("redis-server (pid %d) did not exit after SIGKILL", cmd.Process.Pid)
	}
}

// Client returns a client of the server (ContextTimeoutEnabled, a one-second dial timeout, then
// tweak applied), closed when the test ends.
func (s *Server) Client(tweak ...func(*redis.Options)) *redis.Client {
	opt := &redis.Options{Addr: s.Addr(), DialTimeout: time.Second, ContextTimeoutEnabled: true}
	for _, f := range tweak {
		f(opt)
	}
	c := redis.NewClient(opt)
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

// BlackHole returns the address of a TCP listener that accepts connections and never answers:
// a Redis that hangs. It and its connections are closed when the test ends.
func BlackHole(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		done  = make(chan struct{})
	)
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return ln.Addr().String()
}
