package main

import "testing"

func TestBurstSettle(t *testing.T) {
	b := &burstSettle{}
	steps := []struct {
		n       int
		release bool
	}{
		{500, false}, {1500, false}, {1500, false}, {1500, false}, {1500, true}, // a burst, then still
		{1500, false}, {1500, false}, {1500, false}, {1500, false}, // released once only
		{1900, false}, {1900, false}, {1900, false}, {1900, false}, // 400 more: no burst
		{200, false}, {1300, false}, {1300, false}, {1300, false}, {1300, true}, // a burst from the lowest count
	}
	for i, s := range steps {
		if got := b.tick(s.n); got != s.release {
			t.Fatalf("step %d (count %d): release %v, want %v", i, s.n, got, s.release)
		}
	}
}
