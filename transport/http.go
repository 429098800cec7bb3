package transport

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/asynkron/protoactor-go/actor"

	"switchboard/actors"
	"switchboard/hub"
	"switchboard/transport/auth"
)

// HealthCheck is one dependency probed by /health.
type HealthCheck struct {
	Name  string                          // "database", "redis", "pubsub"
	Check func(ctx context.Context) error // nil Check reports "disabled"
	// Advisory checks are reported but leave status (and the 200) alone: they watch something
	// of the whole deployment, which every node would report the same, so answering 503 for
	// them would take every node out of its load balancer at once (/readyz is /health).
	Advisory bool
}

// APIConfig wires the HTTP façade.
type APIConfig struct {
	Verifier        TokenVerifier
	Policy          *actors.Policy
	Root            *actor.RootContext
	Registry        *actors.Registry // names and resources of the pkg_ids the façade serves
	Handlers        *actor.PID       // the handler pool the façade routes ask
	HandlerTimeout  time.Duration    // a request's deadline, counted from admission
	RateLimiter     RateLimiter      // nil: no HTTP limits
	RatePerMinute   int              // per user (per client IP before authentication)
	LoginRateLimit  int              // POST /login per username and per client IP
	Login           auth.Login       // nil: no /login
	Refresh         TokenRefresher   // nil: no /refresh
	Sessions        SessionStore     // nil: logins are not recorded
	Auditor         actors.Auditor   // nil: HTTP calls are not recorded
	TrustedProxies  []netip.Prefix
	Hub             *hub.Hub
	WS              http.Handler
	Health          []HealthCheck
	MaxRequestBytes int64
	Logger          *slog.Logger
	Metrics         *metrics.Set
	// Extra routes (the development issuer's JWKS and discovery documents).
	Extra map[string]http.Handler
	// Web serves the dashboard page at / and its files under /static/ and /client/
	// (transport/web); nil: none.
	Web http.Handler
}

// staticLimitFactor: the page's files are limited per client IP with a budget of their own,
// this many times the HTTP limit (a page load is about ten files, and a reload revalidates each),
// so loading the page neither spends the API budget nor is refused after a few reloads.
const staticLimitFactor = 10

// NewHandler returns the whole HTTP surface: /web, the façade routes, health and metrics,
// wrapped in the middleware chain.
func NewHandler(cfg APIConfig) (http.Handler, error) {
	bs, err := actors.NewBroadcasts(cfg.Policy, cfg.MaxRequestBytes)
	if err != nil {
		return nil, err
	}
	os, err := actors.NewSchema("object", `{"type":"object"}`)
	if err != nil {
		return nil, err
	}
	ls, err := actors.NewSchema("login", loginSchema)
	if err != nil {
		return nil, err
	}
	rs, err := actors.NewSchema("refresh", refreshSchema)
	if err != nil {
		return nil, err
	}
	a := &api{cfg: cfg, broadcasts: bs, objectSchema: os, loginSchema: ls, refreshSchema: rs}
	if cfg.Root != nil {
		a.replies = newReplyBoxes(cfg.Root.ActorSystem())
	}
	mux := http.NewServeMux()
	mux.Handle("GET /web", cfg.WS)
	mux.HandleFunc("POST /api/broadcast", a.authed(routeAudit{rbac: "POST /api/broadcast", action: "BROADCAST", resource: "broadcasts"}, a.broadcast))
	a.handleFacade(mux, "GET /authors", facadeRoute{pkgID: actors.PkgGetAuthors, data: a.authorsQuery, success: ok200})
	a.handleFacade(mux, "GET /authors/paginated", facadeRoute{pkgID: actors.PkgGetPaginatedAuthors, data: a.authorsPageQuery, success: okPage})
	a.handleFacade(mux, "POST /authors", facadeRoute{pkgID: actors.PkgCreateAuthor, data: a.readObject, success: ok200})
	a.handleFacade(mux, "PUT /authors/{id}", facadeRoute{pkgID: actors.PkgUpdateAuthor, data: a.bodyWithPathID, success: ok200})
	a.handleFacade(mux, "DELETE /authors/{id}", facadeRoute{pkgID: actors.PkgDeleteAuthor, data: a.pathIDOnly, success: ok204})
	a.handleFacade(mux, "GET /audit-logs", facadeRoute{pkgID: actors.PkgGetAuditLogs, data: a.auditQuery, success: okPage})
	a.handleFacade(mux, "GET /audit-logs/{id}", facadeRoute{pkgID: actors.PkgGetAuditLogs, data: a.pathIDOnly, success: ok200})
	mux.HandleFunc("POST /login", a.login)
	mux.HandleFunc("POST /refresh", a.refresh)
	mux.HandleFunc("GET /health", a.health)
	mux.HandleFunc("GET /readyz", a.health)
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "alive"})
	})
	mux.HandleFunc("GET /metrics", a.metrics)
	if cfg.Web != nil {
		static := a.static(cfg.Web)
		mux.Handle("GET /{$}", static)
		mux.Handle("GET /static/", static)
		mux.Handle("GET /client/", static)
	}
	for pattern, h := range cfg.Extra {
		mux.Handle(pattern, h)
	}
	return chain(mux, cfg), nil
}

