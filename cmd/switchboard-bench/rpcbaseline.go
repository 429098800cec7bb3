package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/lxzan/gws"

	"switchboard/store"
)

// bareRPC is the request baseline: the same Bun queries Switchboard runs for GET_AUTHORS and
// CREATE_AUTHOR, behind a bare gws WebSocket server (the envelope decoded, one goroutine per
// request, the answer written with the socket's own writer) and a bare net/http handler
// (GET and POST /authors). No actors, no RBAC, no schema, no limits, no audit, no token check:
// what Switchboard adds over a request is the ratio between the two. Like the naive fan-out
// baseline it runs inside the load tool (sharing its CPU) or, with --pin, in a pinned child.
type bareRPC struct {
	authors  *store.Authors
	upgrader *gws.Upgrader
	ctx      context.Context // canceled by stop: ends the queries still running
	cancel   context.CancelFunc
	inflight sync.WaitGroup // the per-request goroutines
}

// bareEnvelope is what the bare server reads of a request frame.
type bareEnvelope struct {
	PkgID int             `json:"pkg_id"`
	ReqID string          `json:"req_id"`
	Data  json.RawMessage `json:"data"`
}

// bareFilters is GET_AUTHORS's data (and GET /authors's query).
type bareFilters struct {
	Filters struct {
		ID   *int64  `json:"id"`
		Name *string `json:"name"`
	} `json:"filters"`
}

func (b *bareRPC) OnOpen(*gws.Conn)             {}
func (b *bareRPC) OnClose(*gws.Conn, error)     {}
func (b *bareRPC) OnPing(c *gws.Conn, p []byte) { _ = c.WritePong(p) }
func (b *bareRPC) OnPong(*gws.Conn, []byte)     {}

// OnMessage decodes the envelope on the read goroutine and runs the query in a goroutine of its
// own; gws serialises the writes of one connection.
func (b *bareRPC) OnMessage(c *gws.Conn, m *gws.Message) {
	var e bareEnvelope
	err := json.Unmarshal(m.Bytes(), &e)
	_ = m.Close()
	if err != nil {
		_ = c.WriteMessage(gws.OpcodeText, bareAnswer(0, "00000000-0000-0000-0000-000000000000", 2, nil, "Invalid data"))
		return
	}
	b.inflight.Add(1)
	go func() {
		defer b.inflight.Done()
		status, data, msg := b.run(e.PkgID, e.Data)
		_ = c.WriteMessage(gws.OpcodeText, bareAnswer(e.PkgID, e.ReqID, status, data, msg))
	}()
}

// run executes one request: GET_AUTHORS (1) and CREATE_AUTHOR (3), nothing else.
func (b *bareRPC) run(pkgID int, data json.RawMessage) (status int, out []byte, msg string) {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	switch pkgID {
	case 1:
		var d bareFilters
		if len(data) > 0 && json.Unmarshal(data, &d) != nil {
			return 2, nil, "Invalid data"
		}
		rows, err := b.authors.List(ctx, store.AuthorFilter{ID: d.Filters.ID, Name: d.Filters.Name})
		if err != nil {
			return 1, nil, "Database error occurred"
		}
		out, _ = json.Marshal(rows)
		return 0, out, ""
	case 3:
		var d struct {
			Name string `json:"name"`
		}
		if json.Unmarshal(data, &d) != nil || d.Name == "" {
			return 2, nil, "Invalid data"
		}
		a, err := b.authors.Create(ctx, d.Name)
		if errors.Is(err, store.ErrConflict) {
			return 2, nil, fmt.Sprintf("Author with name '%s' already exists", d.Name)
		}
		if err != nil {
			return 1, nil, "Database error occurred"
		}
		out, _ = json.Marshal(a)
		return 0, out, ""
	}
	return 1, nil, fmt.Sprintf("Unknown pkg_id %d", pkgID)
}

// bareAnswer encodes a response envelope as Switchboard's (docs/protocol.md §1.2).
func bareAnswer(pkgID int, reqID string, status int, data []byte, msg string) []byte {
	if data == nil {
		data = []byte("null")
	}
	m := "null"
	if msg != "" {
		q, _ := json.Marshal(msg)
		m = string(q)
	}
	reqIDJSON, _ := json.Marshal(reqID)
	b := make([]byte, 0, 96+len(data))
	b = append(b, `{"pkg_id":`...)
	b = strconv.AppendInt(b, int64(pkgID), 10)
	b = append(b, `,"req_id":`...)
	b = append(b, reqIDJSON...)
	b = append(b, `,"status_code":`...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, `,"data":`...)
	b = append(b, data...)
	b = append(b, `,"meta":null,"msg":`...)
	b = append(b, m...)
	return append(b, '}')
}

