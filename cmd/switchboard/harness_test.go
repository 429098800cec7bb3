package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/lxzan/gws"

	"switchboard/config"
	"switchboard/store/redistest"
	"switchboard/transport/auth"
)

// testServer is a whole Switchboard node on 127.0.0.1 with a random port, its own data
// directory and (unless the test says otherwise) its own SQLite database.
type testServer struct {
	cfg  config.Config
	app  *app
	base string // http://127.0.0.1:port
	dev  *auth.DevIssuer

	stopOnce sync.Once
	cancel   context.CancelFunc
	done     chan error
}

// startServer starts a node; edit adjusts the configuration first. The node is stopped at
// cleanup (or earlier with stop).
func startServer(t testing.TB, edit func(*config.Config)) *testServer {
	t.Helper()
	return startServerLogged(t, edit, testLogger(t))
}

// seedPassword is the password of the demo users (admin, reader) that seedDataDir writes.
const seedPassword = "seed-password"

// seed is a data directory with a development key and a users file, made once per test
// process and copied into each server's fresh data directory (unless the test's edit function
// wrote its own there): an RSA key and bcrypt hashes
// at the default cost take seconds per server under the race detector. Its users are the demo
// users, with seedPassword hashed at the lowest cost. TestMain removes it.
var seed struct {
	once sync.Once
	dir  string
	err  error
}

