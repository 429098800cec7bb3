package transport

import (
	"encoding/json"
	"strconv"

	"switchboard/actors"
	"switchboard/store"
)

// appendData appends v as json.Marshal encodes it. The answers of the author handlers
// ([]store.Author, store.Author: GET_AUTHORS, CREATE_AUTHOR, UPDATE_AUTHOR) are written
// directly, without encoding/json's reflection (3k–5k instructions of a GET_AUTHORS of five
// rows; FuzzAuthorsJSON compares the bytes), and so is data that encodes itself
// (actors.JSONAppender: SUBSCRIBE's answer); anything else goes through json.Marshal.
func appendData(b []byte, v any) ([]byte, error) {
	switch d := v.(type) {
	case actors.JSONAppender:
		return d.AppendJSON(b), nil
	case []store.Author:
		if d == nil {
			return append(b, "null"...), nil
		}
		b = append(b, '[')
		for i := range d {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendAuthor(b, &d[i])
		}
		return append(b, ']'), nil
	case store.Author:
		return appendAuthor(b, &d), nil
	}
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(b, data...), nil
}

// marshalData is json.Marshal(v), with appendData's direct encodings.
func marshalData(v any) ([]byte, error) {
	switch v.(type) {
	case []store.Author, store.Author, actors.JSONAppender:
		return appendData(make([]byte, 0, dataSizeHint(v)+1), v)
	}
	return json.Marshal(v)
}

// dataSizeHint is a guess of the length of v's JSON, for the buffer it is appended to.
func dataSizeHint(v any) int {
	if d, ok := v.([]store.Author); ok {
		return 2 + 40*len(d)
	}
	return 64
}

// appendAuthor appends a as json.Marshal encodes it: {"id":…,"name":…} (the embedded
// bun.BaseModel has no fields to encode).
func appendAuthor(b []byte, a *store.Author) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, a.ID, 10)
	b = append(b, `,"name":`...)
	b = appendJSONString(b, a.Name)
	return append(b, '}')
}
