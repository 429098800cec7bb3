package actors

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"unicode/utf8"
)

// errNotJSON: the text is not one JSON value.
var errNotJSON = errors.New("not valid JSON")

// decodeDocument decodes the JSON text b as jsonschema.UnmarshalJSON does (encoding/json's
// Decoder with UseNumber, nothing after the value but whitespace): objects as map[string]any
// (the last of duplicate members wins), arrays as []any (never nil), numbers as json.Number
// of their text, strings, bools and nil. It is that decoding without the Decoder's buffer,
// its second scan of the text and its reflection: schema validation decodes every request's
// data, and this was half of validating it (FuzzDecodeDocument compares the two).
//
// It recurses once per level of nesting: callers bound the depth first (checkText).
func decodeDocument(b []byte) (any, error) {
	v, _, err := decodeDocumentRange(b)
	return v, err
}

// decodeDocumentRange is decodeDocument that also reports whether a number of the text is
// too large for a float64 (1e400: json.Unmarshal refuses it, and so must validation).
func decodeDocumentRange(b []byte) (v any, overflow bool, err error) {
	if !json.Valid(b) {
		return nil, false, errNotJSON
	}
	d := docDecoder{b: b}
	d.space()
	v, err = d.value()
	return v, d.overflow, err
}

// docDecoder reads a text json.Valid accepted.
type docDecoder struct {
	b        []byte
	i        int
	overflow bool // a number does not fit a float64
}

func (d *docDecoder) space() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

func (d *docDecoder) value() (any, error) {
	switch c := d.b[d.i]; c {
	case '{':
		d.i++
		m := map[string]any{}
		d.space()
		if d.b[d.i] == '}' {
			d.i++
			return m, nil
		}
		for {
			k, err := d.string()
			if err != nil {
				return nil, err
			}
			d.space()
			d.i++ // ':'
			d.space()
			v, err := d.value()
			if err != nil {
				return nil, err
			}
			m[k] = v
			d.space()
			if d.b[d.i] == '}' {
				d.i++
				return m, nil
			}
			d.i++ // ','
			d.space()
		}
	case '[':
		d.i++
		a := make([]any, 0)
		d.space()
		if d.b[d.i] == ']' {
			d.i++
			return a, nil
		}
		for {
			v, err := d.value()
			if err != nil {
				return nil, err
			}
			a = append(a, v)
			d.space()
			if d.b[d.i] == ']' {
				d.i++
				return a, nil
			}
			d.i++ // ','
			d.space()
		}
	case '"':
		return d.string()
	case 't':
		d.i += 4
		return true, nil
	case 'f':
		d.i += 5
		return false, nil
	case 'n':
		d.i += 4
		return nil, nil
	default: // a number
		start := d.i
		for d.i < len(d.b) {
			switch c := d.b[d.i]; {
			case '0' <= c && c <= '9', c == '-', c == '+', c == '.', c == 'e', c == 'E':
				d.i++
				continue
			}
			break
		}
		n := json.Number(d.b[start:d.i])
		if !d.overflow && (d.i-start > 15 || bytes.IndexAny(d.b[start:d.i], "eE") >= 0) {
			// Only a long literal or one with an exponent can be out of a float64's range.
			if _, err := strconv.ParseFloat(string(n), 64); err != nil {
				d.overflow = true
			}
		}
		return n, nil
	}
}

// string reads the string literal at d.i. One with an escape or a byte that is not UTF-8 is
// decoded by encoding/json, which owns those rules (U+FFFD for what is not text).
func (d *docDecoder) string() (string, error) {
	start := d.i
	d.i++
	plain := true
	for ; d.b[d.i] != '"'; d.i++ {
		switch c := d.b[d.i]; {
		case c == '\\':
			plain = false
			d.i++ // the escaped byte: never the closing quote
		case c >= utf8.RuneSelf:
			plain = false
		}
	}
	d.i++
	lit := d.b[start:d.i]
	if plain || utf8.Valid(lit) && !hasBackslash(lit) {
		return string(lit[1 : len(lit)-1]), nil
	}
	var s string
	if err := json.Unmarshal(lit, &s); err != nil {
		return "", err
	}
	return s, nil
}

func hasBackslash(b []byte) bool {
	for _, c := range b {
		if c == '\\' {
			return true
		}
	}
	return false
}
