package actors

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/asynkron/protoactor-go/actor"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testPipeline registers pkg 1 (echo, role "r"), pkg 2 (panics), pkg 3 (database error),
// pkg 4 (slow, honours ctx), pkg 6 (registered but not in the policy).
func testPipeline(t testing.TB, lim Limiter) *Pipeline {
	t.Helper()
	reg := NewRegistry()
	reg.MustRegister(
		Route{PkgID: 1, Name: "ECHO", Schema: `{"type":"object","required":["v"],"properties":{"v":{"type":"integer","maximum":10}}}`,
			Handler: func(ctx context.Context, r *Request) (any, any, error) { return json.RawMessage(r.Data), nil, nil }},
		Route{PkgID: 2, Name: "PANIC", Handler: func(context.Context, *Request) (any, any, error) { panic("boom") }},
		Route{PkgID: 3, Name: "DB", Handler: func(context.Context, *Request) (any, any, error) {
			return nil, nil, storeErr(errors.New("connection refused"))
		}},
		Route{PkgID: 4, Name: "SLOW", Handler: func(ctx context.Context, _ *Request) (any, any, error) {
			<-ctx.Done()
			return nil, nil, ctx.Err()
		}},
		Route{PkgID: 6, Name: "UNLISTED", Handler: func(context.Context, *Request) (any, any, error) { return 1, nil, nil }},
	)
	pol, err := ParsePolicy([]byte(`{"pkg_ids":{"1":["r"],"2":[],"3":[],"4":[]}}`))
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPipeline(PipelineConfig{Registry: reg, Policy: pol, WSLimiter: lim, Timeout: 50 * time.Millisecond,
		Logger: quietLogger(), Metrics: metrics.NewSet()})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func req(pkg int, data string, roles ...string) *Request {
	return &Request{PkgID: pkg, ReqID: "id", Data: json.RawMessage(data), Transport: "ws", User: &User{ID: "u", Roles: roles}}
}

func TestPipelineOrderAndAnswers(t *testing.T) {
	p := testPipeline(t, nil)
	ctx := context.Background()
	cases := []struct {
		name   string
		req    *Request
		status Status
		msg    string
		kind   error
	}{
		{"ok", req(1, `{"v":1}`, "r"), StatusOK, "", nil},
		{"unknown pkg before rbac", req(99, `{}`), StatusError, "Unknown pkg_id 99", ErrUnknownPkg},
		{"missing role", req(1, `{"v":1}`), StatusPermissionDenied, "Permission denied", ErrDenied},
		{"rbac before schema", req(1, `{"v":"bad"}`), StatusPermissionDenied, "Permission denied", ErrDenied},
		{"not in policy is denied", req(6, `{}`, "r", "admin"), StatusPermissionDenied, "Permission denied", ErrDenied},
		{"schema", req(1, `{"v":11}`, "r"), StatusInvalidData, "Invalid data", ErrInvalid},
		{"panic", req(2, `{}`), StatusError, "Internal error", ErrInternal},
		{"database", req(3, `{}`), StatusError, "Database error occurred", ErrDatabase},
		{"timeout", req(4, `{}`), StatusError, "Internal error", ErrInternal},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := p.Handle(ctx, tc.req)
			if r.Status != tc.status || r.Msg != tc.msg || !errors.Is(r.Kind, tc.kind) && tc.kind != nil || r.ReqID != "id" {
				t.Fatalf("got %+v", r)
			}
		})
	}
}

func TestSchemaErrorsArePointers(t *testing.T) {
	r := testPipeline(t, nil).Handle(context.Background(), req(1, `{"v":11}`, "r"))
	errs := r.Data.(InvalidData).Errors
	if len(errs) != 1 || errs[0].Path != "/v" || !strings.Contains(errs[0].Message, "10") {
		t.Fatalf("errors = %+v", errs)
	}
	r = testPipeline(t, nil).Handle(context.Background(), req(1, `{}`, "r"))
	if errs := r.Data.(InvalidData).Errors; len(errs) != 1 || errs[0].Path != "/" || !strings.Contains(errs[0].Message, "v") {
		t.Fatalf("errors = %+v", errs)
	}
}

type countLimiter struct {
	left atomic.Int64
	keys chan string
}

func (c *countLimiter) Allow(_ context.Context, key string) (Decision, error) {
	c.keys <- key
	return Decision{Allowed: c.left.Add(-1) >= 0, RetryAfter: time.Second}, nil
}

func TestRateLimitAfterLookupBeforeRBAC(t *testing.T) {
	lim := &countLimiter{keys: make(chan string, 10)}
	lim.left.Store(1)
	p := testPipeline(t, lim)
	ctx := context.Background()
	if r := p.Handle(ctx, req(99, `{}`)); r.Status != StatusError || r.Msg != "Unknown pkg_id 99" {
		t.Fatalf("unknown pkg must not count: %+v", r)
	}
	if len(lim.keys) != 0 {
		t.Fatal("limiter consulted for an unknown pkg_id")
	}
	if r := p.Handle(ctx, req(1, `{"v":1}`)); r.Status != StatusPermissionDenied {
		t.Fatalf("first frame: %+v", r)
	}
	if r := p.Handle(ctx, req(1, `{"v":1}`, "r")); r.Status != StatusError || r.Msg != "Rate limit exceeded" || r.RetryAfter != time.Second {
		t.Fatalf("second frame: %+v", r)
	}
	if k := <-lim.keys; k != "u" {
		t.Fatalf("key %q", k)
	}
	// HTTP requests are limited by the façade's middleware, not here.
	h := req(1, `{"v":1}`, "r")
	h.Transport = "http"
	if r := p.Handle(ctx, h); r.Status != StatusOK {
		t.Fatalf("http: %+v", r)
	}
}

