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
// gets the answer PROTOCOL.md §1.2 asks for.
type envelope struct {
	PkgID json.RawMessage `json:"pkg_id"`
	ReqID json.RawMessage `json:"req_id"`
	Data  json.RawMessage `json:"data"`
}

var emptyObject = json.RawMessage("{}")

// decodeEnvelope turns a text frame into a Request, or into the status-2 Response the client
// gets instead. It never fails otherwise and copies what it keeps (frame buffers are reused).
func decodeEnvelope(frame []byte) (*actors.Request, *actors.Response) {
	var env envelope
	if err := json.Unmarshal(frame, &env); err != nil {
		return nil, invalidEnvelope(0, zeroUUID, "/", "frame is not a JSON object")
	}
	pkgID, pkgOK := parsePkgID(env.PkgID)
	reqID, ok := parseReqID(env.ReqID)
	if !ok {
		return nil, invalidEnvelope(pkgID, reqID, "/req_id", "req_id must be a UUID string")
	}
	if !pkgOK {
		return nil, invalidEnvelope(0, reqID, "/pkg_id", "pkg_id must be an integer")
	}
	data := env.Data
	switch d := bytes.TrimSpace(data); {
	case len(d) == 0 || bytes.Equal(d, []byte("null")):
		data = emptyObject
	case d[0] != '{':
		return nil, invalidEnvelope(pkgID, reqID, "/data", "data must be an object")
	}
	return &actors.Request{PkgID: pkgID, ReqID: reqID, Data: data, Transport: "ws"}, nil
}

func invalidEnvelope(pkgID int, reqID, path, msg string) *actors.Response {
	return &actors.Response{
		PkgID: pkgID, ReqID: reqID, Status: actors.StatusInvalidData, Msg: "Invalid data", Kind: actors.ErrInvalid,
		Data: actors.InvalidData{Errors: []actors.FieldError{{Path: path, Message: msg}}},
	}
}

// parseReqID returns the req_id and whether it is a UUID. A string that is not a UUID is
// returned as given (it is echoed); anything else gives the zero UUID.
func parseReqID(raw json.RawMessage) (string, bool) {
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return zeroUUID, false
	}
	return s, isUUID(s)
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
