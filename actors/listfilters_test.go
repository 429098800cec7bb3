package actors

import (
	"encoding/json"
	"reflect"
	"testing"

	"switchboard/store"
)

// FuzzListFilters: where listFilters reads GET_AUTHORS's data itself, json.Unmarshal into the
// handler's struct (what decode does) succeeds and gives the same filter.
func FuzzListFilters(f *testing.F) {
	for _, s := range []string{
		`{"filters":{"name":"hot-"}}`, `{"filters":{"id":3,"name":"a"}}`, `{}`, ` { "x" : [1,{"filters":2}], "filters" : { } } `,
		`{"filters":{"id":1},"filters":{"name":"x"}}`, `{"Filters":{"name":"x"}}`, `{"filters":{"id":1.0}}`,
		`{"filters":{"id":-0}}`, `{"filters":{"name":"\u00e9"}}`, `{"filters":{"name":"é","id":9223372036854775807}}`,
		`{"filters":null}`, `{"filters":{"id":1,"id":2}}`, `{"a":"}\"","filters":{"name":"b"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, ok := listFilters(b)
		if !ok || !json.Valid(b) {
			return // decode reads it (invalid data never passes the schema)
		}
		var in struct {
			Filters *authorFilters `json:"filters"`
		}
		if err := json.Unmarshal(b, &in); err != nil {
			t.Fatalf("%q: listFilters read %+v, json.Unmarshal failed: %v", b, got, err)
		}
		if want := in.Filters.store(); !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: listFilters %s, json.Unmarshal %s", b, show(got), show(want))
		}
	})
}

func show(f store.AuthorFilter) string {
	s := "{"
	if f.ID != nil {
		b, _ := json.Marshal(*f.ID)
		s += "id:" + string(b) + " "
	}
	if f.Name != nil {
		s += "name:" + *f.Name
	}
	return s + "}"
}

// TestListFiltersReadsCommonData: the data clients send (and the façade builds) is read by
// listFilters itself, not handed to decode.
func TestListFiltersReadsCommonData(t *testing.T) {
	for _, s := range []string{`{}`, `{"filters":{}}`, `{"filters":{"name":"hot-"}}`, `{"filters":{"id":3,"name":"Le Guin"}}`, `{"filters":{"id":3}}`} {
		if _, ok := listFilters([]byte(s)); !ok {
			t.Errorf("%s: not read", s)
		}
	}
}
