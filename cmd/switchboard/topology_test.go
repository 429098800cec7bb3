package main

// Two nodes on a Redis Cluster (three primaries with a replica each) and on a Sentinel set (a
// primary, a replica, three sentinels), all redis-server processes of the test's own:
//   - TestTopologyNodes (one shared cluster and one shared Sentinel set for the package):
//     broadcasts cross nodes exactly once and in order, topics recover with since, and the
//     per-user connection limit and the WebSocket message rate limit hold across the nodes;
//   - TestTopologyFailover (a cluster and a Sentinel set of its own, since it kills a primary):
//     broadcasts flow on a topic while the primary holding its shard is killed and a replica
//     promoted; every subscriber gets each accepted message once and in order, or is told
//     (recovered: false) that it missed some; limits fail open meanwhile and hold again after;
//     /health says redis or pubsub unhealthy during the failover and healthy after.
// Missing redis-server or redis-cli skips them, or fails them under CI=true.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"switchboard/config"
	"switchboard/store/bus"
	"switchboard/store/redistest"
	sbclient "switchboard/transport/client"
)

// topoNodes starts two nodes on redisURL with a connection limit of 2 and a WebSocket message
// rate limit of 8 per user.
func topoNodes(t *testing.T, redisURL string) []*testServer {
	t.Helper()
	shared := t.TempDir()
	nodes := make([]*testServer, 2)
	for i := range nodes {
		db := "sqlite://" + t.TempDir() + "/switchboard.db"
		nodes[i] = startServer(t, func(c *config.Config) {
			c.DataDir = shared
			c.DatabaseURL = db
			c.RedisURL = redisURL
			c.RateLimitPerMinute = 1000000
			c.WSMessageRateLimit = 8
			c.WSMaxConnsPerUser = 2
		})
	}
	clWaitHealth(t, 60*time.Second, "start", http.StatusOK, "healthy", nodes...)
	return nodes
}

// topoLimits checks the connection limit and the frame rate limit across both nodes for fresh
// users named after tag.
func topoLimits(t *testing.T, nodes []*testServer, tag string) {
	t.Helper()
	a, b := nodes[0], nodes[1]
	tok := a.token(t, "topo-conn-"+tag, "get-authors")
	c1 := expectConnAdmitted(t, a, tok)
	c2 := expectConnAdmitted(t, b, tok)
	expectConnLimited(t, a, tok)
	expectConnLimited(t, b, tok)
	clHangUp(t, c1)
	clHangUp(t, c2)

	rt := a.token(t, "topo-rate-"+tag, "get-authors")
	r1, r2 := a.connect(t, rt), b.connect(t, rt)
	for i := 0; i < 4; i++ {
		expectStatus(t, r1.call(1, nil), 0, "")
		expectStatus(t, r2.call(1, nil), 0, "")
	}
	expectStatus(t, r1.call(1, nil), 1, "Rate limit exceeded")
	expectStatus(t, r2.call(1, nil), 1, "Rate limit exceeded")
	_ = r1.c.Close()
	_ = r2.c.Close()
}

func TestTopologyNodes(t *testing.T) {
	for _, kind := range []string{"cluster", "sentinel"} {
		t.Run(kind, func(t *testing.T) {
			var url string
			if kind == "cluster" {
				url = redistest.SharedCluster(t).URL()
			} else {
				url = redistest.SharedSentinel(t).URL()
			}
			nodes := topoNodes(t, url)
			tag := limRandomHex(5)
			t.Run("limits", func(t *testing.T) { topoLimits(t, nodes, tag) })
			// The fan-out and recovery checks run on nodes without the tight limits above.
			wide := clNodes(t, 2, url)
			clWaitHealth(t, 60*time.Second, "start", http.StatusOK, "healthy", wide...)
			t.Run("broadcast", func(t *testing.T) {
				clFanout(t, wide, tag, "dashboards.topo"+tag, true, false, func(n int) bool { return n == 4 })
			})
			t.Run("recovery", func(t *testing.T) {
				clRecovery(t, wide[0], wide[1], tag, "dashboards.rec"+tag, false, func(n int) bool { return n == 4 })
			})
		})
	}
}

// topoLog is what one subscriber saw, in order: messages (their producer counter n) and
// Missed events (n = 0).
type topoLog struct {
	mu     sync.Mutex
	events []uint64
	got    map[uint64]int
}

func (l *topoLog) onMessage(m sbclient.Message) {
	var d clData
	_ = m.Decode(&d)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, d.N)
	l.got[d.N]++
}

func (l *topoLog) onMissed(sbclient.Missed) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, 0)
}

func (l *topoLog) has(n uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.got[n] > 0
}

// check verifies the guarantee for one subscriber: every message at most once and in the
// producer's order, and every accepted message either received or inside a stretch the
// subscriber was told it missed (a Missed event between the messages received around it).
func (l *topoLog) check(t *testing.T, who string, accepted map[uint64]bool, last uint64) (received, missed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var prev uint64
	toldSince := false // a Missed event came since the previous message
	for _, n := range l.events {
		if n == 0 {
			toldSince = true
			missed++
			continue
		}
		received++
		if n <= prev {
			t.Errorf("%s: message %d after %d (duplicate or out of order)", who, n, prev)
		}
		for k := prev + 1; k < n; k++ {
			if accepted[k] && !toldSince {
				t.Errorf("%s: accepted message %d never arrived and no recovered:false told of it (between %d and %d)", who, k, prev, n)
				break
			}
		}
		prev, toldSince = n, false
	}
	if prev != last {
		t.Errorf("%s: last message %d, want %d", who, prev, last)
	}
	return received, missed
}

