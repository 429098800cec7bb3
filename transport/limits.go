package transport

import (
	"context"
	"log/slog"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"switchboard/store/limits"
)

// RateLimiter is the sliding-window limiter the façade uses (limits.RedisRateLimiter or
// limits.MemoryRateLimiter, built to fail open).
type RateLimiter interface {
	Allow(ctx context.Context, scope, id string, limit int, window time.Duration) (limits.Decision, error)
}

// ConnCounter counts a user's live WebSocket connections across the cluster.
type ConnCounter interface {
	Acquire(ctx context.Context, user, connID string, limit int) (bool, error)
	Release(ctx context.Context, user, connID string) error
}

func (a *api) limit(w http.ResponseWriter, r *http.Request, scope, id string, limit int) bool {
	return httpLimit(w, r, a.cfg.RateLimiter, a.cfg.Metrics, a.cfg.Logger, scope, id, limit)
}

// httpLimit checks one request against scope/id and sets the X-RateLimit-* headers. Over the
// limit it answers 429 with Retry-After and returns false. A limiter error (only when the
// limiter is not failing open) lets the request through: limits never take the service down.
func httpLimit(w http.ResponseWriter, r *http.Request, rl RateLimiter, set *metrics.Set, log *slog.Logger, scope, id string, limit int) bool {
	return rateLimit(w, r, rl, set, log, scope, id, limit, 0)
}

// rateLimit is httpLimit whose 429 asks for a retry after at most maxRetry (0: no cap), for a
// budget whose refusals should not outlast the condition that spent it.
func rateLimit(w http.ResponseWriter, r *http.Request, rl RateLimiter, set *metrics.Set, log *slog.Logger, scope, id string, limit int, maxRetry time.Duration) bool {
	if rl == nil {
		return true
	}
	d, err := rl.Allow(r.Context(), scope, id, limit, time.Minute)
	if err != nil {
		log.Warn("rate limiter failed; letting the request through", "scope", scope, "err", err)
		return true
	}
	h := w.Header()
	// The names in canonical form (textproto's: "Ratelimit"), as h.Set would write them.
	headerSet(h, "X-Ratelimit-Limit", strconv.Itoa(d.Limit))
	headerSet(h, "X-Ratelimit-Remaining", strconv.Itoa(d.Remaining))
	headerSet(h, "X-Ratelimit-Reset", strconv.Itoa(ceilSeconds(d.Reset)))
	if !d.Allowed {
		set.GetOrCreateCounter(`rate_limit_hits_total{limit_type="` + scope + `"}`).Inc()
		retry := d.RetryAfter
		if maxRetry > 0 && retry > maxRetry {
			retry = maxRetry
		}
		h.Set("Retry-After", strconv.Itoa(max(1, ceilSeconds(retry))))
		writeDetail(w, http.StatusTooManyRequests, "Rate limit exceeded")
		return false
	}
	return true
}

func ceilSeconds(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	return int(math.Ceil(d.Seconds()))
}

// trustedProxies rewrites RemoteAddr from X-Forwarded-For, but only when the direct peer is a
// trusted proxy; the client is the rightmost address that is not itself a trusted proxy.
func trustedProxies(next http.Handler, proxies []netip.Prefix) http.Handler {
	if len(proxies) == 0 {
		return next
	}
	trusted := func(a netip.Addr) bool {
		for _, p := range proxies {
			if p.Contains(a.Unmap()) {
				return true
			}
		}
		return false
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer, err := netip.ParseAddrPort(r.RemoteAddr)
		xff := r.Header.Values("X-Forwarded-For")
		if err != nil || len(xff) == 0 || !trusted(peer.Addr()) {
			next.ServeHTTP(w, r)
			return
		}
		hops := strings.Split(strings.Join(xff, ","), ",")
		for i := len(hops) - 1; i >= 0; i-- {
			a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
			if err != nil {
				break
			}
			if !trusted(a) || i == 0 {
				r2 := r.Clone(r.Context())
				r2.RemoteAddr = netip.AddrPortFrom(a, 0).String()
				next.ServeHTTP(w, r2)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}
