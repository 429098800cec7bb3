package actors

import (
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// The shared expiry timer tells each actor once, at its latest deadline, with the exp of its
// latest token; a removed entry is never told, and the timer re-arms for entries added earlier
// than the one it waits for.
func TestExpiriesTellEachActorAtItsDeadline(t *testing.T) {
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return quietLogger() }))
	defer sys.Shutdown()
	var mu sync.Mutex
	got := map[string][]time.Time{}
	spawn := func(name string) *actor.PID {
		return sys.Root.Spawn(actor.PropsFromFunc(func(ctx actor.Context) {
			if m, ok := ctx.Message().(*tokenExpired); ok {
				mu.Lock()
				got[name] = append(got[name], m.exp)
				mu.Unlock()
			}
		}))
	}
	var x expiries
	var a, b, c, d expiry
	now := time.Now()
	expA, expA2 := now.Add(time.Hour), now.Add(2*time.Hour)
	x.set(&a, sys.Root, spawn("a"), expA, now.Add(400*time.Millisecond))
	x.set(&b, sys.Root, spawn("b"), now, now.Add(60*time.Millisecond))
	x.set(&c, sys.Root, spawn("c"), now, now.Add(30*time.Millisecond))
	x.set(&d, sys.Root, spawn("d"), now, now.Add(time.Hour))
	x.remove(&c)
	x.set(&a, sys.Root, a.pid, expA2, now.Add(20*time.Millisecond)) // refreshed: earlier, new exp
	time.Sleep(300 * time.Millisecond)

	mu.Lock()
	defer mu.Unlock()
	if len(got["a"]) != 1 || !got["a"][0].Equal(expA2) {
		t.Errorf("a told %v, want once with %v", got["a"], expA2)
	}
	if len(got["b"]) != 1 {
		t.Errorf("b told %v, want once", got["b"])
	}
	if len(got["c"]) != 0 || len(got["d"]) != 0 {
		t.Errorf("c (removed) told %v, d (an hour away) told %v: want neither", got["c"], got["d"])
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if len(x.q) != 1 || x.q[0] != &d || d.idx != 0 {
		t.Errorf("left in the heap: %d entries, want d alone", len(x.q))
	}
}
