package audit

import (
	"bytes"
	"encoding/json"
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
// HTML, and "<" should read as "<" in the audit table).
func marshal(v any) (json.RawMessage, error) {
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
