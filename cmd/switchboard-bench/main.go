// Command switchboard-bench is Switchboard's load tool: it opens real WebSocket
// connections to a server on 127.0.0.1 and measures connection setup, broadcast fan-out and
// request/response, comparing fan-out with a naive gws broadcaster built into the tool; stress
// runs a mixed load with Redis faults and checks the wire contract's invariants as it goes.
//
//	switchboard-bench connect  --n 10000 --c 64 --server-pid PID
//	switchboard-bench fanout   --n 10000 --messages 300 --size 100 [--rate 5] [--compare=false]
//	switchboard-bench fanout   --n 1000 --messages 2000 --size 2000 --rate 200 --slow 10
//	switchboard-bench fanout   --n 2000 --messages 100 --topics 20
//	switchboard-bench baseline --n 10000 --messages 300 --size 100
//	switchboard-bench rpc      --n 64 --duration 10s [--direct-dsn postgres://…]
//	switchboard-bench stress   --duration 60s --kill-redis-at 20s,40s --redis-down 3s --plot stress.svg
//	switchboard-bench headerflood --n 1000 --header-bytes 1048576 --server-pid PID
//
// Progress goes to stderr, one JSON line per result to stdout, and a table at the end. Every
// loop is bounded by a count and by --duration/--timeout; the tool only talks to loopback.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const usage = `Usage: switchboard-bench <scenario> [flags]

Scenarios:
  connect    open --n authenticated connections at concurrency --c; conns/s, handshake
             p50/p99, server RSS per idle connection (--server-pid, else /metrics)
  fanout     --n subscribers, --messages broadcasts of --size bytes through POST /api/broadcast,
             (--topics K: then the subscribers again, spread over K topics dashboards.0…K-1,
             --messages per topic on random topics; no loss, exactly once and seq order per
             topic are checked; connect+SUBSCRIBE rate beside the connect rate)
             as fast as possible (--rate 0) or at --rate per second; then the same against the
             built-in naive gws broadcaster (--compare, on by default) and the ratio
             --slow K: the fanout twice, the second time with K connections that never read
  baseline   the fanout run against the built-in naive gws broadcaster only
  rpc        --n clients in a closed loop: GET_AUTHORS and CREATE_AUTHOR over WebSocket and
             GET/POST /authors over HTTP; each phase followed by the same queries behind a bare
             gws server and a bare net/http handler (in the tool, on the server's database:
             --direct-dsn or the SQLite file in --data-dir; --rpc-baselines=false skips them),
             with the req/s and p99 ratios; with --direct-dsn, the same Bun query called directly
  stress     a bounded mixed run that checks invariants as it goes; exits non-zero on a violation.
             Self-contained by default: starts a private redis-server (--redis-port, else a free
             port) and a server (--server-bin, else go build) with a temporary data directory,
             SQLite (or --dsn), a unique SWITCHBOARD_REDIS_PREFIX, and stops both at the end.
             --n subscribers hold --topics-per-sub of --topics dashboards.* topics, reconnect and
             resubscribe with since+epoch; each topic message must come exactly once and in order
             (seq = last+1 in one epoch) unless the server said so (recovered:false, 1013).
             --churners connect, request and end in every way the contract names a close code
             for (1000, 1009, 1003, 1007, 4001, 1008); --rpc-clients pipeline CREATE/GET/DELETE/
             SUBSCRIBE/UNSUBSCRIBE and check answers come in request order; --producers POST
             --rate broadcasts/s (--all-ratio of them to everyone). --kill-redis-at 20s,40s
             kills -9 the private Redis and restarts it empty after --redis-down; --flush-redis-at
             flushes it. At the end every subscriber must reach each topic's last message, and
             the server's goroutines and RSS must come back near their baseline (within
             --settle-timeout). Report: tables, a JSON line, and an SVG plot (--plot).
             --url runs against a server someone else started (then no Redis faults).
  headerflood --n connections at once, each sending --header-bytes of request headers that
             never end, held until the server closes them or --duration (default 30s) ends;
             the server's RSS (--server-pid) before, at its peak and --settle after

The server must accept the load: start it with raised per-user limits, e.g.
  SWITCHBOARD_WS_MAX_CONNECTIONS_PER_USER=100000 SWITCHBOARD_RATE_LIMIT_PER_MINUTE=1000000 \
  SWITCHBOARD_WS_MESSAGE_RATE_LIMIT=100000000 switchboard serve
(cmd/switchboard-bench/load.sh does all of it, pinned with taskset; see docs/performance.md).

