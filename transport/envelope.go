package transport

import (
	"bytes"
	"encoding/json"
	"strconv"

	"switchboard/actors"
)

// zeroUUID is the req_id of broadcasts and of answers to frames without a usable req_id.
const zeroUUID = "00000000-0000-0000-0000-000000000000"

// envelope is the raw shape of a request frame; fields are checked one by one so each problem
// gets the answer docs/protocol.md §1.2 asks for.
type envelope struct {
	PkgID json.RawMessage `json:"pkg_id"`
	ReqID json.RawMessage `json:"req_id"`
	Data  json.RawMessage `json:"data"`
}

var emptyObject = json.RawMessage("{}")

// decodeEnvelope turns a text frame into a Request, or into the status-2 Response the client
// gets instead. It never fails otherwise and copies what it keeps (frame buffers are reused).
// Nothing here recurses: scanEnvelope reads the envelope's members as raw bytes in one loop
// (as json.Unmarshal into envelope would), and data's depth is counted on the bytes
// (actors.DepthExceeds) before anything decodes it.
func decodeEnvelope(frame []byte) (*actors.Request, *actors.Response) {
	var env envelope
	if !scanEnvelope(frame, &env) {
		msg := "frame is not a JSON object"
		if actors.DepthExceeds(frame, actors.MaxDepth+1) {
			msg = "frame is not a JSON object or is " + actors.DepthMessage // encoding/json stops at 10 000
		}
		return nil, invalidEnvelope(0, zeroUUID, "/", msg)
	}
	pkgID, pkgOK := parsePkgID(env.PkgID)
	reqID, ok := parseReqID(env.ReqID)
	if !ok {
		return nil, invalidEnvelope(pkgID, reqID, "/req_id", "req_id must be a UUID string")
	}
	if !pkgOK {
		return nil, invalidEnvelope(0, reqID, "/pkg_id", pkgIDMessage(len(env.PkgID) == 0 || string(env.PkgID) == "null"))
	}
	data := env.Data
	switch d := bytes.TrimSpace(data); {
	case len(d) == 0 || bytes.Equal(d, []byte("null")):
		data = emptyObject
	case d[0] != '{':
		return nil, invalidEnvelope(pkgID, reqID, "/data", "data must be an object")
	case actors.DepthExceeds(d, actors.MaxDepth):
		return nil, invalidEnvelope(pkgID, reqID, "/data", actors.DepthMessage)
	}
	return &actors.Request{PkgID: pkgID, ReqID: reqID, Data: data, Transport: "ws"}, nil
}

func invalidEnvelope(pkgID int, reqID, path, msg string) *actors.Response {
	return &actors.Response{
		PkgID: pkgID, ReqID: reqID, Status: actors.StatusInvalidData, Msg: "Invalid data", Kind: actors.ErrInvalid,
		Data: actors.InvalidData{Errors: []actors.FieldError{{Path: path, Message: msg}}},
	}
}

// pkgIDMessage says what is wrong with a pkg_id that is missing or not a 32-bit integer.
func pkgIDMessage(missing bool) string {
	if missing {
		return "pkg_id is required"
	}
	return "pkg_id must be a 32-bit integer"
}

// parseReqID returns the req_id to answer with and whether it is a UUID. A string that is not
// a UUID is answered as echoReqID allows; anything else gives the zero UUID.
func parseReqID(raw json.RawMessage) (string, bool) {
	if s, ok := plainString(raw); ok {
		return answerReqID(s)
	}
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return zeroUUID, false
	}
	return answerReqID(s)
}

// plainString returns the JSON string literal raw as a Go string when it holds only printable
// ASCII and no escape (every UUID): then its text is its value, as encoding/json would decode it.
func plainString(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", false
	}
	body := raw[1 : len(raw)-1]
	for _, c := range body {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return "", false
		}
	}
	return string(body), true
}

// answerReqID returns the req_id an answer carries for the string s, and whether s is a UUID.
func answerReqID(s string) (string, bool) {
	if isUUID(s) {
		return s, true
	}
	return echoReqID(s), false
}

// maxEchoedReqID is the longest req_id that is not a UUID but still echoed (docs/protocol.md §1.2).
const maxEchoedReqID = 64

// echoReqID is what an answer carries for a req_id that is not a UUID: the req_id itself when
// it is at most 64 printable ASCII characters, so a client with its own ids can still match
// the refusal; otherwise the zero UUID, so that 60 KB, terminal escapes or control characters
// sent as a req_id are not reflected into the client's logs and screens.
func echoReqID(s string) string {
	if len(s) > maxEchoedReqID {
		return zeroUUID
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return zeroUUID
		}
	}
	return s
}

// isUUID accepts the canonical 8-4-4-4-12 hexadecimal form, any version.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < 36; i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}

// parsePkgID accepts a JSON integer that fits in 32 bits (no fraction, no exponent); 0 otherwise.
func parsePkgID(raw json.RawMessage) (int, bool) {
	n, err := strconv.ParseInt(string(raw), 10, 32)
	if err != nil {
		return 0, false
	}
	return int(n), true
}
