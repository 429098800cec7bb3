package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The processes the stress scenario starts for itself: a private redis-server (killed and
// restarted empty mid-run) and a switchboard server pointed at it. Each is a child the tool
// owns: in its own process group (a terminal's Ctrl-C reaches only the tool, which then stops
// its children in order), killed by the kernel if the tool dies (Pdeathsig), waited for once.

// childProc is one started process.
type childProc struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{} // closed when the process has exited and been waited for
	err  error         // its exit status; read after done
}

// startChild starts bin with args and env, stdout and stderr appended to logPath.
func startChild(name, bin string, args, env []string, logPath string) (*childProc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &childProc{name: name, cmd: cmd, log: logf, done: make(chan struct{})}
	go func() { // owned by c: ends when the process does, which stop and kill guarantee
		c.err = cmd.Wait()
		_ = logf.Close()
		close(c.done)
	}()
	return c, nil
}

func (c *childProc) pid() int { return c.cmd.Process.Pid }

func (c *childProc) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// kill ends the process with SIGKILL and waits for it.
func (c *childProc) kill() {
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
}

// stop asks the process to end (SIGTERM), waits up to grace, then kills it. It returns the
// exit error of a process that ended by itself, or a note that it had to be killed.
func (c *childProc) stop(grace time.Duration) error {
	if c.exited() {
		return c.err
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-c.done:
		return c.err
	case <-t.C:
		c.kill()
		return fmt.Errorf("%s did not stop within %s of SIGTERM and was killed", c.name, grace)
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// privateRedis is a redis-server on a port of its own, without persistence: a restart comes
// back empty, like a Redis that lost its data.
type privateRedis struct {
	bin, dir string
	port     int
	proc     *childProc
	starts   int
}

func (r *privateRedis) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }
func (r *privateRedis) url() string  { return "redis://" + r.addr() + "/0" }

// start runs redis-server and waits (bounded) until it answers PING.
func (r *privateRedis) start(ctx context.Context) error {
	args := []string{"--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--dir", r.dir, "--logfile", ""}
	p, err := startChild("redis-server", r.bin, args, os.Environ(), filepath.Join(r.dir, "redis.log"))
	if err != nil {
		return err
	}
	r.proc = p
	r.starts++
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := redisCommand(r.addr(), "PING"); err == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("redis-server on port %d exited at start (%v); see %s", r.port, p.err, filepath.Join(r.dir, "redis.log"))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.kill()
			return fmt.Errorf("redis-server on port %d did not answer PING within 10s", r.port)
		}
		sleepCtx(ctx, 50*time.Millisecond)
	}
}

// kill ends redis-server with SIGKILL: every key is gone with it (no persistence).
func (r *privateRedis) kill() {
	if r.proc != nil {
		r.proc.kill()
	}
}

func (r *privateRedis) stop() {
	if r.proc != nil {
		_ = r.proc.stop(5 * time.Second)
	}
}

// flushAll empties the private redis-server (never a shared one: only this type calls it).
func (r *privateRedis) flushAll() error {
	reply, err := redisCommand(r.addr(), "FLUSHALL")
	if err == nil && reply != "+OK" {
		err = fmt.Errorf("FLUSHALL answered %q", reply)
	}
	return err
}

// redisCommand sends one command in RESP and returns the first line of the reply.
func redisCommand(addr string, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if strings.HasPrefix(line, "-") {
		return line, errors.New(line)
	}
	return line, nil
}

// buildServer compiles cmd/switchboard into dir (the tool runs inside the module's tree).
func buildServer(ctx context.Context, dir string) (string, error) {
	out := filepath.Join(dir, "switchboard")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "switchboard/cmd/switchboard")
	msg, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build switchboard/cmd/switchboard (run from the module's tree, or pass --server-bin): %w\n%s", err, msg)
	}
	return out, nil
}

// serverChild is a switchboard server the tool started.
type serverChild struct {
	proc    *childProc
	addr    string // 127.0.0.1:port
	pprof   string // 127.0.0.1:port of its profiling listener
	logPath string
}

// startServerChild starts bin with env and waits (bounded) until /livez answers.
func startServerChild(ctx context.Context, bin string, env []string, addr, pprof, logPath string) (*serverChild, error) {
	p, err := startChild("switchboard", bin, []string{"serve"}, env, logPath)
	if err != nil {
		return nil, err
	}
	s := &serverChild{proc: p, addr: addr, pprof: pprof, logPath: logPath}
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if resp, err := client.Get("http://" + addr + "/livez"); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
		if p.exited() {
			return nil, fmt.Errorf("the server exited at start (%v); its log: %s\n%s", p.err, logPath, tail(logPath, 10))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.kill()
			return nil, fmt.Errorf("the server did not answer /livez within 60s; its log: %s\n%s", logPath, tail(logPath, 10))
		}
		sleepCtx(ctx, 100*time.Millisecond)
	}
}

// tail returns the last n lines of a file (for error messages).
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// stressEnv is where the scenario runs: the server's addresses and data directory, and, when
// the tool started them, the server and Redis processes.
type stressEnv struct {
	dir       string // temporary directory of this run (self-contained mode)
	keep      bool
	ws, http  string
	dataDir   string
	pprof     string // http://127.0.0.1:port of the server's pprof listener; "" = unknown
	serverPID int
	server    *serverChild
	redis     *privateRedis
	prefix    string
	leeway    time.Duration
	connLimit int
	maxMsg    int
}

