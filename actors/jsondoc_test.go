package actors

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// FuzzDecodeDocument: decodeDocument gives what jsonschema.UnmarshalJSON gives (the decoding
// validation used before), and fails where it fails.
func FuzzDecodeDocument(f *testing.F) {
	for _, s := range []string{
		`{"filters":{"name":"ursula","id":3}}`, `{"a":1,"a":{"b":[1,2.5e3,-0,true,false,null]}}`,
		`{}`, `[]`, ` {"x":[]} `, `{"s":"\u00e9\ud83d\ude00\"\\\/\b\f\n\r\t","k\u0000":"\ud800"}`,
		"{\"bad\":\"\xff\xfe\"}", `{"a":1}{}`, `{"a":`, ``, `01`, `"é"`, `1e`, `{"a":1,}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if DepthExceeds(b, MaxDepth) {
			return // never decoded (checkText)
		}
		want, wantErr := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		got, err := decodeDocument(b)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("%q: error %v, jsonschema's %v", b, err, wantErr)
		}
		if err == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: got %#v, want %#v", b, got, want)
		}
	})
}
