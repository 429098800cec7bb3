package transport

import (
	"encoding/json"
	"testing"

	"switchboard/store"
)

// FuzzAuthorsJSON: the author answers written directly are json.Marshal's bytes.
func FuzzAuthorsJSON(f *testing.F) {
	f.Add(int64(1), "Ursula K. Le Guin", int64(2), "<b>&\u2028\"\\\x01é")
	f.Add(int64(-9223372036854775808), "\xff\xfe", int64(0), "")
	f.Fuzz(func(t *testing.T, id1 int64, name1 string, id2 int64, name2 string) {
		authors := []store.Author{{ID: id1, Name: name1}, {ID: id2, Name: name2}}
		for _, v := range []any{authors, authors[:1], authors[:0], []store.Author(nil), authors[1]} {
			want, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			got, err := appendData([]byte("x"), v)
			if err != nil || string(got) != "x"+string(want) {
				t.Fatalf("%#v: got %s (%v), want x%s", v, got, err, want)
			}
			got, err = marshalData(v)
			if err != nil || string(got) != string(want) {
				t.Fatalf("%#v: marshalData %s (%v), want %s", v, got, err, want)
			}
		}
	})
}
