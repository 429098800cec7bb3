package main

import "testing"

func TestSmokeGetAuthors(t *testing.T) {
	s := startServer(t, nil)
	c := s.connect(t, s.token(t, "alice", "get-authors", "create-author"))
	r := c.call(3, map[string]any{"name": "Ursula"})
	if r.status() != 0 {
		t.Fatalf("create: %+v %s", r, r.Data)
	}
	r = c.call(1, nil)
	if r.status() != 0 || string(r.Data) != `[{"id":1,"name":"Ursula"}]` {
		t.Fatalf("get: %+v %s", r, r.Data)
	}
}
