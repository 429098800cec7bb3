package client

import "time"

// delivery is one callback to make: a message (to its subscription, or to OnBroadcast when s is
// nil) or a Missed event.
type delivery struct {
	s      *Subscription
	msg    Message
	missed *Missed
}

// offer queues d for the callback goroutine. When the queue is full it waits up to
// Config.InboundWait for room — a burst (a replay after a reconnect) passes, a stuck callback
// does not hold the read goroutine for long — and reports false if none came. Never called with
// c.mu held.
func (c *Client) offer(d delivery) bool {
	select {
	case c.inbound <- d:
		return true
	default:
	}
	if c.cfg.InboundWait <= 0 {
		return false
	}
	t := time.NewTimer(c.cfg.InboundWait)
	defer t.Stop()
	select {
	case c.inbound <- d:
		return true
	case <-t.C:
		return false
	case <-c.closing:
		return false
	}
}

// dispatch is the callback goroutine: it calls the callbacks one at a time, in the order the
// frames arrived, until the client stops (what is still queued then is dropped).
func (c *Client) dispatch() {
	defer close(c.dispDone)
	half := cap(c.inbound) / 2
	for {
		select {
		case <-c.closing:
			return
		default:
		}
		select {
		case <-c.closing:
			return
		case d := <-c.inbound:
			c.deliver(d)
			if len(c.inbound) <= half {
				select {
				case c.drained <- struct{}{}:
				default:
				}
			}
		}
	}
}

func (c *Client) deliver(d delivery) {
	switch {
	case d.s == nil:
		c.callback(func() { c.cfg.OnBroadcast(d.msg) })
	case d.s.ended.Load():
		// Unsubscribed after this was queued.
	case d.missed != nil:
		if d.s.onMissed != nil {
			c.callback(func() { d.s.onMissed(*d.missed) })
		}
	default:
		c.callback(func() { d.s.onMessage(d.msg) })
	}
}
