package store

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
)

// Page sizes. The JSON schemas at the edge enforce their own bounds; these keep the store safe
// when called directly.
const (
	DefaultPerPage = 20
	MaxPerPage     = 1000
)

// PageRequest selects a page. Cursor != nil selects cursor mode (*Cursor == "" starts from the
// beginning) and Page is ignored; otherwise offset mode with Page (>= 1, default 1).
// PerPage defaults to DefaultPerPage and is capped at MaxPerPage.
type PageRequest struct {
	Page    int
	PerPage int
	Cursor  *string
}

// PageMeta is the wire "meta" object of paginated responses (docs/protocol.md, "Pagination meta").
// Offset mode: Page/PerPage as used, Total = matching rows, Pages = ceil(Total/PerPage),
// NextCursor nil, HasMore = Page < Pages. Cursor mode: Page 1, Total and Pages 0, NextCursor
// set when HasMore.
type PageMeta struct {
	Page       int     `json:"page"`
	PerPage    int     `json:"per_page"`
	Total      int     `json:"total"`
	Pages      int     `json:"pages"`
	NextCursor *string `json:"next_cursor"`
	HasMore    bool    `json:"has_more"`
}

func (p PageRequest) normalized() PageRequest {
	if p.Page < 1 {
		p.Page = 1
	}
	if p.PerPage < 1 {
		p.PerPage = DefaultPerPage
	}
	p.PerPage = min(p.PerPage, MaxPerPage)
	return p
}

// Cursors are opaque to clients: base64url (unpadded) of "v1:<last id>". The version prefix
// lets a later format (e.g. a different sort key) reject or translate old cursors.
const (
	cursorVersion   = "v1:"
	maxCursorLength = 64
)

func encodeCursor(lastID int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(cursorVersion + strconv.FormatInt(lastID, 10)))
}

// decodeCursor returns the last id seen. Anything but a canonical cursor produced by
// encodeCursor is ErrInvalidCursor.
func decodeCursor(s string) (int64, error) {
	if len(s) > maxCursorLength {
		return 0, fmt.Errorf("%w: too long", ErrInvalidCursor)
	}
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return 0, fmt.Errorf("%w: not base64url", ErrInvalidCursor)
	}
	digits, ok := strings.CutPrefix(string(raw), cursorVersion)
	if !ok {
		return 0, fmt.Errorf("%w: unknown version", ErrInvalidCursor)
	}
	id, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || id < 0 || encodeCursor(id) != s {
		return 0, fmt.Errorf("%w: bad position", ErrInvalidCursor)
	}
	return id, nil
}

// pageCount is ceil(total/perPage) for perPage >= 1.
func pageCount(total, perPage int) int {
	if total <= 0 {
		return 0
	}
	return (total-1)/perPage + 1
}
