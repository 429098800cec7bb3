package actors

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxDepth is how deeply a request document (a pkg_id's data, an HTTP body) may nest arrays
// and objects: {} is one level, {"a":[1]} two. Every schema of the server fits in four; 32
// leaves room for clients' own payloads (broadcasts) and keeps the recursive decoding,
// validation and redaction that follow shallow. Go's encoding/json alone would allow 10 000.
const MaxDepth = 32

// DepthMessage is the message of a document refused for its depth.
const DepthMessage = "nested deeper than 32 levels of arrays and objects"

// DepthExceeds reports whether the JSON text b opens more than max arrays and objects inside
// one another. It reads only as much JSON as it needs to step over strings and never recurses,
// so it runs before anything that does; b need not be valid (a broken document is someone
// else's error).
func DepthExceeds(b []byte, max int) bool {
	// Fast path: a document with no more opening brackets than max cannot nest deeper, and
	// counting one byte value is vectorised. Most requests end here.
	if bytes.Count(b, []byte{'{'})+bytes.Count(b, []byte{'['}) <= max {
		return false
	}
	depth := 0
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '"':
			// Step over the string. Its bytes are read one by one: most strings in a request
			// are a few bytes long, where a loop beats a call to bytes.IndexByte.
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					i++
				}
			}
		case '{', '[':
			if depth++; depth > max {
				return true
			}
		case '}', ']':
			depth--
		}
	}
	return false
}

// backslashesBefore counts the backslashes right before b[at], looking no further back than
// b[floor].
func backslashesBefore(b []byte, at, floor int) int {
	n := 0
	for p := at - 1; p >= floor && b[p] == '\\'; p-- {
		n++
	}
	return n
}

// textProblem is what is wrong with the text of a JSON document before it is decoded.
type textProblem int

const (
	textOK textProblem = iota
	textNotUTF8
	textTooDeep
	// textLoneSurrogate: a \uD800–\uDFFF escape without its pair. Go's decoder turns it into
	// U+FFFD without a word, so what would be stored is not what was sent.
	textLoneSurrogate
)

func (p textProblem) message() string {
	switch p {
	case textNotUTF8:
		return "not valid UTF-8"
	case textTooDeep:
		return DepthMessage
	case textLoneSurrogate:
		return `holds a \u escape of a lone UTF-16 surrogate (\uD800–\uDFFF), which is not text`
	}
	return ""
}

// checkText looks at a JSON document as bytes, cheaply and without recursion, for what its
// decoding would hide or must not meet. nul reports a \u0000 escape (a NUL in a string or a
// member name; the decoded document says where).
func checkText(b []byte) (p textProblem, nul bool) {
	if !utf8.Valid(b) {
		return textNotUTF8, false
	}
	if DepthExceeds(b, MaxDepth) {
		return textTooDeep, false
	}
	nul, lone := scanEscapes(b)
	if lone {
		return textLoneSurrogate, nul
	}
	return textOK, nul
}

// scanEscapes reads the \u escapes of the JSON text b: nul when one is \u0000, lone when a
// high surrogate is not followed by a low one or a low one comes alone. Documents without a
// \u escape, nearly all of them, cost one bytes.Index.
func scanEscapes(b []byte) (nul, lone bool) {
	for i := 0; ; {
		k := bytes.Index(b[i:], []byte(`\u`))
		if k < 0 {
			return nul, lone
		}
		p := i + k
		// `\\u` is an escaped backslash and a letter u: the escape is real when the
		// backslash run ending at p is odd.
		if backslashesBefore(b, p, 0)%2 == 1 {
			i = p + 1
			continue
		}
		r, ok := hex4(b, p+2)
		i = p + 2
		switch {
		case !ok:
			// Not an escape the decoder accepts; it refuses the document itself.
		case r == 0:
			nul = true
		case 0xDC00 <= r && r <= 0xDFFF:
			lone = true
		case 0xD800 <= r && r <= 0xDBFF:
			if len(b) >= p+8 && b[p+6] == '\\' && b[p+7] == 'u' {
				if lo, ok := hex4(b, p+8); ok && 0xDC00 <= lo && lo <= 0xDFFF {
					i = p + 12
					continue
				}
			}
			lone = true
		}
	}
}

// hex4 reads the four hexadecimal digits at b[at:].
func hex4(b []byte, at int) (rune, bool) {
	if len(b) < at+4 {
		return 0, false
	}
	var r rune
	for _, c := range b[at : at+4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// RangeMessage is the message of a number too large for a float64.
const RangeMessage = "number out of range"

// rangeErrors returns an error for every number of the decoded document v (json.Number) that a
// float64 cannot hold, by JSON pointer, in pointer order: json.Unmarshal, the handlers' decoder,
// refuses such a number, so validation does too, at its path.
func rangeErrors(v any) []FieldError {
	var out []FieldError
	var walk func(v any, path []string)
	walk = func(v any, path []string) {
		switch x := v.(type) {
		case json.Number:
			if _, err := strconv.ParseFloat(string(x), 64); err != nil {
				out = append(out, FieldError{Path: pointer(path), Message: RangeMessage})
			}
		case map[string]any:
			for k, val := range x {
				walk(val, append(path[:len(path):len(path)], k))
			}
		case []any:
			for i, val := range x {
				walk(val, append(path[:len(path):len(path)], strconv.Itoa(i)))
			}
		}
	}
	walk(v, nil)
	slices.SortFunc(out, func(a, b FieldError) int { return strings.Compare(a.Path, b.Path) })
	return out
}

// NULMessage is the message of a string that holds U+0000.
const NULMessage = "must not contain the NUL character (U+0000)"

// nulErrors returns an error for every string and member name of the decoded document v that
// holds U+0000, by JSON pointer, in pointer order. PostgreSQL cannot store NUL in text, and
// no name, filter, topic or token needs one: it is refused here, for every pkg_id and HTTP
// body at once, rather than met by the database as an error.
func nulErrors(v any) []FieldError {
	var out []FieldError
	var walk func(v any, path []string)
	walk = func(v any, path []string) {
		switch x := v.(type) {
		case string:
			if strings.IndexByte(x, 0) >= 0 {
				out = append(out, FieldError{Path: pointer(path), Message: NULMessage})
			}
		case map[string]any:
			for k, val := range x {
				p := append(path[:len(path):len(path)], k)
				if strings.IndexByte(k, 0) >= 0 {
					out = append(out, FieldError{Path: pointer(p), Message: "member name " + NULMessage})
					continue
				}
				walk(val, p)
			}
		case []any:
			for i, val := range x {
				walk(val, append(path[:len(path):len(path)], strconv.Itoa(i)))
			}
		}
	}
	walk(v, nil)
	slices.SortFunc(out, func(a, b FieldError) int { return strings.Compare(a.Path, b.Path) })
	return out
}
