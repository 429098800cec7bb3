package client

import (
	"math/rand/v2"
	"time"
)

// backoff is the wait before attempt number attempt (0 for the first retry): exponential from
// min, capped at max, with "equal jitter" — half fixed, half random — so that a crowd of clients
// cut off at once (a node's shutdown) spreads out, yet none comes back at once in a tight loop.
func backoff(attempt int, min, max time.Duration) time.Duration {
	if min <= 0 {
		return 0
	}
	d := min
	for i := 0; i < attempt && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return jitter(d)
}

// jitter returns a duration in [d/2, d].
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	half := d / 2
	return half + rand.N(d-half+1)
}

// Close codes the client acts on (RFC 6455 §7.4.1, docs/protocol.md §1.1, §1.3, §3).
const (
	closeNormal        = 1000
	closeGoingAway     = 1001 // a node shutting down
	closeProtocolError = 1002
	closeUnsupported   = 1003
	closeInvalidData   = 1007 // invalid UTF-8
	closePolicy        = 1008 // the user's connection limit
	closeTooBig        = 1009
	closeTryAgain      = 1013 // slow consumer, missed topic messages
	closeTokenExpired  = 4001
)

// closeAction is what a close code asks of the client.
type closeAction int

const (
	actBackoff     closeAction = iota // reconnect after the usual backoff
	actSoon                           // reconnect after a short jittered pause (the cause is gone)
	actConnLimit                      // back off at least ConnLimitDelay
	actFreshToken                     // get a fresh token, then reconnect soon
	actClientFault                    // the client sent something wrong: surface, count, maybe stop
)

// actionFor maps the server's close code to the client's reaction. Code 0 means no close
// frame came (the connection broke, or the client closed it itself).
func actionFor(code uint16) closeAction {
	switch code {
	case closeGoingAway, closeTryAgain:
		// 1001: the node is going away; another node (or this one restarted) takes us.
		// 1013: we were cut off as slow or the topic lost messages; resubscribing with since
		// recovers, and waiting longer would only widen the gap.
		return actSoon
	case closePolicy:
		return actConnLimit
	case closeTokenExpired:
		return actFreshToken
	case closeProtocolError, closeUnsupported, closeInvalidData, closeTooBig:
		return actClientFault
	}
	return actBackoff
}

// reconnectDelay is the wait after a connection that ended with act; attempt counts the
// attempts since the last healthy connection.
func (cfg *Config) reconnectDelay(act closeAction, attempt int) time.Duration {
	switch act {
	case actSoon, actFreshToken:
		return jitter(cfg.ReconnectMin)
	case actConnLimit:
		// Another connection of the user has to end first; hammering the server does not help.
		d := backoff(attempt, cfg.ReconnectMin, cfg.ReconnectMax)
		if d < cfg.ConnLimitDelay {
			d = cfg.ConnLimitDelay + jitter(cfg.ConnLimitDelay)/2
		}
		return d
	}
	return backoff(attempt, cfg.ReconnectMin, cfg.ReconnectMax)
}
