package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"switchboard/config"
)

// BenchmarkIdleConnectionStack opens idle authenticated WebSocket connections to an
// in-process server with raw sockets (no client goroutines) and reports the goroutines and the
// stack memory the server holds per connection. The read loop of an idle connection parks
// 1 112 bytes deep in a 2 KiB stack, 8 bytes from doubling it: an upgrade of Go or gws that
// deepens that path shows here as stack-B/conn jumping from about 2 048 to 4 096. Then every
// connection sends one SUBSCRIBE: stack-B/conn-subscribed is what they keep once idle again
// (4 096 when the read goroutine kept the stack its handling grew to).
func BenchmarkIdleConnectionStack(b *testing.B) {
	for b.Loop() {
	}
	b.StopTimer()
	// The binary sets this in main (smallStacks); a test binary has to do it itself.
	b.Setenv("GODEBUG", strings.TrimPrefix(os.Getenv("GODEBUG")+",adaptivestackstart=0", ","))
	const n = 500
	s := startServer(b, func(c *config.Config) { c.WSMaxConnsPerUser, c.RateLimitPerMinute = 2*n, 100*n })
	token := s.token(b, "stack-bench")
	host := strings.TrimPrefix(s.base, "http://")
	req := "GET /web HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
		"Authorization: Bearer " + token + "\r\n\r\n"

	stacks := func() (uint64, int) {
		for range 3 {
			runtime.GC() // shrinks the stacks that can shrink
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.StackInuse, runtime.NumGoroutine()
	}
	stackBefore, gBefore := stacks()
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range n {
		c, err := net.DialTimeout("tcp", host, 5*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(req)); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReaderSize(c, 512), nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			b.Fatalf("handshake: %v %v", resp, err)
		}
		_ = c.SetDeadline(time.Time{})
	}
	// Every read loop is parked once the hub has registered the last connection.
	time.Sleep(200 * time.Millisecond)
	stackAfter, gAfter := stacks()
	b.ReportMetric(float64(gAfter-gBefore)/n, "goroutines/conn")
	b.ReportMetric(float64(int64(stackAfter)-int64(stackBefore))/n, "stack-B/conn")

	// Then each sends one SUBSCRIBE and reads its answer: the handling grows the read
	// goroutine's stack, and an idle connection must not keep what it grew to.
	readers := make([]*bufio.Reader, len(conns))
	for i, c := range conns {
		f := hotFrames(1, 10, fmt.Sprintf(`{"topic":"dashboards.stack.%d"}`, i%10))[0]
		readers[i] = bufio.NewReaderSize(c, 512)
		hc := &hotConn{c: c, r: readers[i]}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		hc.roundTrip(b, f)
		_ = c.SetDeadline(time.Time{})
	}
	// A pong each, as a client answers the keepalive's ping: after it, a read loop whose
	// stack grew goes on on a fresh one.
	pong := []byte{0x8a, 0x80, 0, 0, 0, 0}
	for _, c := range conns {
		if _, err := c.Write(pong); err != nil {
			b.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	stackSub, gSub := stacks()
	b.ReportMetric(float64(gSub-gBefore)/n, "goroutines/conn-subscribed")
	b.ReportMetric(float64(int64(stackSub)-int64(stackBefore))/n, "stack-B/conn-subscribed")
}
