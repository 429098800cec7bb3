package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lxzan/gws"
)

// naive is the "naive gws broadcaster" of the performance targets: a gws upgrader, a registry, and one goroutine
// that writes every broadcast to every connection with one conn.WriteMessage (one write
// syscall) each. No actors, no auth, no queues per connection: the yardstick Switchboard's
// fan-out is compared with.
type naive struct {
	upgrader *gws.Upgrader
	mu       sync.Mutex
	conns    map[*gws.Conn]struct{}
	snap     []*gws.Conn
	dirty    bool
	queue    chan []byte
	done     chan struct{}
	loop     sync.WaitGroup
}

func newNaive() *naive {
	b := &naive{conns: map[*gws.Conn]struct{}{}, queue: make(chan []byte, 1024), done: make(chan struct{})}
	b.upgrader = gws.NewUpgrader(b, &gws.ServerOption{Logger: quietLogger{}})
	b.loop.Go(b.broadcastLoop)
	return b
}

func (b *naive) OnOpen(c *gws.Conn) {
	b.mu.Lock()
	b.conns[c] = struct{}{}
	b.dirty = true
	b.mu.Unlock()
}

func (b *naive) OnClose(c *gws.Conn, _ error) {
	b.mu.Lock()
	delete(b.conns, c)
	b.dirty = true
	b.mu.Unlock()
}

func (b *naive) OnPing(c *gws.Conn, p []byte)          { _ = c.WritePong(p) }
func (b *naive) OnPong(*gws.Conn, []byte)              {}
func (b *naive) OnMessage(_ *gws.Conn, m *gws.Message) { _ = m.Close() }

func (b *naive) snapshot() []*gws.Conn {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dirty {
		b.snap = b.snap[:0]
		for c := range b.conns {
			b.snap = append(b.snap, c)
		}
		b.dirty = false
	}
	return b.snap
}

func (b *naive) broadcastLoop() {
	for {
		select {
		case <-b.done:
			return
		case frame := <-b.queue:
			for _, c := range b.snapshot() {
				_ = c.WriteMessage(gws.OpcodeText, frame) // a failed socket closes itself
			}
		}
	}
}

func (b *naive) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /web", func(w http.ResponseWriter, r *http.Request) {
		c, err := b.upgrader.Upgrade(w, r)
		if err != nil {
			return
		}
		go c.ReadLoop()
	})
	mux.HandleFunc("POST /api/broadcast", func(w http.ResponseWriter, r *http.Request) {
		var m struct {
			PkgID int             `json:"pkg_id"`
			Data  json.RawMessage `json:"data"`
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err == nil {
			err = json.Unmarshal(body, &m)
		}
		if err != nil {
			http.Error(w, `{"detail":"Invalid data"}`, http.StatusUnprocessableEntity)
			return
		}
		if len(m.Data) == 0 {
			m.Data = json.RawMessage("{}")
		}
		// The same envelope bytes Switchboard sends (docs/protocol.md §1.2).
		frame := make([]byte, 0, 80+len(m.Data))
		frame = append(frame, `{"pkg_id":`...)
		frame = strconv.AppendInt(frame, int64(m.PkgID), 10)
		frame = append(frame, `,"req_id":"00000000-0000-0000-0000-000000000000","data":`...)
		frame = append(append(frame, m.Data...), '}')
		select {
		case b.queue <- frame:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_, _ = w.Write([]byte(`{"delivered_to_nodes":1}`))
	})
	return mux
}

func (b *naive) close() {
	close(b.done)
	b.loop.Wait()
	b.mu.Lock()
	for c := range b.conns {
		_ = c.NetConn().Close()
	}
	b.mu.Unlock()
}

// serveNaive listens on a random loopback port and serves until stop is called.
func serveNaive() (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	b := newNaive()
	srv := &http.Server{Handler: b.handler(), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { _ = srv.Serve(ln); close(done) }()
	return ln.Addr().String(), func() {
		_ = srv.Close()
		<-done
		b.close()
	}, nil
}

// baselineServer is a running naive broadcaster, in this process or in a child.
type baselineServer struct {
	addr string
	pid  int // the child's pid, 0 in-process
	stop func()
}

// startBaseline starts the naive broadcaster: in-process, or with --pin as a child process of
// this same binary pinned with taskset, so it gets a core of its own as Switchboard does.
func startBaseline(ctx context.Context, o *options, rep *reporter) (*baselineServer, error) {
	if o.pin == "" {
		addr, stop, err := serveNaive()
		if err != nil {
			return nil, err
		}
		rep.progress("baseline: naive gws broadcaster in-process on %s (use --pin 0 to give it its own core)", addr)
		return &baselineServer{addr: addr, stop: stop}, nil
	}
	addr, pid, stop, err := startPinnedChild(ctx, o, "baseline-serve")
	if err != nil {
		return nil, err
	}
	rep.progress("baseline: naive gws broadcaster in child pid %d on %s, pinned to CPU %s", pid, addr, o.pin)
	return &baselineServer{addr: addr, pid: pid, stop: stop}, nil
}

// startPinnedChild runs this binary as scenario (a child-only scenario that serves a baseline
// and prints "listening ADDR"), pinned with taskset -c o.pin, and returns its address, its pid
// and how to stop it. extra are flags for the child.
func startPinnedChild(ctx context.Context, o *options, scenario string, extra ...string) (addr string, pid int, stop func(), err error) {
	exe, err := os.Executable()
	if err != nil {
		return "", 0, nil, err
	}
	life := o.duration + o.timeout + 5*time.Minute
	args := append([]string{"-c", o.pin, exe, scenario, "--duration", life.String()}, extra...)
	cmd := exec.Command("taskset", args...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the tool
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", 0, nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", 0, nil, fmt.Errorf("start the baseline with taskset: %w", err)
	}
	stop = func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case line, ok := <-lines:
		addr, found := strings.CutPrefix(line, "listening ")
		if !ok || !found {
			stop()
			return "", 0, nil, errors.New("the baseline child did not report its address")
		}
		return addr, cmd.Process.Pid, stop, nil
	case <-time.After(10 * time.Second):
		stop()
		return "", 0, nil, errors.New("the baseline child did not start within 10s")
	case <-ctx.Done():
		stop()
		return "", 0, nil, ctx.Err()
	}
}

// serveBaselineChild is the child's side: serve, print the address, stop on a signal, when
// the parent dies (Pdeathsig) or after --duration at most.
func serveBaselineChild(ctx context.Context, o *options, stdout io.Writer) error {
	raiseNoFile(io.Discard)
	addr, stop, err := serveNaive()
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
