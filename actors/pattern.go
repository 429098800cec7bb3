package actors

import (
	"regexp"
	"regexp/syntax"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// compilePattern is the schemas' regular expression engine: Go's regexp, as jsonschema's
// default, except for a pattern of the form ^[class]+$ with an ASCII class (the topic names'),
// which asciiRun matches with a table: the same answers, a fraction of regexp's work on the
// SUBSCRIBE path.
func compilePattern(s string) (jsonschema.Regexp, error) {
	re, err := regexp.Compile(s)
	if err != nil {
		return nil, err
	}
	if r := asciiRunOf(s); r != nil {
		return r, nil
	}
	return re, nil
}

// asciiRun matches a non-empty string made only of the bytes in, as ^[class]+$ does when the
// class holds only ASCII: any other byte, the start of a multi-byte character or of invalid
// UTF-8 included, is outside it.
type asciiRun struct {
	src string
	in  [256]bool
}

func (r *asciiRun) MatchString(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !r.in[s[i]] {
			return false
		}
	}
	return true
}

func (r *asciiRun) String() string { return r.src }

// asciiRunOf returns the asciiRun of pattern s when s is ^[class]+$ (anchored at both ends of
// the text, as regexp.Compile reads ^ and $) with an ASCII class, or nil.
func asciiRunOf(s string) *asciiRun {
	re, err := syntax.Parse(s, syntax.Perl)
	if err != nil {
		return nil
	}
	re = re.Simplify()
	if re.Op != syntax.OpConcat || len(re.Sub) != 3 || re.Sub[0].Op != syntax.OpBeginText ||
		re.Sub[2].Op != syntax.OpEndText || re.Sub[1].Op != syntax.OpPlus ||
		len(re.Sub[1].Sub) != 1 || re.Sub[1].Sub[0].Op != syntax.OpCharClass {
		return nil
	}
	ranges := re.Sub[1].Sub[0].Rune
	r := &asciiRun{src: s}
	for i := 0; i+1 < len(ranges); i += 2 {
		lo, hi := ranges[i], ranges[i+1]
		if lo < 0 || hi >= 0x80 || lo > hi {
			return nil
		}
		for c := lo; c <= hi; c++ {
			r.in[c] = true
		}
	}
	return r
}