Flags:
`

// options are the flags shared by every scenario.
type options struct {
	scenario     string
	url          string // ws://127.0.0.1:8000
	url2         string // fanout: a second node sharing the first one's Redis; subscribers alternate between them
	http         string // http://127.0.0.1:8000
	dataDir      string
	clientID     string
	n, c         int
	perUser      int
	messages     int
	size         int
	rate         float64
	producers    int
	duration     time.Duration
	timeout      time.Duration
	settle       time.Duration
	serverPID    int
	jsonOnly     bool
	compare      bool
	pin          string
	readBuf      int
	directDSN    string
	seedRows     int
	maxSamples   int
	slow         int
	subClient    string // fanout: "raw" (light gws sockets) or "go" (transport/client)
	rpcBaselines bool   // rpc: also measure the bare gws and net/http request baselines
	nofile       uint64

	// stress
	external      bool // --url was given: a server the tool did not start
	topics        int
	topicsPerSub  int
	churners      int
	rpcClients    int
	rpcRate       float64
	allRatio      float64
	killAt        durationList
	flushAt       durationList
	redisDown     time.Duration
	redisPort     int
	redisBin      string
	serverBin     string
	dsn           string
	plot          string
	keep          bool
	settleTimeout time.Duration
	rssSlackMiB   float64
	heapSlackMiB  float64
	jwtLeeway     time.Duration
	connLimit     int
	maxMsgBytes   int

	// headerflood
	headerBytes int
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "switchboard-bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(stderr, usage)
		newFlags(&options{}, stderr).PrintDefaults()
		return errors.New("a scenario is required")
	}
	o := &options{scenario: args[0]}
	fs := newFlags(o, stderr)
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.scenario == "stress" {
		if err := o.stressDefaults(set); err != nil {
			return err
		}
	}
	if o.scenario == "baseline-serve" { // the child process of --pin; not for users
		return serveBaselineChild(ctx, o, stdout)
	}
	if o.scenario == "rpc-baseline-serve" { // rpc's bare baselines under --pin; not for users
		return serveBareChild(ctx, o, stdout)
	}
	if err := o.check(); err != nil {
		return err
	}
	o.nofile = raiseNoFile(stderr)
	// One cap over the whole invocation, whatever the scenario does.
	ctx, cancel := context.WithTimeout(ctx, o.duration+o.timeout+5*time.Minute)
	defer cancel()
	rep := newReporter(stdout, stderr, o.jsonOnly)
	var err error
	switch o.scenario {
	case "connect":
		err = runConnect(ctx, o, rep)
	case "fanout":
		switch {
		case o.slow > 0 && o.topics > 0:
			err = errors.New("fanout: --slow and --topics are separate runs: give one of them")
		case o.slow > 0:
			err = runSlow(ctx, o, rep)
		case o.topics > 0:
			err = runTopicFanout(ctx, o, rep)
		default:
			err = runFanout(ctx, o, rep, true, o.compare)
		}
	case "baseline":
		err = runFanout(ctx, o, rep, false, true)
	case "rpc":
		err = runRPC(ctx, o, rep)
	case "stress":
		err = runStress(ctx, o, rep)
	case "headerflood":
		err = runHeaderFlood(ctx, o, rep)
	default:
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
		return fmt.Errorf("unknown scenario %q", o.scenario)
	}
	rep.table()
	return err
}

func newFlags(o *options, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(o.scenario, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.url, "url", "ws://127.0.0.1:8000", "server WebSocket base URL (the tool appends /web)")
	fs.StringVar(&o.http, "http", "", "server HTTP base URL (default: --url with http://)")
	fs.StringVar(&o.url2, "url2", "", "fanout: a second node's WebSocket base URL (same Redis); subscribers alternate between the nodes, the producer posts to --http")
	fs.StringVar(&o.dataDir, "data-dir", "./data", "the server's SWITCHBOARD_DATA_DIR: the tool mints development tokens with its key")
	fs.StringVar(&o.clientID, "client-id", "switchboard", "the server's SWITCHBOARD_OIDC_CLIENT_ID (token audience)")
	fs.IntVar(&o.n, "n", 0, "connections (connect, fanout: default 1000) or clients (rpc: default 64)")
	fs.IntVar(&o.c, "c", 64, "concurrent handshakes while connecting")
	fs.IntVar(&o.perUser, "per-user", 4, "connections sharing one user (the server's per-user connection limit defaults to 5)")
	fs.IntVar(&o.messages, "messages", 200, "fanout: broadcasts to send")
	fs.IntVar(&o.size, "size", 100, "fanout: bytes of each broadcast's data object")
	fs.Float64Var(&o.rate, "rate", 0, "fanout: broadcasts per second (0: as fast as possible)")
	fs.IntVar(&o.producers, "producers", 1, "fanout: concurrent producer goroutines (each POSTs sequentially)")
	fs.DurationVar(&o.duration, "duration", 0, "cap on one phase's sending (fanout, connect) or length of each rpc phase (default 10s for rpc, 2m otherwise)")
	fs.DurationVar(&o.timeout, "timeout", 60*time.Second, "how long to wait for deliveries/handshakes after sending ends")
	fs.DurationVar(&o.settle, "settle", 5*time.Second, "connect: idle time before reading the server's RSS")
	fs.IntVar(&o.serverPID, "server-pid", 0, "server process id: RSS and CPU from /proc (else RSS from /metrics)")
	fs.BoolVar(&o.jsonOnly, "json-only", false, "print only the JSON lines on stdout (no table)")
	fs.BoolVar(&o.compare, "compare", true, "fanout: also run the built-in naive gws baseline and print the ratio")
	fs.StringVar(&o.pin, "pin", "", "baseline, rpc: run the baseline servers as a child process pinned with taskset -c PIN (e.g. 0)")
	fs.IntVar(&o.readBuf, "read-buf", 4096, "client read buffer per connection, bytes")
	fs.StringVar(&o.directDSN, "direct-dsn", "", "rpc: postgres://… of the server's database; runs the same Bun query directly for the ratio")
	fs.BoolVar(&o.rpcBaselines, "rpc-baselines", true, "rpc: also run the same queries behind a bare gws server and a bare net/http handler (in the tool, on the server's database: --direct-dsn or the SQLite file in --data-dir) and print the ratios")
	fs.IntVar(&o.seedRows, "seed", 20, "rpc: make sure the authors table has at least this many rows before GET_AUTHORS")
	fs.IntVar(&o.slow, "slow", 0, "fanout: run twice against Switchboard, the second time with this many extra connections that never read")
	fs.StringVar(&o.subClient, "subscribers", "raw", "fanout: raw (a light receive-only gws socket each) or go (a transport/client Client each; costs the tool more CPU and memory per connection, see docs/performance.md)")
	fs.IntVar(&o.maxSamples, "max-samples", 20_000_000, "fanout: latency samples kept per run (sampled evenly above it)")
	fs.IntVar(&o.topics, "topics", 0, "stress: dashboards.* topics (default 6); fanout: after the broadcast-to-all run, spread the --n subscribers over this many topics dashboards.0… and publish --messages per topic on random topics (default 0: no topic run)")
	fs.IntVar(&o.topicsPerSub, "topics-per-sub", 3, "stress: topics each subscriber holds")
	fs.IntVar(&o.churners, "churners", 6, "stress: workers opening short-lived connections")
	fs.IntVar(&o.rpcClients, "rpc-clients", 4, "stress: request/response connections")
	fs.Float64Var(&o.rpcRate, "rpc-rate", 20, "stress: requests per second of each rpc client")
	fs.Float64Var(&o.allRatio, "all-ratio", 0.1, "stress: share of the broadcasts sent to everyone instead of a topic")
	fs.Var(&o.killAt, "kill-redis-at", "stress: times from the start to kill -9 the private redis-server (list or repeated: 20s,40s)")
	fs.Var(&o.flushAt, "flush-redis-at", "stress: times from the start to FLUSHALL the private redis-server")
	fs.DurationVar(&o.redisDown, "redis-down", 3*time.Second, "stress: how long Redis stays down after each kill")
	fs.IntVar(&o.redisPort, "redis-port", 0, "stress: port of the private redis-server (0: a free one)")
	fs.StringVar(&o.redisBin, "redis-bin", "redis-server", "stress: the redis-server binary")
	fs.StringVar(&o.serverBin, "server-bin", "", "stress: the switchboard binary to start (default: go build it into a temporary directory)")
	fs.StringVar(&o.dsn, "dsn", "", "stress: SWITCHBOARD_DATABASE_URL of the started server (default: SQLite in its temporary data directory)")
	fs.StringVar(&o.plot, "plot", "stress.svg", "stress: SVG file for the plot of RSS, goroutines and rates over time (\"\": none)")
	fs.BoolVar(&o.keep, "keep", false, "stress: keep the temporary directory (server and Redis logs, data)")
	fs.DurationVar(&o.settleTimeout, "settle-timeout", 30*time.Second, "stress: how long the server may take to come back to its baseline after the run")
	fs.Float64Var(&o.rssSlackMiB, "rss-slack", 16, "stress: MiB the server's anonymous RSS may stay above its baseline after the run (or half the baseline, whichever is more)")
	fs.Float64Var(&o.heapSlackMiB, "heap-slack", 8, "stress: MiB the server's live heap may stay above its baseline after the run (or half the baseline, whichever is more)")
	fs.DurationVar(&o.jwtLeeway, "jwt-leeway", 10*time.Second, "stress with --url: the server's SWITCHBOARD_JWT_LEEWAY (when 4001 is due)")
	fs.IntVar(&o.connLimit, "conn-limit", 5, "stress with --url: the server's SWITCHBOARD_WS_MAX_CONNECTIONS_PER_USER")
	fs.IntVar(&o.maxMsgBytes, "max-message-bytes", 65536, "stress with --url: the server's SWITCHBOARD_WS_MAX_MESSAGE_BYTES")
	fs.IntVar(&o.headerBytes, "header-bytes", 1<<20, "headerflood: header bytes each connection sends (never ending them)")
	return fs
}

// check applies per-scenario defaults and refuses anything but loopback targets.
func (o *options) check() error {
	if o.n == 0 {
		o.n = 1000
		if o.scenario == "rpc" {
			o.n = 64
		}
	}
	if o.duration == 0 {
		o.duration = 2 * time.Minute
		switch o.scenario {
		case "rpc":
			o.duration = 10 * time.Second
		case "headerflood":
			o.duration = 30 * time.Second
		}
	}
	if o.http == "" {
		o.http = "http" + strings.TrimPrefix(o.url, "ws")
	}
	o.url = strings.TrimSuffix(strings.TrimSuffix(o.url, "/"), "/web")
	o.url2 = strings.TrimSuffix(strings.TrimSuffix(o.url2, "/"), "/web")
	o.http = strings.TrimSuffix(o.http, "/")
	switch {
	case o.n < 1 || o.n > 100_000:
		return fmt.Errorf("--n must be between 1 and 100000, got %d", o.n)
	case o.c < 1 || o.c > 10_000:
		return fmt.Errorf("--c must be between 1 and 10000, got %d", o.c)
	case o.perUser < 1:
		return fmt.Errorf("--per-user must be at least 1")
	case o.messages < 1 || o.messages > 1_000_000:
		return fmt.Errorf("--messages must be between 1 and 1000000, got %d", o.messages)
	case o.size < 0 || o.size > 60_000:
		return fmt.Errorf("--size must be between 0 and 60000, got %d", o.size)
	case o.rate < 0:
		return fmt.Errorf("--rate must not be negative")
	case o.producers < 1 || o.producers > 64:
		return fmt.Errorf("--producers must be between 1 and 64")
	case o.duration <= 0 || o.timeout <= 0:
		return fmt.Errorf("--duration and --timeout must be positive")
	case o.slow < 0 || o.slow > 10_000:
		return fmt.Errorf("--slow must be between 0 and 10000")
	case o.scenario == "fanout" && (o.topics < 0 || o.topics > o.n):
		return fmt.Errorf("fanout: --topics must be between 0 and --n (%d), got %d", o.n, o.topics)
	case o.subClient != "raw" && o.subClient != "go":
		return fmt.Errorf("--subscribers must be raw or go, got %q", o.subClient)
	case o.readBuf < 512:
		return fmt.Errorf("--read-buf must be at least 512")
	case o.headerBytes < 1 || o.headerBytes > 64<<20:
		return fmt.Errorf("--header-bytes must be between 1 and 67108864, got %d", o.headerBytes)
	case o.scenario == "headerflood" && o.n > 10_000:
		return fmt.Errorf("headerflood: --n must be at most 10000, got %d", o.n)
	}
	for _, u := range []string{o.url, o.http, o.url2} {
		if u == "" {
			continue
		}
		if err := loopbackOnly(u); err != nil {
			return err
		}
	}
	if o.directDSN != "" {
		if err := loopbackOnly(o.directDSN); err != nil {
			return err
		}
	}
	return nil
}

// loopbackOnly refuses URLs whose host is not a loopback address: this tool only loads a
// server on the same machine.
func loopbackOnly(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("bad URL %q: %w", raw, err)
	}
	host := u.Hostname()
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%s: only 127.0.0.1 (loopback) targets are allowed, got host %q", u.Redacted(), host)
}

// raiseNoFile lifts RLIMIT_NOFILE to its hard limit and returns the limit in force.
func raiseNoFile(stderr io.Writer) uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		fmt.Fprintln(stderr, "getrlimit:", err)
		return 0
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			fmt.Fprintln(stderr, "setrlimit:", err)
			_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
		}
	}
	fmt.Fprintf(stderr, "open files limit: %d (hard %d)\n", rl.Cur, rl.Max)
	return rl.Cur
}

// progress prints a line on stderr.
func (r *reporter) progress(format string, args ...any) {
	// One Write a line, so that lines from several goroutines do not interleave.
	io.WriteString(r.stderr, fmt.Sprintf("%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...))
}
