package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/asynkron/protoactor-go/actor"
	"github.com/redis/go-redis/v9"

	"switchboard/actors"
	"switchboard/config"
	"switchboard/hub"
	"switchboard/store"
	"switchboard/store/audit"
	"switchboard/store/limits"
	"switchboard/transport"
	"switchboard/transport/auth"
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
	redis     *redis.Client // nil without SWITCHBOARD_REDIS_URL
	limiter   limits.RateLimiter
	conns     limits.ConnCounter
	stopConns func() error // stops the connection counter's heartbeat
	login     auth.Login
	bus       interface {
		hub.Bus
		Healthy(context.Context) error
		Close() error
	}
	audit      *audit.Writer
	ws         *transport.WSServer
	http       *http.Server
	metricsSrv *http.Server
	pprofSrv   *http.Server
}

// newApp opens the database (retrying PostgreSQL up to the connect timeout), migrates it and
// starts the actors. Nothing listens yet: serve does that.
func newApp(ctx context.Context, cfg config.Config, log *slog.Logger) (a *app, err error) {
	a = &app{cfg: cfg, log: log, metrics: metrics.NewSet(), node: nodeID()}
	defer func() {
		if err != nil {
			a.close(context.Background())
		}
	}()
	if a.db, err = store.Open(ctx, cfg.Database(), cfg.DBConnectTimeout); err != nil {
		return nil, err
	}
	if err = a.db.Migrate(ctx); err != nil {
		return nil, err
	}
	a.db.Observe(a.metrics)
	a.audit = audit.NewWriter(a.db, audit.WriterConfig{Logger: log, Metrics: a.metrics})
	policy, err := actors.LoadPolicy(cfg.RBACFile)
	if err != nil {
		return nil, err
	}
	if a.verifier, err = newVerifier(cfg, log); err != nil {
		return nil, err
	}
	if err = a.openLimits(); err != nil {
		return nil, err
	}
	if a.login, err = newLogin(cfg, log); err != nil {
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
		return nil, err
	}
	a.hub = hub.Start(a.system.Root, hub.Options{
		PingInterval: cfg.WSPingInterval, Bus: a.bus, History: policy.HistoryOf, Logger: log, Metrics: a.metrics,
	})
	late.hub.Store(a.hub)
	reg := actors.NewRegistry()
	reg.MustRegister(actors.AuthorRoutes(store.NewAuthors(a.db), hubPublisher{hub: a.hub, log: log})...)
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
	extra := map[string]http.Handler{}
	if cfg.DevIssuer() {
		dev, err := auth.OpenDevIssuer(cfg.DataDir)
		if err != nil {
			return nil, err
		}
		extra["GET "+auth.DevJWKSPath] = dev.JWKSHandler()
		extra["GET /.well-known/openid-configuration"] = dev.DiscoveryHandler("http://" + cfg.Addr)
	}
	handler, err := transport.NewHandler(transport.APIConfig{
		Verifier: a.verifier, Policy: policy, Hub: a.hub, WS: a.ws,
		Root: a.system.Root, Handlers: a.handlers.PID, HandlerTimeout: cfg.HandlerTimeout, Registry: reg, Auditor: a.audit,
		RateLimiter: a.limiter, RatePerMinute: cfg.RateLimitPerMinute, LoginRateLimit: cfg.LoginRateLimit,
		Login: a.login, Sessions: a.sessions(), TrustedProxies: cfg.TrustedProxies,
		Health: []transport.HealthCheck{
			{Name: "database", Check: a.db.Ping},
			{Name: "redis", Check: a.redisPing()},
			{Name: "pubsub", Check: a.busHealthy()},
			{Name: "identity", Check: a.identityReady()},
		},
		MaxRequestBytes: cfg.MaxRequestBytes, Logger: log, Metrics: a.metrics, Extra: extra,
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
	a.http = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if cfg.MetricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", handler)
		a.metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	}
	if cfg.PprofAddr != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		a.pprofSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	}
	return a, nil
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
			return nil, err
		}
		vc.Issuer = auth.DevIssuerID
		vc.KeySet = dev.PublicKeySet()
		log.Warn("DEVELOPMENT MODE: tokens come from the built-in development issuer; set SWITCHBOARD_OIDC_ISSUER in production",
			"key", dev.KeyPath())
	} else {
		vc.Issuer = cfg.OIDCIssuer
	}
	return auth.NewVerifier(context.Background(), vc)
}

// newLogin answers POST /login: the OIDC password grant against the configured issuer, or the
// development users file (created with demo users on first start, printed once).
func newLogin(cfg config.Config, log *slog.Logger) (auth.Login, error) {
	if !cfg.DevIssuer() {
		return auth.NewPasswordGrant(auth.PasswordGrantConfig{
			Issuer: cfg.OIDCIssuer, ClientID: cfg.OIDCClientID, ClientSecret: cfg.OIDCClientSecret, Logger: log,
		}), nil
	}
	dev, err := auth.OpenDevIssuer(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	users, created, err := auth.OpenDevUsers(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	for _, u := range created {
		log.Warn("DEVELOPMENT USER created (shown once; stored as a bcrypt hash in "+users.Path()+")",
			"username", u.Username, "password", u.Password, "roles", u.Roles)
	}
	return auth.DevLogin{Users: users, Issuer: dev, ClientID: cfg.OIDCClientID}, nil
}

// serve listens on ln (and the metrics address) until ctx ends, then shuts down in order.
func (a *app) serve(ctx context.Context, ln net.Listener) error {
	errc := make(chan error, 3)
	go func() { errc <- a.http.Serve(ln) }()
	if a.metricsSrv != nil {
		mln, err := listen(a.cfg.MetricsAddr)
		if err != nil {
			_ = ln.Close()
			a.close(context.Background())
			return err
		}
		go func() { errc <- a.metricsSrv.Serve(mln) }()
	}
	if a.pprofSrv != nil {
		pln, err := listen(a.cfg.PprofAddr)
		if err != nil {
			_ = ln.Close()
			a.close(context.Background())
			return err
		}
		a.log.Warn("profiling endpoints on " + pln.Addr().String() + "/debug/pprof/ — do not expose them")
		go func() { errc <- a.pprofSrv.Serve(pln) }()
	}
	a.log.Info("switchboard listening", "addr", ln.Addr().String(), "database", a.db.Dialect, "version", buildVersion())
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

// shutdown runs the one shutdown order: stop accepting WebSockets → close them with 1001 →
// http.Server.Shutdown → stop the actors and wait → close the database. ctx is the one deadline
// over all of it.
func (a *app) shutdown(ctx context.Context) error {
	start := time.Now()
	a.ws.BeginShutdown()
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
