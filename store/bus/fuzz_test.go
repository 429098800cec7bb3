package bus

import (
	"encoding/json"
	"testing"
)

// FuzzDecodeEnvelope: whatever arrives on the channel, decoding never panics, and what it
// accepts is a message with JSON data or a probe with a node and a time.
func FuzzDecodeEnvelope(f *testing.F) {
	for _, s := range []string{
		`{"n":"a","k":"m","m":{"pkg_id":1,"data":{"x":1},"topic":"t","epoch":"8a2f","seq":3}}`,
		`{"n":"a","k":"m","m":{"pkg_id":1,"data":{"x":1},"topic":"t","seq":3}}`,
		`{"n":"a","k":"p","t":1700000000000000000}`,
		`{"n":"a","k":"m"}`, `{"k":"x"}`, `null`, `[]`, `{"n":"a","k":"m","m":null}`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		e, err := decodeEnvelope(payload)
		if err != nil {
			return
		}
		switch e.Kind {
		case kindMessage:
			if e.Msg == nil || !json.Valid(e.Msg.Data) || (e.Msg.Seq != 0 && (e.Msg.Epoch == "" || len(e.Msg.Epoch) > MaxEpochLen)) {
				t.Fatalf("accepted message %+v", e.Msg)
			}
		case kindProbe:
			if e.Node == "" || e.Time == 0 {
				t.Fatalf("accepted probe %+v", e)
			}
		default:
			t.Fatalf("accepted kind %q", e.Kind)
		}
	})
}
