package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"switchboard/config"
	"switchboard/hub"
	"switchboard/store/redistest"
)

// BenchmarkConnectSubscribe opens b.N connections from 64 raw-socket clients at once against an
// in-process node on the embedded default, keeping them open, and reports conns/s: "connect"
// upgrades only, "connect+subscribe" also sends SUBSCRIBE dashboards.bench (no since) and reads
// its answer. Clients and server share the process and the machine's cores, so the figures are
// lower than the load tool's; the ratio of the two, in one run, is the measure
// (docs/performance.md). Keep b.N under the open-files limit (2 descriptors per connection):
//
//	go test -run '^$' -bench ConnectSubscribe -benchtime 4000x ./cmd/switchboard/
func BenchmarkConnectSubscribe(b *testing.B) {
	for _, subscribe := range []bool{false, true} {
		name := "connect"
		if subscribe {
			name = "connect+subscribe"
		}
		b.Run(name, func(b *testing.B) {
			s := startServer(b, func(c *config.Config) {
				c.WSMaxConnsPerUser, c.RateLimitPerMinute, c.WSMessageRateLimit = 1_000_000, 100_000_000, 100_000_000
				c.MaxPreAuthConnsIP = 1_000_000
			})
			host := strings.TrimPrefix(s.base, "http://")
			tok := s.token(b, "bench-connsub", "get-authors")
			frames := hotFrames(b.N, 10, `{"topic":"dashboards.bench"}`)
			conns := make([]*hotConn, b.N)
			defer func() { hotCloseAll(conns) }()
			b.ResetTimer()
			inParallel(b.N, 64, func(i int) {
				c := hotDial(b, host, tok)
				conns[i] = c
				if subscribe {
					c.roundTrip(b, frames[i])
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "conns/s")
		})
	}
}

// BenchmarkResubscribeStorm is a node restart as its subscribers see it: clients subscribed
// to one topic with history on a node with Redis, 20 broadcasts they all received, the node
// stopped and another started on the same Redis and prefix; then b.N clients reconnect at once
// (64 at a time) and send SUBSCRIBE with since 10 broadcasts back and the epoch, and must be
// answered recovered:true followed by exactly seq since+1 … latest, in order. It reports the
// seconds from the first reconnect to the last client complete. The second node runs in a
// child process (this test binary running main, GOMAXPROCS as the parent's), so that b.N
// connections cost this process one descriptor each, not two: 10 000 fit an open-files limit
// of 20 000. The first node, in process, has min(b.N, 1000) subscribers. Needs Redis on
// 127.0.0.1:6379 (skipped without it, a failure under CI=true).
//
//	go test -run '^$' -bench ResubscribeStorm -benchtime 10000x ./cmd/switchboard/
func BenchmarkResubscribeStorm(b *testing.B) {
	rc := redistest.Client(b)
	prefix := redistest.Prefix(b, rc)
	redisURL := redistest.URL(b)
	shared := b.TempDir()
	node := func(c *config.Config) {
		c.DataDir, c.RedisURL, c.RedisPrefix = shared, redisURL, prefix
		c.WSMaxConnsPerUser, c.RateLimitPerMinute, c.WSMessageRateLimit = 1_000_000, 100_000_000, 100_000_000
		c.MaxPreAuthConnsIP = 1_000_000
	}
	topic := "dashboards.storm" + strconv.FormatInt(time.Now().UnixNano()%1e6, 10)
	const published, back = 20, 10

	a := startServer(b, node)
	host := strings.TrimPrefix(a.base, "http://")
	tok := a.token(b, "bench-storm", "get-authors")
	conns := make([]*hotConn, min(b.N, 1000))
	for i := range conns {
		conns[i] = hotDial(b, host, tok)
		conns[i].roundTrip(b, hotFrames(1, 10, fmt.Sprintf(`{"topic":%q}`, topic))[0])
	}
	var epoch string
	for i := range published {
		if _, err := a.app.hub.Broadcast(context.Background(), &hub.Message{PkgID: 1, Topic: topic, Data: []byte(fmt.Sprintf(`{"n":%d}`, i))}); err != nil {
			b.Fatal(err)
		}
	}
	for _, c := range conns { // every client has all of them
		for range published {
			p := c.frame(b)
			if epoch == "" {
				var e envelope
				if err := json.Unmarshal(p, &e); err != nil {
					b.Fatal(err)
				}
				epoch = e.Epoch
			}
		}
	}
	if err := a.stop(); err != nil {
		b.Fatal(err)
	}
	hotCloseAll(conns)

	host = startStormNode(b, redisURL, prefix, shared)
	since := published - back
	frames := hotFrames(b.N, 10, fmt.Sprintf(`{"topic":%q,"since":%d,"epoch":%q}`, topic, since, epoch))
	again := make([]*hotConn, b.N)
	defer func() { hotCloseAll(again) }()
	var failed atomic.Int64
	firstErr := make(chan string, 1)
	fail := func(msg string) {
		failed.Add(1)
		select {
		case firstErr <- msg:
		default:
		}
	}
	b.ResetTimer()
	inParallel(b.N, 64, func(i int) {
		c := hotDial(b, host, tok)
		again[i] = c
		ans := c.roundTrip(b, frames[i])
		if !bytes.Contains(ans, []byte(`"recovered":true`)) {
			fail(fmt.Sprintf("answer %s", ans))
			return
		}
		for k := since + 1; k <= published; k++ {
			p := c.frame(b)
			if !bytes.Contains(p, []byte(fmt.Sprintf(`"seq":%d,`, k))) && !bytes.Contains(p, []byte(fmt.Sprintf(`"seq":%d}`, k))) {
				fail(fmt.Sprintf("want seq %d, got %s", k, p))
				break
			}
		}
	})
	b.StopTimer()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d clients did not recover everything: %s", n, b.N, <-firstErr)
	}
	b.ReportMetric(b.Elapsed().Seconds(), "s-all-recovered")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "resubscribes/s")
}

// startStormNode starts `switchboard serve` in a child process on the shared data directory,
// Redis and prefix, with BenchmarkResubscribeStorm's raised limits, and returns its host:port
// once it answers /health. It is stopped (SIGTERM) at cleanup.
func startStormNode(b *testing.B, redisURL, prefix, dataDir string) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	host := l.Addr().String()
	_ = l.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestMainHelper$")
	logs := &logBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.Env = append(childEnv(), `SWITCHBOARD_TEST_MAIN_ARGS=["serve"]`, "SWITCHBOARD_ADDR="+host,
		"SWITCHBOARD_LOG_LEVEL=warn", "SWITCHBOARD_DATA_DIR="+dataDir,
		"SWITCHBOARD_REDIS_URL="+redisURL, "SWITCHBOARD_REDIS_PREFIX="+prefix,
		"SWITCHBOARD_WS_MAX_CONNECTIONS_PER_USER=1000000", "SWITCHBOARD_RATE_LIMIT_PER_MINUTE=100000000",
		"SWITCHBOARD_WS_MESSAGE_RATE_LIMIT=100000000", "SWITCHBOARD_MAX_PREAUTH_CONNECTIONS_PER_IP=1000000")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	eventually(b, 60*time.Second, "the second node to answer /health", func() bool {
		select {
		case <-done:
			b.Fatalf("node exited:\n%s", logs.String())
		default:
		}
		res, err := http.Get("http://" + host + "/health")
		if err != nil {
			return false
		}
		_ = res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
	return host
}

// inParallel runs fn for every i in [0, n) on workers goroutines, each taking the next i.
func inParallel(n, workers int, fn func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				fn(i)
			}
		})
	}
	wg.Wait()
}
