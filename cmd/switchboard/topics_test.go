package main

import (
	"encoding/json"
	"testing"
	"time"

	sbclient "switchboard/transport/client"
)

// topicFrame waits for the next broadcast on c and checks its topic.
func topicFrame(t *testing.T, c *testClient, topic string) sbclient.Message {
	t.Helper()
	m := c.next(10 * time.Second)
	if m.Topic != topic {
		t.Fatalf("broadcast on %q, want %q: %+v", m.Topic, topic, m)
	}
	return m
}

func TestTopicsSubscribeRBACAndDomainEvents(t *testing.T) {
	s := startServer(t, nil)
	reader := s.connect(t, s.token(t, "reader", "get-authors"))
	nobody := s.connect(t, s.token(t, "nobody"))
	writer := s.connect(t, s.token(t, "writer", "create-author", "update-author", "delete-author"))

	sub := reader.mustSubscribe("authors")
	if sub.Topic() != "authors" || sub.Position().Seq != 0 {
		t.Fatalf("subscription %q at %+v", sub.Topic(), sub.Position())
	}
	if _, err := nobody.subscribe("authors"); !sbclient.IsPermissionDenied(err) {
		t.Fatalf("authors without get-authors: %v", err)
	}
	if _, err := nobody.subscribe("secret"); !sbclient.IsPermissionDenied(err) {
		t.Fatalf("topic outside the policy: %v", err)
	}
	if _, err := nobody.subscribe("bad topic!"); !sbclient.IsInvalidData(err) {
		t.Fatalf("bad topic name: %v", err)
	}

	r := writer.call(3, map[string]any{"name": "Octavia"})
	if r.status() != 0 {
		t.Fatalf("create: %+v", r)
	}
	e := topicFrame(t, reader, "authors")
	var ev struct {
		Event  string `json:"event"`
		Author struct {
			ID   int64  `json:"id"`
			Name string `json:"name"`
		} `json:"author"`
	}
	if err := json.Unmarshal(e.Data, &ev); err != nil || e.PkgID != 3 || ev.Event != "created" || ev.Author.Name != "Octavia" {
		t.Fatalf("event %+v %s", e, e.Data)
	}
	writer.call(5, map[string]any{"id": ev.Author.ID})
	if e := topicFrame(t, reader, "authors"); e.PkgID != 5 {
		t.Fatalf("delete event %+v %s", e, e.Data)
	}

	if err := sub.Unsubscribe(t.Context()); err != nil {
		t.Fatalf("unsubscribe: %v", err)
	}
	writer.call(3, map[string]any{"name": "After unsubscribe"})
	// A frame that can only come after the event shows the event did not arrive (the client
	// would drop it anyway now; the server's side of this is in protocol_test.go).
	if r := reader.call(1, map[string]any{"filters": map[string]any{"name": "After"}}); r.status() != 0 {
		t.Fatalf("get: %+v", r)
	}
	reader.noMessage()
}

func TestTopicBroadcastOverHTTP(t *testing.T) {
	s := startServer(t, nil)
	sub := s.connect(t, s.token(t, "viewer"))
	other := s.connect(t, s.token(t, "viewer2"))
	sub.mustSubscribe("dashboards.sales")
	other.mustSubscribe("dashboards.ops")
	producer := s.token(t, "producer", "broadcast")
	mustPublish(t, s.publisher(t, producer), "dashboards.sales", 7, map[string]int{"v": 1})
	if e := topicFrame(t, sub, "dashboards.sales"); e.PkgID != 7 || string(e.Data) != `{"v":1}` {
		t.Fatalf("got %+v %s", e, e.Data)
	}
	// Only the server publishes on authors; topics outside the policy are refused. The exact
	// bodies are the façade's wire, so these go through plain HTTP.
	for _, tc := range []struct{ body, want string }{
		{`{"pkg_id":1,"topic":"authors","data":{}}`, `{"detail":"Only the server publishes on topic \"authors\""}`},
		{`{"pkg_id":1,"topic":"secret","data":{}}`, `{"detail":"Topic \"secret\" is not allowed by the RBAC policy"}`},
	} {
		resp, body := s.do(t, "POST", "/api/broadcast", producer, tc.body)
		if resp.StatusCode != 403 || string(body) != tc.want+"\n" {
			t.Fatalf("%s: %d %s", tc.body, resp.StatusCode, body)
		}
	}
	// The other topic's subscriber got nothing: its next frame is the answer to this call.
	if r := other.call(1, nil); r.status() != 3 {
		t.Fatalf("other: %+v", r)
	}
	other.noMessage()
}
