package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"switchboard/config"
	"switchboard/hub"
	"switchboard/store/storetest"
)

// BenchmarkHotPaths runs fixed workloads against one in-process node on the embedded default
// (SQLite, in-process limits and bus) with raw-socket clients on the benchmark's own goroutine
// (no client goroutines, pre-built masked frames), one op at a time:
//
//	connect          one WebSocket handshake (token verified from the cache), left open
//	connect+subscribe  a handshake and SUBSCRIBE dashboards.hot (no since), its answer read
//	subscribe        SUBSCRIBE on an open connection that has sent nothing yet
//	resubscribe      SUBSCRIBE with since and epoch current (a client back after a restart)
//	control          UNSUBSCRIBE of a topic the connection does not hold (no database)
//	request          GET_AUTHORS of 5 rows (SQLite)
//	http-request     GET /authors?name=hot- (the same 5 rows) on a keep-alive HTTP connection
//	broadcast        Hub.Broadcast to the 100 subscribers of a topic with history; every
//	                 subscriber reads it
//
// Its purpose is cmd/switchboard/callgrind.sh: the workloads sit between calls of
// callgrindZero and callgrindDump, so `valgrind --tool=callgrind --zero-before=…
// --dump-before=…` counts the instructions of the ops alone (server and client, every thread),
// a figure that does not move with the machine's load as wall-clock time does. Background work
// that runs by the clock is taken out of the node first (the sys.stats publisher stopped, the
// keepalive an hour apart). Without valgrind it is an ordinary benchmark.
//
// With HOTPATHS_DB=postgres the node runs on a fresh PostgreSQL database (storetest) instead of
// SQLite: the database's own work is then in another process, so the requests' counts are the
// server's alone, as in the load tool's rpc runs.
func BenchmarkHotPaths(b *testing.B) {
	b.Setenv("GODEBUG", strings.TrimPrefix(os.Getenv("GODEBUG")+",adaptivestackstart=0", ","))
	dbURL := ""
	if os.Getenv("HOTPATHS_DB") == "postgres" {
		dbURL = storetest.PostgresURL(b)
	}
	s := startServer(b, func(c *config.Config) {
		c.DatabaseURL = dbURL
		c.WSMaxConnsPerUser, c.RateLimitPerMinute, c.WSMessageRateLimit = 1_000_000, 100_000_000, 100_000_000
		c.WSPingInterval = time.Hour
		// Audit batches are written when full (every 200 entries), never by the clock; the
		// outbox relay reads the table when woken (the setup's writes), not every 2 s (under
		// valgrind its polls and lag queries were 7 % of a SUBSCRIBE's count).
		c.AuditFlush = time.Hour
		c.OutboxPoll = time.Hour
		c.MaxPreAuthConnsIP = 1_000_000
	})
	s.app.stats.Stop()
	tok := s.token(b, "hot-paths", "get-authors", "create-author")
	host := strings.TrimPrefix(s.base, "http://")
	admin := hotDial(b, host, tok)
	for i := range 5 {
		admin.call(b, 3, fmt.Sprintf(`{"name":"hot-%d"}`, i))
	}
	// The topics' streams exist before anything is measured.
	publish := func(topic string, n int) {
		for i := range n {
			if _, err := s.app.hub.Broadcast(context.Background(), &hub.Message{PkgID: 1, Topic: topic, Data: []byte(fmt.Sprintf(`{"n":%d}`, i))}); err != nil {
				b.Fatal(err)
			}
		}
	}
	publish("dashboards.hot", 3)
	latest := admin.call(b, 10, `{"topic":"dashboards.hot"}`)
	var stream struct {
		Seq   uint64 `json:"seq"`
		Epoch string `json:"epoch"`
	}
	hotData(b, latest, &stream)

	b.Run("connect", func(b *testing.B) {
		conns := make([]*hotConn, 0, b.N)
		defer hotCloseAll(conns)
		callgrindZero()
		for range b.N {
			conns = append(conns, hotDial(b, host, tok))
		}
		callgrindDump()
	})
	b.Run("connect+subscribe", func(b *testing.B) {
		conns := make([]*hotConn, 0, b.N)
		defer hotCloseAll(conns)
		frames := hotFrames(b.N, 10, `{"topic":"dashboards.hot"}`)
		callgrindZero()
		for i := range b.N {
			c := hotDial(b, host, tok)
			conns = append(conns, c)
			c.roundTrip(b, frames[i])
		}
		callgrindDump()
	})
	b.Run("subscribe", func(b *testing.B) {
		conns := hotDialN(b, host, tok, b.N)
		defer hotCloseAll(conns)
		frames := hotFrames(b.N, 10, `{"topic":"dashboards.hot"}`)
		callgrindZero()
		for i, c := range conns {
			c.roundTrip(b, frames[i])
		}
		callgrindDump()
	})
	b.Run("resubscribe", func(b *testing.B) {
		conns := hotDialN(b, host, tok, b.N)
		defer hotCloseAll(conns)
		frames := hotFrames(b.N, 10, fmt.Sprintf(`{"topic":"dashboards.hot","since":%d,"epoch":%q}`, stream.Seq, stream.Epoch))
		callgrindZero()
		for i, c := range conns {
			c.roundTrip(b, frames[i])
		}
		callgrindDump()
	})
	b.Run("control", func(b *testing.B) {
		frames := hotFrames(b.N, 11, `{"topic":"dashboards.none"}`)
		callgrindZero()
		for _, f := range frames {
			admin.roundTrip(b, f)
		}
		callgrindDump()
	})
	b.Run("request", func(b *testing.B) {
		frames := hotFrames(b.N, 1, `{"filters":{"name":"hot-"}}`)
		callgrindZero()
		for _, f := range frames {
			admin.roundTrip(b, f)
		}
		callgrindDump()
	})
	b.Run("http-request", func(b *testing.B) {
		c, err := net.DialTimeout("tcp", host, 10*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Minute))
		get := []byte("GET /authors?name=hot- HTTP/1.1\r\nHost: " + host + "\r\nAuthorization: Bearer " + tok + "\r\n\r\n")
		r := bufio.NewReaderSize(c, 4096)
		body := make([]byte, 0, 4096)
		call := func() {
			if _, err := c.Write(get); err != nil {
				b.Fatal(err)
			}
			resp, err := http.ReadResponse(r, nil)
			if err != nil {
				b.Fatal(err)
			}
			body, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"hot-4"`)) {
				b.Fatalf("GET /authors: %d %s %v", resp.StatusCode, body, err)
			}
		}
		call() // the connection is accepted and its pre-auth slot freed before anything is counted
		callgrindZero()
		for range b.N {
			call()
		}
		callgrindDump()
	})
	b.Run("broadcast", func(b *testing.B) {
		const subscribers = 100
		conns := hotDialN(b, host, tok, subscribers)
		defer hotCloseAll(conns)
		for _, c := range conns {
			c.roundTrip(b, hotFrames(1, 10, `{"topic":"dashboards.hot.fan"}`)[0])
		}
		msgs := make([]*hub.Message, b.N)
		for i := range msgs {
			msgs[i] = &hub.Message{PkgID: 1, Topic: "dashboards.hot.fan", Data: []byte(fmt.Sprintf(`{"n":%d,"pad":"0123456789012345678901234567890123456789012345678901234567890123456789"}`, i))}
		}
		callgrindZero()
		for _, m := range msgs {
			if _, err := s.app.hub.Broadcast(context.Background(), m); err != nil {
				b.Fatal(err)
			}
			for _, c := range conns {
				c.frame(b)
			}
		}
		callgrindDump()
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*subscribers), "ns/delivery")
	})
}

// callgrindZero and callgrindDump mark where a measured workload starts and ends: callgrind.sh
// runs valgrind with --zero-before and --dump-before on them. They must stay out of line.
//
//go:noinline
func callgrindZero() { callgrindMarks++ }

//go:noinline
func callgrindDump() { callgrindMarks++ }

var callgrindMarks int

// hotConn is a raw client socket after its upgrade: frames are written masked with a zero key
// (so the payload goes as is) and read on the caller's goroutine.
type hotConn struct {
	c net.Conn
	r *bufio.Reader
}

func hotDial(t testing.TB, host, token string) *hotConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", host, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	req := "GET /web HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
		"Authorization: Bearer " + token + "\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReaderSize(c, 4096)
	resp, err := http.ReadResponse(r, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	return &hotConn{c: c, r: r}
}

func hotDialN(t testing.TB, host, token string, n int) []*hotConn {
	conns := make([]*hotConn, n)
	for i := range conns {
		conns[i] = hotDial(t, host, token)
	}
	return conns
}

func hotCloseAll(conns []*hotConn) {
	for _, c := range conns {
		if c != nil {
			_ = c.c.Close()
		}
	}
}

// hotFrame is a masked text frame of one request and the req_id its answer carries.
type hotFrame struct {
	wire []byte
	id   []byte
}

func hotFrames(n, pkgID int, data string) []hotFrame {
	out := make([]hotFrame, n)
	for i := range out {
		id := uuid.NewString()
		p := fmt.Sprintf(`{"pkg_id":%d,"req_id":%q,"data":%s}`, pkgID, id, data)
		var h []byte
		switch {
		case len(p) < 126:
			h = []byte{0x81, 0x80 | byte(len(p))}
		default:
			h = []byte{0x81, 0x80 | 126, byte(len(p) >> 8), byte(len(p))}
		}
		h = append(h, 0, 0, 0, 0) // the mask key: zero, so the payload is sent unchanged
		out[i] = hotFrame{wire: append(h, p...), id: []byte(`"req_id":"` + id + `"`)}
	}
	return out
}

// roundTrip sends f and reads frames until its answer.
func (c *hotConn) roundTrip(t testing.TB, f hotFrame) []byte {
	t.Helper()
	if _, err := c.c.Write(f.wire); err != nil {
		t.Fatal(err)
	}
	for {
		p := c.frame(t)
		if bytes.Contains(p, f.id) {
			return p
		}
	}
}

// call sends one request built from pkgID and data and returns its answer.
func (c *hotConn) call(t testing.TB, pkgID int, data string) []byte {
	t.Helper()
	p := c.roundTrip(t, hotFrames(1, pkgID, data)[0])
	if !bytes.Contains(p, []byte(`"status_code":0`)) {
		t.Fatalf("answer %s", p)
	}
	return p
}

// frame reads one data frame's payload (the server's frames are unmasked and unfragmented);
// control frames are skipped.
func (c *hotConn) frame(t testing.TB) []byte {
	t.Helper()
	for {
		var h [2]byte
		if _, err := io.ReadFull(c.r, h[:]); err != nil {
			t.Fatal(err)
		}
		n := uint64(h[1] & 0x7f)
		switch n {
		case 126:
			var l [2]byte
			if _, err := io.ReadFull(c.r, l[:]); err != nil {
				t.Fatal(err)
			}
			n = uint64(binary.BigEndian.Uint16(l[:]))
		case 127:
			var l [8]byte
			if _, err := io.ReadFull(c.r, l[:]); err != nil {
				t.Fatal(err)
			}
			n = binary.BigEndian.Uint64(l[:])
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(c.r, p); err != nil {
			t.Fatal(err)
		}
		switch op := h[0] & 0x0f; op {
		case 0x1, 0x2:
			return p
		case 0x8:
			t.Fatal(errors.New("closed by the server: " + string(p)))
		}
	}
}

// hotData decodes the data member of an answer.
func hotData(t testing.TB, answer []byte, v any) {
	t.Helper()
	var e envelope
	if err := json.Unmarshal(answer, &e); err != nil {
		t.Fatal(err)
	}
	decodeData(t, e, v)
}
