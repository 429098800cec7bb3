package audit

import "testing"

func TestParseIDs(t *testing.T) {
	b := make([]Entry, 3)
	if err := parseIDs("7,8,10", b); err != nil || b[0].ID != 7 || b[1].ID != 8 || b[2].ID != 10 {
		t.Fatalf("parseIDs: %v %v", b, err)
	}
	for _, bad := range []string{"", "7,8", "7,8,10,11", "7,,10", "7,x,10", "7,8,-1", "7,8,0", "7,8,10,"} {
		b := make([]Entry, 3)
		if err := parseIDs(bad, b); err == nil {
			t.Errorf("parseIDs(%q) accepted", bad)
		}
		for i := range b {
			if b[i].ID != 0 {
				t.Errorf("parseIDs(%q) left id %d set", bad, i)
			}
		}
	}
}