// Server settings the scenario relies on in self-contained mode.
const (
	stressLeeway    = time.Second // 4001 comes about a second after exp
	stressConnLimit = 5           // the default per-user connection limit
	stressMaxMsg    = 65536       // the default inbound frame limit
)

// setupStressEnv starts the private Redis and the server (self-contained mode), or describes
// the server at --url.
func setupStressEnv(ctx context.Context, o *options, rep *reporter) (env *stressEnv, err error) {
	if o.external {
		return &stressEnv{ws: o.url + "/web", http: o.http, dataDir: o.dataDir, serverPID: o.serverPID,
			leeway: o.jwtLeeway, connLimit: o.connLimit, maxMsg: o.maxMsgBytes}, nil
	}
	dir, err := os.MkdirTemp("", "switchboard-stress-")
	if err != nil {
		return nil, err
	}
	env = &stressEnv{dir: dir, keep: o.keep, dataDir: filepath.Join(dir, "data"), leeway: stressLeeway,
		connLimit: stressConnLimit, maxMsg: stressMaxMsg}
	defer func() {
		if err != nil {
			env.close(rep)
		}
	}()
	redisBin, err := exec.LookPath(o.redisBin)
	if err != nil {
		return env, fmt.Errorf("stress starts its own redis-server (%q): %w; install Redis or run against --url", o.redisBin, err)
	}
	port := o.redisPort
	if port == 0 {
		if port, err = freePort(); err != nil {
			return env, err
		}
	}
	env.redis = &privateRedis{bin: redisBin, dir: dir, port: port}
	if err := env.redis.start(ctx); err != nil {
		return env, err
	}
	bin := o.serverBin
	if bin == "" {
		rep.progress("building the server (go build switchboard/cmd/switchboard)")
		if bin, err = buildServer(ctx, dir); err != nil {
			return env, err
		}
	}
	httpPort, err := freePort()
	if err != nil {
		return env, err
	}
	pprofPort, err := freePort()
	if err != nil {
		return env, err
	}
	var id [4]byte
	_, _ = rand.Read(id[:])
	env.prefix = "stress-" + hex.EncodeToString(id[:]) + ":"
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort))
	pprof := net.JoinHostPort("127.0.0.1", strconv.Itoa(pprofPort))
	senv := serverEnv(os.Environ(), map[string]string{
		"SWITCHBOARD_ADDR":                  addr,
		"SWITCHBOARD_DATA_DIR":              env.dataDir,
		"SWITCHBOARD_DATABASE_URL":          o.dsn, // "": SQLite in the data directory
		"SWITCHBOARD_REDIS_URL":             env.redis.url(),
		"SWITCHBOARD_REDIS_PREFIX":          env.prefix,
		"SWITCHBOARD_RATE_LIMIT_PER_MINUTE": "1000000",
		"SWITCHBOARD_WS_MESSAGE_RATE_LIMIT": "100000000",
		"SWITCHBOARD_JWT_LEEWAY":            stressLeeway.String(),
		"SWITCHBOARD_PPROF_ADDR":            pprof,
		"SWITCHBOARD_LOG_LEVEL":             "warn",
	})
	rep.progress("starting the server on %s (Redis %s, prefix %s, data %s)", addr, env.redis.addr(), env.prefix, env.dataDir)
	env.server, err = startServerChild(ctx, bin, senv, addr, pprof, filepath.Join(dir, "server.log"))
	if err != nil {
		return env, err
	}
	env.ws, env.http = "ws://"+addr+"/web", "http://"+addr
	env.pprof = "http://" + pprof
	env.serverPID = env.server.proc.pid()
	return env, nil
}

// serverEnv is the parent's environment without any SWITCHBOARD_ variable (a developer's
// settings must not leak into the run), plus set; empty values are left out.
func serverEnv(parent []string, set map[string]string) []string {
	var out []string
	for _, kv := range parent {
		if !strings.HasPrefix(kv, "SWITCHBOARD_") {
			out = append(out, kv)
		}
	}
	for k, v := range set {
		if v != "" {
			out = append(out, k+"="+v)
		}
	}
	return out
}

// stopServer stops the server the tool started (SIGTERM, then SIGKILL) and returns its exit
// error; nil when there is none or it stopped cleanly.
func (e *stressEnv) stopServer() error {
	if e.server == nil || e.server.proc == nil {
		return nil
	}
	err := e.server.proc.stop(30 * time.Second)
	e.server = nil
	return err
}

// close stops whatever is still running and removes the temporary directory (kept with
// --keep, or when the server's log may explain a failure).
func (e *stressEnv) close(rep *reporter) {
	if e.server != nil {
		_ = e.stopServer()
	}
	if e.redis != nil {
		e.redis.stop()
	}
	if e.dir == "" {
		return
	}
	if e.keep {
		rep.progress("kept %s (server.log, redis.log, data/)", e.dir)
		return
	}
	_ = os.RemoveAll(e.dir)
}
