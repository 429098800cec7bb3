package main

import (
	"testing"
	"time"

	"switchboard/config"
)

// Raw sockets: the test chooses whether a peer answers pings, which transport/client always does.
// A peer that never answers pings is dropped after twice the ping interval; one that answers
// stays.
func TestKeepaliveReapsSilentPeers(t *testing.T) {
	s := startServer(t, func(c *config.Config) { c.WSPingInterval = 200 * time.Millisecond })
	silent, _, err := s.rawWSDial(t, s.token(t, "silent", "get-authors"))
	if err != nil {
		t.Fatal(err)
	}
	alive := s.dial(t, s.token(t, "alive", "get-authors")) // the gws client answers pings
	start := time.Now()
	// The silent peer reads (so its socket does not stall) but never sends a pong.
	if err := silent.drainUntilGone(t, 10*time.Second); err != nil && !isConnReset(err) {
		t.Fatalf("silent peer: %v", err)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Fatalf("silent peer dropped after %s, before twice the ping interval", took)
	}
	if r := alive.call(1, nil); r.status() != 0 {
		t.Fatalf("answering peer: %+v", r)
	}
}
