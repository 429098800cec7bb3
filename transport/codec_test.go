package transport

import (
	"encoding/binary"
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"switchboard/actors"
	"switchboard/hub"
)

// stripHeader checks a server frame header (FIN, text, unmasked, exact length) and returns the
// payload.
func stripHeader(t testing.TB, f []byte) []byte {
	t.Helper()
	if f[0] != 0x80|opText {
		t.Fatalf("first byte %#x", f[0])
	}
	n, h := int(f[1]), 2
	switch n {
	case 126:
		n, h = int(binary.BigEndian.Uint16(f[2:])), 4
	case 127:
		n, h = int(binary.BigEndian.Uint64(f[2:])), 10
	}
	if len(f)-h != n {
		t.Fatalf("header says %d bytes, frame has %d", n, len(f)-h)
	}
	return f[h:]
}

func TestFrameLengths(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 70000} {
		b := newFrameBuf(n)
		b = append(b, strings.Repeat("a", n)...)
		f := sealFrame(b, opText)
		if got := stripHeader(t, f); len(got) != n {
			t.Fatalf("n=%d: payload %d", n, len(got))
		}
	}
}

func TestEncodeResponse(t *testing.T) {
	f, err := jsonCodec{}.EncodeResponse(&actors.Response{PkgID: 1, ReqID: someUUID, Status: actors.StatusOK, Data: []int{}})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"pkg_id":1,"req_id":"` + someUUID + `","status_code":0,"data":[],"meta":null,"msg":null}`
	if got := string(stripHeader(t, f)); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	f, _ = jsonCodec{}.EncodeResponse(&actors.Response{PkgID: 0, ReqID: `a"b<`, Status: actors.StatusInvalidData, Msg: "Invalid data"})
	var m map[string]any
	if err := json.Unmarshal(stripHeader(t, f), &m); err != nil || m["req_id"] != `a"b<` || m["msg"] != "Invalid data" || m["data"] != nil {
		t.Fatalf("escaped response: %v %v", m, err)
	}
}

func TestEncodeBroadcast(t *testing.T) {
	f, _ := jsonCodec{}.EncodeBroadcast(&hub.Message{PkgID: 7, Data: json.RawMessage(`{"x":1}`)})
	want := `{"pkg_id":7,"req_id":"` + zeroUUID + `","data":{"x":1}}`
	if got := string(stripHeader(t, f)); got != want {
		t.Fatalf("got %s", got)
	}
	f, _ = jsonCodec{}.EncodeBroadcast(&hub.Message{PkgID: 7, Data: json.RawMessage(`{}`), Topic: "dashboards.a", Seq: 3, Epoch: "9c41e2d07b5a8f36"})
	want = `{"pkg_id":7,"req_id":"` + zeroUUID + `","data":{},"topic":"dashboards.a","seq":3,"epoch":"9c41e2d07b5a8f36"}`
	if got := string(stripHeader(t, f)); got != want {
		t.Fatalf("got %s", got)
	}
	// A topic without history: no seq, no epoch.
	f, _ = jsonCodec{}.EncodeBroadcast(&hub.Message{PkgID: 7, Data: json.RawMessage(`{}`), Topic: "t"})
	want = `{"pkg_id":7,"req_id":"` + zeroUUID + `","data":{},"topic":"t"}`
	if got := string(stripHeader(t, f)); got != want {
		t.Fatalf("got %s", got)
	}
	// An epoch is opaque to the codec: escaped like any string.
	f, _ = jsonCodec{}.EncodeBroadcast(&hub.Message{PkgID: 7, Data: json.RawMessage(`{}`), Topic: "t", Seq: 1, Epoch: `a"<`})
	var m map[string]any
	if err := json.Unmarshal(stripHeader(t, f), &m); err != nil || m["epoch"] != `a"<` {
		t.Fatalf("escaped epoch: %v %v", m, err)
	}
}

func BenchmarkDecodeEnvelope(b *testing.B) {
	frame := []byte(`{"pkg_id":1,"req_id":"` + someUUID + `","data":{"filters":{"name":"John"}}}`)
	b.ReportAllocs()
	for b.Loop() {
		if req, _ := decodeEnvelope(frame); req == nil {
			b.Fatal("refused")
		}
	}
}

// BenchmarkDecodeEnvelope4K decodes a frame whose data is about 4 KB of nested objects and
// strings, where the depth check on the bytes costs the most.
func BenchmarkDecodeEnvelope4K(b *testing.B) {
	var items []string
	for i := 0; i < 40; i++ {
		items = append(items, `{"id":`+strconv.Itoa(i)+`,"name":"author number `+strconv.Itoa(i)+` with a \"quoted\" word","tags":["a","b",{"c":[1,2,3]}]}`)
	}
	frame := []byte(`{"pkg_id":1,"req_id":"` + someUUID + `","data":{"items":[` + strings.Join(items, ",") + `]}}`)
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		if req, _ := decodeEnvelope(frame); req == nil {
			b.Fatal("refused")
		}
	}
}

func BenchmarkEncodeResponse(b *testing.B) {
	r := &actors.Response{PkgID: 1, ReqID: someUUID, Data: []map[string]any{{"id": 1, "name": "John"}}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := (jsonCodec{}).EncodeResponse(r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeBroadcast(b *testing.B) {
	m := &hub.Message{PkgID: 1, Data: json.RawMessage(`{"seq":1,"payload":"` + strings.Repeat("x", 64) + `"}`)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := (jsonCodec{}).EncodeBroadcast(m); err != nil {
			b.Fatal(err)
		}
	}
}
