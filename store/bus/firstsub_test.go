package bus

import (
	"sync"
	"testing"
)

// The subscriptions of a cluster bus come up on their own goroutines; when several see every
// one of them up at once, the bus's first-subscription signal is still closed exactly once (it
// was closed twice, a panic, when each subscription had its own sync.Once).
func TestFirstSubscriptionSignalledOnce(t *testing.T) {
	for range 500 {
		r := &Redis{firstSub: make(chan struct{}), kick: make(chan struct{}, 1), cfg: newConfig(nil)}
		for k := range 4 {
			r.subs = append(r.subs, &shardSub{r: r, channels: []string{"bus:" + tag(k)}})
		}
		start := make(chan struct{})
		var wg sync.WaitGroup
		for _, s := range r.subs {
			wg.Go(func() {
				<-start
				s.up()
			})
		}
		close(start)
		wg.Wait()
		select {
		case <-r.firstSub:
		default:
			t.Fatal("every subscription is up and the first-subscription signal is not closed")
		}
	}
}
