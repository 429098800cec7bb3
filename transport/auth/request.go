package auth

import (
	"net/http"
	"net/url"
	"strings"
)

// TokenFromRequest returns the bearer token of r: the "Authorization: Bearer <jwt>" header
// first (scheme case-insensitive), else the "token" query parameter (the browser form of
// PROTOCOL §1.1). It returns "" when neither is present.
func TokenFromRequest(r *http.Request) string {
	// The map read directly under the canonical name: Header.Get canonicalises it on every call.
	if v := r.Header["Authorization"]; len(v) > 0 && v[0] != "" {
		h := v[0]
		scheme, tok, ok := strings.Cut(strings.TrimSpace(h), " ")
		if ok && strings.EqualFold(scheme, "Bearer") {
			if tok = strings.TrimSpace(tok); tok != "" {
				return tok
			}
		}
	}
	return r.URL.Query().Get("token")
}

// redactedParams are the query parameters whose values never reach a log.
var redactedParams = map[string]bool{"token": true, "access_token": true, "id_token": true, "refresh_token": true}

// RedactURL returns u's path and query for logging, with the value of every "token" query
// parameter (and access_token, id_token, refresh_token; names compared case-insensitively)
// replaced by [REDACTED]. The other parameters are kept verbatim and in order.
func RedactURL(u *url.URL) string {
	if u == nil {
		return ""
	}
	out := u.EscapedPath()
	if u.RawQuery == "" {
		return out
	}
	var b strings.Builder
	b.WriteString(out)
	b.WriteByte('?')
	q := u.RawQuery
	for q != "" {
		// ';' is not a separator for net/url any more, but some servers treat it as one:
		// redacting there too costs nothing.
		end := strings.IndexAny(q, "&;")
		part, sep := q, ""
		if end >= 0 {
			part, sep, q = q[:end], q[end:end+1], q[end+1:]
		} else {
			q = ""
		}
		rawKey, _, _ := strings.Cut(part, "=")
		key, err := url.QueryUnescape(rawKey)
		if err != nil {
			key = rawKey
		}
		if redactedParams[strings.ToLower(key)] {
			part = rawKey + "=[REDACTED]"
		}
		b.WriteString(part)
		b.WriteString(sep)
	}
	return b.String()
}
