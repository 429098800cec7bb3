package actors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"switchboard/store/audit"
)

// Limiter decides whether one more WebSocket frame of userID may pass now. Limiters that
// fail open answer Allowed with a nil error when their backend is down.
type Limiter interface {
	Allow(ctx context.Context, userID string) (Decision, error)
}

// Decision is a Limiter's answer.
type Decision struct {
	Allowed    bool
	Limit      int
	Remaining  int
	RetryAfter time.Duration
}

// Auditor records one audit entry without blocking (audit.Writer implements it).
type Auditor interface {
	Record(audit.Entry)
}

// PipelineConfig wires a Pipeline.
type PipelineConfig struct {
	Registry *Registry
	Policy   *Policy
	// WSLimiter limits WebSocket frames per user; nil lets every frame through. The HTTP
	// façade applies its own limit in middleware, before it builds a Request.
	WSLimiter Limiter
	Timeout   time.Duration // per handler call
	// Auditor records every WebSocket request of an authenticated user; nil records nothing.
	// HTTP calls are recorded by the façade, which knows their HTTP status.
	Auditor Auditor
	Logger  *slog.Logger
	Metrics *metrics.Set
}

// Pipeline runs one request through unknown pkg_id → rate limit → RBAC → schema → handler and
// always returns a Response: a panic or an error becomes a status code, never a crash.
type Pipeline struct {
	cfg PipelineConfig
	// durations holds ws_message_processing_duration_seconds per registered pkg_id, so a
	// request does not build the series name; unknown ones share one series.
	durations map[int]*metrics.PrometheusHistogram
	unknown   *metrics.PrometheusHistogram
}

// NewPipeline checks cfg and returns a Pipeline.
func NewPipeline(cfg PipelineConfig) (*Pipeline, error) {
	if cfg.Registry == nil || cfg.Policy == nil || cfg.Logger == nil || cfg.Metrics == nil {
		return nil, errors.New("pipeline: registry, policy, logger and metrics are required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	for _, id := range cfg.Registry.PkgIDs() {
		if _, ok := cfg.Policy.PkgIDs[id]; !ok {
			cfg.Logger.Warn("pkg_id has no RBAC entry and is denied to everyone", "pkg_id", id, "name", cfg.Registry.Name(id))
		}
	}
	p := &Pipeline{cfg: cfg, durations: map[int]*metrics.PrometheusHistogram{},
		unknown: cfg.Metrics.GetOrCreatePrometheusHistogram(durationSeries("unknown"))}
	for _, id := range cfg.Registry.PkgIDs() {
		p.durations[id] = cfg.Metrics.GetOrCreatePrometheusHistogram(durationSeries(strconv.Itoa(id)))
	}
	return p, nil
}

// Registry returns the registry the pipeline serves.
func (p *Pipeline) Registry() *Registry { return p.cfg.Registry }

// Policy returns the RBAC policy the pipeline enforces.
func (p *Pipeline) Policy() *Policy { return p.cfg.Policy }

// Timeout is the handler timeout: a request's deadline is its admission plus this.
func (p *Pipeline) Timeout() time.Duration { return p.cfg.Timeout }

// Deadline is req's deadline: its admission plus the handler timeout (from now when the request
// carries no admission time).
func (p *Pipeline) Deadline(req *Request) time.Time {
	if req.Admitted.IsZero() {
		return time.Now().Add(p.cfg.Timeout)
	}
	return req.Admitted.Add(p.cfg.Timeout)
}

// Handle answers req. ctx bounds the whole call, and so does req's deadline: a request whose
// deadline has passed is answered 1/"Request timed out" (ErrDeadline) without running any step,
// and every step that waits (the rate limiter, the handler) gets what is left of it.
func (p *Pipeline) Handle(ctx context.Context, req *Request) (resp *Response) {
	start := time.Now()
	var decoded any // req.Data as schema validation decoded it
	defer func() {
		if req.Transport != "ws" {
			// The façade audits HTTP calls; the WebSocket audit (record) redacts decoded in
			// place, so it is handed on only where record does not use it.
			resp.Decoded = decoded
		}
		p.record(ctx, req, resp, start, decoded)
	}()
	deadline := p.Deadline(req)
	if !start.Before(deadline) {
		return p.fail(req, timedOut)
	}
	rctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	rt, ok := p.cfg.Registry.lookup(req.PkgID)
	if !ok {
		return p.fail(req, &Failure{Status: StatusError, Msg: "Unknown pkg_id " + strconv.Itoa(req.PkgID), Kind: ErrUnknownPkg})
	}
	if req.Transport == "ws" && p.cfg.WSLimiter != nil && req.User != nil {
		d, err := p.cfg.WSLimiter.Allow(rctx, req.User.ID)
		if err == nil && !d.Allowed {
			p.cfg.Metrics.GetOrCreateCounter(`rate_limit_hits_total{limit_type="ws_message"}`).Inc()
			r := p.fail(req, &Failure{Status: StatusError, Msg: "Rate limit exceeded", Kind: ErrRateLimited})
			r.RetryAfter = d.RetryAfter
			return r
		}
	}
	missing, listed := p.cfg.Policy.PkgMissing(req.PkgID, req.User)
	if !listed || len(missing) > 0 || req.User == nil {
		return p.fail(req, &Failure{Status: StatusPermissionDenied, Msg: "Permission denied", Kind: ErrDenied, Data: missingData(missing)})
	}
	var errs []FieldError
	// The audit record redacts the decoded document, valid or not; the handler decodes
	// req.Data itself.
	decoded, errs = validateDecoded(rt.schema, req.Data)
	if len(errs) > 0 {
		return p.fail(req, Invalid(errs...))
	}
	return p.run(rctx, rt, req)
}

// The answers of requests that never ran (PROTOCOL §1.3 status 1; docs/protocol.md §8).
var (
	timedOut = &Failure{Status: StatusError, Msg: "Request timed out", Kind: ErrDeadline}
	stopping = &Failure{Status: StatusError, Msg: "Server is shutting down", Kind: ErrStopping}
)

// refuse answers req with f without running it (its deadline passed while it waited for a
// handler, or the pool is stopping); the answer is logged, measured and audited like Handle's.
func (p *Pipeline) refuse(req *Request, f *Failure) (resp *Response) {
	start := time.Now()
	resp = p.fail(req, f)
	p.record(context.Background(), req, resp, start, nil)
	return resp
}

// record measures, audits and logs a WebSocket request's answer; the HTTP façade logs and
// measures its requests itself.
func (p *Pipeline) record(ctx context.Context, req *Request, resp *Response, start time.Time, decoded any) {
	if req.Transport != "ws" {
		return
	}
	p.duration(req.PkgID).UpdateDuration(start)
	p.audit(req, resp, start, decoded)
	if p.cfg.Logger.Enabled(ctx, slog.LevelInfo) {
		user := ""
		if req.User != nil {
			user = req.User.ID
		}
		RequestLine(ctx, p.cfg.Logger, slog.LevelInfo, "ws request", slog.Int("pkg_id", req.PkgID),
			slog.String("req_id", req.ReqID), slog.String("user", user), slog.Int("status", int(resp.Status)),
			slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000))
	}
}

