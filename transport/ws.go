package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/asynkron/protoactor-go/actor"
	"github.com/lxzan/gws"

	"switchboard/actors"
	"switchboard/hub"
	"switchboard/transport/auth"
)

// TokenVerifier checks a bearer token (auth.Verifier implements it).
type TokenVerifier interface {
	Verify(ctx context.Context, token string) (*auth.Claims, error)
}

// WSConfig wires a WSServer.
type WSConfig struct {
	Verifier        TokenVerifier
	Hub             *hub.Hub
	Root            *actor.RootContext
	Handlers        *actor.PID
	AllowedOrigins  []string
	MaxMessageBytes int
	SendQueueBytes  int
	MaxInFlight     int
	PingInterval    time.Duration
	WriteTimeout    time.Duration
	TokenLeeway     time.Duration // a connection is closed at its token's exp plus this
	RateLimiter     RateLimiter   // handshakes count against the user's HTTP limit; nil: none
	RatePerMinute   int
	ConnCounter     ConnCounter // per-user connection limit across the cluster; nil: none
	MaxConnsPerUser int
	Logger          *slog.Logger
	Metrics         *metrics.Set
}

// WSServer serves GET /web: it authenticates the handshake, upgrades with gws and runs each
// socket's read loop.
type WSServer struct {
	cfg          WSConfig
	upgrader     *gws.Upgrader
	m            *connShared
	nextID       atomic.Uint64
	flushers     flushers
	stopFlushers sync.Once
	// connProps spawns every connection actor; they share its dependencies, and workers run
	// their mailboxes.
	connProps *actor.Props
	workers   *actors.Workers
	// mu orders handshakes against shutdown: a socket is counted and registered with the hub
	// under mu while closing is false, so BeginShutdown's caller can rely on the hub closing
	// every socket that Wait then waits for.
	mu      sync.Mutex
	closing bool
	conns   sync.WaitGroup // one per upgraded socket until its read loop ends
}

// NewWSServer returns a WSServer; call Shutdown to stop accepting and wait for the sockets.
func NewWSServer(cfg WSConfig) *WSServer {
	workers := actors.NewWorkers(max(runtime.GOMAXPROCS(0), 2))
	s := &WSServer{cfg: cfg, m: newConnShared(cfg.Metrics, cfg.Logger), flushers: newFlushers(), workers: workers,
		connProps: actors.ConnProps(&actors.ConnDeps{Topics: cfg.Hub, Handlers: cfg.Handlers, Leeway: cfg.TokenLeeway,
			Logger: cfg.Logger, Workers: workers})}
	s.m.silence = 2 * cfg.PingInterval
	s.m.maxInFlight = int32(max(cfg.MaxInFlight, 1))
	s.m.budget, s.m.wt = cfg.SendQueueBytes, cfg.WriteTimeout
	s.upgrader = gws.NewUpgrader(&wsEvents{s: s}, s.upgraderOptions())
	return s
}

// upgraderOptions configures gws for every socket of s.
func (s *WSServer) upgraderOptions() *gws.ServerOption {
	return &gws.ServerOption{
		ReadMaxPayloadSize: s.cfg.MaxMessageBytes,
		// Reads go through a small buffer, taken from a pool only while it has bytes in it
		// (IdleReadBuffer): idle connections dominate memory, and frames larger than the
		// buffer are still read whole.
		ReadBufferSize:   512,
		HandshakeTimeout: 5 * time.Second,
		// Text frames must be UTF-8 (RFC 6455 §8.1): otherwise close 1007.
		CheckUtf8Enabled: true,
		Logger:           gwsLogger{s.cfg.Logger},
		// No Recovery: a panic in a callback unwinds to the read loop's own recover (patched
		// into gws), which closes that connection with 1011 and tells panicked.
		PanicHandler: s.panicked,
		// gws's close frames leave through the connection's writer, never straight to the
		// socket, so they cannot land inside a frame the writer has started.
		CloseWriter: func(socket *gws.Conn, payload []byte, cause error) { conn(socket).closeFromGWS(payload, cause) },
		NewSession:  func() gws.SessionStorage { return &connSession{} },
		// A connection that sent a request and went idle goes back to the smallest stack.
		FreshReadStack: true,
		// and holds no read buffer between frames (it waits for the next bytes without one).
		IdleReadBuffer: true,
		// A request's handling outgrows the read loop's 2 KiB stack: it grows where it is
		// three frames deep, not deep in the decoding, which makes the copy cheaper.
		GrowReadStackEarly: true,
	}
}

