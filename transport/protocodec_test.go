package transport

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"switchboard/actors"
	"switchboard/hub"
)

// The codec is checked against Google's protobuf runtime reading and writing the schema of
// switchboard.proto (built here as a descriptor, and compared with the file), the way a client
// with generated code would.

var (
	frameDescOnce sync.Once
	frameDesc     protoreflect.MessageDescriptor
	frameDescErr  error
)

// frameDescriptor is message switchboard.v1.Frame as switchboard.proto declares it.
func frameDescriptor(t testing.TB) protoreflect.MessageDescriptor {
	t.Helper()
	frameDescOnce.Do(func() {
		type T = descriptorpb.FieldDescriptorProto_Type
		field := func(name string, num int32, typ T, oneof int32) *descriptorpb.FieldDescriptorProto {
			f := &descriptorpb.FieldDescriptorProto{
				Name: proto.String(name), JsonName: proto.String(name), Number: proto.Int32(num),
				Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), Type: typ.Enum(),
			}
			if oneof >= 0 {
				f.OneofIndex, f.Proto3Optional = proto.Int32(oneof), proto.Bool(true)
			}
			return f
		}
		file := &descriptorpb.FileDescriptorProto{
			Name: proto.String("switchboard.proto"), Package: proto.String("switchboard.v1"), Syntax: proto.String("proto3"),
			MessageType: []*descriptorpb.DescriptorProto{{
				Name: proto.String("Frame"),
				Field: []*descriptorpb.FieldDescriptorProto{
					field("pkg_id", 1, descriptorpb.FieldDescriptorProto_TYPE_INT32, -1),
					field("req_id", 2, descriptorpb.FieldDescriptorProto_TYPE_STRING, -1),
					field("data", 3, descriptorpb.FieldDescriptorProto_TYPE_BYTES, -1),
					field("status_code", 4, descriptorpb.FieldDescriptorProto_TYPE_INT32, 0),
					field("meta", 5, descriptorpb.FieldDescriptorProto_TYPE_BYTES, -1),
					field("msg", 6, descriptorpb.FieldDescriptorProto_TYPE_STRING, 1),
					field("topic", 7, descriptorpb.FieldDescriptorProto_TYPE_STRING, -1),
					field("seq", 8, descriptorpb.FieldDescriptorProto_TYPE_UINT64, -1),
					field("epoch", 9, descriptorpb.FieldDescriptorProto_TYPE_STRING, -1),
				},
				OneofDecl: []*descriptorpb.OneofDescriptorProto{{Name: proto.String("_status_code")}, {Name: proto.String("_msg")}},
			}},
		}
		fd, err := protodesc.NewFile(file, new(protoregistry.Files))
		if err != nil {
			frameDescErr = err
			return
		}
		frameDesc = fd.Messages().ByName("Frame")
	})
	if frameDescErr != nil {
		t.Fatalf("Frame descriptor: %v", frameDescErr)
	}
	return frameDesc
}

