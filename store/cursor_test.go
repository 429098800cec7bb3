package store

import (
	"errors"
	"math"
	"strings"
	"testing"
)

func TestCursorRoundTrip(t *testing.T) {
	for _, id := range []int64{0, 1, 42, math.MaxInt64} {
		c := encodeCursor(id)
		if strings.ContainsAny(c, "+/=") {
			t.Errorf("cursor %q is not unpadded base64url", c)
		}
		got, err := decodeCursor(c)
		if err != nil || got != id {
			t.Errorf("decode(encode(%d)) = %d, %v", id, got, err)
		}
	}
}

func FuzzDecodeCursor(f *testing.F) {
	for _, s := range []string{"", encodeCursor(1), encodeCursor(math.MaxInt64), "djE6LTE", "====", "v1:5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := decodeCursor(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidCursor) {
				t.Fatalf("decode(%q): %v is not ErrInvalidCursor", s, err)
			}
			return
		}
		// Only canonical cursors decode.
		if id < 0 || encodeCursor(id) != s {
			t.Fatalf("decode(%q) = %d, which encodes to %q", s, id, encodeCursor(id))
		}
	})
}

func TestEscapeLike(t *testing.T) {
	for in, want := range map[string]string{
		"":          "",
		"plain":     "plain",
		"100%_done": `100\%\_done`,
		`a\b`:       `a\\b`,
		`\%_`:       `\\\%\_`,
	} {
		if got := escapeLike(in); got != want {
			t.Errorf("escapeLike(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPageCount(t *testing.T) {
	for _, tc := range []struct{ total, per, want int }{
		{0, 20, 0}, {1, 20, 1}, {20, 20, 1}, {21, 20, 2}, {23, 5, 5}, {5, 1, 5},
	} {
		if got := pageCount(tc.total, tc.per); got != tc.want {
			t.Errorf("pageCount(%d, %d) = %d, want %d", tc.total, tc.per, got, tc.want)
		}
	}
}
