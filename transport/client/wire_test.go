package client

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

func TestEncodeRequestJSON(t *testing.T) {
	b := encodeRequest(JSON, 3, "550e8400-e29b-41d4-a716-446655440000", json.RawMessage(`{"name":"Ursula"}`))
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if got["pkg_id"] != 3.0 || got["req_id"] != "550e8400-e29b-41d4-a716-446655440000" || got["data"].(map[string]any)["name"] != "Ursula" {
		t.Fatalf("request %s", b)
	}
	if b := encodeRequest(JSON, 1, "x", nil); string(b) != `{"pkg_id":1,"req_id":"x"}` {
		t.Fatalf("without data: %s", b)
	}
}

func TestEncodeRequestProtobuf(t *testing.T) {
	b := encodeRequest(Protobuf, 3, "id-1", json.RawMessage(`{"name":"Ursula"}`))
	r := decodeProtoRequest(t, b)
	if r.PkgID != 3 || r.ReqID != "id-1" || string(r.Data) != `{"name":"Ursula"}` {
		t.Fatalf("decoded %+v", r)
	}
	// A negative pkg_id is int32 sign-extended, as protobuf's int32 is.
	if r := decodeProtoRequest(t, encodeRequest(Protobuf, -1, "id", nil)); r.PkgID != -1 {
		t.Fatalf("pkg_id -1 decoded as %d", r.PkgID)
	}
}

func TestDecodeJSONFrames(t *testing.T) {
	f, err := decodeFrame(JSON, []byte(`{"pkg_id":2,"req_id":"r","status_code":0,"data":[1],"meta":{"page":1},"msg":null}`))
	if err != nil || !f.HasStatus || f.Status != 0 || string(f.Data) != "[1]" || string(f.Meta) != `{"page":1}` || f.Msg != "" {
		t.Fatalf("answer: %+v %v", f, err)
	}
	f, err = decodeFrame(JSON, []byte(`{"pkg_id":2,"req_id":"r","status_code":3,"data":null,"meta":null,"msg":"Permission denied"}`))
	if err != nil || f.Status != 3 || f.Msg != "Permission denied" || f.Meta != nil {
		t.Fatalf("refusal: %+v %v", f, err)
	}
	f, err = decodeFrame(JSON, []byte(`{"pkg_id":7,"req_id":"`+zeroUUID+`","data":{},"topic":"t","seq":42,"epoch":"9c41"}`))
	if err != nil || f.HasStatus || f.Topic != "t" || f.Seq != 42 || f.Epoch != "9c41" {
		t.Fatalf("broadcast: %+v %v", f, err)
	}
	// A server that sends no epoch yet: "".
	if f, _ := decodeFrame(JSON, []byte(`{"pkg_id":7,"req_id":"r","data":{},"topic":"t","seq":1}`)); f.Epoch != "" {
		t.Fatalf("epoch %q", f.Epoch)
	}
	if _, err := decodeFrame(JSON, []byte(`not json`)); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("garbage: %v", err)
	}
}

func TestDecodeProtoFrames(t *testing.T) {
	var b []byte
	b = protowire.AppendTag(b, pbPkgID, protowire.VarintType)
	b = protowire.AppendVarint(b, 7)
	b = protowire.AppendTag(b, pbReqID, protowire.BytesType)
	b = protowire.AppendString(b, zeroUUID)
	b = protowire.AppendTag(b, pbData, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte(`{"a":1}`))
	b = protowire.AppendTag(b, pbTopic, protowire.BytesType)
	b = protowire.AppendString(b, "dashboards.x")
	b = protowire.AppendTag(b, pbSeq, protowire.VarintType)
	b = protowire.AppendVarint(b, 5)
	b = protowire.AppendTag(b, pbEpoch, protowire.BytesType)
	b = protowire.AppendString(b, "e1")
	b = protowire.AppendTag(b, 42, protowire.BytesType) // a field this client does not know
	b = protowire.AppendString(b, "later")
	f, err := decodeFrame(Protobuf, b)
	if err != nil || f.HasStatus || f.PkgID != 7 || f.Topic != "dashboards.x" || f.Seq != 5 || f.Epoch != "e1" || string(f.Data) != `{"a":1}` {
		t.Fatalf("broadcast: %+v %v", f, err)
	}

	var a []byte
	a = protowire.AppendTag(a, pbReqID, protowire.BytesType)
	a = protowire.AppendString(a, "r")
	a = protowire.AppendTag(a, pbData, protowire.BytesType)
	a = protowire.AppendBytes(a, []byte(`null`))
	a = protowire.AppendTag(a, pbStatusCode, protowire.VarintType)
	a = protowire.AppendVarint(a, 0)
	f, err = decodeFrame(Protobuf, a)
	if err != nil || !f.HasStatus || f.Status != 0 || f.PkgID != 0 || f.Meta != nil {
		t.Fatalf("answer with status 0 present: %+v %v", f, err)
	}

	for name, bad := range map[string][]byte{
		"truncated":  b[:len(b)-3],
		"wrong type": protowire.AppendVarint(protowire.AppendTag(nil, pbTopic, protowire.VarintType), 1),
		"bad tag":    {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
	} {
		if _, err := decodeFrame(Protobuf, bad); !errors.Is(err, ErrBadFrame) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// FuzzDecodeFrame: whatever a server sends, decoding returns a frame or ErrBadFrame and never
// panics; a frame's data is a copy (gws reuses its buffers).
func FuzzDecodeFrame(f *testing.F) {
	f.Add([]byte(`{"pkg_id":1,"req_id":"r","status_code":0,"data":[]}`), false)
	f.Add([]byte(`{"pkg_id":7,"data":{},"topic":"t","seq":3,"epoch":"e"}`), false)
	f.Add(encodeRequest(Protobuf, 3, "id", json.RawMessage(`{"x":1}`)), true)
	f.Add([]byte{0x4a, 0x02, 'e', '1', 0x40, 0x05}, true)
	f.Fuzz(func(t *testing.T, b []byte, proto bool) {
		format := JSON
		if proto {
			format = Protobuf
		}
		in := bytes.Clone(b)
		fr, err := decodeFrame(format, in)
		if err != nil {
			if !errors.Is(err, ErrBadFrame) {
				t.Fatalf("error %v is not ErrBadFrame", err)
			}
			return
		}
		for i := range in {
			in[i] ^= 0xff
		}
		if len(fr.Data) > 0 && len(b) > 0 {
			again, err := decodeFrame(format, b)
			if err != nil || !bytes.Equal(again.Data, fr.Data) {
				t.Fatalf("data changed with the input buffer: %q vs %q", fr.Data, again.Data)
			}
		}
	})
}
