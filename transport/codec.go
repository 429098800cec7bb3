package transport

import (
	"encoding/json"
	"strconv"

	"github.com/lxzan/gws"

	"switchboard/actors"
	"switchboard/hub"
)

// WebSocket opcodes the writer frames itself.
const (
	opText   = 0x1
	opBinary = 0x2
	opClose  = 0x8
	opPing   = 0x9
	opPong   = 0xA
)

// maxHeader is the longest server frame header (no mask): 2 + 8 bytes.
const maxHeader = 10

// newFrameBuf returns a buffer with room for a header in front of the payload that follows.
func newFrameBuf(payloadHint int) []byte {
	return make([]byte, maxHeader, maxHeader+payloadHint)
}

// sealFrame writes the header of a final, unmasked server frame in front of the payload that
// buf holds after maxHeader, and returns the complete frame.
func sealFrame(buf []byte, opcode byte) []byte {
	n := len(buf) - maxHeader
	var h int
	switch {
	case n < 126:
		h = 2
		buf[maxHeader-1] = byte(n)
	case n <= 0xFFFF:
		h = 4
		buf[maxHeader-3] = 126
		buf[maxHeader-2] = byte(n >> 8)
		buf[maxHeader-1] = byte(n)
	default:
		h = 10
		buf[1] = 127
		for i := 0; i < 8; i++ {
			buf[maxHeader-1-i] = byte(uint64(n) >> (8 * i))
		}
	}
	buf[maxHeader-h] = 0x80 | opcode
	return buf[maxHeader-h:]
}

// controlFrame builds a control frame (ping, pong, close) with a payload of at most 125 bytes.
func controlFrame(opcode byte, payload []byte) []byte {
	if len(payload) > 125 {
		payload = payload[:125]
	}
	return append([]byte{0x80 | opcode, byte(len(payload))}, payload...)
}

// wireCodec is a connection's frame format, chosen by the handshake's format parameter
// (docs/protocol.md §1.1): how its data frames are decoded and answers and broadcasts encoded.
// Implementations are stateless comparable values, the same for every connection of a format,
// so the hub, which encodes a broadcast once per distinct hub.Codec, encodes it once per format.
type wireCodec interface {
	hub.Codec
	// EncodeResponse turns an answer into one complete server frame.
	EncodeResponse(*actors.Response) ([]byte, error)
	// decode turns an inbound data frame into a Request, or into the status-2 answer the client
	// gets instead. It copies what it keeps (gws reuses frame buffers) and never panics.
	decode(frame []byte) (*actors.Request, *actors.Response)
	// opcode is the data frame opcode the format accepts; a frame of the other one closes the
	// connection with 1003 and refusal as the reason.
	opcode() gws.Opcode
	refusal() string
}

// codecFor returns the codec of a handshake's format parameter ("" is json).
func codecFor(format string) (wireCodec, bool) {
	switch format {
	case "", "json":
		return jsonCodec{}, true
	case "protobuf":
		return protoCodec{}, true
	}
	return nil, false
}

// jsonCodec encodes envelopes as JSON text frames (docs/protocol.md §1.2). It is stateless.
type jsonCodec struct{}

var _ wireCodec = jsonCodec{}

func (jsonCodec) decode(frame []byte) (*actors.Request, *actors.Response) {
	return decodeEnvelope(frame)
}

func (jsonCodec) opcode() gws.Opcode { return gws.OpcodeText }

func (jsonCodec) refusal() string { return "binary frames are not accepted on a json connection" }

func (jsonCodec) EncodeResponse(r *actors.Response) ([]byte, error) {
	b := newFrameBuf(96 + dataSizeHint(r.Data) + len(r.Msg))
	b = append(b, `{"pkg_id":`...)
	b = strconv.AppendInt(b, int64(r.PkgID), 10)
	b = append(b, `,"req_id":`...)
	b = appendJSONString(b, r.ReqID)
	b = append(b, `,"status_code":`...)
	b = strconv.AppendInt(b, int64(r.Status), 10)
	b = append(b, `,"data":`...)
	if r.Data == nil {
		b = append(b, "null"...)
	} else {
		var err error
		if b, err = appendData(b, r.Data); err != nil {
			return nil, err
		}
	}
	b = append(b, `,"meta":`...)
	if r.Meta == nil {
		b = append(b, "null"...)
	} else {
		meta, err := json.Marshal(r.Meta)
		if err != nil {
			return nil, err
		}
		b = append(b, meta...)
	}
	b = append(b, `,"msg":`...)
	if r.Msg == "" {
		b = append(b, "null"...)
	} else {
		b = appendJSONString(b, r.Msg)
	}
	b = append(b, '}')
	return sealFrame(b, opText), nil
}

func (jsonCodec) EncodeBroadcast(m *hub.Message) ([]byte, error) {
	b := newFrameBuf(96 + len(m.Data) + len(m.Topic) + len(m.Epoch))
	b = append(b, `{"pkg_id":`...)
	b = strconv.AppendInt(b, int64(m.PkgID), 10)
	b = append(b, `,"req_id":"`+zeroUUID+`","data":`...)
	if len(m.Data) == 0 {
		b = append(b, "{}"...)
	} else {
		b = append(b, m.Data...)
	}
	if m.Topic != "" {
		b = append(b, `,"topic":`...)
		b = appendJSONString(b, m.Topic)
		if m.Seq > 0 {
			b = append(b, `,"seq":`...)
			b = strconv.AppendUint(b, m.Seq, 10)
		}
		if m.Epoch != "" {
			b = append(b, `,"epoch":`...)
			b = appendJSONString(b, m.Epoch)
		}
	}
	b = append(b, '}')
	return sealFrame(b, opText), nil
}

// appendJSONString appends s as a JSON string, taking the short path for the plain strings
// (UUIDs, messages) that make up almost every envelope.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