// ServeHTTP authenticates and upgrades one request (docs/protocol.md §1.1).
func (s *WSServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if bad := checkUpgradeRequest(r); bad != nil {
		s.cfg.Metrics.GetOrCreateCounter(`ws_connections_total{status="rejected_handshake"}`).Inc()
		bad.write(w)
		return
	}
	if origin := r.Header.Get("Origin"); origin != "" && len(s.cfg.AllowedOrigins) > 0 && !slices.Contains(s.cfg.AllowedOrigins, origin) {
		s.m.rejOrigin.Inc()
		writeDetail(w, http.StatusForbidden, "Origin not allowed")
		return
	}
	token := auth.TokenFromRequest(r)
	if token == "" {
		s.m.rejAuth.Inc()
		if httpLimit(w, r, s.cfg.RateLimiter, s.cfg.Metrics, s.cfg.Logger, "http_ip", clientIP(r), s.cfg.RatePerMinute) {
			writeDetail(w, http.StatusUnauthorized, "Missing token")
		}
		return
	}
	claims, err := s.cfg.Verifier.Verify(r.Context(), token)
	if err != nil {
		s.m.rejAuth.Inc()
		if !httpLimit(w, r, s.cfg.RateLimiter, s.cfg.Metrics, s.cfg.Logger, "http_ip", clientIP(r), s.cfg.RatePerMinute) {
			return
		}
		status := http.StatusUnauthorized
		if errors.Is(err, auth.ErrKeysUnavailable) {
			status = http.StatusServiceUnavailable
		}
		writeDetail(w, status, tokenDetail(err, s.cfg.Logger))
		return
	}
	user := UserOf(claims)
	noteUser(r, user.ID)
	// The connection's slot is taken first: whether the user already held all of theirs
	// decides the budget the handshake is charged to. A handshake that ends before its
	// connection exists gives the slot back.
	id := s.nextID.Add(1)
	counted, full := s.takeSlot(r.Context(), user.ID, id)
	kept := false
	defer func() {
		if counted && !kept {
			s.releaseSlot(user.ID, id)
		}
	}()
	if !s.handshakeLimit(w, r, user.ID, full) {
		return
	}
	format := r.URL.Query().Get("format")
	codec, ok := codecFor(format)
	if !ok {
		writeDetail(w, http.StatusBadRequest, "Unsupported format "+quoteShort(format)+": use json or protobuf")
		return
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		writeDetail(w, http.StatusServiceUnavailable, "Server is shutting down")
		return
	}
	s.conns.Add(1)
	s.mu.Unlock()
	socket, err := s.upgrader.Upgrade(w, r)
	if err != nil {
		// gws has answered the client already.
		s.conns.Done()
		s.cfg.Logger.Debug("websocket upgrade failed", "err", err, "remote", r.RemoteAddr)
		return
	}
	c := s.newConn(socket, user, codec, id)
	c.counted, kept = counted, true
	c.remote, c.userAgent = clientIP(r), r.UserAgent()
	socket.Session().(*connSession).c = c
	// The limit is told after the upgrade so the client learns why with a close code.
	if full {
		s.m.rejLimit.Inc()
		c.Close(ClosePolicyViolation, "Maximum concurrent connections exceeded")
	} else {
		s.m.accepted.Inc()
		s.mu.Lock()
		if s.closing {
			c.Close(CloseGoingAway, "server shutting down")
		} else {
			s.cfg.Hub.Register(c)
		}
		s.mu.Unlock()
	}
	// The read loop is the goroutine's entry itself (OnClose marks its end for Wait): an idle
	// connection parks in read about 1 100 bytes deep, just within the 2 KiB starting stack,
	// and a wrapper frame more would double it to 4 KiB.
	go socket.ReadLoop()
}