type api struct {
	cfg           APIConfig
	broadcasts    *actors.Broadcasts // the rules the outbox and the stream inbox share
	objectSchema  *actors.Schema
	loginSchema   *actors.Schema
	refreshSchema *actors.Schema
	replies       *replyBoxes // where the façade routes wait for the handler pool's answers
}

// routeAudit says how a route is authorised and recorded: rbac is the policy's route key
// ("" for façade routes, whose pkg_id RBAC runs in the pipeline), action and resource go into
// the audit log.
type routeAudit struct{ rbac, action, resource string }

// authed verifies the bearer token, applies the per-user rate limit and, for routes that are
// not a pkg_id's, the roles the policy gives the route, before h runs. Every call by an
// authenticated user is recorded in the audit log with its final HTTP status.
func (a *api) authed(ra routeAudit, h func(http.ResponseWriter, *http.Request, *actors.User)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		token := auth.TokenFromRequest(r)
		if token == "" {
			if !a.limit(w, r, "http_ip", clientIP(r), a.cfg.RatePerMinute) {
				return
			}
			w.Header().Set("WWW-Authenticate", "Bearer")
			writeDetail(w, http.StatusUnauthorized, "Missing token")
			return
		}
		claims, err := a.verify(r, token)
		if err != nil {
			status := http.StatusUnauthorized
			if errors.Is(err, auth.ErrKeysUnavailable) {
				status = http.StatusServiceUnavailable
			}
			if !a.limit(w, r, "http_ip", clientIP(r), a.cfg.RatePerMinute) {
				return
			}
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			writeDetail(w, status, tokenDetail(err, a.cfg.Logger))
			return
		}
		u := UserOf(claims)
		rec := &auditRecord{start: time.Now(), route: ra}
		if info := infoOf(r); info != nil {
			info.user, info.audit = u.ID, rec
		} else {
			r = r.WithContext(context.WithValue(r.Context(), requestInfoKey{}, &requestInfo{user: u.ID, audit: rec}))
		}
		// The status the audit records: observe's writer has it already (nothing was written
		// before this point), else a writer of its own.
		sw, ok := w.(*statusWriter)
		if !ok {
			sw = &statusWriter{ResponseWriter: w}
		}
		defer a.record(r, u, rec, sw)
		if !a.limit(sw, r, "http", u.ID, a.cfg.RatePerMinute) {
			return
		}
		admitted(r)
		if ra.rbac == "" {
			h(sw, r, u)
			return
		}
		missing, listed := a.cfg.Policy.RouteMissing(ra.rbac, u)
		if !listed {
			writeDetail(sw, http.StatusForbidden, "Route not allowed by the RBAC policy")
			return
		}
		if len(missing) > 0 {
			writeDetail(sw, http.StatusForbidden, "Missing required roles: "+actors.MissingRolesText(missing))
			return
		}
		h(sw, r, u)
	}
}

// memoVerifier is a TokenVerifier that can remember a connection's last token (auth.Verifier).
type memoVerifier interface {
	VerifyMemo(ctx context.Context, token string, m *auth.Memo) (*auth.Claims, error)
}

// verify checks the call's token; a keep-alive connection that sends the same token again is
// answered from its memo (the exact text compared, no hash).
func (a *api) verify(r *http.Request, token string) (*auth.Claims, error) {
	if mv, ok := a.cfg.Verifier.(memoVerifier); ok {
		if ec := edgeConnOf(r); ec != nil {
			return mv.VerifyMemo(r.Context(), token, &ec.tokens)
		}
	}
	return a.cfg.Verifier.Verify(r.Context(), token)
}

// static serves the page's files: public, from memory, limited per client IP under a scope of
// their own (static_ip).
func (a *api) static(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.limit(w, r, "static_ip", clientIP(r), a.cfg.RatePerMinute*staticLimitFactor) {
			return
		}
		h.ServeHTTP(w, r)
	})
}

