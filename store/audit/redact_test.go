package audit_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"switchboard/store/audit"
)

func TestRedact(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, in, want string
	}{
		{"plain object kept", `{"name":"Ada","id":3}`, `{"id":3,"name":"Ada"}`},
		{"password", `{"username":"ada","password":"hunter2"}`, `{"password":"[REDACTED]","username":"ada"}`},
		{"case-insensitive", `{"PassWord":"x","TOKEN":"y","Secret":"z","AUTHORIZATION":"Bearer q"}`,
			`{"AUTHORIZATION":"[REDACTED]","PassWord":"[REDACTED]","Secret":"[REDACTED]","TOKEN":"[REDACTED]"}`},
		{"substrings", `{"refresh_token":"a","access-token":"b","client_secret":"c","new_password":"d","idToken":"e"}`,
			`{"access-token":"[REDACTED]","client_secret":"[REDACTED]","idToken":"[REDACTED]","new_password":"[REDACTED]","refresh_token":"[REDACTED]"}`},
		{"other spellings", `{"passwd":"a","api_key":"b","X-Api-Key":"c","apikey":"d","credentials":{"u":"v"},"Cookie":"e"}`,
			`{"Cookie":"[REDACTED]","X-Api-Key":"[REDACTED]","api_key":"[REDACTED]","apikey":"[REDACTED]","credentials":"[REDACTED]","passwd":"[REDACTED]"}`},
		{"author is not auth", `{"author":"Ada","author_id":1}`, `{"author":"Ada","author_id":1}`},
		{"nested objects", `{"a":{"b":{"token":"t","keep":1}}}`, `{"a":{"b":{"keep":1,"token":"[REDACTED]"}}}`},
		{"arrays of objects", `{"users":[{"name":"a","password":"p"},{"name":"b","secret":["s1","s2"]}]}`,
			`{"users":[{"name":"a","password":"[REDACTED]"},{"name":"b","secret":"[REDACTED]"}]}`},
		{"top-level array", `[{"Authorization":"Bearer x"},1,"token"]`, `[{"Authorization":"[REDACTED]"},1,"token"]`},
		{"sensitive value of any type", `{"token":null,"password":12,"secret":{"deep":"x"}}`,
			`{"password":"[REDACTED]","secret":"[REDACTED]","token":"[REDACTED]"}`},
		{"numbers as written", `{"big":12345678901234567890,"f":1.50}`, `{"big":12345678901234567890,"f":1.50}`},
		{"no HTML escaping", `{"q":"<a&b>"}`, `{"q":"<a&b>"}`},
		{"scalar", `"hello"`, `"hello"`},
		{"whitespace around", " \n{\"token\": \"x\"}\t ", `{"token":"[REDACTED]"}`},
		{"duplicate keys", `{"token":"a","token":"b"}`, `{"token":"[REDACTED]"}`},
		{"empty", ``, `null`},
		{"blank", "  \n", `null`},
		{"invalid JSON", `{"password": "hunter2"`, `"[UNPARSEABLE]"`},
		{"not JSON", `password=hunter2`, `"[UNPARSEABLE]"`},
		{"trailing data", `{"a":1} {"password":"x"}`, `"[UNPARSEABLE]"`},
		{"invalid UTF-8 replaced", "{\"a\":\"\xff\"}", `{"a":"` + "\ufffd" + `"}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := audit.Redact([]byte(tc.in))
			if string(got) != tc.want {
				t.Fatalf("Redact(%q)\n got %s\nwant %s", tc.in, got, tc.want)
			}
			if !json.Valid(got) {
				t.Fatalf("not valid JSON: %s", got)
			}
			// What a validator decoded (numbers as json.Number) redacts to the same bytes.
			dec := json.NewDecoder(strings.NewReader(tc.in))
			dec.UseNumber()
			var v any
			if err := dec.Decode(&v); err == nil && !dec.More() {
				if got := audit.RedactDecoded([]byte(tc.in), v); string(got) != tc.want {
					t.Fatalf("RedactDecoded(%q)\n got %s\nwant %s", tc.in, got, tc.want)
				}
			}
		})
	}
}

func TestRedactNeverLeaksDeepSecrets(t *testing.T) {
	t.Parallel()
	// 500 levels of nesting, the secret at the bottom.
	in := strings.Repeat(`{"a":[`, 500) + `{"refresh_token":"SECRET-VALUE"}` + strings.Repeat(`]}`, 500)
	got := audit.Redact([]byte(in))
	if bytes.Contains(got, []byte("SECRET-VALUE")) || !bytes.Contains(got, []byte(audit.Redacted)) {
		t.Fatalf("deep secret not redacted: %.200s", got)
	}
}

func TestRedactBoundsSize(t *testing.T) {
	t.Parallel()
	// Parsed but too big once encoded.
	big := `{"blob":"` + strings.Repeat("x", audit.MaxRedactedBytes) + `","password":"p"}`
	got := audit.Redact([]byte(big))
	if !json.Valid(got) || len(got) > 64 || !strings.HasPrefix(string(got), `"[TRUNCATED: `) {
		t.Fatalf("Redact(%d bytes) = %.100s", len(big), got)
	}
	// Too big to parse at all, even when it is not JSON.
	huge := bytes.Repeat([]byte("{"), audit.MaxRedactInput+1)
	if got := audit.Redact(huge); string(got) != `"[TRUNCATED: 262145 bytes]"` {
		t.Fatalf("Redact(huge) = %s", got)
	}
	// Redaction can bring a document under the bound: a big secret is not kept.
	secret := `{"password":"` + strings.Repeat("p", audit.MaxRedactedBytes) + `"}`
	if got := audit.Redact([]byte(secret)); string(got) != `{"password":"[REDACTED]"}` {
		t.Fatalf("Redact(big secret) = %.100s", got)
	}
}

