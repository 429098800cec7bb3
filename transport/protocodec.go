package transport

import (
	"encoding/json"
	"math"
	"strings"
	"unicode/utf8"

	"github.com/lxzan/gws"
	"google.golang.org/protobuf/encoding/protowire"

	"switchboard/actors"
	"switchboard/hub"
)

// Field numbers of message switchboard.v1.Frame (switchboard.proto).
const (
	fieldPkgID      protowire.Number = 1
	fieldReqID      protowire.Number = 2
	fieldData       protowire.Number = 3
	fieldStatusCode protowire.Number = 4
	fieldMeta       protowire.Number = 5
	fieldMsg        protowire.Number = 6
	fieldTopic      protowire.Number = 7
	fieldSeq        protowire.Number = 8
	fieldEpoch      protowire.Number = 9
)

// frameWireTypes is the wire type of each field of Frame, by number. A request that carries a
// field of Frame with another wire type is malformed (the generated parsers of most languages
// refuse it too); fields of other numbers are skipped.
var frameWireTypes = [...]protowire.Type{
	fieldPkgID:      protowire.VarintType,
	fieldReqID:      protowire.BytesType,
	fieldData:       protowire.BytesType,
	fieldStatusCode: protowire.VarintType,
	fieldMeta:       protowire.BytesType,
	fieldMsg:        protowire.BytesType,
	fieldTopic:      protowire.BytesType,
	fieldSeq:        protowire.VarintType,
	fieldEpoch:      protowire.BytesType,
}

// protoCodec carries the envelope as a switchboard.v1.Frame (switchboard.proto) in binary
// frames, in both directions. data and meta stay JSON text inside the message, so what a
// handler gets and answers, and every schema and validation error, is the same as on a JSON
// connection; only the envelope around them changes. Encoding and decoding are written out with
// protowire (no generated code): the message is flat and the field order fixed. Stateless.
type protoCodec struct{}

var _ wireCodec = protoCodec{}

func (protoCodec) opcode() gws.Opcode { return gws.OpcodeBinary }

func (protoCodec) refusal() string { return "text frames are not accepted on a protobuf connection" }

var jsonNull = []byte("null")

// EncodeResponse writes every field the JSON envelope has: data always (its JSON, "null"
// included), status_code always (explicit presence, so 0 is on the wire), meta only when it is
// not null and msg only when it is not null (absent means null).
func (protoCodec) EncodeResponse(r *actors.Response) ([]byte, error) {
	data := jsonNull
	if r.Data != nil {
		var err error
		if data, err = marshalData(r.Data); err != nil {
			return nil, err
		}
	}
	var meta []byte
	if r.Meta != nil {
		var err error
		if meta, err = json.Marshal(r.Meta); err != nil {
			return nil, err
		}
	}
	b := newFrameBuf(40 + len(r.ReqID) + len(data) + len(meta) + len(r.Msg))
	b = appendInt32Field(b, fieldPkgID, int32(r.PkgID))
	b = appendStringField(b, fieldReqID, r.ReqID)
	b = protowire.AppendTag(b, fieldData, protowire.BytesType)
	b = protowire.AppendBytes(b, data)
	b = protowire.AppendTag(b, fieldStatusCode, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(int64(int32(r.Status))))
	if len(meta) > 0 {
		b = protowire.AppendTag(b, fieldMeta, protowire.BytesType)
		b = protowire.AppendBytes(b, meta)
	}
	if r.Msg != "" {
		b = appendStringField(b, fieldMsg, r.Msg)
	}
	return sealFrame(b, opBinary), nil
}

// EncodeBroadcast mirrors the JSON broadcast: the zero UUID as req_id, data ({} when empty), no
// status_code, topic on a topic broadcast and seq and epoch when it has them.
func (protoCodec) EncodeBroadcast(m *hub.Message) ([]byte, error) {
	data := []byte(m.Data)
	if len(data) == 0 {
		data = emptyObject
	}
	b := newFrameBuf(64 + len(data) + len(m.Topic) + len(m.Epoch))
	b = appendInt32Field(b, fieldPkgID, int32(m.PkgID))
	b = appendStringField(b, fieldReqID, zeroUUID)
	b = protowire.AppendTag(b, fieldData, protowire.BytesType)
	b = protowire.AppendBytes(b, data)
	if m.Topic != "" {
		b = appendStringField(b, fieldTopic, m.Topic)
		if m.Seq > 0 {
			b = protowire.AppendTag(b, fieldSeq, protowire.VarintType)
			b = protowire.AppendVarint(b, m.Seq)
		}
		if m.Epoch != "" {
			b = appendStringField(b, fieldEpoch, m.Epoch)
		}
	}
	return sealFrame(b, opBinary), nil
}

// appendInt32Field appends an implicit-presence int32 field (nothing when 0). Negative values
// take ten bytes, sign-extended, as protobuf's int32 does.
func appendInt32Field(b []byte, num protowire.Number, v int32) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(int64(v)))
}

