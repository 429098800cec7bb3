package transport

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"switchboard/actors"
)

const someUUID = "550e8400-e29b-41d4-a716-446655440000"

func TestDecodeEnvelope(t *testing.T) {
	cases := []struct {
		name      string
		frame     string
		wantPkg   int
		wantReqID string
		wantData  string
		wantBad   string // error path when the frame is refused
	}{
		{"full", `{"pkg_id":1,"req_id":"` + someUUID + `","data":{"filters":{"name":"J"}}}`, 1, someUUID, `{"filters":{"name":"J"}}`, ""},
		{"data absent is {}", `{"pkg_id":2,"req_id":"` + someUUID + `"}`, 2, someUUID, `{}`, ""},
		{"data null is {}", `{"pkg_id":2,"req_id":"` + someUUID + `","data":null}`, 2, someUUID, `{}`, ""},
		{"unknown keys ignored", `{"pkg_id":3,"req_id":"` + someUUID + `","x":[1],"data":{}}`, 3, someUUID, `{}`, ""},
		{"upper-case uuid", `{"pkg_id":3,"req_id":"550E8400-E29B-41D4-A716-446655440000"}`, 3, "550E8400-E29B-41D4-A716-446655440000", `{}`, ""},
		{"not json", `hello`, 0, zeroUUID, "", "/"},
		{"json array", `[1,2]`, 0, zeroUUID, "", "/"},
		{"missing req_id", `{"pkg_id":1}`, 1, zeroUUID, "", "/req_id"},
		{"numeric req_id", `{"pkg_id":1,"req_id":5}`, 1, zeroUUID, "", "/req_id"},
		{"non-uuid req_id is echoed", `{"pkg_id":1,"req_id":"abc"}`, 1, "abc", "", "/req_id"},
		{"empty req_id is echoed", `{"pkg_id":1,"req_id":""}`, 1, "", "", "/req_id"},
		{"req_id of 64 printable characters is echoed", `{"pkg_id":1,"req_id":"` + strings.Repeat("~", 64) + `"}`, 1, strings.Repeat("~", 64), "", "/req_id"},
		{"req_id of 65 characters is not", `{"pkg_id":1,"req_id":"` + strings.Repeat("a", 65) + `"}`, 1, zeroUUID, "", "/req_id"},
		{"req_id of 60 KB is not", `{"pkg_id":1,"req_id":"` + strings.Repeat("a", 60<<10) + `"}`, 1, zeroUUID, "", "/req_id"},
		{"req_id with an ANSI escape is not", `{"pkg_id":1,"req_id":"\u001b[2J"}`, 1, zeroUUID, "", "/req_id"},
		{"req_id with NUL is not", `{"pkg_id":1,"req_id":"a\u0000"}`, 1, zeroUUID, "", "/req_id"},
		{"req_id with DEL is not", `{"pkg_id":1,"req_id":"a\u007f"}`, 1, zeroUUID, "", "/req_id"},
		{"req_id not ASCII is not", `{"pkg_id":1,"req_id":"é"}`, 1, zeroUUID, "", "/req_id"},
		{"bad req_id and pkg_id", `{"pkg_id":"x","req_id":"abc"}`, 0, "abc", "", "/req_id"},
		{"missing pkg_id", `{"req_id":"` + someUUID + `"}`, 0, someUUID, "", "/pkg_id"},
		{"null pkg_id", `{"pkg_id":null,"req_id":"` + someUUID + `"}`, 0, someUUID, "", "/pkg_id"},
		{"fractional pkg_id", `{"pkg_id":1.5,"req_id":"` + someUUID + `"}`, 0, someUUID, "", "/pkg_id"},
		{"string pkg_id", `{"pkg_id":"1","req_id":"` + someUUID + `"}`, 0, someUUID, "", "/pkg_id"},
		{"huge pkg_id", `{"pkg_id":99999999999,"req_id":"` + someUUID + `"}`, 0, someUUID, "", "/pkg_id"},
		{"data not an object", `{"pkg_id":1,"req_id":"` + someUUID + `","data":[1]}`, 1, someUUID, "", "/data"},
		{"data 32 levels deep", `{"pkg_id":1,"req_id":"` + someUUID + `","data":` + nested(actors.MaxDepth) + `}`, 1, someUUID, nested(actors.MaxDepth), ""},
		{"data 33 levels deep", `{"pkg_id":1,"req_id":"` + someUUID + `","data":` + nested(actors.MaxDepth+1) + `}`, 1, someUUID, "", "/data"},
		{"data 9 000 levels deep", `{"pkg_id":1,"req_id":"` + someUUID + `","data":` + nested(9000) + `}`, 1, someUUID, "", "/data"},
		{"frame deeper than encoding/json allows", `{"pkg_id":1,"req_id":"` + someUUID + `","data":` + nested(10001) + `}`, 0, zeroUUID, "", "/"},
		{"brackets in strings do not count", `{"pkg_id":1,"req_id":"` + someUUID + `","data":{"a":"` + strings.Repeat("[{", 40) + `\"[["}}`, 1, someUUID, `{"a":"` + strings.Repeat("[{", 40) + `\"[["}`, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, bad := decodeEnvelope([]byte(tc.frame))
			if tc.wantBad != "" {
				if bad == nil {
					t.Fatalf("want refusal, got %+v", req)
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

// nested is a JSON object depth levels deep: {"a":[{"a":[…{}…]}]}.
func nested(depth int) string {
	var b strings.Builder
	for i := 1; i < depth; i++ {
		if i%2 == 1 {
			b.WriteString(`{"a":`)
		} else {
			b.WriteString(`[`)
		}
	}
	b.WriteString(`{}`)
	for i := depth - 1; i >= 1; i-- {
		if i%2 == 1 {
			b.WriteString(`}`)
		} else {
			b.WriteString(`]`)
		}
	}
	return b.String()
}

func TestDecodeEnvelopeCopiesData(t *testing.T) {
	frame := []byte(`{"pkg_id":1,"req_id":"` + someUUID + `","data":{"a":1}}`)
	req, _ := decodeEnvelope(frame)
	for i := range frame {
		frame[i] = 'x' // gws reuses frame buffers
	}
	if string(req.Data) != `{"a":1}` {
		t.Fatalf("data aliases the frame buffer: %s", req.Data)
	}
}

// FuzzDecodeEnvelope: any frame yields exactly one of a request or a refusal, and the answer
// the server would send is valid JSON. A request carries a UUID and an object no deeper than
// actors.MaxDepth; a refusal echoes a req_id only as docs/protocol.md §1.2 allows and names an
// envelope field. Seeds: f.Add below and testdata/fuzz/FuzzDecodeEnvelope.
func FuzzDecodeEnvelope(f *testing.F) {
	for _, s := range []string{`{"pkg_id":1,"req_id":"` + someUUID + `"}`, `{}`, `[]`, `"x"`, `{"pkg_id":1,"req_id":"\u0000\"<>"}`, "\xff"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) > 64<<10 {
			t.Skip("larger than SWITCHBOARD_WS_MAX_MESSAGE_BYTES allows: closed with 1009 before decoding")
		}
		req, bad := decodeEnvelope(frame)
		if (req == nil) == (bad == nil) {
			t.Fatalf("want exactly one of request and refusal: %v %v", req, bad)
		}
		if req != nil {
			if !json.Valid(req.Data) || req.Data[0] != '{' || actors.DepthExceeds(req.Data, actors.MaxDepth) || !isUUID(req.ReqID) {
				t.Fatalf("request %+v data %q", req, req.Data)
			}
			return
		}
		checkRefusal(t, bad)
		out, err := jsonCodec{}.EncodeResponse(bad)
		if err != nil {
			t.Fatal(err)
		}
		payload := stripHeader(t, out)
		if utf8.Valid(frame) && !json.Valid(payload) {
			t.Fatalf("refusal is not JSON: %q", payload)
		}
	})
}

// checkRefusal holds for every envelope refusal of either codec: status 2 at an envelope
// path, and a req_id that is the zero UUID, a UUID, or at most 64 printable ASCII characters.
func checkRefusal(t *testing.T, bad *actors.Response) {
	t.Helper()
	errs := bad.Data.(actors.InvalidData).Errors
	if bad.Status != actors.StatusInvalidData || bad.Msg != "Invalid data" || len(errs) != 1 {
		t.Fatalf("refusal %+v", bad)
	}
	switch errs[0].Path {
	case "/", "/req_id", "/pkg_id", "/data":
	default:
		t.Fatalf("refusal path %q", errs[0].Path)
	}
	if id := bad.ReqID; !isUUID(id) && echoReqID(id) != id {
		t.Fatalf("refusal echoes req_id %q", id)
	}
}

// plainString's fast path gives what encoding/json decodes, or steps aside.
func FuzzPlainString(f *testing.F) {
	for _, s := range []string{`"` + someUUID + `"`, `""`, `"a\"b"`, `"\u0041"`, "\"\xff\"", `"é"`, `"a`, `1`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, ok := plainString(raw)
		if !ok {
			return
		}
		var want string
		if err := json.Unmarshal(raw, &want); err != nil || got != want {
			t.Fatalf("plainString(%q) = %q; encoding/json: %q, %v", raw, got, want, err)
		}
	})
}
