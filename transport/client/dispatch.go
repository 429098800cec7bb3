package client

// delivery is one callback to make: a message (to its subscription, or to OnBroadcast when s is
// nil) or a Missed event.
type delivery struct {
	s      *Subscription
	msg    Message
	missed *Missed
}

// offerLocked queues d for the callback goroutine without waiting; false when the queue is
// full. The read goroutine never blocks on the application.
func (c *Client) offerLocked(d delivery) bool {
	select {
	case c.inbound <- d:
		return true
	default:
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
