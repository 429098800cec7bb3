package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/asynkron/protoactor-go/actor"
	"github.com/redis/go-redis/v9"

	"switchboard/actors"
	"switchboard/config"
	"switchboard/hub"
	"switchboard/hub/sysstats"
	"switchboard/store"
	"switchboard/store/audit"
	"switchboard/store/limits"
	"switchboard/store/redisconn"
	"switchboard/transport"
	"switchboard/transport/auth"
	"switchboard/transport/web"
)

// app is one running Switchboard node: every part, wired, with one shutdown order.
type app struct {
	cfg       config.Config
	node      string // this process in cluster-wide state
	log       *slog.Logger
	metrics   *metrics.Set
	db        *store.DB
	system    *actor.ActorSystem
	hub       *hub.Hub
	handlers  *actors.HandlerPool
	cancel    context.CancelFunc // aborts in-flight handler calls
	verifier  *auth.Verifier
	redis     redis.UniversalClient // nil without SWITCHBOARD_REDIS_URL: one server, Sentinel or Cluster
	redisKind redisconn.Kind
	limiter   limits.RateLimiter
	conns     limits.ConnCounter
	stopConns func() error // stops the connection counter's heartbeat
	login     loginService
	// demoUsers are the development users this app created with a new users file, passwords
	// included: serve shows them once; never logged.
	demoUsers []auth.DemoUser
	bus       interface {
		hub.Bus
		Healthy(context.Context) error
		Close() error
	}
	audit      *audit.Writer
	stats      *sysstats.Publisher // sys.stats, once a second
	settle     func()              // stops the release of a connection burst's memory (memsettle.go)
	relays     relays              // the outbox relay and the stream inbox
	ws         *transport.WSServer
	edge       *transport.Edge // wraps http's listener
	http       *http.Server
	metricsSrv *http.Server
	pprofSrv   *http.Server
}

// loginService answers POST /login and POST /refresh (auth.PasswordGrant, auth.DevLogin).
type loginService interface {
	auth.Login
	transport.TokenRefresher
}