// TestProtoSchemaFile keeps switchboard.proto, the descriptor above and the codec's field
// numbers in step.
func TestProtoSchemaFile(t *testing.T) {
	src, err := os.ReadFile("switchboard.proto")
	if err != nil {
		t.Fatal(err)
	}
	text := string(src)
	for _, want := range []string{`syntax = "proto3";`, "package switchboard.v1;", "message Frame {"} {
		if !strings.Contains(text, want) {
			t.Fatalf("switchboard.proto lacks %q", want)
		}
	}
	re := regexp.MustCompile(`(?m)^\s*(optional\s+)?(\w+)\s+(\w+)\s*=\s*(\d+)\s*;`)
	got := map[string]string{}
	for _, m := range re.FindAllStringSubmatch(text, -1) {
		got[m[3]] = strings.TrimSpace(m[1]+m[2]) + " = " + m[4]
	}
	md := frameDescriptor(t)
	want := map[string]string{}
	for i := 0; i < md.Fields().Len(); i++ {
		f := md.Fields().Get(i)
		s := f.Kind().String()
		if f.HasOptionalKeyword() {
			s = "optional " + s
		}
		want[string(f.Name())] = s + " = " + strconv.Itoa(int(f.Number()))
	}
	if len(got) != len(want) {
		t.Fatalf("switchboard.proto fields %v, want %v", got, want)
	}
	for name, w := range want {
		if got[name] != w {
			t.Fatalf("field %s: file says %q, want %q", name, got[name], w)
		}
	}
	nums := map[string]protowire.Number{"pkg_id": fieldPkgID, "req_id": fieldReqID, "data": fieldData,
		"status_code": fieldStatusCode, "meta": fieldMeta, "msg": fieldMsg, "topic": fieldTopic, "seq": fieldSeq,
		"epoch": fieldEpoch}
	for name, n := range nums {
		f := md.Fields().ByName(protoreflect.Name(name))
		if f == nil || f.Number() != n {
			t.Fatalf("codec numbers %s as %d", name, n)
		}
		wt := protowire.BytesType
		switch f.Kind() {
		case protoreflect.Int32Kind, protoreflect.Uint64Kind:
			wt = protowire.VarintType
		}
		if frameWireTypes[n] != wt {
			t.Fatalf("codec expects wire type %d for %s, want %d", frameWireTypes[n], name, wt)
		}
	}
}

// pbFrame is a Frame as Google's runtime reads it; nil pointers are absent optional fields.
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

func officialDecode(t testing.TB, payload []byte) (pbFrame, error) {
	md := frameDescriptor(t)
	m := dynamicpb.NewMessage(md)
	if err := proto.Unmarshal(payload, m); err != nil {
		return pbFrame{}, err
	}
	f := md.Fields()
	out := pbFrame{
		PkgID: int32(m.Get(f.ByName("pkg_id")).Int()),
		ReqID: m.Get(f.ByName("req_id")).String(),
		Data:  m.Get(f.ByName("data")).Bytes(),
		Meta:  m.Get(f.ByName("meta")).Bytes(),
		Topic: m.Get(f.ByName("topic")).String(),
		Seq:   m.Get(f.ByName("seq")).Uint(),
		Epoch: m.Get(f.ByName("epoch")).String(),
	}
	if fd := f.ByName("status_code"); m.Has(fd) {
		v := int32(m.Get(fd).Int())
		out.Status = &v
	}
	if fd := f.ByName("msg"); m.Has(fd) {
		v := m.Get(fd).String()
		out.Msg = &v
	}
	return out, nil
}

