package store_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"switchboard/store"
	"switchboard/store/storetest"
)

func TestMigrateIsIdempotent(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		ctx := context.Background()
		db := storetest.NewDB(t, url) // migrates once
		for range 2 {
			if err := db.Migrate(ctx); err != nil {
				t.Fatalf("Migrate again: %v", err)
			}
		}
		assertMigratedOnce(t, db)
	})
}

// Several processes (here: separate *DB handles, so separate pools) migrating one fresh
// database at the same moment must all succeed and apply each migration once.
func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		const n = 4
		dbs := make([]*store.DB, n)
		for i := range dbs {
			db, err := store.Open(ctx, url, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = db.Close() })
			dbs[i] = db
		}
		var wg sync.WaitGroup
		errs := make([]error, n+1)
		start := make(chan struct{})
		for i, db := range dbs {
			wg.Go(func() { <-start; errs[i] = db.Migrate(ctx) })
		}
		// Two calls on one handle as well.
		wg.Go(func() { <-start; errs[n] = dbs[0].Migrate(ctx) })
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("Migrate #%d: %v", i, err)
			}
		}
		assertMigratedOnce(t, dbs[0])
		if _, err := store.NewAuthors(dbs[1]).Create(ctx, "after concurrent migrate"); err != nil {
			t.Fatal(err)
		}
	})
}

func assertMigratedOnce(t *testing.T, db *store.DB) {
	t.Helper()
	var rows, names int
	err := db.Bun.QueryRowContext(context.Background(),
		"SELECT COUNT(*), COUNT(DISTINCT name) FROM bun_migrations").Scan(&rows, &names)
	if err != nil {
		t.Fatal(err)
	}
	if rows == 0 || rows != names {
		t.Fatalf("bun_migrations: %d rows for %d migrations", rows, names)
	}
}
