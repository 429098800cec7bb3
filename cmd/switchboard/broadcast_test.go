package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"switchboard/config"
)

const bcZeroReqID = "00000000-0000-0000-0000-000000000000"

// broadcastOK posts one broadcast body as given and fails the test unless it is accepted; for
// bodies whose bytes matter (at the size limit). Other producers use s.publisher.
func (s *testServer) broadcastOK(t testing.TB, token, body string) {
	t.Helper()
	resp, b := s.do(t, http.MethodPost, "/api/broadcast", token, body)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /api/broadcast: %d %s", resp.StatusCode, b)
	}
}

// waitHubActive waits until the hub has exactly n registered connections (registration happens on
// the socket's read goroutine, shortly after the upgrade).
func (s *testServer) waitHubActive(t testing.TB, n int) {
	t.Helper()
	eventually(t, 30*time.Second, fmt.Sprintf("%d active connections (have %d)", n, s.app.hub.Active()), func() bool {
		return s.app.hub.Active() == n
	})
}

// scrapeMetric scrapes GET /metrics and returns the value of the sample line name, or "".
func (s *testServer) scrapeMetric(t testing.TB, name string) string {
	t.Helper()
	resp, b := s.do(t, http.MethodGet, "/metrics", "", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d", resp.StatusCode)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}

// seqCheckingClient is a light gws client for the many-connections test (a thousand sockets, and
// it checks the broadcast frame's wire fields): instead of queueing frames
// it checks each broadcast as it arrives (zero req_id, no status_code, the expected pkg_id and
// data.seq one more than the last) and keeps a count and the first problem.
type seqCheckingClient struct {
	pkgID  int
	conn   *gws.Conn
	n      atomic.Int64
	closed chan struct{}

	mu  sync.Mutex
	err error
}

func (r *seqCheckingClient) fail(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = fmt.Errorf(format, args...)
	}
}

func (r *seqCheckingClient) problem() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

func (r *seqCheckingClient) OnOpen(*gws.Conn)             {}
func (r *seqCheckingClient) OnPing(c *gws.Conn, p []byte) { _ = c.WritePong(p) }
func (r *seqCheckingClient) OnPong(*gws.Conn, []byte)     {}
func (r *seqCheckingClient) OnClose(*gws.Conn, error)     { close(r.closed) }
func (r *seqCheckingClient) OnMessage(_ *gws.Conn, m *gws.Message) {
	defer m.Close()
	var e struct {
		envelope
		Data struct {
			Seq *int `json:"seq"`
		} `json:"data"`
	}
	if err := json.Unmarshal(m.Bytes(), &e); err != nil {
		r.fail("frame is not an envelope: %v: %s", err, m.Bytes())
		return
	}
	want := int(r.n.Load())
	switch {
	case e.ReqID != bcZeroReqID:
		r.fail("broadcast req_id = %q, want the zero UUID", e.ReqID)
	case e.StatusCode != nil:
		r.fail("broadcast carries status_code %d", *e.StatusCode)
	case e.PkgID != r.pkgID:
		r.fail("pkg_id = %d, want %d", e.PkgID, r.pkgID)
	case e.Data.Seq == nil || *e.Data.Seq != want:
		r.fail("frame %d has seq %v: %s", want, e.Data.Seq, m.Bytes())
	}
	r.n.Add(1)
}

func TestBroadcastReachesThousandConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("1 000 WebSockets: skipped with -short")
	}
	s := startServer(t, nil)
	const (
		clients  = 1000
		parallel = 50
		perUser  = 4 // below the default per-user connection limit of 5
		messages = 20
		pkgID    = 77
	)
	tokens := make([]string, clients/perUser)
	for i := range tokens {
		tokens[i] = s.token(t, fmt.Sprintf("listener-%03d", i))
	}

	recs := make([]*seqCheckingClient, clients)
	var (
		wg      sync.WaitGroup
		sem     = make(chan struct{}, parallel)
		errMu   sync.Mutex
		dialErr error
	)
	for i := range recs {
		recs[i] = &seqCheckingClient{pkgID: pkgID, closed: make(chan struct{})}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			r := recs[i]
			conn, _, err := gws.NewClient(r, &gws.ClientOption{
				Addr:             s.wsURL("token=" + tokens[i/perUser]),
				HandshakeTimeout: 30 * time.Second,
			})
			if err != nil {
				errMu.Lock()
				dialErr = errors.Join(dialErr, fmt.Errorf("client %d: %w", i, err))
				errMu.Unlock()
				return
			}
			r.conn = conn
			go conn.ReadLoop()
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, r := range recs {
			if r.conn != nil {
				_ = r.conn.WriteClose(1000, nil)
			}
		}
		deadline := time.After(30 * time.Second)
		for _, r := range recs {
			if r.conn == nil {
				continue
			}
			select {
			case <-r.closed:
			case <-deadline:
				t.Errorf("clients did not close within 30s")
				return
			}
		}
	})
	if dialErr != nil {
		t.Fatalf("dials failed: %v", dialErr)
	}
	s.waitHubActive(t, clients)

	broadcaster := s.publisher(t, s.token(t, "producer", "broadcast"))
	for i := range messages {
		mustPublish(t, broadcaster, "", pkgID, map[string]any{"seq": i, "text": fmt.Sprintf("tick %d", i)})
	}
	// One more as a fence: once it has arrived everywhere, a duplicate of the 20 would have too
	// (and broken the order check).
	mustPublish(t, broadcaster, "", pkgID, map[string]any{"seq": messages})
	eventually(t, 60*time.Second, "every client to receive every broadcast", func() bool {
		for _, r := range recs {
			if r.n.Load() < messages+1 {
				return false
			}
		}
		return true
	})
	for i, r := range recs {
		if err := r.problem(); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		if n := r.n.Load(); n != messages+1 {
			t.Fatalf("client %d received %d frames, want %d", i, n, messages+1)
		}
		select {
		case <-r.closed:
			t.Fatalf("client %d was disconnected", i)
		default:
		}
	}
	if got := s.scrapeMetric(t, "ws_broadcasts_total"); got != strconv.Itoa(messages+1) {
		t.Errorf("ws_broadcasts_total = %q, want %d", got, messages+1)
	}
	if got := s.scrapeMetric(t, "ws_slow_consumer_disconnects_total"); got != "0" {
		t.Errorf("ws_slow_consumer_disconnects_total = %q, want 0", got)
	}
}

