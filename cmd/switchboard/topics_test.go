package main

import (
	"encoding/json"
	"testing"
	"time"
)

// topicFrame waits for the next broadcast on c and checks its topic.
func topicFrame(t *testing.T, c *wsClient, topic string) envelope {
	t.Helper()
	for {
		e := c.next(10 * time.Second)
		if e.StatusCode != nil {
			continue // an answer to something else
		}
		if e.Topic != topic {
			t.Fatalf("broadcast on %q, want %q: %+v", e.Topic, topic, e)
		}
		return e
	}
}

func TestTopicsSubscribeRBACAndDomainEvents(t *testing.T) {
	s := startServer(t, nil)
	reader := s.dial(t, s.token(t, "reader", "get-authors"))
	nobody := s.dial(t, s.token(t, "nobody"))
	writer := s.dial(t, s.token(t, "writer", "create-author", "update-author", "delete-author"))

	if r := reader.call(10, map[string]any{"topic": "authors"}); r.status() != 0 {
		t.Fatalf("subscribe authors: %+v %s", r, r.Data)
	} else {
		var d struct {
			Topic     string `json:"topic"`
			Seq       uint64 `json:"seq"`
			Recovered bool   `json:"recovered"`
		}
		decodeData(t, r, &d)
		if d.Topic != "authors" {
			t.Fatalf("answer data %s", r.Data)
		}
	}
	if r := nobody.call(10, map[string]any{"topic": "authors"}); r.status() != 3 {
		t.Fatalf("authors without get-authors: %+v", r)
	}
	if r := nobody.call(10, map[string]any{"topic": "secret"}); r.status() != 3 {
		t.Fatalf("topic outside the policy: %+v", r)
	}
	if r := nobody.call(10, map[string]any{"topic": "bad topic!"}); r.status() != 2 {
		t.Fatalf("bad topic name: %+v", r)
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

	if r := reader.call(11, map[string]any{"topic": "authors"}); r.status() != 0 {
		t.Fatalf("unsubscribe: %+v", r)
	}
	writer.call(3, map[string]any{"name": "After unsubscribe"})
	// A frame that can only come after the event shows the event did not arrive.
	if r := reader.call(1, map[string]any{"filters": map[string]any{"name": "After"}}); r.status() != 0 {
		t.Fatalf("get: %+v", r)
	}
	select {
	case b := <-reader.msgs:
		t.Fatalf("unexpected frame after unsubscribe: %s", b)
	default:
	}
}

func TestTopicBroadcastOverHTTP(t *testing.T) {
	s := startServer(t, nil)
	sub := s.dial(t, s.token(t, "viewer"))
	other := s.dial(t, s.token(t, "viewer2"))
	if r := sub.call(10, map[string]any{"topic": "dashboards.sales"}); r.status() != 0 {
		t.Fatalf("subscribe: %+v", r)
	}
	if r := other.call(10, map[string]any{"topic": "dashboards.ops"}); r.status() != 0 {
		t.Fatalf("subscribe: %+v", r)
	}
	producer := s.token(t, "producer", "broadcast")
	resp, body := s.do(t, "POST", "/api/broadcast", producer, `{"pkg_id":7,"topic":"dashboards.sales","data":{"v":1}}`)
	if resp.StatusCode != 202 {
		t.Fatalf("broadcast: %d %s", resp.StatusCode, body)
	}
	if e := topicFrame(t, sub, "dashboards.sales"); e.PkgID != 7 || string(e.Data) != `{"v":1}` {
		t.Fatalf("got %+v %s", e, e.Data)
	}
	// Only the server publishes on authors; topics outside the policy are refused.
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
}
