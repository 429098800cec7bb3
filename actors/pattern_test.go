package actors

import (
	"math/rand/v2"
	"regexp"
	"testing"
)

// TestASCIIRunMatchesAsRegexp compares asciiRun with Go's regexp on the patterns it takes (and
// checks it does not take the others) over strings of the class's bytes, other ASCII, multi-byte
// characters and invalid UTF-8.
func TestASCIIRunMatchesAsRegexp(t *testing.T) {
	taken := []string{`^[A-Za-z0-9_.:-]+$`, `^[a-z]+$`, `^[0-9A-F_]+$`, `^[\w.-]+$`, `^(?i:[a-c])+$`, `^[ -~]+$`}
	for _, p := range []string{`^[a-z]*$`, `[a-z]+`, `^[a-z]+`, `^[^a-z]+$`, `^[a-zé]+$`, `^[a-z]+$|x`, `(?m)^[a-z]+$`, `^\d+$x`} {
		if asciiRunOf(p) != nil {
			t.Errorf("%q taken as ^[class]+$", p)
		}
	}
	pieces := []string{"", "a", "Z", "0", "_", ".", ":", "-", " ", "/", "\n", "\x00", "\x7f", "é", "\xff", "\xc3", "日本", "ab", "x.y:z"}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, p := range taken {
		r := asciiRunOf(p)
		if r == nil {
			t.Fatalf("%q not taken", p)
		}
		re := regexp.MustCompile(p)
		if r.String() != re.String() {
			t.Errorf("String() = %q, regexp's %q", r.String(), re.String())
		}
		for range 20000 {
			var s string
			for range rng.IntN(5) {
				s += pieces[rng.IntN(len(pieces))]
			}
			if rng.IntN(4) == 0 {
				s = string([]byte{byte(rng.IntN(256))}) + s
			}
			if got, want := r.MatchString(s), re.MatchString(s); got != want {
				t.Fatalf("%q on %q: %v, regexp %v", p, s, got, want)
			}
		}
	}
}
