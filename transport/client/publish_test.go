package client

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// broadcastFake plays POST /api/broadcast: it accepts the tokens in good and records what it
// was sent.
type broadcastFake struct {
	mu     sync.Mutex
	good   map[string]bool
	bodies []map[string]any
	auths  []string
}

func (f *broadcastFake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	auth := r.Header.Get("Authorization")
	f.auths = append(f.auths, auth)
	w.Header().Set("Content-Type", "application/json")
	if r.Method != http.MethodPost || r.URL.Path != "/api/broadcast" {
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"detail":"Not found"}`))
		return
	}
	tok := strings.TrimPrefix(auth, "Bearer ")
	switch {
	case tok == "reader":
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"detail":"Missing required roles: broadcast"}`))
		return
	case !f.good[tok]:
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"detail":"Token expired"}`))
		return
	}
	var body map[string]any
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		w.WriteHeader(http.StatusUnprocessableEntity)
		_, _ = w.Write([]byte(`{"detail":"Invalid data"}`))
		return
	}
	f.bodies = append(f.bodies, body)
	w.WriteHeader(http.StatusAccepted)
	_, _ = w.Write([]byte(`{"delivered_to_nodes":2}`))
}

func TestPublisherPublishes(t *testing.T) {
	fake := &broadcastFake{good: map[string]bool{"producer": true}}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	p, err := NewPublisher(PublisherConfig{BaseURL: srv.URL + "/", Token: "producer"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	n, err := p.Publish(ctx, "dashboards.sales", 7, json.RawMessage(`{"total":42}`))
	if err != nil || n != 2 {
		t.Fatalf("Publish = %d, %v; want 2, nil", n, err)
	}
	if _, err := p.Publish(ctx, "", 8, nil); err != nil {
		t.Fatal(err)
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if len(fake.bodies) != 2 {
		t.Fatalf("bodies: %v", fake.bodies)
	}
	first, second := fake.bodies[0], fake.bodies[1]
	if first["topic"] != "dashboards.sales" || first["pkg_id"] != float64(7) || first["data"].(map[string]any)["total"] != float64(42) {
		t.Fatalf("first body: %v", first)
	}
	if _, ok := second["topic"]; ok || second["pkg_id"] != float64(8) {
		t.Fatalf("a broadcast to everyone carries no topic: %v", second)
	}
	if fake.auths[0] != "Bearer producer" {
		t.Fatalf("Authorization %q", fake.auths[0])
	}
}

func TestPublisherRefusals(t *testing.T) {
	fake := &broadcastFake{good: map[string]bool{"fresh": true}}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	ctx := context.Background()

	// A 401 gets one fresh token from GetToken and is tried again with it.
	calls := 0
	p, err := NewPublisher(PublisherConfig{BaseURL: srv.URL, Token: "stale", GetToken: func(context.Context) (string, error) {
		calls++
		return "fresh", nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Publish(ctx, "", 1, nil); err != nil || calls != 1 {
		t.Fatalf("after a 401: %v, GetToken called %d times", err, calls)
	}
	if _, err := p.Publish(ctx, "", 1, nil); err != nil || calls != 1 {
		t.Fatalf("the fresh token is kept: %v, GetToken called %d times", err, calls)
	}

	// Without GetToken the 401 is the answer, as an *Error.
	p, _ = NewPublisher(PublisherConfig{BaseURL: srv.URL, Token: "stale"})
	_, err = p.Publish(ctx, "", 1, nil)
	if !isUnauthorized(err) || !strings.Contains(err.Error(), "Token expired") {
		t.Fatalf("401: %v", err)
	}
	p, _ = NewPublisher(PublisherConfig{BaseURL: srv.URL, Token: "reader"})
	if _, err = p.Publish(ctx, "dashboards.x", 1, nil); !IsPermissionDenied(err) {
		t.Fatalf("403: %v", err)
	}

	// Data that cannot be encoded never leaves.
	if _, err := p.Publish(ctx, "", 1, make(chan int)); err == nil {
		t.Fatal("unencodable data published")
	}

	for _, cfg := range []PublisherConfig{
		{BaseURL: "ws://127.0.0.1:1", Token: "x"},
		{BaseURL: "127.0.0.1:8000", Token: "x"},
		{BaseURL: "http://127.0.0.1:1"},
	} {
		if _, err := NewPublisher(cfg); err == nil {
			t.Errorf("NewPublisher(%+v) accepted", cfg)
		}
	}
}