// newApp opens the database (retrying PostgreSQL up to the connect timeout), migrates it and
// starts the actors. Nothing listens yet: serve does that. An error names the variable to
// change, and whatever was opened is closed again.
func newApp(ctx context.Context, cfg config.Config, log *slog.Logger) (_ *app, err error) {
	// a is not the named result: every failure returns nil, and the cleanup needs the
	// half-built app.
	a := &app{cfg: cfg, log: log, metrics: metrics.NewSet(), node: nodeID()}
	defer func() {
		if err != nil {
			a.close(context.Background())
			if len(a.demoUsers) > 0 {
				// Nobody will see their passwords: the next start creates new ones.
				_ = os.Remove(filepath.Join(cfg.DataDir, auth.DevUsersFile))
			}
		}
	}()
	if a.db, err = store.Open(ctx, cfg.Database(), cfg.DBConnectTimeout); err != nil {
		return nil, fmt.Errorf("%s: %w", databaseVar(cfg), err)
	}
	if err = a.db.Migrate(ctx); err != nil {
		return nil, fmt.Errorf("%s: %w", databaseVar(cfg), err)
	}
	a.db.Observe(a.metrics)
	a.audit = audit.NewWriter(a.db, audit.WriterConfig{Logger: log, Metrics: a.metrics, FlushInterval: cfg.AuditFlush})
	policy, err := actors.LoadPolicy(cfg.RBACFile)
	if err != nil {
		return nil, fmt.Errorf("SWITCHBOARD_RBAC_FILE: %w", err)
	}
	if a.verifier, err = newVerifier(cfg, log); err != nil {
		return nil, err
	}
	if err = a.openLimits(); err != nil {
		return nil, err
	}
	if a.login, a.demoUsers, err = newLogin(cfg, log); err != nil {
		return nil, err
	}
	a.system = actor.NewActorSystem(
		actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
			return slog.New(warnOnly{log.Handler()}).With("lib", "protoactor")
		}),
		actor.WithDeadLetterRequestLogging(false),
	)
	late := &lateDeliver{}
	if err = a.openBus(late.Deliver); err != nil {
		return nil, fmt.Errorf("SWITCHBOARD_REDIS_URL: %w", err)
	}
	a.hub = hub.Start(a.system.Root, hub.Options{
		PingInterval: cfg.WSPingInterval, Bus: a.bus, History: policy.HistoryOf, Logger: log, Metrics: a.metrics,
	})
	late.hub.Store(a.hub)
	a.stats = sysstats.Start(sysstats.Config{Node: a.node, Metrics: a.metrics, Hub: a.hub, Logger: log})
	a.settle = startBurstSettle(a.hub.Active, log)
	if err = a.startRelays(policy); err != nil {
		return nil, err
	}
	reg := actors.NewRegistry()
	// Each author change writes its event into the outbox in its own transaction; the relay
	// publishes it once committed (woken at once: this node wrote it).
	authors := store.NewAuthors(a.db).WithEvents(store.AuthorEvents{Event: actors.AuthorEventRow, Committed: a.relays.wake, Quiet: a.relays.leading})
	reg.MustRegister(actors.AuthorRoutes(authors)...)
	// SUBSCRIBE and UNSUBSCRIBE never touch the database (a history read goes to the bus).
	reg.MustRegister(actors.InLane(actors.LaneControl, actors.TopicRoutes(policy)...)...)
	reg.MustRegister(actors.AuditRoutes(audit.NewRepo(a.db))...)
	reg.MustRegister(actors.SessionRoutes(func(ctx context.Context, token string) (*actors.User, error) {
		claims, err := a.verifier.Verify(ctx, token)
		if err != nil {
			return nil, err
		}
		return transport.UserOf(claims), nil
	})...)
	pipeline, err := actors.NewPipeline(actors.PipelineConfig{
		Registry: reg, Policy: policy, Timeout: cfg.HandlerTimeout, Logger: log, Metrics: a.metrics,
		WSLimiter: wsLimiter{rl: a.limiter, limit: cfg.WSMessageRateLimit}, Auditor: a.audit,
	})
	if err != nil {
		return nil, err
	}

	base, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.handlers, err = actors.SpawnHandlerPool(a.system.Root, pipeline, base,
		actors.PoolSizes{Database: cfg.HandlerPoolSize, Control: cfg.ControlPoolSize})
	if err != nil {
		return nil, err
	}
	a.ws = transport.NewWSServer(transport.WSConfig{
		Verifier: a.verifier, Hub: a.hub, Root: a.system.Root, Handlers: a.handlers.PID,
		AllowedOrigins: cfg.AllowedOrigins, MaxMessageBytes: cfg.WSMaxMessageBytes,
		SendQueueBytes: cfg.WSSendQueueBytes, MaxInFlight: cfg.WSMaxInFlight,
		PingInterval: cfg.WSPingInterval, WriteTimeout: cfg.WSWriteTimeout, TokenLeeway: cfg.JWTLeeway,
		RateLimiter: a.limiter, RatePerMinute: cfg.RateLimitPerMinute,
		ConnCounter: a.conns, MaxConnsPerUser: cfg.WSMaxConnsPerUser,
		Logger: log, Metrics: a.metrics,
	})
	page, err := web.New()
	if err != nil {
		return nil, err
	}
	extra := map[string]http.Handler{}
	if cfg.DevIssuer() {
		dev, err := auth.OpenDevIssuer(cfg.DataDir)
		if err != nil {
			return nil, fmt.Errorf("SWITCHBOARD_DATA_DIR: %w", err)
		}
		extra["GET "+auth.DevJWKSPath] = dev.JWKSHandler()
		extra["GET /.well-known/openid-configuration"] = dev.DiscoveryHandler("http://" + cfg.Addr)
	}
	handler, err := transport.NewHandler(transport.APIConfig{
		Verifier: a.verifier, Policy: policy, Hub: a.hub, WS: a.ws,
		Root: a.system.Root, Handlers: a.handlers.PID, HandlerTimeout: cfg.HandlerTimeout, Registry: reg, Auditor: a.audit,
		RateLimiter: a.limiter, RatePerMinute: cfg.RateLimitPerMinute, LoginRateLimit: cfg.LoginRateLimit,
		Login: a.login, Refresh: a.login, Sessions: a.sessions(), TrustedProxies: cfg.TrustedProxies,
		Health: []transport.HealthCheck{
			{Name: "database", Check: a.db.Ping},
			{Name: "redis", Check: a.redisPing()},
			{Name: "pubsub", Check: a.busHealthy()},
			{Name: "identity", Check: a.identityReady()},
			{Name: "relay", Check: a.relays.healthy(), Advisory: true},
		},
		MaxRequestBytes: cfg.MaxRequestBytes, Logger: log, Metrics: a.metrics, Extra: extra, Web: page,
	})
	if err != nil {
		return nil, err
	}
	if !cfg.DevIssuer() {
		// Warm the keys; a down issuer is logged and retried on use, never fatal.
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		if err := a.verifier.Ready(rctx); err != nil {
			log.Warn("identity provider not reachable yet; tokens verify once its keys load", "issuer", cfg.OIDCIssuer, "err", err)
		}
		cancel()
	}
	// What a peer can make the server hold before it authenticates: header bytes and time
	// (answered 431 and 408), and connections per address (the Edge, which also answers the
	// server's own refusals in JSON). A peer that stops reading cannot hold a goroutine
	// forever either: body, handler and answer end within WriteTimeout (an upgrade clears it).
	a.edge = transport.NewEdge(transport.EdgeConfig{
		MaxPreAuthPerIP: cfg.MaxPreAuthConnsIP, TrustedProxies: cfg.TrustedProxies,
		MaxHeaderBytes: cfg.MaxHeaderBytes, HeaderTimeout: cfg.HeaderTimeout, Logger: log, Metrics: a.metrics,
	})
	a.http = &http.Server{
		Handler:           handler,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ReadHeaderTimeout: cfg.HeaderTimeout,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      cfg.HandlerTimeout + time.Minute,
		IdleTimeout:       120 * time.Second,
		ConnContext:       a.edge.ConnContext,
		ConnState:         a.edge.ConnState,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if cfg.MetricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", handler)
		a.metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: cfg.MaxHeaderBytes}
	}
	if cfg.PprofAddr != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		a.pprofSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: cfg.MaxHeaderBytes}
	}
	return a, nil
}

