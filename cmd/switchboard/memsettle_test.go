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

// Bursts closer together than the gap get one release; the next waits for the gap.
func TestBurstSettleGap(t *testing.T) {
	b := &burstSettle{gap: 10, since: 10}
	release := 0
	for i := range 40 {
		n := 0
		if i%8 >= 2 { // waves: 1 200 connections for six ticks, then none for two
			n = 1200
		}
		if b.tick(n) {
			release++
			if b.since != 0 {
				t.Fatal("since not reset")
			}
		}
	}
	// Waves start at ticks 2, 10, 18, 26 and 34 and each holds still long enough (at 5, 13, 21,
	// 29 and 37); the gap lets those at 5, 21 and 37 through.
	if release != 3 {
		t.Fatalf("%d releases in 40 ticks with a gap of 10", release)
	}
}
