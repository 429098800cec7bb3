package transport

import (
	"bytes"
	"encoding/json"
)

// scanEnvelope reads frame into env as json.Unmarshal(frame, env) would, and fails exactly when
// it would: the frame must be valid JSON (json.Valid, an iterative check) holding an object or
// null; a member whose name is a field's, exactly or case-insensitively (bytes.EqualFold, as
// encoding/json folds), sets the field to a copy of its value's bytes, the last one winning;
// other members are skipped. It walks the top level in one loop: json.Unmarshal's reflection
// and recursive descent grew a fresh read loop's 2 KiB stack twice on a connection's first
// frame, 17 % of a SUBSCRIBE's instructions. FuzzScanEnvelope compares the two.
func scanEnvelope(frame []byte, env *envelope) bool {
	if !json.Valid(frame) {
		return false
	}
	i := skipSpace(frame, 0)
	switch frame[i] {
	case 'n': // null: nothing set
		return true
	case '{':
	default:
		return false // an array, a string, a number or a boolean: a type error
	}
	i = skipSpace(frame, i+1)
	if frame[i] == '}' {
		return true
	}
	for {
		// frame is valid: a member name (a string), a colon, a value, then , or }.
		kEnd := stringEnd(frame, i)
		key := frame[i+1 : kEnd-1]
		if bytes.IndexByte(key, '\\') >= 0 {
			var s string
			if json.Unmarshal(frame[i:kEnd], &s) != nil {
				return false // cannot happen in valid JSON
			}
			key = []byte(s)
		}
		i = skipSpace(frame, kEnd)
		i = skipSpace(frame, i+1) // the colon
		vEnd := valueEnd(frame, i)
		if field := env.field(key); field != nil {
			*field = bytes.Clone(frame[i:vEnd])
		}
		i = skipSpace(frame, vEnd)
		if frame[i] == '}' {
			return true
		}
		i = skipSpace(frame, i+1) // the comma
	}
}

// field returns the field a member named key sets, or nil: the exact name first, then the
// case-insensitive match, as encoding/json.
func (env *envelope) field(key []byte) *json.RawMessage {
	switch string(key) {
	case "pkg_id":
		return &env.PkgID
	case "req_id":
		return &env.ReqID
	case "data":
		return &env.Data
	}
	switch {
	case bytes.EqualFold(key, []byte("pkg_id")):
		return &env.PkgID
	case bytes.EqualFold(key, []byte("req_id")):
		return &env.ReqID
	case bytes.EqualFold(key, []byte("data")):
		return &env.Data
	}
	return nil
}

// skipSpace returns the index of the first byte at or after i that is not JSON whitespace.
func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// stringEnd returns the index just past the string literal that starts at b[i] (valid JSON).
func stringEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// valueEnd returns the index just past the value that starts at b[i] (valid JSON), counting
// brackets outside strings: no recursion, whatever the depth.
func valueEnd(b []byte, i int) int {
	depth := 0
	for ; i < len(b); i++ {
		switch c := b[i]; c {
		case '"':
			i = stringEnd(b, i) - 1
			if depth == 0 {
				return i + 1
			}
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				return i + 1
			}
			if depth < 0 {
				return i // the object around a scalar closes here
			}
		case ',':
			if depth == 0 {
				return i
			}
		case ' ', '\t', '\n', '\r':
			if depth == 0 {
				return i
			}
		}
	}
	return i
}