// rawWSConn is a WebSocket client made by hand on a TCP connection: after the handshake it reads
// nothing unless the test says so, which is what a stalled consumer looks like to the server.
type rawWSConn struct {
	conn net.Conn
	br   *bufio.Reader
}

// rawWSDial performs the opening handshake for /web with token on a TCP connection. It returns
// the handshake's HTTP response when the server did not switch protocols.
//
// The receive buffer keeps its default size on purpose. A 4 KiB buffer (SO_RCVBUF, smaller than
// one loopback segment) does not make the stall come sooner (the server's autotuned send buffer,
// up to 4 MiB, dominates either way), but once the server has closed, its orphaned socket then
// moves the MiBs left in its send buffer only on zero-window probes, a few KiB each, so the
// final EOF takes minutes instead of milliseconds.
func (s *testServer) rawWSDial(t testing.TB, token string) (*rawWSConn, *http.Response, error) {
	t.Helper()
	host := strings.TrimPrefix(s.base, "http://")
	conn, err := net.DialTimeout("tcp", host, 10*time.Second)
	if err != nil {
		return nil, nil, err
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	req := "GET /web?token=" + token + " HTTP/1.1\r\n" +
		"Host: " + host + "\r\n" +
		"Upgrade: websocket\r\n" +
		"Connection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
		"Sec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(conn, 4096)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, resp, fmt.Errorf("handshake answered %s", resp.Status)
	}
	// RFC 6455 §1.3's own example key and answer.
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		return nil, resp, fmt.Errorf("Sec-WebSocket-Accept = %q", got)
	}
	return &rawWSConn{conn: conn, br: br}, resp, nil
}

// drainUntilGone reads and discards until the server's side is gone (EOF or reset), failing
// after d.
func (r *rawWSConn) drainUntilGone(t testing.TB, d time.Duration) error {
	t.Helper()
	// The server may have closed with MiBs still in its send buffer; they arrive before the FIN.
	_ = r.conn.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, r.br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server kept the connection open for %s: %v", d, err)
	}
	return err // nil (EOF) or a reset
}

