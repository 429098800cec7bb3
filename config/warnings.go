package config

import (
	"fmt"
	"net/url"
	"sort"
	"strings"
)

// envPrefix starts every variable of ours. Names under testPrefix belong to the test suites.
const (
	envPrefix  = "SWITCHBOARD_"
	testPrefix = "SWITCHBOARD_TEST_"
)

// Warnings returns the likely mistakes in a configuration that do not stop the server:
// SWITCHBOARD_* variables in environ (os.Environ's "NAME=value" form) that nothing reads,
// with the closest known name, allowed origins no browser ever sends, and a
// SWITCHBOARD_DEV_ISSUER_PUBLIC that has no effect. Each is one line naming the variable.
func (c Config) Warnings(environ []string) []string {
	var out []string
	var unknown []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, envPrefix) && !strings.HasPrefix(name, testPrefix) && !Known(name) {
			unknown = append(unknown, name)
		}
	}
	sort.Strings(unknown)
	for _, name := range unknown {
		w := name + " is not a Switchboard setting and is ignored"
		if near := Closest(name); near != "" {
			w += "; did you mean " + near + "?"
		}
		out = append(out, w)
	}
	for _, o := range c.AllowedOrigins {
		if w := originProblem(o); w != "" {
			out = append(out, fmt.Sprintf("SWITCHBOARD_ALLOWED_ORIGINS: %q %s", o, w))
		}
	}
	if c.DevIssuerPublic && !c.DevIssuer() {
		out = append(out, "SWITCHBOARD_DEV_ISSUER_PUBLIC has no effect: SWITCHBOARD_OIDC_ISSUER is set, so the development issuer is off")
	}
	return out
}

// originProblem says why a browser would never send o as its Origin header, which the server
// compares byte for byte: scheme://host[:port], lower case, nothing after.
func originProblem(o string) string {
	if o == "*" || o == "null" {
		return "matches only an Origin header that is literally " + o + "; leave the variable empty to allow any origin"
	}
	u, err := url.Parse(o)
	if err != nil || u.Scheme == "" || u.Host == "" || !strings.Contains(o, "://") {
		return "has no scheme, so it never matches a browser's Origin; write it as https://" + strings.TrimPrefix(o, "//")
	}
	if u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		want := u.Scheme + "://" + u.Host
		return "is not an origin (browsers send scheme://host[:port] only); write it as " + strings.ToLower(want)
	}
	if o != strings.ToLower(o) {
		return "has upper-case letters, but browsers send origins in lower case; write it as " + strings.ToLower(o)
	}
	return ""
}

// Closest returns the known variable nearest to name (at most a few edits away, counting a
// swap of two neighbouring letters as one), or "" when none is close.
func Closest(name string) string {
	best, bestDist := "", 4
	for known := range docs {
		if d := editDistance(strings.ToUpper(name), known); d < bestDist || (d == bestDist && known < best) {
			best, bestDist = known, d
		}
	}
	if best == "" || bestDist > max(1, (len(name)-len(envPrefix))/3) {
		return ""
	}
	return best
}

// editDistance is the optimal string alignment distance: insertions, deletions, substitutions
// and transpositions of adjacent bytes each cost one.
func editDistance(a, b string) int {
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}
