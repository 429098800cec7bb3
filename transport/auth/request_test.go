package auth

import (
	"net/http/httptest"
	"net/url"
	"testing"
)

func TestTokenFromRequest(t *testing.T) {
	cases := []struct {
		name, target, auth, want string
	}{
		{"header", "/web", "Bearer h.e.ader", "h.e.ader"},
		{"header wins over query", "/web?token=q.u.ery", "Bearer h.e.ader", "h.e.ader"},
		{"scheme case-insensitive", "/web", "bearer   h.e.ader ", "h.e.ader"},
		{"query", "/web?format=json&token=q.u.ery", "", "q.u.ery"},
		{"non-bearer header falls back to query", "/web?token=q.u.ery", "Basic dXNlcjpwYXNz", "q.u.ery"},
		{"empty bearer falls back to query", "/web?token=q.u.ery", "Bearer ", "q.u.ery"},
		{"none", "/web", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", tc.target, nil)
			if tc.auth != "" {
				r.Header.Set("Authorization", tc.auth)
			}
			if got := TokenFromRequest(r); got != tc.want {
				t.Fatalf("TokenFromRequest = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestRedactURL(t *testing.T) {
	cases := map[string]string{
		"/web":                                 "/web",
		"/web?token=eyJ.abc.def":               "/web?token=[REDACTED]",
		"/web?format=json&token=eyJ.abc.def":   "/web?format=json&token=[REDACTED]",
		"/web?token=a&x=1&token=b":             "/web?token=[REDACTED]&x=1&token=[REDACTED]",
		"/web?TOKEN=a&tok%65n=b":               "/web?TOKEN=[REDACTED]&tok%65n=[REDACTED]",
		"/web?access_token=a;token=b":          "/web?access_token=[REDACTED];token=[REDACTED]",
		"/web?token":                           "/web?token=[REDACTED]",
		"/a%20b?name=J%C3%B6rg&tokens=keep":    "/a%20b?name=J%C3%B6rg&tokens=keep",
		"/web?format=protobuf&refresh_token=x": "/web?format=protobuf&refresh_token=[REDACTED]",
	}
	for in, want := range cases {
		u, err := url.Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := RedactURL(u); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
	if RedactURL(nil) != "" {
		t.Error("RedactURL(nil) != \"\"")
	}
}
