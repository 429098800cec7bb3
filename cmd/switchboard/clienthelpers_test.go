package main

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	sbclient "switchboard/transport/client"
)

// testClient is how the end-to-end tests speak the protocol as a well-behaved client: the
// project's Go client (transport/client) with a test's conveniences around it. Answers come back
// as envelopes (a refusal too, with its status and msg), broadcasts and the messages of the
// subscriptions made through it queue on msgs in arrival order, and the end of every
// connection queues on disconnects. Tests that must misbehave or watch the wire use wsClient
// (harness_test.go) instead.
type testClient struct {
	t           testing.TB
	c           *sbclient.Client
	msgs        chan sbclient.Message
	missed      chan sbclient.Missed
	disconnects chan sbclient.Disconnect
}

// connect dials node s with token (Authorization header) and fails the test when the first
// connection does not come up. edit adjusts the client's configuration (fast reconnects by
// default). The client is closed when the test ends.
func (s *testServer) connect(t testing.TB, token string, edit ...func(*sbclient.Config)) *testClient {
	t.Helper()
	c, err := s.tryConnect(t, token, edit...)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	return c
}

// tryConnect is connect that returns the first connection's failure (a *sbclient.HandshakeError
// for a refused upgrade) instead of failing the test.
func (s *testServer) tryConnect(t testing.TB, token string, edit ...func(*sbclient.Config)) (*testClient, error) {
	t.Helper()
	tc := &testClient{t: t, msgs: make(chan sbclient.Message, 4096), missed: make(chan sbclient.Missed, 64),
		disconnects: make(chan sbclient.Disconnect, 64)}
	cfg := sbclient.Config{
		URL: s.wsURL(""), Token: token,
		ReconnectMin: 10 * time.Millisecond, ReconnectMax: 200 * time.Millisecond,
		ConnLimitDelay: 100 * time.Millisecond, RequestTimeout: 10 * time.Second,
		InboundQueue: 4096,
		OnBroadcast:  tc.onMessage,
		OnDisconnect: func(d sbclient.Disconnect) {
			select {
			case tc.disconnects <- d:
			default: // a test that watches disconnects reads the first ones
			}
		},
	}
	for _, e := range edit {
		e(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := sbclient.Dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	tc.c = c
	t.Cleanup(func() { _ = c.Close() })
	return tc, nil
}

// onMessage queues a broadcast; a test reading msgs sees them in the order they arrived.
func (tc *testClient) onMessage(m sbclient.Message) {
	select {
	case tc.msgs <- m:
	default:
		tc.t.Errorf("test client: more than %d broadcasts unread", cap(tc.msgs))
	}
}

// call sends a request and returns its answer, a refusal included (status and msg set);
// a request that gets no answer (timeout, connection lost) fails the test.
func (tc *testClient) call(pkgID int, data any) envelope {
	tc.t.Helper()
	e, err := tc.tryCall(context.Background(), pkgID, data)
	if err != nil {
		tc.t.Fatalf("pkg_id %d: %v", pkgID, err)
	}
	return e
}

// tryCall is call that returns what is not an answer (a timeout, a lost connection) as an
// error; safe to use from any goroutine.
func (tc *testClient) tryCall(ctx context.Context, pkgID int, data any) (envelope, error) {
	r, err := tc.c.Request(ctx, pkgID, data)
	if err != nil {
		var e *sbclient.Error
		if !errors.As(err, &e) {
			return envelope{}, err
		}
		return refusal(e), nil
	}
	zero := 0
	meta := r.Meta
	if meta == nil {
		meta = json.RawMessage("null") // the client reports a null meta as nil
	}
	return envelope{PkgID: r.PkgID, ReqID: r.ReqID, StatusCode: &zero, Data: r.Data, Meta: meta}, nil
}

// refusal is the envelope of a refused request.
func refusal(e *sbclient.Error) envelope {
	status, msg := e.Status, e.Msg
	return envelope{PkgID: e.PkgID, ReqID: e.ReqID, StatusCode: &status, Data: e.Data, Msg: &msg}
}

// subscribe subscribes to topic; its messages queue on msgs and its Missed events on missed.
// The error is the server's refusal (sbclient.IsPermissionDenied, IsInvalidData).
func (tc *testClient) subscribe(topic string, opts ...sbclient.SubscribeOption) (*sbclient.Subscription, error) {
	tc.t.Helper()
	opts = append(opts, sbclient.OnMissed(func(m sbclient.Missed) {
		select {
		case tc.missed <- m:
		default:
			tc.t.Errorf("test client: more than %d Missed events unread", cap(tc.missed))
		}
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return tc.c.Subscribe(ctx, topic, tc.onMessage, opts...)
}

// mustSubscribe is subscribe that fails the test on a refusal.
func (tc *testClient) mustSubscribe(topic string, opts ...sbclient.SubscribeOption) *sbclient.Subscription {
	tc.t.Helper()
	sub, err := tc.subscribe(topic, opts...)
	if err != nil {
		tc.t.Fatalf("subscribe %q: %v", topic, err)
	}
	return sub
}

// next returns the next broadcast (a subscription's message or one to every connection),
// failing after d.
func (tc *testClient) next(d time.Duration) sbclient.Message {
	tc.t.Helper()
	select {
	case m := <-tc.msgs:
		return m
	case <-time.After(d):
		tc.t.Fatalf("no broadcast within %s", d)
		return sbclient.Message{}
	}
}

// noMessage fails the test if a broadcast is queued now.
func (tc *testClient) noMessage() {
	tc.t.Helper()
	select {
	case m := <-tc.msgs:
		tc.t.Fatalf("unexpected broadcast: %+v %s", m, m.Data)
	default:
	}
}

// nextDisconnect returns how the next connection ended (or attempt failed), failing after d.
func (tc *testClient) nextDisconnect(d time.Duration) sbclient.Disconnect {
	tc.t.Helper()
	select {
	case dc := <-tc.disconnects:
		return dc
	case <-time.After(d):
		tc.t.Fatalf("connection still up after %s", d)
		return sbclient.Disconnect{}
	}
}

// closeStatus waits for the server to close the connection and returns its code and reason.
func (tc *testClient) closeStatus(d time.Duration) (uint16, string) {
	tc.t.Helper()
	dc := tc.nextDisconnect(d)
	return dc.Code, dc.Reason
}

// publisher is a producer of node s that holds token: POST /api/broadcast through the Go
// client's Publisher.
func (s *testServer) publisher(t testing.TB, token string) *sbclient.Publisher {
	t.Helper()
	p, err := sbclient.NewPublisher(sbclient.PublisherConfig{BaseURL: s.base, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// mustPublish publishes and fails the test on a refusal.
func mustPublish(t testing.TB, p *sbclient.Publisher, topic string, pkgID int, data any) {
	t.Helper()
	if _, err := p.Publish(context.Background(), topic, pkgID, data); err != nil {
		t.Fatalf("publish on %q: %v", topic, err)
	}
}

// decodeMsg unmarshals a broadcast's data into v.
func decodeMsg(t testing.TB, m sbclient.Message, v any) {
	t.Helper()
	if err := json.Unmarshal(m.Data, v); err != nil {
		t.Fatalf("data %s: %v", m.Data, err)
	}
}