func officialEncode(t testing.TB, p pbFrame) []byte {
	t.Helper()
	md := frameDescriptor(t)
	m := dynamicpb.NewMessage(md)
	f := md.Fields()
	m.Set(f.ByName("pkg_id"), protoreflect.ValueOfInt32(p.PkgID))
	m.Set(f.ByName("req_id"), protoreflect.ValueOfString(p.ReqID))
	m.Set(f.ByName("data"), protoreflect.ValueOfBytes(p.Data))
	m.Set(f.ByName("meta"), protoreflect.ValueOfBytes(p.Meta))
	m.Set(f.ByName("topic"), protoreflect.ValueOfString(p.Topic))
	m.Set(f.ByName("seq"), protoreflect.ValueOfUint64(p.Seq))
	m.Set(f.ByName("epoch"), protoreflect.ValueOfString(p.Epoch))
	if p.Status != nil {
		m.Set(f.ByName("status_code"), protoreflect.ValueOfInt32(*p.Status))
	}
	if p.Msg != nil {
		m.Set(f.ByName("msg"), protoreflect.ValueOfString(*p.Msg))
	}
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// binaryPayload checks a server frame header (FIN, binary, unmasked, exact length) and returns
// the payload.
func binaryPayload(t testing.TB, f []byte) []byte {
	t.Helper()
	if f[0] != 0x80|opBinary {
		t.Fatalf("first byte %#x, want a final binary frame", f[0])
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

func decodeServerFrame(t testing.TB, f []byte) pbFrame {
	t.Helper()
	p, err := officialDecode(t, binaryPayload(t, f))
	if err != nil {
		t.Fatalf("protobuf runtime refuses the frame: %v", err)
	}
	return p
}

func TestCodecFor(t *testing.T) {
	j1, ok1 := codecFor("")
	j2, ok2 := codecFor("json")
	p1, ok3 := codecFor("protobuf")
	p2, _ := codecFor("protobuf")
	if !ok1 || !ok2 || !ok3 {
		t.Fatal("json or protobuf refused")
	}
	for _, f := range []string{"JSON", "proto", "protobuf ", "xml"} {
		if _, ok := codecFor(f); ok {
			t.Fatalf("format %q accepted", f)
		}
	}
	// The hub keys its per-broadcast cache on these values: equal within a format, distinct
	// across formats.
	if hub.Codec(j1) != hub.Codec(j2) || hub.Codec(p1) != hub.Codec(p2) || hub.Codec(j1) == hub.Codec(p1) {
		t.Fatal("codec values do not identify their format")
	}
	if j1.opcode() == p1.opcode() || p1.refusal() == "" {
		t.Fatal("opcodes")
	}
}

func TestProtoEncodeResponse(t *testing.T) {
	c := protoCodec{}
	// Success: data a list, status 0 on the wire, meta and msg absent.
	f, err := c.EncodeResponse(&actors.Response{PkgID: 1, ReqID: someUUID, Status: actors.StatusOK, Data: []map[string]any{{"id": 1, "name": "J"}}})
	if err != nil {
		t.Fatal(err)
	}
	p := decodeServerFrame(t, f)
	if p.PkgID != 1 || p.ReqID != someUUID || string(p.Data) != `[{"id":1,"name":"J"}]` || p.Status == nil || *p.Status != 0 ||
		p.Meta != nil || p.Msg != nil || p.Topic != "" || p.Seq != 0 {
		t.Fatalf("ok answer: %+v data=%s", p, p.Data)
	}
	// Failure without data: data is JSON null, msg present.
	f, _ = c.EncodeResponse(&actors.Response{PkgID: 9, ReqID: someUUID, Status: actors.StatusError, Msg: "Unknown pkg_id 9"})
	p = decodeServerFrame(t, f)
	if string(p.Data) != "null" || p.Status == nil || *p.Status != 1 || p.Msg == nil || *p.Msg != "Unknown pkg_id 9" {
		t.Fatalf("error answer: %+v", p)
	}
	// Meta, pkg_id 0, an odd req_id, a msg that is not UTF-8.
	f, _ = c.EncodeResponse(&actors.Response{PkgID: 0, ReqID: `a"b<`, Status: actors.StatusInvalidData, Msg: "bad \xff",
		Data: map[string]any{}, Meta: map[string]any{"page": 1, "next_cursor": nil}})
	p = decodeServerFrame(t, f)
	if p.PkgID != 0 || p.ReqID != `a"b<` || string(p.Data) != `{}` || string(p.Meta) != `{"next_cursor":null,"page":1}` ||
		*p.Status != 2 || *p.Msg != "bad \uFFFD" {
		t.Fatalf("answer with meta: %+v data=%s meta=%s", p, p.Data, p.Meta)
	}
	// The same data and meta JSON as the JSON codec.
	r := &actors.Response{PkgID: 2, ReqID: someUUID, Data: []int{1, 2}, Meta: map[string]int{"total": 2}}
	jf, _ := jsonCodec{}.EncodeResponse(r)
	var env struct{ Data, Meta json.RawMessage }
	if err := json.Unmarshal(stripHeader(t, jf), &env); err != nil {
		t.Fatal(err)
	}
	f, _ = c.EncodeResponse(r)
	p = decodeServerFrame(t, f)
	if !bytes.Equal(p.Data, env.Data) || !bytes.Equal(p.Meta, env.Meta) {
		t.Fatalf("data/meta %s %s, json codec %s %s", p.Data, p.Meta, env.Data, env.Meta)
	}
	// Negative numbers take protobuf's ten-byte int32 form.
	f, _ = c.EncodeResponse(&actors.Response{PkgID: -3, ReqID: someUUID})
	if p = decodeServerFrame(t, f); p.PkgID != -3 {
		t.Fatalf("pkg_id %d", p.PkgID)
	}
	// Data that JSON cannot carry is an error, as with the JSON codec.
	if _, err := c.EncodeResponse(&actors.Response{Data: func() {}}); err == nil {
		t.Fatal("unencodable data accepted")
	}
}

func TestProtoEncodeBroadcast(t *testing.T) {
	c := protoCodec{}
	f, _ := c.EncodeBroadcast(&hub.Message{PkgID: 7, Data: json.RawMessage(`{"x":1}`)})
	p := decodeServerFrame(t, f)
	if p.PkgID != 7 || p.ReqID != zeroUUID || string(p.Data) != `{"x":1}` || p.Status != nil || p.Msg != nil || p.Topic != "" || p.Seq != 0 || p.Epoch != "" {
		t.Fatalf("broadcast: %+v", p)
	}
	f, _ = c.EncodeBroadcast(&hub.Message{PkgID: 7, Topic: "dashboards.a", Seq: 3, Epoch: "9c41e2d07b5a8f36"})
	if p = decodeServerFrame(t, f); string(p.Data) != `{}` || p.Topic != "dashboards.a" || p.Seq != 3 || p.Epoch != "9c41e2d07b5a8f36" || p.Status != nil {
		t.Fatalf("topic broadcast: %+v", p)
	}
	f, _ = c.EncodeBroadcast(&hub.Message{PkgID: 7, Data: json.RawMessage(`{}`), Topic: "t", Seq: 0})
	if p = decodeServerFrame(t, f); p.Topic != "t" || p.Seq != 0 || p.Epoch != "" {
		t.Fatalf("topic without history: %+v", p)
	}
	// Large payloads get the long frame headers.
	big := json.RawMessage(`{"a":"` + strings.Repeat("x", 70000) + `"}`)
	f, _ = c.EncodeBroadcast(&hub.Message{PkgID: 1, Data: big})
	if p = decodeServerFrame(t, f); !bytes.Equal(p.Data, big) {
		t.Fatal("large broadcast")
	}
}

// raw builds hand-made protobuf bytes.
type raw []byte

func (r raw) tag(n protowire.Number, t protowire.Type) raw { return protowire.AppendTag(r, n, t) }
func (r raw) varint(n protowire.Number, v uint64) raw {
	return protowire.AppendVarint(r.tag(n, protowire.VarintType), v)
}
func (r raw) bytes(n protowire.Number, b string) raw {
	return protowire.AppendString(r.tag(n, protowire.BytesType), b)
}
func (r raw) b(bs ...byte) raw { return append(r, bs...) }

func TestProtoDecode(t *testing.T) {
	valid := func() raw { return raw{}.varint(1, 1).bytes(2, someUUID) }
	groups := func(depth int) raw {
		r := valid()
		for i := 0; i < depth; i++ {
			r = r.tag(20, protowire.StartGroupType).varint(21, 1)
		}
		for i := 0; i < depth; i++ {
			r = r.tag(20, protowire.EndGroupType)
		}
		return r
	}
	cases := []struct {
		name      string
		frame     []byte
		wantPkg   int
		wantReqID string
		wantData  string
		wantBad   string // error path when the frame is refused
	}{
		{"full", valid().bytes(3, `{"filters":{"name":"J"}}`), 1, someUUID, `{"filters":{"name":"J"}}`, ""},
		{"official encoder", officialEncode(t, pbFrame{PkgID: 12, ReqID: someUUID, Data: []byte(`{"token":"x"}`)}), 12, someUUID, `{"token":"x"}`, ""},
		{"data absent is {}", valid(), 1, someUUID, `{}`, ""},
		{"data null is {}", valid().bytes(3, " null "), 1, someUUID, `{}`, ""},
		{"data trimmed", valid().bytes(3, "\n {\"a\":1}\t"), 1, someUUID, `{"a":1}`, ""},
		{"field order free", raw{}.bytes(3, `{"b":2}`).bytes(2, someUUID).varint(1, 4), 4, someUUID, `{"b":2}`, ""},
		{"last value wins", valid().varint(1, 5).bytes(3, `{"a":1}`).bytes(3, `{"a":2}`), 5, someUUID, `{"a":2}`, ""},
		{"pkg_id 0 on the wire", raw{}.varint(1, 0).bytes(2, someUUID), 0, someUUID, `{}`, ""},
		{"data 32 levels deep", valid().bytes(3, nested(actors.MaxDepth)), 1, someUUID, nested(actors.MaxDepth), ""},
		{"negative pkg_id", raw{}.varint(1, uint64(1<<64-5)).bytes(2, someUUID), -5, someUUID, `{}`, ""},
		{"response fields ignored", valid().varint(4, 3).bytes(5, "x").bytes(6, "\xff").bytes(7, "t").varint(8, 9), 1, someUUID, `{}`, ""},
		{"unknown fields skipped", valid().varint(19, 1).bytes(10, "zz").tag(11, protowire.Fixed32Type).b(1, 2, 3, 4).
			tag(12, protowire.Fixed64Type).b(1, 2, 3, 4, 5, 6, 7, 8).varint(protowire.MaxValidNumber, 7), 1, someUUID, `{}`, ""},
		{"unknown group skipped", groups(maxGroupDepth), 1, someUUID, `{}`, ""},
		{"epoch in a request is ignored", valid().bytes(9, "9c41e2d07b5a8f36"), 1, someUUID, `{}`, ""},
		{"upper-case uuid", raw{}.varint(1, 3).bytes(2, strings.ToUpper(someUUID)), 3, strings.ToUpper(someUUID), `{}`, ""},

		{"empty frame", []byte{}, 0, zeroUUID, "", "/req_id"},
		{"missing req_id", raw{}.varint(1, 1), 1, zeroUUID, "", "/req_id"},
		{"non-uuid req_id is echoed", raw{}.varint(1, 1).bytes(2, "abc"), 1, "abc", "", "/req_id"},
		{"req_id not UTF-8", raw{}.varint(1, 1).bytes(2, "ab\xff"), 1, zeroUUID, "", "/req_id"},
		{"req_id of 64 printable characters is echoed", raw{}.varint(1, 1).bytes(2, strings.Repeat("~", 64)), 1, strings.Repeat("~", 64), "", "/req_id"},
		{"req_id of 65 characters is not", raw{}.varint(1, 1).bytes(2, strings.Repeat("a", 65)), 1, zeroUUID, "", "/req_id"},
		{"req_id of 60 KB is not", raw{}.varint(1, 1).bytes(2, strings.Repeat("a", 60<<10)), 1, zeroUUID, "", "/req_id"},
		{"req_id with an ANSI escape is not", raw{}.varint(1, 1).bytes(2, "\x1b[2J"), 1, zeroUUID, "", "/req_id"},
		{"req_id with NUL is not", raw{}.varint(1, 1).bytes(2, "a\x00"), 1, zeroUUID, "", "/req_id"},
		{"req_id not ASCII is not", raw{}.varint(1, 1).bytes(2, "é"), 1, zeroUUID, "", "/req_id"},
		{"pkg_id absent", raw{}.bytes(2, someUUID), 0, someUUID, "", "/pkg_id"},
		{"pkg_id beyond 32 bits", raw{}.varint(1, 1<<40).bytes(2, someUUID), 0, someUUID, "", "/pkg_id"},
		{"pkg_id beyond 32 bits, negative", raw{}.varint(1, uint64(1<<64-(1<<40))).bytes(2, someUUID), 0, someUUID, "", "/pkg_id"},
		{"data a list", valid().bytes(3, `[1]`), 1, someUUID, "", "/data"},
		{"data a string", valid().bytes(3, `"x"`), 1, someUUID, "", "/data"},
		{"data not JSON", valid().bytes(3, `{"a":`), 1, someUUID, "", "/data"},
		{"data with trailing bytes", valid().bytes(3, `{}x`), 1, someUUID, "", "/data"},
		{"data not UTF-8", valid().bytes(3, "{\"a\":\"\xff\"}"), 1, someUUID, "", "/data"},
		{"data 33 levels deep", valid().bytes(3, nested(actors.MaxDepth+1)), 1, someUUID, "", "/data"},
		{"data 10 001 levels deep", valid().bytes(3, nested(10001)), 1, someUUID, "", "/data"},

		{"not protobuf", []byte(`{"pkg_id":1}`), 0, zeroUUID, "", "/"},
		{"truncated varint", raw{}.b(0x08, 0x80), 0, zeroUUID, "", "/"},
		{"overlong varint", raw{}.b(0x08).b(bytes.Repeat([]byte{0xff}, 10)...).b(0x01), 0, zeroUUID, "", "/"},
		{"truncated length", valid().tag(3, protowire.BytesType).b(0x05, '{', '}'), 1, someUUID, "", "/"},
		{"truncated tag", valid().b(0x80), 1, someUUID, "", "/"},
		{"field number 0", raw{}.b(0x00, 0x01), 0, zeroUUID, "", "/"},
		{"field number too large", valid().varint(protowire.MaxValidNumber+1, 1), 1, someUUID, "", "/"},
		{"pkg_id as bytes", raw{}.bytes(1, "1").bytes(2, someUUID), 0, zeroUUID, "", "/"},
		{"req_id as varint", raw{}.varint(1, 1).varint(2, 5), 1, zeroUUID, "", "/"},
		{"data as fixed32", valid().tag(3, protowire.Fixed32Type).b(1, 2, 3, 4), 1, someUUID, "", "/"},
		{"seq as bytes", valid().bytes(8, "1"), 1, someUUID, "", "/"},
		{"epoch as varint", valid().varint(9, 1), 1, someUUID, "", "/"},
		{"stray end group", valid().tag(20, protowire.EndGroupType), 1, someUUID, "", "/"},
		{"unclosed group", valid().tag(20, protowire.StartGroupType).varint(21, 1), 1, someUUID, "", "/"},
		{"mismatched group end", valid().tag(20, protowire.StartGroupType).tag(22, protowire.EndGroupType), 1, someUUID, "", "/"},
		{"groups too deep", groups(maxGroupDepth + 1), 1, someUUID, "", "/"},
		{"group on a field of Frame", valid().tag(3, protowire.StartGroupType).tag(3, protowire.EndGroupType), 1, someUUID, "", "/"},
		{"reserved wire type 6", valid().b(byte(20<<3 | 6)), 1, someUUID, "", "/"},
		{"reserved wire type 7", valid().b(byte(20<<3 | 7)), 1, someUUID, "", "/"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, bad := protoCodec{}.decode(tc.frame)
			if (req == nil) == (bad == nil) {
				t.Fatalf("want exactly one of request and refusal: %+v %+v", req, bad)
			}
			if tc.wantBad != "" {
				if bad == nil {
					t.Fatalf("want refusal, got %+v data=%s", req, req.Data)
				}
				if bad.Status != actors.StatusInvalidData || bad.Msg != "Invalid data" || bad.ReqID != tc.wantReqID || bad.PkgID != tc.wantPkg {
					t.Fatalf("refusal = %+v", bad)
				}
				if got := bad.Data.(actors.InvalidData).Errors[0].Path; got != tc.wantBad {
					t.Fatalf("error path = %q, want %q", got, tc.wantBad)
				}
				return
			}
			if bad != nil {
				t.Fatalf("unexpected refusal %+v", bad)
			}
			if req.PkgID != tc.wantPkg || req.ReqID != tc.wantReqID || string(req.Data) != tc.wantData || req.Transport != "ws" {
				t.Fatalf("got %+v data=%s", req, req.Data)
			}
		})
	}
}

func TestProtoDecodeCopies(t *testing.T) {
	frame := []byte(raw{}.varint(1, 1).bytes(2, someUUID).bytes(3, `{"a":1}`))
	req, _ := protoCodec{}.decode(frame)
	for i := range frame {
		frame[i] = 'x' // gws reuses frame buffers
	}
	if string(req.Data) != `{"a":1}` || req.ReqID != someUUID {
		t.Fatalf("request aliases the frame buffer: %+v %s", req, req.Data)
	}
}

// FuzzProtoDecode: any frame yields exactly one of a request or a refusal, never a panic; a
// request carries a UUID and a UTF-8 JSON object no deeper than actors.MaxDepth and agrees
// with what Google's runtime reads from the same bytes; a refusal follows checkRefusal and
// encodes to a Frame that runtime accepts, echoing the same req_id. Seeds: below and
// testdata/fuzz/FuzzProtoDecode.
func FuzzProtoDecode(f *testing.F) {
	for _, s := range [][]byte{
		raw{}.varint(1, 1).bytes(2, someUUID).bytes(3, `{"a":[1,2]}`),
		raw{}.varint(1, 1).bytes(2, "x\xff"),
		raw{}.varint(1, 1<<40).bytes(2, someUUID).bytes(3, "null"),
		raw{}.bytes(2, someUUID).tag(20, protowire.StartGroupType).varint(21, 1).tag(20, protowire.EndGroupType),
		raw{}.bytes(2, someUUID).bytes(6, "m").varint(4, 2).bytes(7, "t"),
		[]byte(`{"pkg_id":1}`), {}, {0xff},
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) > 64<<10 {
			t.Skip("larger than SWITCHBOARD_WS_MAX_MESSAGE_BYTES allows: closed with 1009 before decoding")
		}
		req, bad := protoCodec{}.decode(frame)
		if (req == nil) == (bad == nil) {
			t.Fatalf("want exactly one of request and refusal: %v %v", req, bad)
		}
		if req != nil {
			if !isUUID(req.ReqID) || !json.Valid(req.Data) || req.Data[0] != '{' || !utf8.Valid(req.Data) ||
				actors.DepthExceeds(req.Data, actors.MaxDepth) {
				t.Fatalf("request %+v data %q", req, req.Data)
			}
			if p, err := officialDecode(t, frame); err == nil {
				d := trimJSONSpace(p.Data)
				if len(d) == 0 || string(d) == "null" {
					d = []byte("{}")
				}
				if int(p.PkgID) != req.PkgID || p.ReqID != req.ReqID || !bytes.Equal(d, req.Data) {
					t.Fatalf("runtime reads %+v, codec %+v data %s", p, req, req.Data)
				}
			}
			return
		}
		checkRefusal(t, bad)
		out, err := protoCodec{}.EncodeResponse(bad)
		if err != nil {
			t.Fatal(err)
		}
		p := decodeServerFrame(t, out)
		if p.Status == nil || *p.Status != 2 || p.Msg == nil || *p.Msg != "Invalid data" || p.ReqID != bad.ReqID || !json.Valid(p.Data) {
			t.Fatalf("refusal %+v", p)
		}
	})
}

func BenchmarkProtoDecode(b *testing.B) {
	frame := []byte(raw{}.varint(1, 1).bytes(2, someUUID).bytes(3, `{"filters":{"name":"John"}}`))
	b.ReportAllocs()
	for b.Loop() {
		if req, _ := (protoCodec{}).decode(frame); req == nil {
			b.Fatal("refused")
		}
	}
}

func BenchmarkProtoEncodeResponse(b *testing.B) {
	r := &actors.Response{PkgID: 1, ReqID: someUUID, Data: []map[string]any{{"id": 1, "name": "John"}}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := (protoCodec{}).EncodeResponse(r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkProtoEncodeBroadcast(b *testing.B) {
	m := &hub.Message{PkgID: 1, Data: json.RawMessage(`{"seq":1,"payload":"` + strings.Repeat("x", 64) + `"}`)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := (protoCodec{}).EncodeBroadcast(m); err != nil {
			b.Fatal(err)
		}
	}
}
