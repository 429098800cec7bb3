package client

import (
	"context"
	"encoding/json"
	"time"
)

// refreshDelay is when to send the next REFRESH_TOKEN on the live connection; negative when
// nothing is to be scheduled (no GetToken, refreshing ahead disabled, exp unknown).
func (c *Client) refreshDelay() time.Duration {
	if c.cfg.GetToken == nil {
		return -1
	}
	c.mu.Lock()
	exp := c.tokenExp
	c.mu.Unlock()
	d, ok := refreshIn(exp, time.Now(), c.cfg.RefreshBefore)
	if !ok {
		return -1
	}
	return d
}

// refreshToken gets a fresh token and sends it on cn (pkg_id 12), on the run goroutine. It
// returns when to try again: the next refresh after a success, a shorter pause after a failure,
// or -1 once the token has expired (the server then closes with 4001 and the reconnect gets a
// fresh token). It gives up at once when cn ends or the client stops.
func (c *Client) refreshToken(cn *conn) time.Duration {
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.RequestTimeout)
	defer cancel()
	tok, err := c.cfg.GetToken(ctx)
	if err != nil || tok == "" {
		c.log.Warn("switchboard client: GetToken for the refresh failed", "err", err)
		return c.refreshRetry()
	}
	data, _ := json.Marshal(map[string]string{"token": tok})
	p, err := c.newPending(pkgRefreshToken, data, false, nil)
	if err != nil {
		c.log.Error("switchboard client: refresh", "err", err)
		return -1
	}
	c.mu.Lock()
	sent := c.sendOnLocked(cn, p)
	c.mu.Unlock()
	if !sent {
		return c.refreshRetry()
	}
	var r result
	select {
	case r = <-p.done:
	case <-ctx.Done():
		if c.abandon(p) {
			return c.refreshRetry()
		}
		r = <-p.done
	case <-cn.readDone:
		c.abandon(p)
		return -1 // the connection ended; the next one starts from the token held
	}
	if r.err != nil {
		return c.refreshRetry()
	}
	if r.f.Status != StatusOK {
		c.log.Warn("switchboard client: token refresh refused", "err", errorFromAnswer(r.f))
		return c.refreshRetry()
	}
	c.setToken(tok)
	return c.refreshDelay()
}

// refreshRetry is the pause before trying a failed refresh again: half of what the token has
// left, at most 5s; -1 once it has expired.
func (c *Client) refreshRetry() time.Duration {
	c.mu.Lock()
	exp := c.tokenExp
	c.mu.Unlock()
	if exp.IsZero() {
		return -1
	}
	left := time.Until(exp)
	if left <= 0 {
		return -1
	}
	return max(min(left/2, 5*time.Second), 10*time.Millisecond)
}
