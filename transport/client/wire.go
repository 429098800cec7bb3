package client

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/lxzan/gws"
	"google.golang.org/protobuf/encoding/protowire"
)

// Format is the frame format of a connection (docs/protocol.md §1.1, query format=).
type Format int

const (
	// JSON: text frames holding the JSON envelope (the default).
	JSON Format = iota
	// Protobuf: binary frames holding one switchboard.v1.Frame (transport/switchboard.proto).
	Protobuf
)

func (f Format) String() string {
	switch f {
	case JSON:
		return "json"
	case Protobuf:
		return "protobuf"
	}
	return "Format(" + strconv.Itoa(int(f)) + ")"
}

func (f Format) opcode() gws.Opcode {
	if f == Protobuf {
		return gws.OpcodeBinary
	}
	return gws.OpcodeText
}

// zeroUUID is the req_id of broadcasts.
const zeroUUID = "00000000-0000-0000-0000-000000000000"

// pkg_ids the client itself sends (docs/protocol.md §1.4).
const (
	pkgSubscribe    = 10
	pkgUnsubscribe  = 11
	pkgRefreshToken = 12
)

// frame is one decoded server frame: an answer (HasStatus) or a broadcast. The client keeps its
// own copy of the envelope's few fields rather than importing the server's types (transport
// imports the actors and the hub; this package is the far end of the wire and imports neither).
type frame struct {
	PkgID     int
	ReqID     string
	HasStatus bool // answers carry status_code, broadcasts do not
	Status    int
	Data      json.RawMessage
	Meta      json.RawMessage // nil when null or absent
	Msg       string          // "" when null or absent
	Topic     string
	Seq       uint64
	Epoch     string
}

// encodeRequest returns the payload of a request frame in format f. data is JSON (an object)
// or nil for none.
func encodeRequest(f Format, pkgID int, reqID string, data json.RawMessage) []byte {
	if f == Protobuf {
		b := make([]byte, 0, 48+len(data))
		if pkgID != 0 {
			b = protowire.AppendTag(b, 1, protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(int64(int32(pkgID))))
		}
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendString(b, reqID)
		if len(data) > 0 {
			b = protowire.AppendTag(b, 3, protowire.BytesType)
			b = protowire.AppendBytes(b, data)
		}
		return b
	}
	b := make([]byte, 0, 64+len(data))
	b = append(b, `{"pkg_id":`...)
	b = strconv.AppendInt(b, int64(pkgID), 10)
	b = append(b, `,"req_id":`...)
	b = strconv.AppendQuote(b, reqID) // a UUID: plain ASCII, so Go quoting is JSON quoting
	if len(data) > 0 {
		b = append(b, `,"data":`...)
		b = append(b, data...)
	}
	return append(b, '}')
}

// decodeFrame decodes a server frame of format f. It copies what it keeps (gws reuses its read
// buffers) and never panics, whatever the bytes.
func decodeFrame(f Format, b []byte) (*frame, error) {
	if f == Protobuf {
		return decodeProto(b)
	}
	return decodeJSON(b)
}

func decodeJSON(b []byte) (*frame, error) {
	var w struct {
		PkgID      int             `json:"pkg_id"`
		ReqID      string          `json:"req_id"`
		StatusCode *int            `json:"status_code"`
		Data       json.RawMessage `json:"data"`
		Meta       json.RawMessage `json:"meta"`
		Msg        *string         `json:"msg"`
		Topic      string          `json:"topic"`
		Seq        uint64          `json:"seq"`
		Epoch      string          `json:"epoch"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadFrame, err)
	}
	fr := &frame{PkgID: w.PkgID, ReqID: w.ReqID, Data: w.Data, Topic: w.Topic, Seq: w.Seq, Epoch: w.Epoch}
	if w.StatusCode != nil {
		fr.HasStatus, fr.Status = true, *w.StatusCode
	}
	if w.Msg != nil {
		fr.Msg = *w.Msg
	}
	if len(w.Meta) > 0 && string(w.Meta) != "null" {
		fr.Meta = w.Meta
	}
	return fr, nil
}

// Field numbers of switchboard.v1.Frame. epoch (9) is read when present; a server that sends
// none leaves it "".
const (
	pbPkgID      = 1
	pbReqID      = 2
	pbData       = 3
	pbStatusCode = 4
	pbMeta       = 5
	pbMsg        = 6
	pbTopic      = 7
	pbSeq        = 8
	pbEpoch      = 9
)

func decodeProto(b []byte) (*frame, error) {
	fr := &frame{}
	bad := func(what string) (*frame, error) { return nil, fmt.Errorf("%w: protobuf %s", ErrBadFrame, what) }
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return bad("tag")
		}
		b = b[n:]
		var (
			v   uint64
			raw []byte
		)
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			raw, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return bad("value")
		}
		b = b[n:]
		wantBytes := num == pbReqID || num == pbData || num == pbMeta || num == pbMsg || num == pbTopic || num == pbEpoch
		wantVarint := num == pbPkgID || num == pbStatusCode || num == pbSeq
		if wantBytes && typ != protowire.BytesType || wantVarint && typ != protowire.VarintType {
			return bad(fmt.Sprintf("field %d of wire type %d", num, typ))
		}
		switch num {
		case pbPkgID:
			fr.PkgID = int(int32(v))
		case pbStatusCode:
			fr.HasStatus, fr.Status = true, int(int32(v))
		case pbSeq:
			fr.Seq = v
		case pbReqID:
			fr.ReqID = validString(raw)
		case pbMsg:
			fr.Msg = validString(raw)
		case pbTopic:
			fr.Topic = validString(raw)
		case pbEpoch:
			fr.Epoch = validString(raw)
		case pbData:
			fr.Data = append(json.RawMessage(nil), raw...)
		case pbMeta:
			if len(raw) > 0 && string(raw) != "null" {
				fr.Meta = append(json.RawMessage(nil), raw...)
			}
		}
	}
	if len(fr.Data) == 0 {
		fr.Data = nil
	}
	return fr, nil
}

// validString copies raw into a string, replacing bytes that are not UTF-8 (protobuf strings
// must be; a server bug should not make the client hand out invalid strings).
func validString(raw []byte) string {
	if utf8.Valid(raw) {
		return string(raw)
	}
	return strings.ToValidUTF8(string(raw), "\uFFFD")
}
