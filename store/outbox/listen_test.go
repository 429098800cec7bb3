package outbox_test

import (
	"context"
	"log/slog"
	"net/url"
	"testing"
	"time"

	"switchboard/store"
	"switchboard/store/faultproxy"
	"switchboard/store/outbox"
	"switchboard/store/storetest"
)

// awaitWake inserts through db until the listener wakes (LISTEN is asynchronous), for at most
// 30 s.
func awaitWake(t *testing.T, db *store.DB, l *outbox.Listener) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := outbox.Insert(context.Background(), db.Bun, outbox.Event{PkgID: 1}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-l.C:
			return
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("no wake-up from NOTIFY")
		}
	}
}

// A LISTEN connection that stops answering without closing (a half-open connection, a frozen
// host) is found by the listener's ping and replaced: the relay is woken once meanwhile, and
// notifications come again on the new connection.
func TestListenReplacesASilentConnection(t *testing.T) {
	pgURL := storetest.PostgresURL(t)
	direct := storetest.NewDB(t, pgURL)
	u, err := url.Parse(pgURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := faultproxy.Start(t, u.Host)
	u.Host = proxy.Addr()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	viaProxy, err := store.Open(ctx, u.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = viaProxy.Close() })

	l := outbox.New(viaProxy.Bun).Listen(slog.New(slog.DiscardHandler), outbox.WithPing(200*time.Millisecond, 2*time.Second))
	defer l.Close()
	awaitWake(t, direct, l)
	// Quiet spells answered by the pings are no wake-ups.
	select {
	case <-l.C:
	default:
	}
	select {
	case <-l.C:
		t.Fatal("woken without a notification")
	case <-time.After(time.Second):
	}

	before := proxy.Stats().Accepted
	proxy.Freeze()
	select {
	case <-l.C: // the connection was given up
	case <-time.After(30 * time.Second):
		t.Fatal("the silent connection was not given up")
	}
	proxy.Resume()
	awaitWake(t, direct, l)
	if got := proxy.Stats().Accepted; got <= before {
		t.Fatalf("no new connection through the proxy (%d accepted before, %d after)", before, got)
	}
}
