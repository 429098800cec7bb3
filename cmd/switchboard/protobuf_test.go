package main

// End-to-end tests of format=protobuf connections (docs/protocol.md §1.1, §1.3; the frame is
// transport/switchboard.proto, the decisions docs/protocol.md §8). The client below reads and
// writes Frame with protowire on its own, so these tests do not share the server's codec (nor
// the Go client's: they check the bytes of both formats on the wire).

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/lxzan/gws"
	"google.golang.org/protobuf/encoding/protowire"

	"switchboard/config"
)

// pbFrame is one switchboard.v1.Frame; nil pointers are absent optional fields.
type pbFrame struct {
	PkgID  int32
	ReqID  string
	Data   []byte
	Status *int32
	Meta   []byte
	Msg    *string
	Topic  string
	Seq    uint64
	Epoch  string
}

// marshal encodes the request fields of f (pkg_id, req_id, data).
func (f pbFrame) marshal() []byte {
	var b []byte
	if f.PkgID != 0 {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(int64(f.PkgID)))
	}
	if f.ReqID != "" {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendString(b, f.ReqID)
	}
	if len(f.Data) > 0 {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendBytes(b, f.Data)
	}
	return b
}

// unmarshalFrame decodes a server frame strictly: every field of Frame with its wire type, nothing
// else.
func unmarshalFrame(b []byte) (pbFrame, error) {
	var f pbFrame
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return f, protowire.ParseError(n)
		}
		b = b[n:]
		want := protowire.BytesType
		if num == 1 || num == 4 || num == 8 {
			want = protowire.VarintType
		}
		if num < 1 || num > 9 || typ != want {
			return f, errors.New("unexpected field or wire type")
		}
		var v uint64
		var bs []byte
		if typ == protowire.VarintType {
			v, n = protowire.ConsumeVarint(b)
		} else {
			bs, n = protowire.ConsumeBytes(b)
		}
		if n < 0 {
			return f, protowire.ParseError(n)
		}
		b = b[n:]
		switch num {
		case 1:
			f.PkgID = int32(v)
		case 2:
			f.ReqID = string(bs)
		case 3:
			f.Data = append([]byte(nil), bs...)
		case 4:
			s := int32(v)
			f.Status = &s
		case 5:
			f.Meta = append([]byte(nil), bs...)
		case 6:
			s := string(bs)
			f.Msg = &s
		case 7:
			f.Topic = string(bs)
		case 8:
			f.Seq = v
		case 9:
			f.Epoch = string(bs)
		}
	}
	return f, nil
}

// envelope turns f into the harness's JSON envelope, so the JSON tests' checks apply.
func (f pbFrame) envelope() envelope {
	e := envelope{PkgID: int(f.PkgID), ReqID: f.ReqID, Data: f.Data, Msg: f.Msg, Topic: f.Topic, Seq: f.Seq, Epoch: f.Epoch}
	if f.Status != nil {
		s := int(*f.Status)
		e.StatusCode = &s
	}
	if len(f.Meta) > 0 {
		e.Meta = f.Meta
	}
	return e
}

type pbMessage struct {
	op gws.Opcode
	b  []byte
}

// pbClient is a test client of a format=protobuf connection.
type pbClient struct {
	t      testing.TB
	conn   *gws.Conn
	msgs   chan pbMessage
	closed chan struct{}

	mu        sync.Mutex
	closeCode uint16
	closeText string
}

func (s *testServer) dialProtobuf(t testing.TB, token string) *pbClient {
	t.Helper()
	c := &pbClient{t: t, msgs: make(chan pbMessage, 1024), closed: make(chan struct{})}
	conn, _, err := gws.NewClient(c, &gws.ClientOption{Addr: s.wsURL("format=protobuf&token=" + token), ReadMaxPayloadSize: 16 << 20})
	if err != nil {
		t.Fatalf("dial format=protobuf: %v", err)
	}
	c.conn = conn
	go conn.ReadLoop()
	t.Cleanup(func() {
		c.conn.WriteClose(1000, nil)
		select {
		case <-c.closed:
		case <-time.After(5 * time.Second):
		}
	})
	return c
}

