package audit

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
)

// Markers written in place of data that is not stored as given.
const (
	// Redacted replaces the value of every sensitive key.
	Redacted = "[REDACTED]"
	// Unparseable replaces request data that is not valid JSON: it cannot be redacted, so
	// none of it is kept.
	Unparseable = "[UNPARSEABLE]"
)

// Size bounds of Redact. Input above MaxRedactInput is not even parsed (the caller's goroutine
// pays for redaction); output above MaxRedactedBytes is replaced by a marker. A prefix is never
// kept instead: a cut document could end inside a value Redact has not seen whole.
const (
	MaxRedactInput   = 256 << 10
	MaxRedactedBytes = 16 << 10
)

// sensitiveWords are matched as substrings of a key folded to lower case with '_', '-', '.'
// and ' ' removed, so "refresh_token", "X-Api-Key", "clientSecret" and "Authorization" all
// match. Erring on the side of redaction is intended: a false positive costs an audit detail,
// a false negative leaks a credential into a table many people read. "auth" alone is not a
// word here: it would swallow every "author" field of the domain.
var sensitiveWords = []string{
	"password", "passwd", "passphrase",
	"token",  // access_token, refresh_token, id_token, jwt tokens
	"secret", // client_secret
	"authorization",
	"apikey", // api_key, api-key, x-api-key
	"credential",
	"privatekey",
	"cookie",
	"signature",
}

var keyFolder = strings.NewReplacer("_", "", "-", "", ".", "", " ", "")

// IsSensitiveKey reports whether the value of an object member named key is redacted.
func IsSensitiveKey(key string) bool {
	k := keyFolder.Replace(strings.ToLower(key))
	for _, w := range sensitiveWords {
		if strings.Contains(k, w) {
			return true
		}
	}
	return false
}

// Redact returns data with the value of every object member whose key IsSensitiveKey replaced by
// the string "[REDACTED]", recursively through objects and arrays, re-encoded compactly (object
// keys sorted, numbers as written, duplicate keys collapsed to the last one). Empty or all-whitespace data becomes JSON null. Data that is
// not one valid JSON value becomes the JSON string "[UNPARSEABLE]"; data larger than
// MaxRedactInput, or a result larger than MaxRedactedBytes, becomes the JSON string
// "[TRUNCATED: <n> bytes]" with n the input size. The result is always valid JSON. Redact never
// panics and does not retain data.
func Redact(data []byte) (out json.RawMessage) {
	defer func() {
		// A bug here must cost one audit detail, not the request that is being audited.
		if recover() != nil {
			out = quoted(Unparseable)
		}
	}()
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return json.RawMessage("null")
	}
	if len(data) > MaxRedactInput {
		return truncated(len(data))
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return quoted(Unparseable)
	}
	if _, err := dec.Token(); err == nil {
		return quoted(Unparseable) // trailing data after the first value
	}
	buf, err := marshal(redactValue(v))
	if err != nil {
		return quoted(Unparseable)
	}
	if len(buf) > MaxRedactedBytes {
		return truncated(len(data))
	}
	return buf
}

// RedactDecoded is Redact for data that the caller already decoded into v (objects as
// map[string]any, numbers as json.Number, as Redact's own decoding gives): the result is the
// same, and v is redacted in place. A nil v (nothing decoded, or the JSON null) is Redact(data).
func RedactDecoded(data []byte, v any) (out json.RawMessage) {
	if v == nil {
		return Redact(data)
	}
	defer func() {
		if recover() != nil {
			out = quoted(Unparseable)
		}
	}()
	if len(data) > MaxRedactInput {
		return truncated(len(data))
	}
	buf, err := marshal(redactValue(v))
	if err != nil {
		return quoted(Unparseable)
	}
	if len(buf) > MaxRedactedBytes {
		return truncated(len(data))
	}
	return buf
}

// redactValue walks a decoded document in place.
func redactValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			if IsSensitiveKey(k) {
				x[k] = Redacted
			} else {
				x[k] = redactValue(val)
			}
		}
		return x
	case []any:
		for i := range x {
			x[i] = redactValue(x[i])
		}
		return x
	default:
		return v
	}
}

// marshal encodes v compactly without HTML escaping (the result is stored, not embedded in
// HTML, and "<" should read as "<" in the audit table). A decoded document (maps, slices,
// strings, json.Number, booleans, null) is written by appendDecoded, which gives the same bytes
// as encoding/json without its reflection and its per-map key slices; anything else goes
// through encoding/json.
func marshal(v any) (json.RawMessage, error) {
	if b, ok := appendDecoded(make([]byte, 0, 128), v); ok {
		return b, nil
	}
	return marshalJSON(v)
}

// appendDecoded appends v as encoding/json (HTML escaping off) would write it; false when v
// holds something other than what a JSON decoder with UseNumber gives.
func appendDecoded(b []byte, v any) ([]byte, bool) {
	switch x := v.(type) {
	case nil:
		return append(b, "null"...), true
	case bool:
		return strconv.AppendBool(b, x), true
	case string:
		return appendString(b, x)
	case json.Number:
		// Only a number as a decoder gives it (encoding/json refuses other text here).
		if x == "" || !(x[0] == '-' || '0' <= x[0] && x[0] <= '9') || !('0' <= x[len(x)-1] && x[len(x)-1] <= '9') ||
			!json.Valid([]byte(x)) {
			return b, false
		}
		return append(b, x...), true
	case []any:
		b = append(b, '[')
		for i, e := range x {
			if i > 0 {
				b = append(b, ',')
			}
			var ok bool
			if b, ok = appendDecoded(b, e); !ok {
				return b, false
			}
		}
		return append(b, ']'), true
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = append(b, '{')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			var ok bool
			if b, ok = appendString(b, k); !ok {
				return b, false
			}
			b = append(b, ':')
			if b, ok = appendDecoded(b, x[k]); !ok {
				return b, false
			}
		}
		return append(b, '}'), true
	}
	return b, false
}

// appendString appends s quoted. Strings of printable ASCII without a quote or a backslash, nearly
// all of them, are copied as they are; the rest are encoded by encoding/json.
func appendString(b []byte, s string) ([]byte, bool) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			q, err := marshalJSON(s)
			if err != nil {
				return b, false
			}
			return append(b, q...), true
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"'), true
}

// marshalJSON is encoding/json's encoding of v without HTML escaping.
func marshalJSON(v any) (json.RawMessage, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

func quoted(s string) json.RawMessage {
	return json.RawMessage(strconv.Quote(s))
}

func truncated(n int) json.RawMessage {
	return quoted("[TRUNCATED: " + strconv.Itoa(n) + " bytes]")
}