func seedDataDir(t testing.TB, dir string) {
	t.Helper()
	seed.once.Do(func() {
		if seed.dir, seed.err = os.MkdirTemp("", "switchboard-test-seed-"); seed.err != nil {
			return
		}
		if _, seed.err = auth.OpenDevIssuer(seed.dir); seed.err != nil {
			return
		}
		writeDevUsers(t, seed.dir,
			loginUser{"admin", seedPassword, []string{"admin", "broadcast", "create-author", "delete-author", "get-authors", "update-author"}},
			loginUser{"reader", seedPassword, []string{"get-authors"}})
	})
	if seed.err != nil {
		t.Fatalf("seed data directory: %v", seed.err)
	}
	for _, name := range []string{auth.DevKeyFile, auth.DevUsersFile} {
		b, err := os.ReadFile(filepath.Join(seed.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		// A file the test wrote itself (in its edit function) stays.
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(b); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	redistest.StopShared() // the shared Redis Cluster and Sentinel set, if a test started them
	if seed.dir != "" {
		_ = os.RemoveAll(seed.dir)
	}
	os.Exit(code)
}

// restartableAddr returns a free 127.0.0.1 address below the kernel's ephemeral port range, for
// a server that a test stops and starts again on the same address: a port from that range
// (what "127.0.0.1:0" gives) can be taken by any outgoing connection of the machine between
// the stop and the restart, and the restart then fails with "address already in use".
func restartableAddr(t testing.TB) string {
	t.Helper()
	for range 200 {
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+mathrand.IntN(12000))
		if ln, err := net.Listen("tcp", addr); err == nil {
			_ = ln.Close()
			return addr
		}
	}
	t.Fatal("no free port in 20000..31999")
	return ""
}

// startServerLogged is startServer with the server's logs going to log.
func startServerLogged(t testing.TB, edit func(*config.Config), log *slog.Logger) *testServer {
	t.Helper()
	cfg := config.Default()
	fresh := t.TempDir()
	cfg.DataDir = fresh
	cfg.Addr = "127.0.0.1:0"
	cfg.ShutdownTimeout = 10 * time.Second
	if edit != nil {
		edit(&cfg)
	}
	if cfg.DataDir == fresh && cfg.DevIssuer() {
		seedDataDir(t, fresh)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config: %v", err)
	}
	a, err := newApp(context.Background(), cfg, log)
	if err != nil {
		t.Fatalf("newApp: %v", err)
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &testServer{cfg: cfg, app: a, base: "http://" + ln.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	if cfg.DevIssuer() {
		if s.dev, err = auth.OpenDevIssuer(cfg.DataDir); err != nil {
			t.Fatal(err)
		}
	}
	go func() { s.done <- a.serve(ctx, ln) }()
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("server stop: %v", err)
		}
	})
	return s
}

// stop shuts the node down as SIGTERM would and returns serve's error.
func (s *testServer) stop() error {
	var err error
	s.stopOnce.Do(func() {
		s.cancel()
		select {
		case err = <-s.done:
		case <-time.After(30 * time.Second):
			err = errors.New("server did not stop within 30s")
		}
	})
	return err
}

func (s *testServer) wsURL(query string) string {
	u := "ws" + strings.TrimPrefix(s.base, "http") + "/web"
	if query != "" {
		u += "?" + query
	}
	return u
}

// token mints a development token for user with roles.
func (s *testServer) token(t testing.TB, user string, roles ...string) string {
	t.Helper()
	tok, _, err := s.dev.Mint(auth.MintParams{Subject: user, Username: user, ClientID: s.cfg.OIDCClientID, Roles: roles, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// testLogger sends server logs to the test log, or discards them unless SWITCHBOARD_TEST_LOG=1
// (they are long under load).
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("SWITCHBOARD_TEST_LOG") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// wsClient is a test WebSocket client: frames arrive on msgs, the close on closed.
type wsClient struct {
	t      testing.TB
	conn   *gws.Conn
	msgs   chan []byte
	closed chan struct{}

	mu        sync.Mutex
	closeCode uint16
	closeText string
}

// dial connects with the token in the query (or no token when empty) and fails the test if the
// upgrade does not succeed.
func (s *testServer) dial(t testing.TB, token string) *wsClient {
	t.Helper()
	c, err := s.tryDial(t, token, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	return c
}

func (s *testServer) tryDial(t testing.TB, token string, header http.Header) (*wsClient, error) {
	return s.tryDialVia(t, "", token, header)
}

// tryDialVia is tryDial through addr (host:port of a proxy in front of the server), or straight
// to the server when addr is "".
func (s *testServer) tryDialVia(t testing.TB, addr, token string, header http.Header) (*wsClient, error) {
	q := ""
	if token != "" {
		q = "token=" + token
	}
	u := s.wsURL(q)
	if addr != "" {
		u = "ws://" + addr + strings.TrimPrefix(u, strings.Replace(s.base, "http", "ws", 1))
	}
	return dialURL(t, u, header)
}

// dialURL opens a test client on url (ws://…/web?…).
func dialURL(t testing.TB, url string, header http.Header) (*wsClient, error) {
	c := &wsClient{t: t, msgs: make(chan []byte, 4096), closed: make(chan struct{})}
	conn, _, err := gws.NewClient(c, &gws.ClientOption{Addr: url, RequestHeader: header, ReadMaxPayloadSize: 16 << 20})
	if err != nil {
		return nil, err
	}
	c.conn = conn
	go conn.ReadLoop()
	t.Cleanup(func() { c.conn.WriteClose(1000, nil); c.waitClosed(5 * time.Second) })
	return c, nil
}

func (c *wsClient) OnOpen(*gws.Conn)             {}
func (c *wsClient) OnPing(s *gws.Conn, p []byte) { _ = s.WritePong(p) }
func (c *wsClient) OnPong(*gws.Conn, []byte)     {}
func (c *wsClient) OnMessage(_ *gws.Conn, m *gws.Message) {
	b := append([]byte(nil), m.Bytes()...)
	m.Close()
	c.msgs <- b
}
func (c *wsClient) OnClose(_ *gws.Conn, err error) {
	c.mu.Lock()
	var ce *gws.CloseError
	if errors.As(err, &ce) {
		c.closeCode, c.closeText = ce.Code, string(ce.Reason)
	}
	c.mu.Unlock()
	close(c.closed)
}

func (c *wsClient) waitClosed(d time.Duration) bool {
	select {
	case <-c.closed:
		return true
	case <-time.After(d):
		return false
	}
}

// closeStatus waits for the server to close the connection and returns its code and reason.
func (c *wsClient) closeStatus(d time.Duration) (uint16, string) {
	c.t.Helper()
	if !c.waitClosed(d) {
		c.t.Fatalf("connection not closed within %s", d)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeCode, c.closeText
}

func (c *wsClient) sendText(s string) {
	c.t.Helper()
	if err := c.conn.WriteString(s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// envelope is a decoded frame from the server.
type envelope struct {
	PkgID      int             `json:"pkg_id"`
	ReqID      string          `json:"req_id"`
	StatusCode *int            `json:"status_code"`
	Data       json.RawMessage `json:"data"`
	Meta       json.RawMessage `json:"meta"`
	Msg        *string         `json:"msg"`
	Topic      string          `json:"topic"`
	Seq        uint64          `json:"seq"`
	Epoch      string          `json:"epoch"`
}

func (e envelope) status() int {
	if e.StatusCode == nil {
		return -1
	}
	return *e.StatusCode
}

func (e envelope) msg() string {
	if e.Msg == nil {
		return ""
	}
	return *e.Msg
}

// next returns the next frame, failing after d.
func (c *wsClient) next(d time.Duration) envelope {
	c.t.Helper()
	select {
	case b := <-c.msgs:
		var e envelope
		if err := json.Unmarshal(b, &e); err != nil {
			c.t.Fatalf("frame is not an envelope: %v: %s", err, b)
		}
		return e
	case <-time.After(d):
		c.t.Fatalf("no frame within %s", d)
		return envelope{}
	}
}

// call sends a request with a fresh req_id and returns the response to it.
func (c *wsClient) call(pkgID int, data any) envelope {
	c.t.Helper()
	id := uuid.NewString()
	frame := map[string]any{"pkg_id": pkgID, "req_id": id}
	if data != nil {
		frame["data"] = data
	}
	b, _ := json.Marshal(frame)
	c.sendText(string(b))
	for {
		e := c.next(10 * time.Second)
		if e.ReqID == id {
			return e
		}
		if e.StatusCode != nil {
			c.t.Fatalf("response for another request: %+v", e)
		}
	}
}

// decodeData unmarshals a response's data into v.
func decodeData(t testing.TB, e envelope, v any) {
	t.Helper()
	if err := json.Unmarshal(e.Data, v); err != nil {
		t.Fatalf("data %s: %v", e.Data, err)
	}
}

// postJSON sends an HTTP request with an optional bearer token.
func (s *testServer) do(t testing.TB, method, path, token, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, s.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// eventually polls cond every 10ms until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var _ = fmt.Sprintf