func TestIsSensitiveKey(t *testing.T) {
	t.Parallel()
	for _, k := range []string{"password", "Password", "user_password", "refresh_token", "Authorization", "x-api-key", "clientSecret", "private_key", "Set-Cookie"} {
		if !audit.IsSensitiveKey(k) {
			t.Errorf("%q not sensitive", k)
		}
	}
	for _, k := range []string{"name", "author", "id", "page", "per_page", "topic", "filters", "since"} {
		if audit.IsSensitiveKey(k) {
			t.Errorf("%q sensitive", k)
		}
	}
}

func FuzzRedact(f *testing.F) {
	for _, s := range []string{`{"password":"x"}`, `[1,{"token":[{}]}]`, `"x"`, `{`, ``, `nul`, `1e999999`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		got := audit.Redact(in)
		if !json.Valid(got) {
			t.Fatalf("Redact(%q) = %q: not valid JSON", in, got)
		}
		if len(got) > audit.MaxRedactedBytes {
			t.Fatalf("Redact output %d bytes", len(got))
		}
		// Where the input is one JSON value, the output is encoding/json's encoding of it.
		dec := json.NewDecoder(bytes.NewReader(in))
		dec.UseNumber()
		var v any
		if len(in) > audit.MaxRedactInput || dec.Decode(&v) != nil {
			return
		}
		if _, err := dec.Token(); err == nil {
			return
		}
		want, err := audit.EncodingJSONForTest(audit.RedactValueForTest(v))
		if err != nil || len(want) > audit.MaxRedactedBytes {
			return
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("Redact(%q) = %s, encoding/json gives %s", in, got, want)
		}
	})
}

// The redacted text is what encoding/json writes (HTML escaping off), whatever the document.
func TestRedactEncodesAsEncodingJSON(t *testing.T) {
	docs := []string{
		`{}`, `[]`, `null`, `true`, `false`, `0`, `-1.5e+10`, `"x"`, `""`,
		`{"name":"hot-1","filters":{"id":12,"name":"a<b>&c"}}`,
		`{"b":1,"a":[1,2,{"z":null,"y":true}],"c":"é ü 日本 \u2028 \u2029 \ud83d\ude00"}`,
		`{"ctl":"\u0001\b\f\n\r\t\u001f","q":"\"\\/","token":"secret","nested":{"Password":"p","list":[{"api_key":1}]}}`,
		`{"":"", "k\u0000":"v\u0000", "\u00e9":1, "A":2, "a":3, "Z":4}`,
		`[1.0, 1e2, -0, 123456789012345678901234567890, 0.000001]`,
	}
	for _, d := range docs {
		var v any
		dec := json.NewDecoder(strings.NewReader(d))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(audit.RedactValueForTest(v)); err != nil {
			t.Fatal(err)
		}
		got := audit.Redact([]byte(d))
		if string(got) != strings.TrimSuffix(want.String(), "\n") {
			t.Errorf("Redact(%s)\n got %s\nwant %s", d, got, want.String())
		}
	}
}
