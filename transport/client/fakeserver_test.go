package client

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lxzan/gws"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protowire"
)

// The client's own tests run against fakeServer, a gws WebSocket server in the test that plays
// the server's part of the wire contract as each test scripts it (answers out of order, closes
// with a given code, refuses handshakes). The end-to-end tests against real Switchboard nodes
// are in cmd/switchboard/client_e2e_test.go.

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeReq is a request as the fake server read it.
type fakeReq struct {
	PkgID int             `json:"pkg_id"`
	ReqID string          `json:"req_id"`
	Data  json.RawMessage `json:"data"`
}

// fakeServer upgrades every request to /web (unless refuse says otherwise) and hands each
// request frame to onRequest, on that connection's read goroutine.
type fakeServer struct {
	t   testing.TB
	srv *httptest.Server
	up  *gws.Upgrader

	mu        sync.Mutex
	conns     []*fakeConn
	tokens    []string // the bearer token of every handshake, in order
	refuse    func(r *http.Request) (status int, body string)
	onRequest func(fc *fakeConn, r fakeReq)
	onOpen    func(fc *fakeConn)
	silent    bool         // answer no pings
	pings     atomic.Int32 // pings received from clients
	wg        sync.WaitGroup
}

// fakeConn is one server-side connection.
type fakeConn struct {
	s      *fakeServer
	ws     *gws.Conn
	format Format
	closed chan struct{}
}

func newFakeServer(t testing.TB) *fakeServer {
	s := &fakeServer{t: t}
	s.up = gws.NewUpgrader(fakeEvents{s}, &gws.ServerOption{})
	s.srv = httptest.NewServer(http.HandlerFunc(s.serveHTTP))
	t.Cleanup(s.close)
	return s
}

func (s *fakeServer) url() string { return "ws" + strings.TrimPrefix(s.srv.URL, "http") + "/web" }

func (s *fakeServer) serveHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.tokens = append(s.tokens, strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
	refuse := s.refuse
	s.mu.Unlock()
	if refuse != nil {
		if status, body := refuse(r); status != 0 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, _ = w.Write([]byte(body))
			return
		}
	}
	ws, err := s.up.Upgrade(w, r)
	if err != nil {
		return
	}
	fc := &fakeConn{s: s, ws: ws, closed: make(chan struct{})}
	if r.URL.Query().Get("format") == "protobuf" {
		fc.format = Protobuf
	}
	ws.Session().Store("fc", fc)
	s.mu.Lock()
	s.conns = append(s.conns, fc)
	onOpen := s.onOpen
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ws.ReadLoop()
	}()
	if onOpen != nil {
		onOpen(fc)
	}
}

func (s *fakeServer) close() {
	s.srv.Close()
	s.mu.Lock()
	for _, fc := range s.conns {
		_ = fc.ws.NetConn().Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *fakeServer) set(f func(s *fakeServer)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

// hold refuses handshakes (503) until release is called, so a test can change what the client
// will find before it reconnects.
func (s *fakeServer) hold() (release func()) {
	s.set(func(s *fakeServer) {
		s.refuse = func(*http.Request) (int, string) { return 503, `{"detail":"held"}` }
	})
	return func() { s.set(func(s *fakeServer) { s.refuse = nil }) }
}

func (s *fakeServer) connCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *fakeServer) conn(i int) *fakeConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[i]
}

func (s *fakeServer) tokenList() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.tokens...)
}

type fakeEvents struct{ s *fakeServer }

func fcOf(ws *gws.Conn) *fakeConn {
	v, _ := ws.Session().Load("fc")
	return v.(*fakeConn)
}

func (fakeEvents) OnOpen(*gws.Conn)              {}
func (fakeEvents) OnClose(ws *gws.Conn, _ error) { close(fcOf(ws).closed) }
func (e fakeEvents) OnPing(ws *gws.Conn, p []byte) {
	e.s.pings.Add(1)
	e.s.mu.Lock()
	silent := e.s.silent
	e.s.mu.Unlock()
	if !silent {
		_ = ws.WritePong(p)
	}
}
func (fakeEvents) OnPong(ws *gws.Conn, p []byte) {
	if v, ok := ws.Session().Load("pong"); ok && string(p) == "p1" {
		select {
		case v.(chan struct{}) <- struct{}{}:
		default:
		}
	}
}
func (e fakeEvents) OnMessage(ws *gws.Conn, m *gws.Message) {
	defer func() { _ = m.Close() }()
	fc := fcOf(ws)
	var r fakeReq
	if fc.format == Protobuf {
		r = decodeProtoRequest(e.s.t, m.Bytes())
	} else if err := json.Unmarshal(m.Bytes(), &r); err != nil {
		e.s.t.Errorf("fake server: request is not JSON: %v: %s", err, m.Bytes())
		return
	}
	e.s.mu.Lock()
	h := e.s.onRequest
	e.s.mu.Unlock()
	if h != nil {
		h(fc, r)
	}
}