// readBody reads a JSON object body under the size limit, answering 413 or 422 itself.
func (a *api) readBody(w http.ResponseWriter, r *http.Request, schema *actors.Schema) (json.RawMessage, bool) {
	body, _, ok := a.readBodyDecoded(w, r, schema)
	return body, ok
}

// readBodyDecoded is readBody that also returns the body as validation decoded it.
func (a *api) readBodyDecoded(w http.ResponseWriter, r *http.Request, schema *actors.Schema) (json.RawMessage, any, bool) {
	body, err := readLimited(w, r, a.cfg.MaxRequestBytes)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeDetail(w, http.StatusRequestEntityTooLarge, "Request body too large")
			return nil, nil, false
		}
		writeDetail(w, http.StatusBadRequest, "Could not read the request body")
		return nil, nil, false
	}
	if !json.Valid(body) {
		writeInvalid(w, []actors.FieldError{{Path: "/", Message: "body is not valid JSON"}})
		return nil, nil, false
	}
	value, errs := schema.ValidateDecoded(body)
	if len(errs) > 0 {
		writeInvalid(w, errs)
		return nil, nil, false
	}
	return body, value, true
}

func writeInvalid(w http.ResponseWriter, errs []actors.FieldError) {
	writeJSON(w, http.StatusUnprocessableEntity, invalidBody{Detail: "Invalid data", Errors: errs})
}

func (a *api) broadcast(w http.ResponseWriter, r *http.Request, u *actors.User) {
	body, value, ok := a.readBodyDecoded(w, r, a.broadcasts.Schema())
	if !ok {
		return
	}
	noteDecoded(r, body, value)
	msg, err := a.broadcasts.Message(body)
	if err != nil {
		// The schema passed, so this is the schema and hub.Message disagreeing.
		a.cfg.Logger.Warn("broadcast body passed the schema but does not decode", "err", err)
		writeInvalid(w, []actors.FieldError{{Path: "/", Message: "not a broadcast: want pkg_id, data and topic"}})
		return
	}
	if msg.Topic != "" {
		if denied := a.cfg.Policy.PublishDenied(msg.Topic, u); denied != "" {
			writeDetail(w, http.StatusForbidden, denied)
			return
		}
	}
	// Errors are answered with fixed texts: what the hub wraps comes from the bus (Redis,
	// encoding/json) and is only logged.
	nodes, err := a.cfg.Hub.Broadcast(r.Context(), msg)
	if errors.Is(err, hub.ErrInvalidData) {
		a.cfg.Logger.Warn("broadcast refused as invalid", "err", err)
		writeInvalid(w, []actors.FieldError{{Path: "/", Message: "the broadcast's data or topic is not valid"}})
		return
	}
	if err != nil {
		a.cfg.Logger.Warn("broadcast not accepted", "err", err)
		writeDetail(w, http.StatusServiceUnavailable, broadcastUnavailable(err))
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]int{"delivered_to_nodes": nodes})
}

// health probes every dependency in parallel, each bounded by one second.
func (a *api) health(w http.ResponseWriter, r *http.Request) {
	results := make([]string, len(a.cfg.Health))
	var wg sync.WaitGroup
	for i, hc := range a.cfg.Health {
		if hc.Check == nil {
			results[i] = "disabled"
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(r.Context(), time.Second)
			defer cancel()
			if err := hc.Check(ctx); err != nil {
				results[i] = "unhealthy"
				a.cfg.Logger.Warn("health check failed", "check", hc.Name, "err", err)
				return
			}
			results[i] = "healthy"
		}()
	}
	wg.Wait()
	body := map[string]string{"status": "healthy"}
	status := http.StatusOK
	for i, hc := range a.cfg.Health {
		body[hc.Name] = results[i]
		if results[i] == "unhealthy" && !hc.Advisory {
			status, body["status"] = http.StatusServiceUnavailable, "unhealthy"
		}
	}
	writeJSON(w, status, body)
}

func (a *api) metrics(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	a.cfg.Metrics.WritePrometheus(w)
	metrics.WriteProcessMetrics(w)
}

// broadcastUnavailable is the fixed detail of a 503 from POST /api/broadcast.
func broadcastUnavailable(err error) string {
	switch {
	case errors.Is(err, hub.ErrStopped):
		return "Broadcast not accepted: the server is shutting down"
	case errors.Is(err, hub.ErrBusUnavailable):
		return "Broadcast not accepted: the message bus is unavailable"
	}
	return "Broadcast not accepted"
}
