package audit

// RedactValueForTest redacts a decoded document in place (tests compare encodings of it).
func RedactValueForTest(v any) any { return redactValue(v) }

// EncodingJSONForTest is encoding/json's encoding of v with HTML escaping off.
func EncodingJSONForTest(v any) ([]byte, error) { return marshalJSON(v) }
