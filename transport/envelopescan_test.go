package transport

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzScanEnvelope: scanEnvelope reads every frame exactly as json.Unmarshal into envelope does
// (success, and each field's bytes).
func FuzzScanEnvelope(f *testing.F) {
	for _, s := range []string{
		`{"pkg_id":1,"req_id":"` + someUUID + `","data":{"a":[1,{"b":"}"}]}}`, `{}`, `null`, ` null `, `[]`, `"x"`, `1`,
		`{"PKG_ID":1,"Req_Id":"x","DATA":null}`, `{"pkg_id":1,"pkg_id":"2"}`, `{"\u0070kg_id":3}`,
		"{\"p\u212ag_id\":4}", `{"data":"a\"b","x":[[[]]],"req_id":true}`, ` { "data" : { } , "pkg_id" : -1.5e3 } `,
		`{"pkg_id":1,}`, `{"pkg_id"}`, `{"a":1}x`, "\xff", `{"data":{"a":1}`, `{"pkg_id":[1,2],"data":[{}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		var want, got envelope
		wantOK := json.Unmarshal(frame, &want) == nil
		gotOK := scanEnvelope(frame, &got)
		if wantOK != gotOK {
			t.Fatalf("%q: scan ok %v, json.Unmarshal ok %v", frame, gotOK, wantOK)
		}
		if !wantOK {
			return
		}
		for _, p := range [][2]json.RawMessage{{want.PkgID, got.PkgID}, {want.ReqID, got.ReqID}, {want.Data, got.Data}} {
			if !bytes.Equal(p[0], p[1]) || (p[0] == nil) != (p[1] == nil) {
				t.Fatalf("%q: scan %+v, json.Unmarshal %+v", frame, got, want)
			}
		}
		if len(frame) > 0 && len(got.Data) > 0 && &got.Data[0] == &frame[bytes.Index(frame, got.Data)] {
			t.Fatalf("data aliases the frame")
		}
	})
}
