package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"switchboard/store"
	"switchboard/store/storetest"
)

func TestOpenUnreachablePostgres(t *testing.T) {
	t.Parallel()
	const password = "s3cr3t-pa55"
	start := time.Now()
	db, err := store.Open(context.Background(),
		"postgres://switchboard:"+password+"@127.0.0.1:1/switchboard?sslmode=disable", 500*time.Millisecond)
	elapsed := time.Since(start)
	if err == nil {
		_ = db.Close()
		t.Fatal("Open succeeded against port 1")
	}
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if elapsed > 3*time.Second {
		t.Fatalf("Open took %s with a 500ms connect timeout", elapsed)
	}
	msg := err.Error()
	if strings.Contains(msg, password) {
		t.Fatalf("error leaks the password: %s", msg)
	}
	if !strings.Contains(msg, "127.0.0.1:1") {
		t.Fatalf("error does not name host:port: %s", msg)
	}
}

func TestOpenHonoursContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := store.Open(ctx, "postgres://postgres@127.0.0.1:1/x?sslmode=disable", 30*time.Second)
	if !errors.Is(err, store.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrUnavailable and DeadlineExceeded", err)
	}
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Fatalf("Open ignored ctx: took %s", elapsed)
	}
}

func TestOpenRejectsBadURLs(t *testing.T) {
	t.Parallel()
	const password = "hunter2-secret"
	for _, u := range []string{
		"",
		"mysql://root:" + password + "@localhost/db",
		"postgres://u:" + password + "@host:notaport/db",
		"postgres://u:" + password + "@127.0.0.1:5432/db?sslmode=bogus",
		"postgres://u:" + password + "@[::1/db",
		"sqlite://",
		"sqlite://data/x.db?mode=ro",
		"switchboard.db",
	} {
		db, err := store.Open(context.Background(), u, time.Second)
		if err == nil {
			_ = db.Close()
			t.Errorf("Open(%q) succeeded", u)
			continue
		}
		if strings.Contains(err.Error(), password) {
			t.Errorf("Open(%q) error leaks the password: %v", u, err)
		}
	}
}

func TestOpenSQLiteCreatesDirectoryAndSetsPragmas(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "nested", "de%20 per", "sb%.db")
	db, err := store.Open(context.Background(), "sqlite://"+path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if db.Dialect != store.DialectSQLite {
		t.Fatalf("Dialect = %q", db.Dialect)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database file: %v", err)
	}
	ctx := context.Background()
	var mode string
	var busy, fk int
	if err := db.Bun.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode = %q, %v; want wal", mode, err)
	}
	if err := db.Bun.QueryRowContext(ctx, "PRAGMA busy_timeout").Scan(&busy); err != nil || busy <= 0 {
		t.Fatalf("busy_timeout = %d, %v", busy, err)
	}
	if err := db.Bun.QueryRowContext(ctx, "PRAGMA foreign_keys").Scan(&fk); err != nil || fk != 1 {
		t.Fatalf("foreign_keys = %d, %v", fk, err)
	}
}

func TestOpenSQLiteRelativePath(t *testing.T) {
	// Changes the working directory: not parallel.
	t.Chdir(t.TempDir())
	db, err := store.Open(context.Background(), "sqlite://data/rel.db", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join("data", "rel.db")); err != nil {
		t.Fatalf("relative database file: %v", err)
	}
}

func TestSQLiteMemory(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, err := store.Open(ctx, "sqlite://:memory:", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	authors := store.NewAuthors(db)
	if _, err := authors.Create(ctx, "Ada"); err != nil {
		t.Fatal(err)
	}
	got, err := authors.List(ctx, store.AuthorFilter{})
	if err != nil || len(got) != 1 {
		t.Fatalf("List = %v, %v", got, err)
	}
}

func TestDatabaseErrors(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		ctx := context.Background()
		db, err := store.Open(ctx, url, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Ping(ctx); err != nil {
			t.Fatalf("Ping: %v", err)
		}
		authors := store.NewAuthors(db)

		// Not migrated: the table is missing, so the query itself is broken.
		if _, err := authors.List(ctx, store.AuthorFilter{}); !errors.Is(err, store.ErrDatabase) {
			t.Fatalf("List on a missing table: %v, want ErrDatabase", err)
		}
		if _, err := authors.Create(ctx, "x"); !errors.Is(err, store.ErrDatabase) {
			t.Fatalf("Create on a missing table: %v, want ErrDatabase", err)
		}

		if err := db.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
		if err := db.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		checks := map[string]error{
			"Ping": db.Ping(ctx),
			"List": func() error { _, err := authors.List(ctx, store.AuthorFilter{}); return err }(),
			"Page": func() error {
				_, _, err := authors.Page(ctx, store.AuthorFilter{}, store.PageRequest{})
				return err
			}(),
			"Create":  func() error { _, err := authors.Create(ctx, "x"); return err }(),
			"Update":  func() error { _, err := authors.Update(ctx, 1, "x"); return err }(),
			"Delete":  authors.Delete(ctx, 1),
			"Migrate": db.Migrate(ctx),
		}
		for op, err := range checks {
			if !errors.Is(err, store.ErrDatabase) {
				t.Errorf("%s on a closed DB: %v, want ErrDatabase", op, err)
			}
		}
	})
}

func TestCanceledContextIsDatabaseError(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := store.NewAuthors(db).List(ctx, store.AuthorFilter{})
		if !errors.Is(err, store.ErrDatabase) || !errors.Is(err, context.Canceled) {
			t.Fatalf("List with a canceled ctx: %v", err)
		}
	})
}

// A server that answers but refuses (here: no such database) is not worth 30 s of retries.
func TestOpenFailsFastWhenPostgresRefuses(t *testing.T) {
	t.Parallel()
	url := storetest.PostgresURL(t) // skips without PostgreSQL
	missing := url[:strings.LastIndex(url, "/")] + "/sb_test_no_such_database?sslmode=disable"
	start := time.Now()
	db, err := store.Open(context.Background(), missing, 30*time.Second)
	if err == nil {
		_ = db.Close()
		t.Fatal("Open succeeded on a missing database")
	}
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Fatalf("Open retried a permanent failure for %s", elapsed)
	}
}

func TestAuthorJSON(t *testing.T) {
	t.Parallel()
	b, err := json.Marshal(store.Author{ID: 7, Name: "Ada"})
	if err != nil || string(b) != `{"id":7,"name":"Ada"}` {
		t.Fatalf("json = %s, %v", b, err)
	}
	b, err = json.Marshal(store.PageMeta{Page: 1, PerPage: 20})
	if err != nil || string(b) != `{"page":1,"per_page":20,"total":0,"pages":0,"next_cursor":null,"has_more":false}` {
		t.Fatalf("json = %s, %v", b, err)
	}
}