// summary is the start-up line's attributes: where it listens, what it uses, its limits.
func (a *app) summary(addr string) []any {
	c := a.cfg
	redisURL, issuer := "disabled", c.OIDCIssuer
	if c.RedisURL != "" {
		redisURL = config.RedactURL(c.RedisURL)
	}
	if c.DevIssuer() {
		issuer = "development"
	}
	return []any{"addr", addr, "database", a.db.Dialect, "redis", redisURL, "issuer", issuer,
		"http_per_minute", c.RateLimitPerMinute, "ws_frames_per_minute", c.WSMessageRateLimit,
		"ws_conns_per_user", c.WSMaxConnsPerUser, "ws_max_message_bytes", c.WSMaxMessageBytes,
		"ws_send_queue_bytes", c.WSSendQueueBytes, "handlers", c.HandlerPoolSize, "control_handlers", c.ControlPoolSize,
		"version", buildVersion()}
}

// identityReady is /health's check of the external issuer's keys (loaded, or loadable now);
// the built-in development issuer's keys are always there ("disabled").
func (a *app) identityReady() func(context.Context) error {
	if a.cfg.DevIssuer() {
		return nil
	}
	return a.verifier.Ready
}

// newVerifier verifies tokens from the configured issuer, or from the built-in development
// issuer through the same code with its key set given directly.
func newVerifier(cfg config.Config, log *slog.Logger) (*auth.Verifier, error) {
	vc := auth.Config{ClientID: cfg.OIDCClientID, Leeway: cfg.JWTLeeway, RoleClaimPaths: cfg.OIDCRoleClaims, Logger: log}
	if cfg.DevIssuer() {
		dev, err := auth.OpenDevIssuer(cfg.DataDir)
		if err != nil {
			return nil, fmt.Errorf("SWITCHBOARD_DATA_DIR: %w", err)
		}
		vc.Issuer = auth.DevIssuerID
		vc.KeySet = dev.PublicKeySet()
		log.Warn("DEVELOPMENT MODE: tokens come from the built-in development issuer; set SWITCHBOARD_OIDC_ISSUER in production",
			"key", dev.KeyPath())
		if !config.IsLoopback(cfg.Addr) {
			log.Warn("DEVELOPMENT ISSUER ON A PUBLIC ADDRESS (SWITCHBOARD_DEV_ISSUER_PUBLIC=true): anyone who reaches "+
				cfg.Addr+" can try the development users' passwords at /login", "addr", cfg.Addr)
		}
	} else {
		vc.Issuer = cfg.OIDCIssuer
	}
	v, err := auth.NewVerifier(context.Background(), vc)
	if err != nil {
		return nil, fmt.Errorf("SWITCHBOARD_OIDC_ISSUER: %w", err)
	}
	return v, nil
}

// newLogin answers POST /login and POST /refresh: the OIDC password and refresh grants against
// the configured issuer, or the development users file with the development issuer's own
// refresh tokens. The demo users it creates with a new users file are returned with their
// passwords, never logged: serve shows them once (announceDemoUsers).
func newLogin(cfg config.Config, log *slog.Logger) (loginService, []auth.DemoUser, error) {
	if !cfg.DevIssuer() {
		return auth.NewPasswordGrant(auth.PasswordGrantConfig{
			Issuer: cfg.OIDCIssuer, ClientID: cfg.OIDCClientID, ClientSecret: cfg.OIDCClientSecret, Logger: log,
		}), nil, nil
	}
	dev, err := auth.OpenDevIssuer(cfg.DataDir)
	if err != nil {
		return nil, nil, fmt.Errorf("SWITCHBOARD_DATA_DIR: %w", err)
	}
	users, created, err := auth.OpenDevUsers(cfg.DataDir)
	if err != nil {
		return nil, nil, fmt.Errorf("SWITCHBOARD_DATA_DIR: %w", err)
	}
	return auth.DevLogin{Users: users, Issuer: dev, ClientID: cfg.OIDCClientID}, created, nil
}