func TestSlowConsumerIsDisconnectedOthersKeepReceiving(t *testing.T) {
	s := startServer(t, func(c *config.Config) {
		c.WSSendQueueBytes = 64 << 10
		// Hundreds of broadcasts from one producer: keep the HTTP rate limit out of the way.
		c.RateLimitPerMinute = 1_000_000
	})
	healthy := []*testClient{
		s.connect(t, s.token(t, "healthy-1")),
		s.connect(t, s.token(t, "healthy-2")),
	}
	slow, _, err := s.rawWSDial(t, s.token(t, "slow"))
	if err != nil {
		t.Fatalf("raw dial: %v", err)
	}
	s.waitHubActive(t, 3)

	broadcaster := s.publisher(t, s.token(t, "producer", "broadcast"))
	pad := strings.Repeat("x", 16<<10)
	seq := 0
	send := func() {
		t.Helper()
		mustPublish(t, broadcaster, "", 9, map[string]any{"seq": seq, "pad": pad})
		// Lock-step with the healthy clients: each gets every frame before the next is sent,
		// so only a consumer that does not read can fall behind.
		for i, c := range healthy {
			e := c.next(30 * time.Second)
			var d struct {
				Seq int `json:"seq"`
			}
			decodeMsg(t, e, &d)
			if e.PkgID != 9 || e.Topic != "" || d.Seq != seq {
				t.Fatalf("healthy client %d: frame %d is pkg_id %d topic %q seq %d", i, seq, e.PkgID, e.Topic, d.Seq)
			}
		}
		seq++
	}
	// The stalled socket absorbs its receive buffer, the server's send buffer (autotuned, a few
	// MiB on loopback) and then the 64 KiB budget; 2 000 frames of 16 KiB is far beyond that.
	for s.app.hub.Active() == 3 {
		if seq == 2000 {
			t.Fatalf("the stalled consumer was not disconnected after %d broadcasts of 16 KiB", seq)
		}
		send()
	}
	t.Logf("stalled consumer dropped after %d broadcasts", seq)
	// The others keep receiving everything, in order.
	for range 10 {
		send()
	}
	for i, c := range healthy {
		if n := c.c.Stats().Disconnects; n != 0 {
			t.Fatalf("healthy client %d was disconnected %d times", i, n)
		}
	}
	if got := s.scrapeMetric(t, "ws_slow_consumer_disconnects_total"); got != "1" {
		t.Fatalf("ws_slow_consumer_disconnects_total = %q, want 1", got)
	}
	// The server gives up on the socket: once the test reads what was buffered, it ends.
	if err := slow.drainUntilGone(t, 30*time.Second); err != nil && !errors.Is(err, io.EOF) && !isConnReset(err) {
		t.Fatalf("stalled connection ended with %v, want EOF or a reset", err)
	}
	eventually(t, 30*time.Second, "the hub to forget the slow consumer", func() bool { return s.app.hub.Active() == 2 })
}

func isConnReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// TestSlowConsumerGetsCloseFrame covers the other half of docs/protocol.md §1.3: when the close frame
// can still be written, a slow consumer gets 1013 "slow consumer". The consumer stalls until the
// server gives up on it and then reads again at once, within the server's close grace (1 s), so
// the writer gets through what it had in flight and then the close frame.
func TestSlowConsumerGetsCloseFrame(t *testing.T) {
	s := startServer(t, func(c *config.Config) {
		c.WSSendQueueBytes = 64 << 10
		c.RateLimitPerMinute = 1_000_000
	})
	slow, _, err := s.rawWSDial(t, s.token(t, "slow"))
	if err != nil {
		t.Fatalf("raw dial: %v", err)
	}
	s.waitHubActive(t, 1)
	producer := s.publisher(t, s.token(t, "producer", "broadcast"))
	pad := strings.Repeat("x", 16<<10)
	sent := 0
	for s.app.hub.Active() == 1 {
		if sent == 2000 {
			t.Fatalf("the stalled consumer was not disconnected after %d broadcasts of 16 KiB", sent)
		}
		mustPublish(t, producer, "", 9, map[string]any{"seq": sent, "pad": pad})
		sent++
	}
	// Read everything to memory first and parse after: only the start of reading is timed by the
	// server (its stalled write must finish within the close grace), so start it at once.
	dropped := time.Now()
	_ = slow.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	var stream bytes.Buffer
	if _, err := io.Copy(&stream, slow.br); err != nil && !isConnReset(err) {
		t.Fatalf("read the stalled connection: %v", err)
	}
	readFor, total := time.Since(dropped), stream.Len()
	frames, seq := 0, 0
	for {
		op, payload, err := readFrame(&stream)
		if err != nil {
			t.Fatalf("after %d frames: %v (no close frame)", frames, err)
		}
		frames++
		if op == 0x8 {
			if len(payload) < 2 {
				t.Fatalf("close frame without a code")
			}
			code, reason := int(payload[0])<<8|int(payload[1]), string(payload[2:])
			if code != 1013 || reason != "slow consumer" {
				t.Fatalf("close %d %q, want 1013 %q", code, reason, "slow consumer")
			}
			break
		}
		if op != 0x1 {
			continue // a keepalive ping
		}
		var e struct {
			Data struct {
				Seq int `json:"seq"`
			} `json:"data"`
		}
		if err := json.Unmarshal(payload, &e); err != nil || e.Data.Seq != seq {
			t.Fatalf("frame %d: seq %d (%v), want %d", frames, e.Data.Seq, err, seq)
		}
		seq++
	}
	t.Logf("%d broadcasts sent, %d received in order before the close frame; the stream (%d bytes) ended %s after the drop",
		sent, seq, total, readFor.Round(time.Millisecond))
	if got := s.scrapeMetric(t, "ws_slow_consumer_disconnects_total"); got != "1" {
		t.Fatalf("ws_slow_consumer_disconnects_total = %q, want 1", got)
	}
}

