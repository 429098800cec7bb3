package migrations_test

import (
	"testing"

	"switchboard/store/migrations"
)

// Both dialects must describe the same schema history, version for version.
func TestDialectsHaveTheSameVersions(t *testing.T) {
	pg, err := migrations.For("postgres")
	if err != nil {
		t.Fatal(err)
	}
	lite, err := migrations.For("sqlite")
	if err != nil {
		t.Fatal(err)
	}
	a, b := pg.Sorted(), lite.Sorted()
	if len(a) == 0 || len(a) != len(b) {
		t.Fatalf("postgres has %d migrations, sqlite %d", len(a), len(b))
	}
	for i := range a {
		if a[i].Name != b[i].Name || a[i].Comment != b[i].Comment {
			t.Errorf("migration %d: postgres %s_%s, sqlite %s_%s", i, a[i].Name, a[i].Comment, b[i].Name, b[i].Comment)
		}
		if a[i].Up == nil || b[i].Up == nil || a[i].Down == nil || b[i].Down == nil {
			t.Errorf("migration %s lacks an up or down file", a[i].Name)
		}
	}
	if _, err := migrations.For("mysql"); err == nil {
		t.Fatal("unknown dialect accepted")
	}
}
