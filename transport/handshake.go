package transport

import (
	"encoding/base64"
	"net/http"
	"strings"

	"switchboard/store/limits"
)

// handshakeRefusal is a JSON answer to a request on /web that is not a WebSocket opening
// handshake the upgrade can complete.
type handshakeRefusal struct {
	status int
	detail string
	header map[string]string
}

// checkUpgradeRequest checks, before authentication, what the upgrade itself checks
// (RFC 6455 §4.2.1): the upgrade would otherwise refuse after taking over the connection, in
// text/plain, while the access log and the metrics counted a 101. It is at least as strict as
// gws: only the first Connection and Upgrade header lines count, as gws reads them.
func checkUpgradeRequest(r *http.Request) *handshakeRefusal {
	if r.Method != http.MethodGet {
		return &handshakeRefusal{status: http.StatusMethodNotAllowed, detail: "Method not allowed: the WebSocket handshake is a GET",
			header: map[string]string{"Allow": http.MethodGet}}
	}
	if !r.ProtoAtLeast(1, 1) {
		return &handshakeRefusal{status: http.StatusBadRequest, detail: "The WebSocket handshake needs HTTP/1.1"}
	}
	if !hasToken(r.Header.Get("Connection"), "upgrade") || !strings.EqualFold(strings.TrimSpace(r.Header.Get("Upgrade")), "websocket") {
		return &handshakeRefusal{status: http.StatusUpgradeRequired,
			detail: "WebSocket upgrade required: send Connection: Upgrade and Upgrade: websocket",
			header: map[string]string{"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}}
	}
	if strings.TrimSpace(r.Header.Get("Sec-WebSocket-Version")) != "13" {
		return &handshakeRefusal{status: http.StatusUpgradeRequired, detail: "Unsupported WebSocket version: use 13",
			header: map[string]string{"Sec-WebSocket-Version": "13"}}
	}
	if !validWebSocketKey(r.Header.Get("Sec-WebSocket-Key")) {
		return &handshakeRefusal{status: http.StatusBadRequest, detail: "Invalid Sec-WebSocket-Key: want 16 bytes in base64"}
	}
	return nil
}

func (h *handshakeRefusal) write(w http.ResponseWriter) {
	for k, v := range h.header {
		w.Header().Set(k, v)
	}
	writeDetail(w, h.status, h.detail)
}

// hasToken reports whether the comma-separated header value lists token (case-insensitively).
func hasToken(value, token string) bool {
	for _, t := range strings.Split(value, ",") {
		if strings.EqualFold(strings.TrimSpace(t), token) {
			return true
		}
	}
	return false
}

// validWebSocketKey: the key is a random 16-byte value in base64 (RFC 6455 §4.1), 24 characters.
func validWebSocketKey(k string) bool {
	if len(k) != 24 {
		return false
	}
	b, err := base64.StdEncoding.DecodeString(k)
	return err == nil && len(b) == 16
}

// handshakeLimit charges an authenticated handshake to a rate budget before the upgrade and
// answers 429 itself when that budget is spent. full: the user already held all their
// connection slots when the handshake asked for one (ServeHTTP's takeSlot).
//
// A handshake of a user who already holds all their connection slots ends in close 1008. Such
// handshakes are charged to a budget of their own (scope ws_refused, the same size as the HTTP
// limit), not to the user's HTTP limit: a client retrying every 250 ms while its node's dead
// slots wait out their TTL would otherwise spend its whole HTTP minute on 1008s and then be
// refused with 429 for a minute after the slots had freed. The 429 of this budget asks for a
// retry within the slot TTL at most, since by then a dead node's slots are free; a refused
// handshake still costs the server a verification, hence a budget at all.
func (s *WSServer) handshakeLimit(w http.ResponseWriter, r *http.Request, user string, full bool) bool {
	if full {
		return rateLimit(w, r, s.cfg.RateLimiter, s.cfg.Metrics, s.cfg.Logger, "ws_refused", user, s.cfg.RatePerMinute, limits.DefaultConnTTL)
	}
	return rateLimit(w, r, s.cfg.RateLimiter, s.cfg.Metrics, s.cfg.Logger, "http", user, s.cfg.RatePerMinute, 0)
}
