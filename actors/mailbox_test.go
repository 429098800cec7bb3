package actors

import (
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// recordingInvoker notes what the mailbox hands it, in order.
type recordingInvoker struct {
	mu        sync.Mutex
	user, sys []any
	failed    []any
	onUser    func(any)
}

func (r *recordingInvoker) InvokeSystemMessage(m any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sys = append(r.sys, m)
}

func (r *recordingInvoker) InvokeUserMessage(m any) {
	if r.onUser != nil {
		r.onUser(m)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.user = append(r.user, m)
}

func (r *recordingInvoker) EscalateFailure(reason, _ any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed = append(r.failed, reason)
}

func (r *recordingInvoker) counts() (int, int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.user), len(r.sys), len(r.failed)
}

type goDispatcher struct{}

func (goDispatcher) Schedule(fn func()) { go fn() }
func (goDispatcher) Throughput() int    { return 7 }

func waitCounts(t *testing.T, inv *recordingInvoker, user, sys, failed int) {
	t.Helper()
	deadline := time.Now().Add(laneWait)
	for {
		u, s, f := inv.counts()
		if u == user && s == sys && f == failed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("user %d sys %d failed %d, want %d %d %d", u, s, f, user, sys, failed)
		}
		time.Sleep(time.Millisecond)
	}
}

// connMailbox hands every message over once, each sender's in the order sent; while suspended
// it runs system messages only, and a panic in a message is escalated and the rest still run.
func TestConnMailbox(t *testing.T) {
	inv := &recordingInvoker{}
	m := newConnMailbox()
	m.RegisterHandlers(inv, goDispatcher{})
	const senders, each = 8, 500
	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for i := range each {
				m.PostUserMessage([2]int{s, i})
			}
		})
	}
	wg.Wait()
	waitCounts(t, inv, senders*each, 0, 0)
	next := make([]int, senders)
	for _, v := range inv.user {
		p := v.([2]int)
		if p[1] != next[p[0]] {
			t.Fatalf("sender %d: message %d after %d", p[0], p[1], next[p[0]]-1)
		}
		next[p[0]]++
	}

	m.PostSystemMessage(&actor.SuspendMailbox{})
	m.PostUserMessage("held")
	m.PostSystemMessage("sys")
	waitCounts(t, inv, senders*each, 1, 0)
	m.PostSystemMessage(&actor.ResumeMailbox{})
	waitCounts(t, inv, senders*each+1, 1, 0)

	inv.onUser = func(v any) {
		if v == "boom" {
			panic("boom")
		}
	}
	m.PostUserMessage("boom")
	m.PostUserMessage("after")
	waitCounts(t, inv, senders*each+2, 1, 1)
	if last := inv.user[len(inv.user)-1]; last != "after" {
		t.Fatalf("last user message %v", last)
	}
	if n := m.UserMessageCount(); n != 0 {
		t.Fatalf("UserMessageCount = %d", n)
	}
}