func (s *WSServer) newConn(socket *gws.Conn, user *actors.User, codec wireCodec, id uint64) *wsConn {
	c := &wsConn{
		id:     id,
		raw:    socket.NetConn(),
		fl:     s.flushers.forConn(id),
		codec:  codec,
		m:      s.m,
		user:   user,
		opened: time.Now().UnixNano(),
	}
	c.seen.Store(c.opened)
	// The raw connection gws waits on between frames serves the non-blocking writes too.
	if c.rc = socket.RawConn(); c.rc == nil {
		if sc, ok := c.raw.(syscall.Conn); ok {
			if rc, err := sc.SyscallConn(); err == nil {
				c.rc = rc
			}
		}
	}
	c.pid = actors.StartConn(s.cfg.Root, s.connProps, c, user)
	return c
}

// takeSlot takes one of user's connection slots for connection id, before the upgrade: counted,
// the slot is the connection's (release it when it ends); full, the user held all of them
// already. A counter error (only when it does not fail open) admits the connection uncounted.
func (s *WSServer) takeSlot(ctx context.Context, user string, id uint64) (counted, full bool) {
	if s.cfg.ConnCounter == nil || s.cfg.MaxConnsPerUser <= 0 {
		return false, false
	}
	ok, err := s.cfg.ConnCounter.Acquire(ctx, user, strconv.FormatUint(id, 10), s.cfg.MaxConnsPerUser)
	if err != nil {
		s.cfg.Logger.Warn("connection counter failed; admitting the connection", "err", err)
		return false, false
	}
	return ok, !ok
}

// release frees the connection's slot (OnClose).
func (s *WSServer) release(c *wsConn) {
	if c.counted {
		s.releaseSlot(c.user.ID, c.id)
	}
}

// releaseSlot gives back user's slot of connection id.
func (s *WSServer) releaseSlot(user string, id uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.cfg.ConnCounter.Release(ctx, user, strconv.FormatUint(id, 10)); err != nil {
		s.cfg.Logger.Warn("connection counter release failed", "err", err)
	}
}

// UserOf turns verified claims into the actors' view of a user.
func UserOf(c *auth.Claims) *actors.User {
	return &actors.User{ID: c.Subject, Name: c.Username, Roles: c.Roles, ExpiresAt: c.ExpiresAt}
}

// BeginShutdown makes new handshakes fail with 503; the hub closes the live sockets.
func (s *WSServer) BeginShutdown() {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
}

// Wait blocks until every read loop has ended (and its connection actor stopped), or ctx
// ends, then stops the flushers.
func (s *WSServer) Wait(ctx context.Context) error {
	err := waitFor(ctx, &s.conns)
	// Sockets still open past the deadline get no more writes: the process is going away,
	// and a server stopped in a test must not leave the flushers running.
	s.stopFlushers.Do(func() {
		s.flushers.close()
		s.workers.Close()
	})
	// Every drain ends within the close grace of its connection's close, or at its write
	// timeout.
	return errors.Join(err, waitFor(ctx, &s.m.drains))
}