func decodeProtoRequest(t testing.TB, b []byte) fakeReq {
	var r fakeReq
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Errorf("fake server: bad protobuf tag")
			return r
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.VarintType:
			v, n2 := protowire.ConsumeVarint(b)
			r.PkgID, n = int(int32(v)), n2
		case num == 2 && typ == protowire.BytesType:
			v, n2 := protowire.ConsumeBytes(b)
			r.ReqID, n = string(v), n2
		case num == 3 && typ == protowire.BytesType:
			v, n2 := protowire.ConsumeBytes(b)
			r.Data, n = append(json.RawMessage(nil), v...), n2
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			t.Errorf("fake server: bad protobuf field %d", num)
			return r
		}
		b = b[n:]
	}
	return r
}

// send writes a frame in the connection's format. Fields: status < 0 means a broadcast.
func (fc *fakeConn) send(f frame) {
	var b []byte
	op := gws.OpcodeText
	if fc.format == Protobuf {
		op = gws.OpcodeBinary
		b = protowire.AppendTag(b, pbPkgID, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(f.PkgID))
		b = protowire.AppendTag(b, pbReqID, protowire.BytesType)
		b = protowire.AppendString(b, f.ReqID)
		b = protowire.AppendTag(b, pbData, protowire.BytesType)
		b = protowire.AppendBytes(b, f.Data)
		if f.HasStatus {
			b = protowire.AppendTag(b, pbStatusCode, protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(f.Status))
		}
		if f.Msg != "" {
			b = protowire.AppendTag(b, pbMsg, protowire.BytesType)
			b = protowire.AppendString(b, f.Msg)
		}
		if f.Topic != "" {
			b = protowire.AppendTag(b, pbTopic, protowire.BytesType)
			b = protowire.AppendString(b, f.Topic)
		}
		if f.Seq != 0 {
			b = protowire.AppendTag(b, pbSeq, protowire.VarintType)
			b = protowire.AppendVarint(b, f.Seq)
		}
		if f.Epoch != "" {
			b = protowire.AppendTag(b, pbEpoch, protowire.BytesType)
			b = protowire.AppendString(b, f.Epoch)
		}
	} else {
		m := map[string]any{"pkg_id": f.PkgID, "req_id": f.ReqID, "data": f.Data}
		if f.HasStatus {
			m["status_code"] = f.Status
			m["msg"] = nil
			if f.Msg != "" {
				m["msg"] = f.Msg
			}
		}
		if f.Topic != "" {
			m["topic"] = f.Topic
		}
		if f.Seq != 0 {
			m["seq"] = f.Seq
		}
		if f.Epoch != "" {
			m["epoch"] = f.Epoch
		}
		b, _ = json.Marshal(m)
	}
	if err := fc.ws.WriteMessage(op, b); err != nil && !errors.Is(err, gws.ErrConnClosed) {
		fc.s.t.Logf("fake server write: %v", err)
	}
}

// answer answers r with status and data (marshalled).
func (fc *fakeConn) answer(r fakeReq, status int, data any, msg string) {
	b, _ := json.Marshal(data)
	fc.send(frame{PkgID: r.PkgID, ReqID: r.ReqID, HasStatus: true, Status: status, Data: b, Msg: msg})
}

// publish sends a topic broadcast.
func (fc *fakeConn) publish(topic string, seq uint64, epoch string, data any) {
	b, _ := json.Marshal(data)
	fc.send(frame{PkgID: 7, ReqID: zeroUUID, Data: b, Topic: topic, Seq: seq, Epoch: epoch})
}

// closeWith closes the connection with a close frame.
func (fc *fakeConn) closeWith(code uint16, reason string) { _ = fc.ws.WriteClose(code, []byte(reason)) }

// eventually polls cond every 5ms until it holds, failing the test after a generous bound that
// only catches hangs.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testConfig is a client configuration for the fake server with fast reconnects.
func testConfig(s *fakeServer) Config {
	return Config{
		URL: s.url(), Token: "tok-1",
		ReconnectMin: time.Millisecond, ReconnectMax: 20 * time.Millisecond, ConnLimitDelay: 10 * time.Millisecond,
		RequestTimeout: 5 * time.Second,
	}
}

// subscribeAnswer is the data of a SUBSCRIBE answer.
func subscribeAnswer(topic string, seq uint64, epoch string, recovered bool) map[string]any {
	return map[string]any{"topic": topic, "seq": seq, "epoch": epoch, "recovered": recovered}
}

// subReq reads a SUBSCRIBE request's data.
type subReq struct {
	Topic string  `json:"topic"`
	Since *uint64 `json:"since"`
	Epoch *string `json:"epoch"`
}

func readSub(t testing.TB, r fakeReq) subReq {
	var d subReq
	if err := json.Unmarshal(r.Data, &d); err != nil {
		t.Errorf("SUBSCRIBE data %s: %v", r.Data, err)
	}
	return d
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
