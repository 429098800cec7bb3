package store_test

import (
	"context"
	"encoding/base64"
	"errors"
	"testing"

	"switchboard/store"
	"switchboard/store/storetest"
)

func TestPageOffset(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		ctx := context.Background()
		r := newAuthors(t, url)
		all := seed(t, r, 23)

		var walked []store.Author
		for page := 1; ; page++ {
			items, meta, err := r.Page(ctx, store.AuthorFilter{}, store.PageRequest{Page: page, PerPage: 5})
			if err != nil {
				t.Fatal(err)
			}
			want := store.PageMeta{Page: page, PerPage: 5, Total: 23, Pages: 5, HasMore: page < 5}
			if !metaEqual(meta, want) {
				t.Fatalf("page %d meta = %+v, want %+v", page, meta, want)
			}
			walked = append(walked, items...)
			if !meta.HasMore {
				if len(items) != 3 {
					t.Fatalf("last page has %d items, want 3", len(items))
				}
				break
			}
		}
		assertSameAuthors(t, walked, all)

		// Defaults, past the end, and an oversized page number.
		items, meta, err := r.Page(ctx, store.AuthorFilter{}, store.PageRequest{})
		if err != nil || len(items) != 20 || !metaEqual(meta, store.PageMeta{Page: 1, PerPage: 20, Total: 23, Pages: 2, HasMore: true}) {
			t.Fatalf("default page = %d items, %+v, %v", len(items), meta, err)
		}
		for _, page := range []int{6, 1 << 62} {
			items, meta, err = r.Page(ctx, store.AuthorFilter{}, store.PageRequest{Page: page, PerPage: 5})
			if err != nil || items == nil || len(items) != 0 ||
				!metaEqual(meta, store.PageMeta{Page: page, PerPage: 5, Total: 23, Pages: 5}) {
				t.Fatalf("page %d = %v, %+v, %v", page, items, meta, err)
			}
		}
		items, meta, err = r.Page(ctx, store.AuthorFilter{}, store.PageRequest{PerPage: 1 << 40})
		if err != nil || len(items) != 23 || meta.PerPage != store.MaxPerPage || meta.Pages != 1 {
			t.Fatalf("huge per_page = %d items, %+v, %v", len(items), meta, err)
		}

		// A filter changes the total.
		items, meta, err = r.Page(ctx, store.AuthorFilter{Name: ptr("author 01")}, store.PageRequest{Page: 2, PerPage: 4})
		if err != nil || joinNames(items) != "author 014|author 015|author 016|author 017" ||
			!metaEqual(meta, store.PageMeta{Page: 2, PerPage: 4, Total: 10, Pages: 3, HasMore: true}) {
			t.Fatalf("filtered page = %q, %+v, %v", joinNames(items), meta, err)
		}

		// Empty table.
		items, meta, err = r.Page(ctx, store.AuthorFilter{Name: ptr("nobody")}, store.PageRequest{})
		if err != nil || len(items) != 0 || !metaEqual(meta, store.PageMeta{Page: 1, PerPage: 20}) {
			t.Fatalf("empty = %v, %+v, %v", items, meta, err)
		}
	})
}

func TestPageCursor(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		ctx := context.Background()
		r := newAuthors(t, url)
		all := seed(t, r, 23)
		// A hole in the ids must not matter.
		if err := r.Delete(ctx, all[7].ID); err != nil {
			t.Fatal(err)
		}
		all = append(all[:7:7], all[8:]...)

		var walked []store.Author
		cursor := ""
		for pages := 1; ; pages++ {
			items, meta, err := r.Page(ctx, store.AuthorFilter{}, store.PageRequest{Page: 3, PerPage: 5, Cursor: &cursor})
			if err != nil {
				t.Fatal(err)
			}
			if meta.Page != 1 || meta.PerPage != 5 || meta.Total != 0 || meta.Pages != 0 {
				t.Fatalf("cursor meta = %+v", meta)
			}
			walked = append(walked, items...)
			if !meta.HasMore {
				if meta.NextCursor != nil || len(items) != 2 || pages != 5 {
					t.Fatalf("last page: %d items, next %v, page %d", len(items), meta.NextCursor, pages)
				}
				break
			}
			if meta.NextCursor == nil || *meta.NextCursor == "" || len(items) != 5 {
				t.Fatalf("page %d: %d items, meta %+v", pages, len(items), meta)
			}
			cursor = *meta.NextCursor
		}
		assertSameAuthors(t, walked, all)

		// Exactly per_page rows left: no phantom next page.
		items, meta, err := r.Page(ctx, store.AuthorFilter{}, store.PageRequest{PerPage: 22, Cursor: ptr("")})
		if err != nil || len(items) != 22 || meta.HasMore || meta.NextCursor != nil {
			t.Fatalf("exact page = %d items, %+v, %v", len(items), meta, err)
		}

		// Filters apply in cursor mode too.
		items, meta, err = r.Page(ctx, store.AuthorFilter{Name: ptr("author 01")}, store.PageRequest{PerPage: 6, Cursor: ptr("")})
		if err != nil || joinNames(items) != "author 010|author 011|author 012|author 013|author 014|author 015" || !meta.HasMore {
			t.Fatalf("filtered cursor page = %q, %+v, %v", joinNames(items), meta, err)
		}
		items, meta, err = r.Page(ctx, store.AuthorFilter{Name: ptr("author 01")}, store.PageRequest{PerPage: 6, Cursor: meta.NextCursor})
		if err != nil || joinNames(items) != "author 016|author 017|author 018|author 019" || meta.HasMore {
			t.Fatalf("filtered cursor page 2 = %q, %+v, %v", joinNames(items), meta, err)
		}
	})
}

func TestPageInvalidCursor(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		r := newAuthors(t, url)
		b64 := base64.RawURLEncoding.EncodeToString
		for _, c := range []string{
			"garbage!", "====", "djE6", b64([]byte("v1:")), b64([]byte("v2:5")), b64([]byte("v1:-5")),
			b64([]byte("v1:+5")), b64([]byte("v1:05")), b64([]byte("v1:5x")), b64([]byte("v1:99999999999999999999")),
			base64.URLEncoding.EncodeToString([]byte("v1:5")), " ", string(make([]byte, 4096)),
		} {
			_, _, err := r.Page(context.Background(), store.AuthorFilter{}, store.PageRequest{Cursor: &c})
			if !errors.Is(err, store.ErrInvalidCursor) {
				t.Errorf("cursor %q: %v, want ErrInvalidCursor", c, err)
			}
		}
	})
}

func metaEqual(a, b store.PageMeta) bool {
	if (a.NextCursor == nil) != (b.NextCursor == nil) {
		return false
	}
	if a.NextCursor != nil && *a.NextCursor != *b.NextCursor {
		return false
	}
	a.NextCursor, b.NextCursor = nil, nil
	return a == b
}

func assertSameAuthors(t *testing.T, got, want []store.Author) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("walked %d authors, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("author #%d = %+v, want %+v (pages overlap or are out of order)", i, got[i], want[i])
		}
	}
}