// waitFor waits for wg, or until ctx ends.
func waitFor(ctx context.Context, wg *sync.WaitGroup) error {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// logClose logs a connection's end (info; debug for the normal 1000 and 1001) and counts it
// in ws_closes_total by the close code the server sent: 1005 for a close frame without a
// status, 1006 when no close frame got out. peer_code is the code of the peer's own close
// frame, when it sent one.
func (s *WSServer) logClose(c *wsConn, err error) {
	c.mu.Lock()
	code, reason, out := c.sentCode, c.sentReason, c.framesOut
	c.mu.Unlock()
	peer := uint16(0)
	var ce *gws.CloseError
	if errors.As(err, &ce) {
		peer = ce.Code
	}
	s.m.closes(code).Inc()
	level := slog.LevelInfo
	if code == CloseNormal || code == CloseGoingAway || peer == CloseNormal || peer == CloseGoingAway {
		level = slog.LevelDebug
	}
	if !s.cfg.Logger.Enabled(context.Background(), level) {
		return
	}
	user := ""
	if c.user != nil {
		user = c.user.ID
	}
	s.cfg.Logger.LogAttrs(context.Background(), level, "websocket closed",
		slog.Uint64("conn", c.id), slog.String("user", user), slog.String("remote", c.remote),
		slog.Int("code", int(code)), slog.String("reason", reason), slog.Int("peer_code", int(peer)),
		slog.Duration("duration", time.Duration(time.Now().UnixNano()-c.opened).Round(time.Millisecond)),
		slog.Uint64("frames_in", uint64(c.framesIn)), slog.Uint64("frames_out", uint64(out)))
}

// panicked logs and counts a panic that gws recovered on a connection's read goroutine; gws
// then closes that connection with 1011.
func (s *WSServer) panicked(socket *gws.Conn, v any) {
	s.m.panics.Inc()
	id := uint64(0)
	if c := conn(socket); c != nil {
		id = c.id
	}
	s.cfg.Logger.Error("websocket read path panicked; connection closed with 1011",
		"conn", id, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
}

// wsEvents receives gws's callbacks on each socket's read goroutine.
type wsEvents struct{ s *WSServer }

func conn(socket *gws.Conn) *wsConn { return socket.Session().(*connSession).c }

// connSession is gws's per-socket session slot, reduced to the one value Switchboard keeps
// there (gws's default is a map and a mutex per connection).
type connSession struct{ c *wsConn }

func (s *connSession) Len() int                       { return 1 }
func (s *connSession) Load(string) (any, bool)        { return s.c, s.c != nil }
func (s *connSession) Delete(string)                  {}
func (s *connSession) Store(string, any)              {}
func (s *connSession) Range(f func(string, any) bool) { f("conn", s.c) }

// Every frame received counts as a sign of life for the keepalive (wsConn.Ping).
func (e *wsEvents) OnOpen(*gws.Conn) {}

func (e *wsEvents) OnClose(socket *gws.Conn, err error) {
	defer e.s.conns.Done() // the read loop ends after this
	c := conn(socket)
	c.markClosed()
	e.s.logClose(c, err)
	e.s.cfg.Hub.Unregister(c.id)
	e.s.release(c)
	_ = e.s.cfg.Root.StopFuture(c.pid).Wait()
}

func (e *wsEvents) OnPing(socket *gws.Conn, payload []byte) {
	c := conn(socket)
	c.heard()
	c.Enqueue(controlFrame(opPong, payload))
}

func (e *wsEvents) OnPong(socket *gws.Conn, payload []byte) { conn(socket).heard() }

func (e *wsEvents) OnMessage(socket *gws.Conn, msg *gws.Message) {
	defer msg.Close()
	c := conn(socket)
	c.heard()
	codec := c.wire()
	if msg.Opcode != codec.opcode() {
		c.Close(CloseUnsupportedData, codec.refusal())
		return
	}
	e.s.m.received.Inc()
	c.framesIn++
	req, bad := codec.decode(msg.Bytes())
	if !c.acquire() {
		return
	}
	if bad != nil {
		e.s.cfg.Root.Send(c.pid, bad)
		return
	}
	req.Remote, req.UserAgent = c.remote, c.userAgent
	e.s.cfg.Root.Send(c.pid, req)
}

// gwsLogger sends gws's own messages (recovered panics) to slog.
type gwsLogger struct{ l *slog.Logger }

func (g gwsLogger) Error(v ...any) { g.l.Error("gws", "msg", v) }
