package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"switchboard/store"
	"switchboard/store/storetest"
)

func newAuthors(t *testing.T, url string) *store.Authors {
	t.Helper()
	return store.NewAuthors(storetest.NewDB(t, url))
}

func ptr[T any](v T) *T { return &v }

func TestAuthorsCRUD(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		ctx := context.Background()
		r := newAuthors(t, url)

		ada, err := r.Create(ctx, "Ada Lovelace")
		if err != nil {
			t.Fatal(err)
		}
		if ada.ID <= 0 || ada.Name != "Ada Lovelace" {
			t.Fatalf("Create = %+v", ada)
		}
		alan, err := r.Create(ctx, "Alan Turing")
		if err != nil {
			t.Fatal(err)
		}
		if alan.ID <= ada.ID {
			t.Fatalf("ids not increasing: %d then %d", ada.ID, alan.ID)
		}

		got, err := r.List(ctx, store.AuthorFilter{ID: &alan.ID})
		if err != nil || len(got) != 1 || got[0] != alan {
			t.Fatalf("List by id = %+v, %v", got, err)
		}

		upd, err := r.Update(ctx, ada.ID, "Augusta Ada King")
		if err != nil {
			t.Fatal(err)
		}
		if upd.ID != ada.ID || upd.Name != "Augusta Ada King" {
			t.Fatalf("Update = %+v", upd)
		}
		// Renaming to its own name is not a conflict.
		if _, err := r.Update(ctx, ada.ID, "Augusta Ada King"); err != nil {
			t.Fatalf("Update to the same name: %v", err)
		}

		if _, err := r.Update(ctx, 999999, "nobody"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Update missing: %v, want ErrNotFound", err)
		}
		if _, err := r.Update(ctx, alan.ID, "Augusta Ada King"); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("Update to a taken name: %v, want ErrConflict", err)
		}
		if _, err := r.Create(ctx, "Alan Turing"); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("Create duplicate: %v, want ErrConflict", err)
		}
		// Uniqueness is exact: another case is another name.
		if _, err := r.Create(ctx, "alan turing"); err != nil {
			t.Fatalf("Create differently cased name: %v", err)
		}

		if err := r.Delete(ctx, alan.ID); err != nil {
			t.Fatal(err)
		}
		if err := r.Delete(ctx, alan.ID); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Delete twice: %v, want ErrNotFound", err)
		}
		// The name is free again.
		if _, err := r.Create(ctx, "Alan Turing"); err != nil {
			t.Fatalf("Create after delete: %v", err)
		}

		all, err := r.List(ctx, store.AuthorFilter{})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for i, a := range all {
			if i > 0 && a.ID <= all[i-1].ID {
				t.Fatalf("List not ordered by id: %+v", all)
			}
			names = append(names, a.Name)
		}
		if want := "Augusta Ada King|alan turing|Alan Turing"; strings.Join(names, "|") != want {
			t.Fatalf("List = %q, want %q", names, want)
		}
	})
}

func TestAuthorsEmptyListIsNotNil(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		got, err := newAuthors(t, url).List(context.Background(), store.AuthorFilter{ID: ptr[int64](42)})
		if err != nil || got == nil || len(got) != 0 {
			t.Fatalf("List = %#v, %v; want empty non-nil", got, err)
		}
	})
}

func TestAuthorsConcurrentCreateOneWinner(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		ctx := context.Background()
		r := newAuthors(t, url)
		const n = 20
		var wg sync.WaitGroup
		errs := make([]error, n)
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				_, errs[i] = r.Create(ctx, "Grace Hopper")
			})
		}
		close(start)
		wg.Wait()
		wins := 0
		for _, err := range errs {
			switch {
			case err == nil:
				wins++
			case errors.Is(err, store.ErrConflict):
			default:
				t.Errorf("unexpected error: %v", err)
			}
		}
		if wins != 1 {
			t.Fatalf("%d creates succeeded, want exactly 1", wins)
		}
		got, err := r.List(ctx, store.AuthorFilter{Name: ptr("grace")})
		if err != nil || len(got) != 1 {
			t.Fatalf("List = %+v, %v", got, err)
		}
	})
}

func TestAuthorsNameFilter(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		ctx := context.Background()
		r := newAuthors(t, url)
		for _, name := range []string{"100%_done", "100xydone", `back\slash`, "backXslash", "John Smith", "johnny", "Mary"} {
			if _, err := r.Create(ctx, name); err != nil {
				t.Fatal(err)
			}
		}
		cases := []struct {
			filter string
			want   string
		}{
			{"%_", "100%_done"},
			{"%", "100%_done"},
			{"_", "100%_done"},
			{"100%_done", "100%_done"},
			{"100", "100%_done|100xydone"},
			{`\`, `back\slash`},
			{`k\s`, `back\slash`},
			{"JOHN", "John Smith|johnny"},
			{"ohn s", "John Smith"},
			{"", `100%_done|100xydone|back\slash|backXslash|John Smith|johnny|Mary`},
			{"zzz", ""},
			{"'; DROP TABLE authors; --", ""},
		}
		for _, tc := range cases {
			got, err := r.List(ctx, store.AuthorFilter{Name: ptr(tc.filter)})
			if err != nil {
				t.Fatalf("filter %q: %v", tc.filter, err)
			}
			if s := joinNames(got); s != tc.want {
				t.Errorf("filter %q = %q, want %q", tc.filter, s, tc.want)
			}
		}
		// Both filters at once.
		john, _ := r.List(ctx, store.AuthorFilter{Name: ptr("john smith")})
		got, err := r.List(ctx, store.AuthorFilter{ID: &john[0].ID, Name: ptr("mary")})
		if err != nil || len(got) != 0 {
			t.Fatalf("id+name filter = %+v, %v", got, err)
		}
	})
}

// The store never panics on odd input; the database may refuse it (ErrDatabase), nothing else.
func TestAuthorsOddInput(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		ctx := context.Background()
		r := newAuthors(t, url)
		for _, name := range []string{"", "nul\x00byte", "bad\xffutf8", strings.Repeat("x", 10000), "émoji 🎉", "?", "$1"} {
			a, err := r.Create(ctx, name)
			if err != nil && !errors.Is(err, store.ErrDatabase) {
				t.Errorf("Create(%q): %v", name, err)
			}
			// bun replaces invalid UTF-8 with U+FFFD on the way in.
			if err == nil && utf8.ValidString(name) && a.Name != name {
				t.Errorf("Create(%q) stored %q", name, a.Name)
			}
			if _, err := r.List(ctx, store.AuthorFilter{Name: &name}); err != nil && !errors.Is(err, store.ErrDatabase) {
				t.Errorf("List(%q): %v", name, err)
			}
		}
		for _, id := range []int64{0, -1, 1<<63 - 1, -1 << 63} {
			if _, err := r.Update(ctx, id, "x"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("Update(%d): %v", id, err)
			}
			if err := r.Delete(ctx, id); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("Delete(%d): %v", id, err)
			}
		}
	})
}

func joinNames(as []store.Author) string {
	names := make([]string, len(as))
	for i, a := range as {
		names[i] = a.Name
	}
	return strings.Join(names, "|")
}

func seed(t *testing.T, r *store.Authors, n int) []store.Author {
	t.Helper()
	out := make([]store.Author, n)
	for i := range n {
		a, err := r.Create(context.Background(), fmt.Sprintf("author %03d", i))
		if err != nil {
			t.Fatal(err)
		}
		out[i] = a
	}
	return out
}