// appendStringField appends a string field. Protobuf strings must be UTF-8 (most parsers refuse
// the whole message otherwise), so invalid bytes are replaced; the server's strings are UTF-8
// already, this only guards the rule.
func appendStringField(b []byte, num protowire.Number, s string) []byte {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// decode reads a request Frame strictly: a truncated or overlong value, a field number out of
// range, a field of Frame with the wrong wire type or a stray end-group makes the frame
// malformed; fields Frame does not have are skipped as proto3 asks (groups up to maxGroupDepth
// deep). Repeated fields of Frame take the last value. Only pkg_id, req_id and data matter in a
// request; the other fields of Frame are read and ignored. Everything kept is copied.
//
// The answers agree with a JSON connection's (docs/protocol.md §1.2): a missing pkg_id is a
// malformed envelope (2 at /pkg_id; proto3 writes no 0, and there is no pkg_id 0), a req_id
// that is not a UUID is echoed only when it is short printable ASCII, and data must be UTF-8
// JSON no deeper than actors.MaxDepth.
func (protoCodec) decode(frame []byte) (*actors.Request, *actors.Response) {
	var (
		pkgRaw                uint64
		reqID, data           []byte
		pkgSeen, reqSeen, bad bool
	)
	for b := frame; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num > protowire.MaxValidNumber {
			bad = true
			break
		}
		b = b[n:]
		if int(num) < len(frameWireTypes) {
			if typ != frameWireTypes[num] {
				bad = true
				break
			}
			switch num {
			case fieldPkgID:
				pkgRaw, n = protowire.ConsumeVarint(b)
				pkgSeen = n >= 0
			case fieldReqID:
				reqID, n = protowire.ConsumeBytes(b)
				reqSeen = n >= 0
			case fieldData:
				data, n = protowire.ConsumeBytes(b)
			default:
				n = protowire.ConsumeFieldValue(num, typ, b)
			}
		} else if typ == protowire.StartGroupType {
			n = skipGroup(b, num)
		} else {
			// Not a group: ConsumeFieldValue does not recurse. An end-group here has no start.
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			bad = true
			break
		}
		b = b[n:]
	}
	pkgID, pkgOK := int32Of(pkgRaw)
	// What was read of req_id is answered with, as a JSON connection would (zero UUID when
	// absent or empty, proto3's default).
	rid, ridOK := zeroUUID, false
	if reqSeen && len(reqID) > 0 {
		rid, ridOK = answerReqID(string(reqID))
	}
	if bad {
		// What was read before the damage is echoed, so the client can match the answer.
		return nil, invalidEnvelope(pkgID, rid, "/", "frame is not a protobuf switchboard.v1.Frame")
	}
	if !ridOK {
		return nil, invalidEnvelope(pkgID, rid, "/req_id", "req_id must be a UUID string")
	}
	if !pkgSeen || !pkgOK {
		return nil, invalidEnvelope(0, rid, "/pkg_id", pkgIDMessage(!pkgSeen))
	}
	d := trimJSONSpace(data)
	switch {
	case len(d) == 0 || string(d) == "null":
		d = emptyObject
	case !utf8.Valid(d):
		return nil, invalidEnvelope(pkgID, rid, "/data", "data must be UTF-8 JSON text")
	case d[0] != '{' || !json.Valid(d):
		return nil, invalidEnvelope(pkgID, rid, "/data", "data must be a JSON object")
	case actors.DepthExceeds(d, actors.MaxDepth):
		return nil, invalidEnvelope(pkgID, rid, "/data", actors.DepthMessage)
	default:
		d = append(json.RawMessage(nil), d...)
	}
	return &actors.Request{PkgID: pkgID, ReqID: rid, Data: d, Transport: "ws"}, nil
}

// int32Of reads a varint as protobuf's int32: a value in range, or a negative one sign-extended
// to 64 bits. Other values (a client cannot send them as int32) are refused rather than cut.
func int32Of(v uint64) (int, bool) {
	if s := int64(v); s >= math.MinInt32 && s <= math.MaxInt32 {
		return int(s), true
	}
	return 0, false
}

// maxGroupDepth bounds the nesting of an unknown group. Proto3 has no groups; the limit only
// keeps skipping them cheap and flat (no recursion on the read goroutine's stack).
const maxGroupDepth = 16

// skipGroup returns the length of the rest of a group started by field num (after its start
// tag, through its end tag), or a negative value when it is malformed or nested too deep.
func skipGroup(b []byte, num protowire.Number) int {
	var open [maxGroupDepth]protowire.Number
	open[0] = num
	depth, n0 := 1, len(b)
	for depth > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num > protowire.MaxValidNumber {
			return -1
		}
		b = b[n:]
		switch typ {
		case protowire.StartGroupType:
			if depth == maxGroupDepth {
				return -1
			}
			open[depth] = num
			depth++
			continue
		case protowire.EndGroupType:
			if open[depth-1] != num {
				return -1
			}
			depth--
			continue
		}
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return -1
		}
		b = b[n:]
	}
	return n0 - len(b)
}

// trimJSONSpace trims the whitespace JSON allows around a value.
func trimJSONSpace(b []byte) []byte {
	isSpace := func(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }
	for len(b) > 0 && isSpace(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}