// readFrame reads one unmasked server frame (no fragmentation: the server sends whole frames).
func readFrame(r io.Reader) (opcode byte, payload []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	if h[0]&0x80 == 0 || h[1]&0x80 != 0 {
		return 0, nil, fmt.Errorf("unexpected frame header % x", h)
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var ext [2]byte
		if _, err := io.ReadFull(r, ext[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(ext[0])<<8 | uint64(ext[1])
	case 127:
		var ext [8]byte
		if _, err := io.ReadFull(r, ext[:]); err != nil {
			return 0, nil, err
		}
		n = 0
		for _, b := range ext {
			n = n<<8 | uint64(b)
		}
	}
	if n > 16<<20 {
		return 0, nil, fmt.Errorf("frame of %d bytes", n)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, err
	}
	return h[0] & 0x0f, payload, nil
}

// doRequest sends a request built by the test (for bodies of unknown length) and returns the
// response and its body.
func doRequest(t testing.TB, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// unsizedReader hides a reader's length, so the HTTP client sends it chunked.
type unsizedReader struct{ io.Reader }

func TestBroadcastHTTPErrors(t *testing.T) {
	s := startServer(t, func(c *config.Config) { c.MaxRequestBytes = 4096 })
	listener := s.connect(t, s.token(t, "listener"))
	s.waitHubActive(t, 1)
	ok := s.token(t, "producer", "broadcast")
	noRole := s.token(t, "reader", "get-authors")
	big := `{"pkg_id":1,"data":{"pad":"` + strings.Repeat("z", 8192) + `"}}`

	type detail struct {
		Detail string `json:"detail"`
		Errors []struct {
			Path    string `json:"path"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	check := func(name string, resp *http.Response, body []byte, status int, wantDetail string) detail {
		t.Helper()
		if resp.StatusCode != status {
			t.Fatalf("%s: status %d %s, want %d", name, resp.StatusCode, body, status)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("%s: Content-Type %q, want JSON", name, ct)
		}
		var d detail
		if err := json.Unmarshal(body, &d); err != nil {
			t.Fatalf("%s: body %s: %v", name, body, err)
		}
		if wantDetail != "" && d.Detail != wantDetail {
			t.Errorf("%s: detail %q, want %q", name, d.Detail, wantDetail)
		}
		return d
	}

	resp, b := s.do(t, http.MethodPost, "/api/broadcast", "", `{"pkg_id":1,"data":{}}`)
	check("no token", resp, b, http.StatusUnauthorized, "")
	resp, b = s.do(t, http.MethodPost, "/api/broadcast", "not-a-jwt", `{"pkg_id":1,"data":{}}`)
	check("bad token", resp, b, http.StatusUnauthorized, "")
	resp, b = s.do(t, http.MethodPost, "/api/broadcast", noRole, `{"pkg_id":1,"data":{}}`)
	check("no role", resp, b, http.StatusForbidden, "Missing required roles: broadcast")

	for _, tc := range []struct{ name, body string }{
		{"missing pkg_id", `{"data":{}}`},
		{"data is an array", `{"pkg_id":1,"data":[1,2]}`},
		{"data is a string", `{"pkg_id":1,"data":"hello"}`},
		{"pkg_id is a string", `{"pkg_id":"1","data":{}}`},
		{"body is an array", `[{"pkg_id":1}]`},
		{"malformed JSON", `{"pkg_id":1,`},
		{"empty body", ``},
	} {
		resp, b := s.do(t, http.MethodPost, "/api/broadcast", ok, tc.body)
		d := check(tc.name, resp, b, http.StatusUnprocessableEntity, "Invalid data")
		if len(d.Errors) == 0 {
			t.Errorf("%s: 422 without errors: %s", tc.name, b)
		}
	}

	resp, b = s.do(t, http.MethodPost, "/api/broadcast", ok, big)
	check("too large (Content-Length)", resp, b, http.StatusRequestEntityTooLarge, "")

	req, err := http.NewRequest(http.MethodPost, s.base+"/api/broadcast", unsizedReader{strings.NewReader(big)})
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+ok)
	req.Header.Set("Content-Type", "application/json")
	// A body of unknown length (ContentLength 0, Body not nil) goes out chunked.
	if req.ContentLength != 0 {
		t.Fatalf("request would not be chunked (ContentLength %d)", req.ContentLength)
	}
	resp, b = doRequest(t, req)
	check("too large (chunked)", resp, b, http.StatusRequestEntityTooLarge, "")

	// A body right at the limit is fine.
	atLimit := `{"pkg_id":5,"data":{"pad":"`
	atLimit += strings.Repeat("a", int(s.cfg.MaxRequestBytes)-len(atLimit)-3) + `"}}`
	if len(atLimit) != int(s.cfg.MaxRequestBytes) {
		t.Fatalf("test body is %d bytes", len(atLimit))
	}
	resp, b = s.do(t, http.MethodPost, "/api/broadcast", ok, atLimit)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("body at the limit: %d %s", resp.StatusCode, b)
	}
	resp, b = s.do(t, http.MethodPost, "/api/broadcast", ok, `{"pkg_id":6,"data":{"hello":"world"}}`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("valid broadcast: %d %s", resp.StatusCode, b)
	}
	var accepted map[string]any
	if err := json.Unmarshal(b, &accepted); err != nil || len(accepted) != 1 || accepted["delivered_to_nodes"] != float64(1) {
		t.Fatalf("202 body = %s, want {\"delivered_to_nodes\":1}", b)
	}
	// Without data the broadcast carries an empty object.
	resp, b = s.do(t, http.MethodPost, "/api/broadcast", ok, `{"pkg_id":7}`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("broadcast without data: %d %s", resp.StatusCode, b)
	}

	// Only the three accepted broadcasts reached the listener, in order; none of the failures.
	e := listener.next(10 * time.Second)
	if e.PkgID != 5 {
		t.Fatalf("first frame pkg_id %d, want 5 (a rejected request was broadcast?)", e.PkgID)
	}
	e = listener.next(10 * time.Second)
	if e.PkgID != 6 || e.Topic != "" || string(e.Data) != `{"hello":"world"}` {
		t.Fatalf("second frame = %+v data %s", e, e.Data)
	}
	e = listener.next(10 * time.Second)
	if e.PkgID != 7 || string(e.Data) != `{}` {
		t.Fatalf("third frame = %+v data %s", e, e.Data)
	}
	listener.noMessage()
}

// TestBroadcastAtBodyLimitReachesIdleClients: with the default limits (1 MiB request body,
// 1 MiB send budget) the largest broadcast the API accepts is a frame slightly larger than the
// send budget (the envelope adds req_id and framing). An idle client with an empty queue is not
// a slow consumer and receives it. (Regression: every connection used to be closed with 1013.)
func TestBroadcastAtBodyLimitReachesIdleClients(t *testing.T) {
	s := startServer(t, nil) // defaults: MaxRequestBytes 1 MiB, WSSendQueueBytes 1 MiB
	c := s.connect(t, s.token(t, "idle"))
	s.waitHubActive(t, 1)
	body := `{"pkg_id":1,"data":{"pad":"`
	body += strings.Repeat("p", int(s.cfg.MaxRequestBytes)-len(body)-3) + `"}}`
	s.broadcastOK(t, s.token(t, "producer", "broadcast"), body)
	select {
	case m := <-c.msgs:
		if len(m.Data) < int(s.cfg.MaxRequestBytes)-64 {
			t.Fatalf("data of %d bytes", len(m.Data))
		}
	case d := <-c.disconnects:
		t.Fatalf("an idle client was closed with %d %q by one accepted broadcast", d.Code, d.Reason)
	case <-time.After(30 * time.Second):
		t.Fatalf("no frame within 30s")
	}
}