func (p *Pipeline) run(ctx context.Context, rt *route, req *Request) (resp *Response) {
	defer func() {
		if v := recover(); v != nil {
			p.cfg.Logger.Error("handler panicked", "pkg_id", req.PkgID, "req_id", req.ReqID,
				"panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			resp = p.fail(req, &Failure{Status: StatusError, Msg: "Internal error", Kind: ErrInternal})
		}
	}()
	data, meta, err := rt.Handler(ctx, req)
	if err != nil {
		return p.fail(req, p.classify(req, err))
	}
	resp = &Response{PkgID: req.PkgID, ReqID: req.ReqID, Status: StatusOK, Data: data, Meta: meta, For: req}
	switch d := data.(type) {
	case refreshed:
		resp.Refreshed = d.user
	case *SubscribeIntent:
		resp.Effect, resp.Data = d, map[string]any{"topic": d.Topic}
	case *UnsubscribeIntent:
		resp.Effect, resp.Data = d, map[string]any{"topic": d.Topic}
	}
	return resp
}

// classify turns a handler error into the answer the client sees, logging what it hides.
func (p *Pipeline) classify(req *Request, err error) *Failure {
	var f *Failure
	if errors.As(err, &f) {
		return f
	}
	if errors.Is(err, ErrDatabase) {
		p.cfg.Logger.Error("database error", "pkg_id", req.PkgID, "req_id", req.ReqID, "err", err)
		return &Failure{Status: StatusError, Msg: "Database error occurred", Kind: ErrDatabase, Cause: err}
	}
	p.cfg.Logger.Error("handler failed", "pkg_id", req.PkgID, "req_id", req.ReqID, "err", err)
	return &Failure{Status: StatusError, Msg: "Internal error", Kind: ErrInternal, Cause: err}
}

func (p *Pipeline) fail(req *Request, f *Failure) *Response {
	return &Response{PkgID: req.PkgID, ReqID: req.ReqID, Status: f.Status, Msg: f.Msg, Kind: f.Kind, Data: f.Data, For: req}
}

// duration is the processing-time histogram of pkgID.
func (p *Pipeline) duration(pkgID int) *metrics.PrometheusHistogram {
	if h, ok := p.durations[pkgID]; ok {
		return h
	}
	if _, ok := p.cfg.Registry.lookup(pkgID); ok { // registered after NewPipeline
		return p.cfg.Metrics.GetOrCreatePrometheusHistogram(durationSeries(strconv.Itoa(pkgID)))
	}
	return p.unknown
}

func durationSeries(label string) string {
	return `ws_message_processing_duration_seconds{pkg_id="` + label + `"}`
}

// audit records a WebSocket request (the writer redacts the data and never blocks).
func (p *Pipeline) audit(req *Request, resp *Response, start time.Time, decoded any) {
	if p.cfg.Auditor == nil || req.User == nil {
		return
	}
	e := audit.Entry{
		Timestamp: start, UserID: req.User.ID, Username: req.User.Name, UserRoles: req.User.Roles,
		ActionType: p.cfg.Registry.Name(req.PkgID), Resource: p.cfg.Registry.Resource(req.PkgID),
		Outcome: OutcomeOf(resp.Status), IPAddress: req.Remote, UserAgent: req.UserAgent, RequestID: req.ReqID,
		RequestData: req.Data, RequestValue: decoded, ResponseStatus: int(resp.Status),
		DurationMS: float64(time.Since(start).Microseconds()) / 1000,
	}
	if resp.Msg != "" {
		msg := resp.Msg
		e.ErrorMessage = &msg
	}
	p.cfg.Auditor.Record(e)
}

// OutcomeOf is the audit outcome of a status code.
func OutcomeOf(s Status) string {
	switch s {
	case StatusOK:
		return audit.OutcomeSuccess
	case StatusPermissionDenied:
		return audit.OutcomeDenied
	}
	return audit.OutcomeError
}

// MissingRoles is the data of a permission-denied answer.
type MissingRoles struct {
	Missing []string `json:"missing_roles"`
}

func missingData(missing []string) any {
	if len(missing) == 0 {
		return nil
	}
	return MissingRoles{Missing: missing}
}

// MissingRolesText renders roles as the HTTP 403 detail wants them.
func MissingRolesText(roles []string) string { return strings.Join(roles, ", ") }
