package actors

import (
	"errors"
	"unicode"
)

// nameFormat is the JSON Schema format of an author name ("format": "author-name"). Length
// stays with minLength/maxLength; the format adds what a regular expression states badly:
//   - no control characters (C0, DEL, C1: NUL, tab, newline, ESC…) anywhere — a name is one
//     line of text that is shown, logged and stored;
//   - at least one visible character. Go's regexp "\S" only knows ASCII space, so a name of
//     U+00A0, U+3000 or U+200B alone passed it; here white space is Unicode's White_Space,
//     and format characters, default-ignorable code points (Hangul fillers, U+034F…),
//     variation selectors and the blank braille pattern do not count as visible either.
const nameFormat = "author-name"

// Why a name is refused (the messages of data.errors).
var (
	errNameControl   = errors.New("must not contain control characters (U+0000–U+001F, U+007F–U+009F)")
	errNameInvisible = errors.New("must contain a visible character, not only spaces or invisible characters")
)

// checkName returns nil for an acceptable author name, or why it is not. Values other than
// strings are the schema's "type" business and pass.
func checkName(v any) error {
	s, ok := v.(string)
	if !ok || s == "" {
		return nil // the schema's type and minLength speak for these
	}
	visible := false
	for _, r := range s {
		if unicode.Is(unicode.Cc, r) {
			return errNameControl
		}
		if !visible && !invisible(r) {
			visible = true
		}
	}
	if !visible {
		return errNameInvisible
	}
	return nil
}

// invisible reports whether r shows nothing by itself: white space, a format character, a
// default-ignorable code point or the blank braille pattern (U+2800, a common stand-in for a
// space where spaces are trimmed).
func invisible(r rune) bool {
	return unicode.In(r, unicode.White_Space, unicode.Cf, unicode.Other_Default_Ignorable_Code_Point,
		unicode.Variation_Selector) || r == '\u2800'
}