func (c *pbClient) OnOpen(*gws.Conn)             {}
func (c *pbClient) OnPing(s *gws.Conn, p []byte) { _ = s.WritePong(p) }
func (c *pbClient) OnPong(*gws.Conn, []byte)     {}
func (c *pbClient) OnMessage(_ *gws.Conn, m *gws.Message) {
	b := append([]byte(nil), m.Bytes()...)
	op := m.Opcode
	m.Close()
	c.msgs <- pbMessage{op: op, b: b}
}
func (c *pbClient) OnClose(_ *gws.Conn, err error) {
	c.mu.Lock()
	var ce *gws.CloseError
	if errors.As(err, &ce) {
		c.closeCode, c.closeText = ce.Code, string(ce.Reason)
	}
	c.mu.Unlock()
	close(c.closed)
}

func (c *pbClient) closeStatus(d time.Duration) (uint16, string) {
	c.t.Helper()
	select {
	case <-c.closed:
	case <-time.After(d):
		c.t.Fatalf("connection not closed within %s", d)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeCode, c.closeText
}

// send writes raw bytes as one binary frame.
func (c *pbClient) send(b []byte) {
	c.t.Helper()
	if err := c.conn.WriteMessage(gws.OpcodeBinary, b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// next returns the next frame, which must be a binary Frame.
func (c *pbClient) next(d time.Duration) pbFrame {
	c.t.Helper()
	select {
	case m := <-c.msgs:
		if m.op != gws.OpcodeBinary {
			c.t.Fatalf("opcode %d frame on a protobuf connection: %q", m.op, m.b)
		}
		f, err := unmarshalFrame(m.b)
		if err != nil {
			c.t.Fatalf("frame is not a Frame: %v: %x", err, m.b)
		}
		return f
	case <-time.After(d):
		c.t.Fatalf("no frame within %s", d)
		return pbFrame{}
	}
}

// call sends a request with a fresh req_id and returns the response to it (skipping broadcasts).
func (c *pbClient) call(pkgID int32, data any) pbFrame {
	c.t.Helper()
	f := pbFrame{PkgID: pkgID, ReqID: uuid.NewString()}
	if data != nil {
		f.Data, _ = json.Marshal(data)
	}
	c.send(f.marshal())
	return c.answer(f.ReqID)
}

// answer waits for the response to reqID, skipping broadcasts.
func (c *pbClient) answer(reqID string) pbFrame {
	c.t.Helper()
	for {
		r := c.next(e2eWait)
		if r.Status == nil {
			continue
		}
		if r.ReqID != reqID {
			c.t.Fatalf("response for another request: %+v", r)
		}
		return r
	}
}

// broadcast waits for the next broadcast (no status_code), skipping responses.
func (c *pbClient) broadcast() pbFrame {
	c.t.Helper()
	for {
		if r := c.next(e2eWait); r.Status == nil {
			return r
		}
	}
}

func TestProtobufRequests(t *testing.T) {
	s := startServer(t, nil)
	c := s.dialProtobuf(t, s.token(t, "pb-user", "get-authors", "create-author"))

	created := c.call(3, map[string]any{"name": "Protobuf Ada"})
	expectStatus(t, created.envelope(), 0, "")
	var a authorRow
	decodeData(t, created.envelope(), &a)
	if a.ID <= 0 || a.Name != "Protobuf Ada" {
		t.Fatalf("create answered %s", created.Data)
	}

	// GET_AUTHORS: status 0 on the wire, data the JSON list, meta and msg absent (null).
	r := c.call(1, map[string]any{"filters": map[string]any{"name": "protobuf"}})
	if r.PkgID != 1 || r.Status == nil || *r.Status != 0 || r.Msg != nil || r.Meta != nil || r.Topic != "" || r.Seq != 0 {
		t.Fatalf("GET_AUTHORS answered %+v", r)
	}
	if got := decodeAuthors(t, r.envelope()); len(got) != 1 || got[0] != a {
		t.Fatalf("GET_AUTHORS data %s", r.Data)
	}
	// No data field at all is {}.
	if r := c.call(1, nil); len(decodeAuthors(t, r.envelope())) != 1 {
		t.Fatalf("GET_AUTHORS without data: %s", r.Data)
	}

	// Pagination meta is JSON in meta.
	r = c.call(2, map[string]any{"per_page": 1})
	expectStatus(t, r.envelope(), 0, "")
	expectMeta(t, r.envelope(), offsetMeta(1, 1, 1, 1, false))

	// The other status codes, with msg.
	expectStatus(t, c.call(99, nil).envelope(), 1, "Unknown pkg_id 99")
	expectStatus(t, c.call(20, nil).envelope(), 3, "Permission denied")
	expectFieldErrors(t, c.call(3, map[string]any{}).envelope())

	// Frames that do not decode are answered 2 in protobuf; the connection stays open.
	t.Run("invalid frames", func(t *testing.T) {
		id := uuid.NewString()
		c.send(pbFrame{PkgID: 1, ReqID: id, Data: []byte(`[1]`)}.marshal())
		r := c.answer(id)
		expectFieldErrors(t, r.envelope(), "/data")

		c.send(pbFrame{PkgID: 1, ReqID: "not-a-uuid"}.marshal())
		r = c.answer("not-a-uuid")
		expectFieldErrors(t, r.envelope(), "/req_id")

		c.send([]byte(`{"pkg_id":1,"req_id":"` + uuid.NewString() + `"}`)) // JSON in a binary frame
		r = c.answer(zeroReqID)
		expectFieldErrors(t, r.envelope(), "/")

		c.send([]byte{0x08, 0x80}) // truncated varint
		r = c.answer(zeroReqID)
		expectFieldErrors(t, r.envelope(), "/")

		// An unknown field is skipped.
		id = uuid.NewString()
		b := pbFrame{PkgID: 1, ReqID: id}.marshal()
		b = protowire.AppendTag(b, 99, protowire.BytesType)
		b = protowire.AppendString(b, "from a newer client")
		c.send(b)
		expectStatus(t, c.answer(id).envelope(), 0, "")
	})
}

func TestProtobufTextFrameCloses1003(t *testing.T) {
	s := startServer(t, nil)
	c := s.dialProtobuf(t, s.token(t, "pb-text", "get-authors"))
	expectStatus(t, c.call(1, nil).envelope(), 0, "")
	if err := c.conn.WriteString(`{"pkg_id":1,"req_id":"` + uuid.NewString() + `"}`); err != nil {
		t.Fatal(err)
	}
	if code, reason := c.closeStatus(e2eWait); code != 1003 || !strings.Contains(reason, "protobuf") {
		t.Fatalf("close %d %q, want 1003 naming protobuf", code, reason)
	}
}

func TestProtobufFrameLimit(t *testing.T) {
	const limit = 1024
	s := startServer(t, func(c *config.Config) { c.WSMaxMessageBytes = limit })
	c := s.dialProtobuf(t, s.token(t, "pb-big", "get-authors"))
	data, _ := json.Marshal(map[string]string{"pad": strings.Repeat("x", limit)})
	c.send(pbFrame{PkgID: 1, ReqID: uuid.NewString(), Data: data}.marshal())
	if code, _ := c.closeStatus(e2eWait); code != 1009 {
		t.Fatalf("close code %d, want 1009", code)
	}
}

func TestProtobufUnsupportedFormat(t *testing.T) {
	s := startServer(t, nil)
	tok := s.token(t, "pb-format")
	resp, body := wsHandshake(t, s, "format=xml&"+tokenQuery(tok), nil)
	if resp.StatusCode != http.StatusBadRequest || string(body) != `{"detail":"Unsupported format \"xml\": use json or protobuf"}`+"\n" {
		t.Fatalf("format=xml: %d %s", resp.StatusCode, body)
	}
}

func TestProtobufTopicBroadcast(t *testing.T) {
	s := startServer(t, nil)
	viewer := s.token(t, "pb-viewer")
	pb := s.dialProtobuf(t, viewer)
	js := s.dial(t, viewer)
	const topic = "dashboards.pb"

	r := pb.call(10, map[string]any{"topic": topic})
	expectStatus(t, r.envelope(), 0, "")
	var ans struct {
		Topic     string `json:"topic"`
		Seq       uint64 `json:"seq"`
		Epoch     string `json:"epoch"`
		Recovered bool   `json:"recovered"`
	}
	decodeData(t, r.envelope(), &ans)
	if ans.Topic != topic || ans.Seq != 0 || ans.Recovered {
		t.Fatalf("SUBSCRIBE answered %s", r.Data)
	}
	expectStatus(t, js.call(10, map[string]any{"topic": topic}), 0, "")

	producer := s.token(t, "pb-producer", "broadcast")
	epoch := ""
	for seq := uint64(1); seq <= 2; seq++ {
		want := `{"v":` + strconv.FormatUint(seq, 10) + `}`
		body := `{"pkg_id":7,"topic":"` + topic + `","data":` + want + `}`
		if resp, b := s.do(t, "POST", "/api/broadcast", producer, body); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("broadcast: %d %s", resp.StatusCode, b)
		}
		f := pb.broadcast()
		if f.PkgID != 7 || f.ReqID != zeroReqID || f.Status != nil || f.Msg != nil || f.Topic != topic || f.Seq != seq || f.Epoch == "" || string(f.Data) != want {
			t.Fatalf("protobuf broadcast %d: %+v data %s", seq, f, f.Data)
		}
		if epoch == "" {
			epoch = f.Epoch
		}
		e := wireTopicFrame(t, js, topic)
		if e.PkgID != 7 || e.Seq != seq || e.Epoch != epoch || f.Epoch != epoch || string(e.Data) != want {
			t.Fatalf("json broadcast %d: %+v data %s (epoch %s)", seq, e, e.Data, epoch)
		}
	}

	// Recovery replays the kept broadcasts in protobuf too: the answer, then seq 1 and 2.
	late := s.dialProtobuf(t, viewer)
	r = late.call(10, map[string]any{"topic": topic, "since": 0, "epoch": epoch})
	decodeData(t, r.envelope(), &ans)
	if ans.Seq != 2 || !ans.Recovered || ans.Epoch != epoch {
		t.Fatalf("SUBSCRIBE since 0 answered %s", r.Data)
	}
	for seq := uint64(1); seq <= 2; seq++ {
		if f := late.broadcast(); f.Topic != topic || f.Seq != seq || f.PkgID != 7 {
			t.Fatalf("replayed %+v, want seq %d", f, seq)
		}
	}

	// A broadcast without a topic reaches both formats.
	if resp, b := s.do(t, "POST", "/api/broadcast", producer, `{"pkg_id":8,"data":{"all":true}}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("broadcast: %d %s", resp.StatusCode, b)
	}
	for _, c := range []*pbClient{pb, late} {
		if f := c.broadcast(); f.PkgID != 8 || f.Topic != "" || f.Seq != 0 || string(f.Data) != `{"all":true}` {
			t.Fatalf("protobuf broadcast without topic: %+v data %s", f, f.Data)
		}
	}
	if e := js.next(e2eWait); e.PkgID != 8 || e.StatusCode != nil || string(e.Data) != `{"all":true}` {
		t.Fatalf("json broadcast without topic: %+v data %s", e, e.Data)
	}
}

// wireTopicFrame waits for the next broadcast frame on the raw connection c, skipping answers,
// and checks its topic.
func wireTopicFrame(t *testing.T, c *wsClient, topic string) envelope {
	t.Helper()
	for {
		e := c.next(10 * time.Second)
		if e.StatusCode != nil {
			continue // an answer to something else
		}
		if e.Topic != topic {
			t.Fatalf("broadcast on %q, want %q: %+v", e.Topic, topic, e)
		}
		return e
	}
}