// TestHandlerPoolSurvivesPanics: the pool answers every request, panicking or not.
func TestHandlerPoolSurvivesPanics(t *testing.T) {
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return quietLogger() }))
	defer sys.Shutdown()
	pool, err := SpawnHandlerPool(sys.Root, testPipeline(t, nil), context.Background(), PoolSizes{Database: 4, Control: 2})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		pkg, data := 2, `{}`
		if i%2 == 1 {
			pkg, data = 1, `{"v":1}`
		}
		res, err := sys.Root.RequestFuture(pool.PID, req(pkg, data, "r"), 5*time.Second).Result()
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		r := res.(*Response)
		if (pkg == 2 && r.Msg != "Internal error") || (pkg == 1 && r.Status != StatusOK) {
			t.Fatalf("request %d: %+v", i, r)
		}
	}
	if err := pool.Stop(sys.Root); err != nil {
		t.Fatal(err)
	}
}

func TestPolicy(t *testing.T) {
	p := DefaultPolicy()
	u := &User{ID: "u", Roles: []string{"get-authors"}}
	if m, ok := p.PkgMissing(1, u); !ok || len(m) != 0 {
		t.Fatalf("pkg 1: %v %v", m, ok)
	}
	if m, ok := p.PkgMissing(3, u); !ok || len(m) != 1 || m[0] != "create-author" {
		t.Fatalf("pkg 3: %v %v", m, ok)
	}
	if _, ok := p.PkgMissing(77, u); ok {
		t.Fatal("unlisted pkg_id must be unlisted")
	}
	if m, _ := p.RouteMissing("POST /api/broadcast", u); len(m) != 1 || m[0] != "broadcast" {
		t.Fatalf("route: %v", m)
	}
	if r, ok := p.Topic("dashboards.sales"); !ok || r.Publish[0] != "broadcast" {
		t.Fatalf("topic: %+v", r)
	}
	if _, ok := p.Topic("secret"); ok {
		t.Fatal("unknown topic must not match")
	}
	for _, bad := range []string{`{"pkg_ids":{"x":[]}}`, `{"pkgids":{}}`, `{"topics":[{"pattern":"["}]}`, `nope`} {
		if _, err := ParsePolicy([]byte(bad)); err == nil {
			t.Errorf("ParsePolicy(%s) accepted", bad)
		}
	}
}

func TestRegistryRejectsBadRoutes(t *testing.T) {
	r := NewRegistry()
	h := func(context.Context, *Request) (any, any, error) { return nil, nil, nil }
	if err := r.Register(Route{PkgID: 1, Name: "A", Handler: h}); err != nil {
		t.Fatal(err)
	}
	if err := r.Register(Route{PkgID: 1, Name: "B", Handler: h}); err == nil {
		t.Fatal("duplicate accepted")
	}
	if err := r.Register(Route{PkgID: 2, Name: "C", Handler: h, Schema: `{"type":`}); err == nil {
		t.Fatal("broken schema accepted")
	}
	if err := r.Register(Route{PkgID: 3, Name: "D"}); err == nil {
		t.Fatal("route without handler accepted")
	}
}

func BenchmarkRBAC(b *testing.B) {
	p := DefaultPolicy()
	u := &User{ID: "u", Roles: []string{"a", "b", "get-authors", "create-author"}}
	b.ReportAllocs()
	for b.Loop() {
		if m, ok := p.PkgMissing(1, u); !ok || len(m) > 0 {
			b.Fatal("denied")
		}
	}
}

func BenchmarkSchemaValidate(b *testing.B) {
	reg := NewRegistry()
	reg.MustRegister(AuthorRoutes(nil)...)
	data := json.RawMessage(`{"page":2,"per_page":50,"filters":{"name":"John","id":3}}`)
	b.ReportAllocs()
	for b.Loop() {
		if errs := reg.Validate(PkgGetPaginatedAuthors, data); errs != nil {
			b.Fatal(errs)
		}
	}
}

// BenchmarkPipelineHandle is one WebSocket request through rate limit (none), RBAC, schema
// and a handler that answers at once: the pipeline's own cost per request.
func BenchmarkPipelineHandle(b *testing.B) {
	p := testPipeline(b, nil)
	ctx := context.Background()
	r := req(1, `{"v":1}`, "r")
	b.ReportAllocs()
	for b.Loop() {
		if resp := p.Handle(ctx, r); resp.Status != StatusOK {
			b.Fatal(resp)
		}
	}
}