func TestTopologyFailover(t *testing.T) {
	for _, kind := range []string{"cluster", "sentinel"} {
		t.Run(kind, func(t *testing.T) {
			const topic = "dashboards.failover"
			var (
				url  string
				kill func() (string, error)
			)
			if kind == "cluster" {
				cl := redistest.StartCluster(t)
				url = cl.URL()
				key := bus.StreamKey(config.DefaultRedisPrefix, topic, config.Default().RedisBusShards)
				kill = func() (string, error) { return cl.KillPrimaryOf(key, 90*time.Second) }
			} else {
				s := redistest.StartSentinel(t)
				url = s.URL()
				kill = func() (string, error) { return s.KillPrimary(90 * time.Second) }
			}
			nodes := topoNodes(t, url)
			a, b := nodes[0], nodes[1]
			tag := limRandomHex(5)
			// Two connections of one user, held through the failover: the limit must still count
			// them after it.
			held := a.token(t, "topo-held-"+tag, "get-authors")
			h1, h2 := expectConnAdmitted(t, a, held), expectConnAdmitted(t, b, held)
			defer clHangUp(t, h1)
			defer clHangUp(t, h2)

			// Subscribers on both nodes, through the Go client (reconnects, resubscribes with since
			// and epoch, reports recovered:false as Missed).
			var logs []*topoLog
			var whos []string
			for i, s := range []*testServer{a, a, b, b} {
				l := &topoLog{got: map[uint64]int{}}
				c := gcDial(t, gcConfig(t, s, fmt.Sprintf("topo-sub%d-%s", i, tag)))
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				_, err := c.Subscribe(ctx, topic, l.onMessage, sbclient.OnMissed(l.onMissed))
				cancel()
				if err != nil {
					t.Fatalf("subscribe: %v", err)
				}
				logs = append(logs, l)
				whos = append(whos, fmt.Sprintf("subscriber %d on node %d", i, i/2))
			}

			// The producer posts n = 1, 2, … to node A until stopped, and keeps what was accepted.
			prod := a.token(t, "topo-producer-"+tag, "broadcast")
			var (
				accMu    sync.Mutex
				accepted = map[uint64]bool{}
				last     atomic.Uint64
				refused  atomic.Int64
			)
			stop, done := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(done)
				for n := uint64(1); ; n++ {
					select {
					case <-stop:
						return
					default:
					}
					status, _, _, err := clPost(a, prod, clBroadcastBody(topic, "fo-"+tag, n))
					if err == nil && status == http.StatusAccepted {
						accMu.Lock()
						accepted[n] = true
						accMu.Unlock()
						last.Store(n)
					} else {
						refused.Add(1)
					}
					time.Sleep(10 * time.Millisecond)
				}
			}()
			stopProducer := func() {
				select {
				case <-stop:
				default:
					close(stop)
				}
				<-done
			}
			defer stopProducer()
			eventually(t, 30*time.Second, "30 messages before the failover", func() bool {
				return last.Load() >= 30 && logs[3].has(30)
			})

			// /health while the primary is killed and replaced.
			var sawUnhealthy atomic.Bool
			hstop, hdone := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(hdone)
				for {
					select {
					case <-hstop:
						return
					case <-time.After(50 * time.Millisecond):
					}
					for _, s := range nodes {
						if status, body, err := clHealth(s); err == nil && status == http.StatusServiceUnavailable &&
							(body["redis"] == "unhealthy" || body["pubsub"] == "unhealthy") {
							sawUnhealthy.Store(true)
						}
					}
				}
			}()
			killed, err := kill()
			if err != nil {
				close(hstop)
				<-hdone
				t.Fatalf("failover: %v", err)
			}
			t.Logf("killed the primary %s; a replica took over", killed)
			clWaitHealth(t, 90*time.Second, "after the failover", http.StatusOK, "healthy", nodes...)
			close(hstop)
			<-hdone
			if !sawUnhealthy.Load() {
				t.Errorf("/health never said redis or pubsub unhealthy during the failover")
			}
			// The flow goes on after it: 30 more accepted messages reach every subscriber.
			after := last.Load() + 30
			eventually(t, 60*time.Second, "30 more accepted messages after the failover", func() bool { return last.Load() >= after })
			stopProducer()
			final := last.Load()
			for i, l := range logs {
				eventually(t, 60*time.Second, whos[i]+" gets the last accepted message", func() bool { return l.has(final) })
			}
			accMu.Lock()
			acc := accepted
			accMu.Unlock()
			for i, l := range logs {
				received, missed := l.check(t, whos[i], acc, final)
				t.Logf("%s: %d messages received, told %d times it missed some; %d accepted, %d posts refused",
					whos[i], received, missed, len(acc), refused.Load())
			}

			// The limits hold again: the held connections are counted (the heartbeat registered
			// them on the new primary), and the frame rate limit counts across nodes.
			eventually(t, 30*time.Second, "the connection limit holds after the failover", func() bool {
				c, ok, code, reason := admitted(t, a, held)
				if ok {
					clHangUp(t, c)
					return false
				}
				return code == 1008 && strings.Contains(reason, "Maximum concurrent connections")
			})
			topoLimits(t, nodes, tag+"after")
		})
	}
}