// serve listens on ln (and the metrics address) until ctx ends, then shuts down in order.
func (a *app) serve(ctx context.Context, ln net.Listener) error {
	errc := make(chan error, 3)
	go func() { errc <- a.http.Serve(a.edge.Listen(ln)) }()
	if a.metricsSrv != nil {
		mln, err := listen(a.cfg.MetricsAddr)
		if err != nil {
			_ = ln.Close()
			a.close(context.Background())
			return fmt.Errorf("SWITCHBOARD_METRICS_ADDR: %w", err)
		}
		go func() { errc <- a.metricsSrv.Serve(mln) }()
	}
	if a.pprofSrv != nil {
		pln, err := listen(a.cfg.PprofAddr)
		if err != nil {
			_ = ln.Close()
			a.close(context.Background())
			return fmt.Errorf("SWITCHBOARD_PPROF_ADDR: %w", err)
		}
		a.log.Warn("profiling endpoints on " + pln.Addr().String() + "/debug/pprof/ — do not expose them")
		go func() { errc <- a.pprofSrv.Serve(pln) }()
	}
	a.log.Info("switchboard listening", a.summary(ln.Addr().String())...)
	if a.cfg.DevIssuer() {
		a.log.Info("get a development token with: switchboard token --user alice --roles get-authors,create-author,update-author,delete-author,broadcast")
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
		if errors.Is(serveErr, http.ErrServerClosed) {
			serveErr = nil
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
	defer cancel()
	return errors.Join(serveErr, a.shutdown(sctx))
}

// shutdown runs the one shutdown order: stop accepting WebSockets → stop the stats publisher →
// close them with 1001 → http.Server.Shutdown → stop the actors and wait → close the database.
// ctx is the one deadline over all of it.
func (a *app) shutdown(ctx context.Context) error {
	start := time.Now()
	a.ws.BeginShutdown()
	a.stats.Stop()
	a.relays.stop()
	n, err := a.hub.Stop(ctx, transport.CloseGoingAway, "server shutting down")
	errs := []error{err}
	errs = append(errs, a.http.Shutdown(ctx))
	if a.metricsSrv != nil {
		errs = append(errs, a.metricsSrv.Shutdown(ctx))
	}
	if a.pprofSrv != nil {
		errs = append(errs, a.pprofSrv.Shutdown(ctx))
	}
	errs = append(errs, a.ws.Wait(ctx))
	errs = append(errs, a.close(ctx))
	err = errors.Join(errs...)
	a.log.Info("switchboard stopped", "websockets_closed", n, "took", time.Since(start).Round(time.Millisecond), "err", err)
	return err
}

// close stops the actors and releases what newApp opened; it tolerates a partly built app.
func (a *app) close(ctx context.Context) error {
	var errs []error
	if a.stats != nil {
		a.stats.Stop() // a no-op after shutdown; here for a newApp that failed half-way
	}
	if a.settle != nil {
		a.settle()
		a.settle = nil
	}
	a.relays.stop()
	if a.hub != nil {
		// Normally stopped already by shutdown (a second Stop is a no-op); here for a newApp
		// that failed half-way.
		_, _ = a.hub.Stop(ctx, transport.CloseGoingAway, "server shutting down")
	}
	if a.cancel != nil {
		a.cancel()
	}
	if a.system != nil {
		if a.handlers != nil {
			errs = append(errs, a.handlers.Stop(a.system.Root))
		}
		a.system.Shutdown()
	}
	if a.audit != nil {
		// After the actors stopped nothing records any more: flush what is queued.
		errs = append(errs, a.audit.Close(ctx))
	}
	if a.verifier != nil {
		a.verifier.Close()
	}
	if c, ok := a.login.(interface{ Close() }); ok {
		c.Close()
	}
	if a.bus != nil {
		errs = append(errs, a.bus.Close())
	}
	if a.stopConns != nil {
		errs = append(errs, a.stopConns())
	}
	if a.redis != nil {
		errs = append(errs, a.redis.Close())
	}
	if a.db != nil {
		errs = append(errs, a.db.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

// listen opens the server's socket without TCP keep-alive probes: WebSocket peers are pinged
// (SWITCHBOARD_WS_PING_INTERVAL) and idle HTTP connections time out, so the probes would only
// cost every accepted connection four more setsockopt calls.
func listen(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return ln, nil
}

// warnOnly keeps protoactor's own logging to warnings and errors.
type warnOnly struct{ slog.Handler }

func (w warnOnly) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn && w.Handler.Enabled(ctx, l)
}

func (w warnOnly) WithAttrs(as []slog.Attr) slog.Handler { return warnOnly{w.Handler.WithAttrs(as)} }
func (w warnOnly) WithGroup(name string) slog.Handler    { return warnOnly{w.Handler.WithGroup(name)} }
