package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"unicode/utf8"
)

// This file reads JSON documents that have passed json.Valid, finding the members of an
// object and the elements of an array without decoding the values nobody reads. Whatever
// it reads, it reads exactly as encoding/json decodes into an interface value (so the
// claims Verify reads from a payload are those that json.Unmarshal into a map[string]any
// gave), and it rejects what that decoding rejected in a valid document: a number beyond
// float64.

var errNumberRange = errors.New("number out of range")

// jsonMembers iterates over the members of a JSON object, in order.
type jsonMembers struct {
	doc []byte
	i   int
}

// openObject returns an iterator over the members of val, a valid JSON value, or false when
// val is not an object.
func openObject(val []byte) (jsonMembers, bool) {
	i := skipSpace(val, 0)
	if i >= len(val) || val[i] != '{' {
		return jsonMembers{}, false
	}
	return jsonMembers{doc: val, i: i + 1}, true
}

// next returns the next member: its name, unquoted, and its value as it stands in the
// document; ok is false after the last one. The error reports a number beyond float64 in
// the value.
func (m *jsonMembers) next() (name, val []byte, ok bool, err error) {
	d := m.doc
	i := skipSpace(d, m.i)
	if i < len(d) && d[i] == ',' {
		i = skipSpace(d, i+1)
	}
	if i >= len(d) || d[i] != '"' { // the closing brace
		m.i = len(d)
		return nil, nil, false, nil
	}
	end := skipString(d, i)
	quoted := d[i:end]
	i = skipSpace(d, end)
	i = skipSpace(d, i+1) // past the colon
	if end, err = skipValue(d, i); err != nil {
		return nil, nil, false, err
	}
	m.i = end
	if name, ok = jsonString(quoted); !ok {
		return nil, nil, false, errUndecodable // unreachable: a valid name unquotes
	}
	return name, d[i:end], true, nil
}

// lastMember returns the value of the last member of the object obj named name, or nil.
func lastMember(obj []byte, name string) []byte {
	m, ok := openObject(obj)
	if !ok {
		return nil
	}
	var last []byte
	for {
		n, val, ok, err := m.next()
		if err != nil || !ok {
			return last
		}
		if string(n) == name {
			last = val
		}
	}
}

// jsonElements iterates over the elements of a JSON array, in order.
type jsonElements struct {
	doc []byte
	i   int
}

// openArray returns an iterator over the elements of val, a valid JSON value, or false when
// val is not an array.
func openArray(val []byte) (jsonElements, bool) {
	i := skipSpace(val, 0)
	if i >= len(val) || val[i] != '[' {
		return jsonElements{}, false
	}
	return jsonElements{doc: val, i: i + 1}, true
}

// next returns the next element as it stands in the document; ok is false after the last.
func (a *jsonElements) next() (val []byte, ok bool) {
	d := a.doc
	i := skipSpace(d, a.i)
	if i < len(d) && d[i] == ',' {
		i = skipSpace(d, i+1)
	}
	if i >= len(d) || d[i] == ']' {
		a.i = len(d)
		return nil, false
	}
	end, _ := skipValue(d, i) // its numbers were checked with the enclosing value
	a.i = end
	return d[i:end], true
}

func skipSpace(d []byte, i int) int {
	for i < len(d) && (d[i] == ' ' || d[i] == '\t' || d[i] == '\n' || d[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the end of the string starting at d[i] (a quote): after the first
// quote not escaped, that is preceded by an even number of backslashes.
func skipString(d []byte, i int) int {
	for j := i + 1; ; j++ {
		k := bytes.IndexByte(d[j:], '"')
		if k < 0 {
			return len(d)
		}
		j += k
		n := 0
		for p := j - 1; p > i && d[p] == '\\'; p-- {
			n++
		}
		if n%2 == 0 {
			return j + 1
		}
	}
}

// skipValue returns the end of the value starting at d[i], checking every number in it.
func skipValue(d []byte, i int) (int, error) {
	if i >= len(d) {
		return i, nil
	}
	switch c := d[i]; {
	case c == '"':
		return skipString(d, i), nil
	case c == '{' || c == '[':
		depth := 0
		for j := i; j < len(d); {
			switch c := d[j]; {
			case c == '"':
				j = skipString(d, j)
				continue
			case c == '{' || c == '[':
				depth++
			case c == '}' || c == ']':
				if depth--; depth == 0 {
					return j + 1, nil
				}
			case c == '-' || '0' <= c && c <= '9':
				end := numberEnd(d, j)
				if err := checkNumber(d[j:end]); err != nil {
					return 0, err
				}
				j = end
				continue
			}
			j++
		}
		return len(d), nil
	case c == '-' || '0' <= c && c <= '9':
		end := numberEnd(d, i)
		return end, checkNumber(d[i:end])
	default: // true, false, null
		j := i
		for j < len(d) && 'a' <= d[j] && d[j] <= 'z' {
			j++
		}
		return j, nil
	}
}

func numberEnd(d []byte, i int) int {
	for ; i < len(d); i++ {
		switch c := d[i]; {
		case '0' <= c && c <= '9', c == '-', c == '+', c == '.', c == 'e', c == 'E':
		default:
			return i
		}
	}
	return i
}

// checkNumber reports a number that decoding into an interface value (a float64) rejects.
// Without an exponent, a number of at most 300 characters is below 1e300: only the others
// need parsing.
func checkNumber(num []byte) error {
	if len(num) <= 300 && bytes.IndexAny(num, "eE") < 0 {
		return nil
	}
	if _, err := strconv.ParseFloat(string(num), 64); err != nil {
		return errNumberRange
	}
	return nil
}

// isJSONNumber reports whether val (a valid JSON value) is a number.
func isJSONNumber(val []byte) bool {
	return len(val) > 0 && (val[0] == '-' || '0' <= val[0] && val[0] <= '9')
}

// isJSONNull reports whether val (a valid JSON value) is null.
func isJSONNull(val []byte) bool { return len(val) > 0 && val[0] == 'n' }

// jsonString returns the contents of val when it is a JSON string, unquoted as
// encoding/json unquotes (invalid UTF-8 becomes U+FFFD). Without escapes or invalid UTF-8
// they are a slice of val.
func jsonString(val []byte) ([]byte, bool) {
	if len(val) < 2 || val[0] != '"' {
		return nil, false
	}
	in := val[1 : len(val)-1]
	if bytes.IndexByte(in, '\\') < 0 && utf8.Valid(in) {
		return in, true
	}
	var s string
	if err := json.Unmarshal(val, &s); err != nil {
		return nil, false
	}
	return []byte(s), true
}

// decodeString decodes a JSON value into a string as encoding/json does: null leaves it
// empty, any other type than string is an error.
func decodeString(val []byte) ([]byte, error) {
	if s, ok := jsonString(val); ok {
		return s, nil
	}
	var s string
	if err := json.Unmarshal(val, &s); err != nil {
		return nil, err
	}
	return nil, nil
}

// decodeAny decodes a JSON value into an interface value as encoding/json does.
func decodeAny(val []byte) (any, error) {
	var v any
	if err := json.Unmarshal(val, &v); err != nil {
		return nil, err
	}
	return v, nil
}