func (b *bareRPC) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /web", func(w http.ResponseWriter, r *http.Request) {
		c, err := b.upgrader.Upgrade(w, r)
		if err != nil {
			return
		}
		go c.ReadLoop()
	})
	mux.HandleFunc("GET /authors", func(w http.ResponseWriter, r *http.Request) {
		var f store.AuthorFilter
		if v := r.URL.Query().Get("id"); v != "" {
			id, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				bareHTTPError(w, http.StatusUnprocessableEntity, "Invalid data")
				return
			}
			f.ID = &id
		}
		if v := r.URL.Query().Get("name"); v != "" {
			f.Name = &v
		}
		rows, err := b.authors.List(r.Context(), f)
		if err != nil {
			bareHTTPError(w, http.StatusInternalServerError, "Database error occurred")
			return
		}
		bareJSON(w, http.StatusOK, rows)
	})
	mux.HandleFunc("POST /authors", func(w http.ResponseWriter, r *http.Request) {
		var d struct {
			Name string `json:"name"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&d); err != nil || d.Name == "" {
			bareHTTPError(w, http.StatusUnprocessableEntity, "Invalid data")
			return
		}
		a, err := b.authors.Create(r.Context(), d.Name)
		switch {
		case errors.Is(err, store.ErrConflict):
			bareHTTPError(w, http.StatusConflict, "Author exists")
		case err != nil:
			bareHTTPError(w, http.StatusInternalServerError, "Database error occurred")
		default:
			bareJSON(w, http.StatusOK, a)
		}
	})
	return mux
}

func bareJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func bareHTTPError(w http.ResponseWriter, status int, detail string) {
	bareJSON(w, status, map[string]string{"detail": detail})
}

// bareServer is a running request baseline, in this process or in a pinned child.
type bareServer struct {
	addr string
	pid  int       // the child's pid, 0 in-process
	db   *store.DB // the tool's own handle on the database (to delete the run's rows)
	stop func()
}

// bareDSN is the database the baselines query: --direct-dsn, else the server's SQLite file in
// --data-dir (the embedded default). It must be the server's own database, or the two would not
// run the same query on the same rows.
func bareDSN(o *options) (string, error) {
	if o.directDSN != "" {
		return o.directDSN, nil
	}
	path := filepath.Join(o.dataDir, "switchboard.db")
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("the request baselines query the server's database: give --direct-dsn postgres://… "+
			"(a server on PostgreSQL) or point --data-dir at the server's data directory (SQLite at %s: %w); "+
			"--rpc-baselines=false skips them", path, err)
	}
	return "sqlite://" + path, nil
}

// startBareRPC serves both baselines on a random loopback port: in-process, or with --pin in a
// child process of this binary pinned with taskset, so that they get a core of their own as
// the server does.
func startBareRPC(ctx context.Context, o *options, rep *reporter) (*bareServer, error) {
	dsn, err := bareDSN(o)
	if err != nil {
		return nil, err
	}
	db, err := store.Open(ctx, dsn, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("request baselines: %w", err)
	}
	if o.pin != "" {
		addr, pid, stop, err := startPinnedChild(ctx, o, "rpc-baseline-serve", "--direct-dsn", dsn)
		if err != nil {
			db.Close()
			return nil, err
		}
		rep.progress("rpc: bare gws and net/http request baselines in child pid %d on %s, pinned to CPU %s (%s)", pid, addr, o.pin, redactDSN(dsn))
		return &bareServer{addr: addr, pid: pid, db: db, stop: func() { stop(); db.Close() }}, nil
	}
	addr, stop, err := serveBare(db)
	if err != nil {
		db.Close()
		return nil, err
	}
	rep.progress("rpc: bare gws and net/http request baselines in-process on %s (%s; --pin gives them a core of their own)", addr, redactDSN(dsn))
	return &bareServer{addr: addr, db: db, stop: func() { stop(); db.Close() }}, nil
}

// serveBare listens on a random loopback port and serves the baselines on db until stop.
func serveBare(db *store.DB) (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	bctx, cancel := context.WithCancel(context.Background())
	b := &bareRPC{authors: store.NewAuthors(db), ctx: bctx, cancel: cancel}
	b.upgrader = gws.NewUpgrader(b, &gws.ServerOption{Logger: quietLogger{}})
	srv := &http.Server{Handler: b.handler(), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { _ = srv.Serve(ln); close(done) }()
	return ln.Addr().String(), func() {
		_ = srv.Close() // hijacked WebSockets are closed by the clients before this
		<-done
		cancel()
		b.inflight.Wait()
	}, nil
}

// serveBareChild is the child's side of --pin: serve on --direct-dsn, print the address, stop
// on a signal, when the parent dies (Pdeathsig) or after --duration at most.
func serveBareChild(ctx context.Context, o *options, stdout io.Writer) error {
	raiseNoFile(io.Discard)
	db, err := store.Open(ctx, o.directDSN, 10*time.Second)
	if err != nil {
		return err
	}
	defer db.Close()
	addr, stop, err := serveBare(db)
	if err != nil {
		return err
	}
	defer stop()
	fmt.Fprintln(stdout, "listening", addr)
	life := o.duration
	if life <= 0 {
		life = 30 * time.Minute
	}
	sleepCtx(ctx, life)
	return nil
}

// redactDSN hides a password in a database URL for the progress line.
func redactDSN(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
		return u.String()
	}
	return dsn
}
