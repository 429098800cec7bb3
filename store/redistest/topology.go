package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Topologies of the test's own: a Redis Cluster (three primaries, each with a replica) and a
// Sentinel set (one primary, one replica, three sentinels), all redis-server processes on
// private ports of 127.0.0.1 with their files in a temporary directory. Starting one takes a
// few seconds, so a package shares one of each (SharedCluster, SharedSentinel) unless a test
// breaks it (kills a primary): that test starts its own (StartCluster, StartSentinel). Call
// StopShared from the package's TestMain after the tests ran.
//
// The processes are waited for only when they are killed: no goroutine of the test watches
// them, so goleak's check in TestMain is not disturbed by a shared topology still running.

// proc is one redis-server process.
type proc struct {
	port int
	cmd  *exec.Cmd
}

func (p *proc) addr() string { return "127.0.0.1:" + strconv.Itoa(p.port) }

func (p *proc) kill() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
	p.cmd = nil
}

// freePort returns a port nothing listens on right now.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// startProc runs redis-server with args (plus port, bind and dir) and waits until it answers
// PING; it retries on another port when the chosen one was taken meanwhile.
func startProc(bin, dir string, conf []string, args ...string) (*proc, error) {
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		pdir := filepath.Join(dir, strconv.Itoa(port))
		if err := os.MkdirAll(pdir, 0o700); err != nil {
			return nil, err
		}
		full := args
		if conf != nil {
			// Sentinels rewrite their configuration file: it must exist and be writable.
			path := filepath.Join(pdir, "redis.conf")
			if err := os.WriteFile(path, []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
				return nil, err
			}
			full = append([]string{path}, args...)
		}
		full = append(full, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", pdir,
			"--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
			"--logfile", filepath.Join(pdir, "log"))
		cmd := exec.Command(bin, full...)
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		p := &proc{port: port, cmd: cmd}
		if lastErr = waitPing(p.addr(), 10*time.Second); lastErr == nil {
			return p, nil
		}
		p.kill()
	}
	return nil, fmt.Errorf("start redis-server: %w", lastErr)
}

func waitPing(addr string, timeout time.Duration) error {
	c := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: 500 * time.Millisecond, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not answer PING: %w", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// eventually polls cond every 100 ms until it returns nil or timeout passes.
func eventually(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func binaries() (server, cli string, err error) {
	if server, err = exec.LookPath("redis-server"); err != nil {
		return "", "", fmt.Errorf("redis-server is not installed (needed for a Redis Cluster or Sentinel set of the test's own): %w", err)
	}
	if cli, err = exec.LookPath("redis-cli"); err != nil {
		return "", "", fmt.Errorf("redis-cli is not installed (needed to create a Redis Cluster): %w", err)
	}
	return server, cli, nil
}

// Cluster is a Redis Cluster of three primaries, each with one replica.
type Cluster struct {
	dir string

	mu    sync.Mutex
	procs []*proc
}

// NewCluster starts a cluster in dir (which the caller removes). Most tests use StartCluster or
// SharedCluster.
func NewCluster(dir string) (*Cluster, error) {
	server, cli, err := binaries()
	if err != nil {
		return nil, errSkip{err}
	}
	c := &Cluster{dir: dir}
	for i := 0; i < 6; i++ {
		p, err := startProc(server, dir, nil, "--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000",
			"--cluster-replica-validity-factor", "0", "--repl-diskless-load", "on-empty-db")
		if err != nil {
			c.Close()
			return nil, err
		}
		c.procs = append(c.procs, p)
	}
	args := []string{"--cluster", "create"}
	for _, p := range c.procs {
		args = append(args, p.addr())
	}
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		c.Close()
		return nil, fmt.Errorf("redis-cli --cluster create: %v: %s", err, out)
	}
	if err := c.WaitReady(60 * time.Second); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Addrs are the addresses of the processes still running, primaries and replicas.
func (c *Cluster) Addrs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, p := range c.procs {
		if p.cmd != nil {
			out = append(out, p.addr())
		}
	}
	return out
}

// URL is the cluster's redis-cluster:// URL, naming every running node as a seed.
func (c *Cluster) URL() string { return "redis-cluster://" + strings.Join(c.Addrs(), ",") }

// Client returns a cluster client (ContextTimeoutEnabled, short dial timeout), which the caller
// closes.
func (c *Cluster) Client() *redis.ClusterClient {
	return redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), DialTimeout: time.Second,
		ContextTimeoutEnabled: true})
}

// WaitReady waits until every running node says cluster_state:ok and every slot is served by a
// running primary with a link to it.
func (c *Cluster) WaitReady(timeout time.Duration) error {
	return eventually(timeout, func() error {
		for _, addr := range c.Addrs() {
			cl := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: time.Second, MaxRetries: -1})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			info, err := cl.ClusterInfo(ctx).Result()
			var slots []redis.ClusterSlot
			if err == nil {
				slots, err = cl.ClusterSlots(ctx).Result()
			}
			cancel()
			_ = cl.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", addr, err)
			}
			if !strings.Contains(info, "cluster_state:ok") {
				return fmt.Errorf("%s: cluster state not ok", addr)
			}
			covered := 0
			for _, s := range slots {
				if len(s.Nodes) == 0 || !c.running(s.Nodes[0].Addr) {
					return fmt.Errorf("%s: slots %d-%d served by %v", addr, s.Start, s.End, s.Nodes)
				}
				covered += s.End - s.Start + 1
			}
			if covered != 16384 {
				return fmt.Errorf("%s: %d slots covered", addr, covered)
			}
		}
		return nil
	})
}

func (c *Cluster) running(addr string) bool {
	for _, a := range c.Addrs() {
		if a == addr {
			return true
		}
	}
	return false
}

// PrimaryOf returns the address of the primary serving key's slot.
func (c *Cluster) PrimaryOf(key string) (string, error) {
	cl := c.Client()
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	slot, err := cl.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		return "", err
	}
	slots, err := cl.ClusterSlots(ctx).Result()
	if err != nil {
		return "", err
	}
	for _, s := range slots {
		if int64(s.Start) <= slot && slot <= int64(s.End) && len(s.Nodes) > 0 {
			return s.Nodes[0].Addr, nil
		}
	}
	return "", fmt.Errorf("no primary serves slot %d", slot)
}

// KillPrimaryOf kills (SIGKILL) the primary serving key's slot and waits until its replica took
// over and the cluster is ready again. It returns the killed primary's address.
func (c *Cluster) KillPrimaryOf(key string, timeout time.Duration) (string, error) {
	addr, err := c.PrimaryOf(key)
	if err != nil {
		return "", err
	}
	c.Kill(addr)
	return addr, c.WaitReady(timeout)
}

// Kill kills the process at addr (SIGKILL: no shutdown, no save).
func (c *Cluster) Kill(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.procs {
		if p.cmd != nil && p.addr() == addr {
			p.kill()
		}
	}
}

// Close kills every process.
func (c *Cluster) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.procs {
		p.kill()
	}
}

// Sentinel is a primary, one replica and three sentinels watching them under SentinelMaster.
type Sentinel struct {
	dir    string
	server string

	mu        sync.Mutex
	data      []*proc // primary first at start; which is primary now is the sentinels' to say
	sentinels []*proc
}

// SentinelMaster is the name the sentinels know the primary by.
const SentinelMaster = "sbmaster"

// NewSentinel starts a Sentinel set in dir (which the caller removes). Most tests use
// StartSentinel or SharedSentinel.
func NewSentinel(dir string) (*Sentinel, error) {
	server, _, err := binaries()
	if err != nil {
		return nil, errSkip{err}
	}
	s := &Sentinel{dir: dir, server: server}
	primary, err := startProc(server, dir, nil)
	if err != nil {
		return nil, err
	}
	s.data = append(s.data, primary)
	replica, err := startProc(server, dir, nil, "--replicaof", "127.0.0.1", strconv.Itoa(primary.port))
	if err != nil {
		s.Close()
		return nil, err
	}
	s.data = append(s.data, replica)
	for i := 0; i < 3; i++ {
		conf := []string{
			"sentinel monitor " + SentinelMaster + " 127.0.0.1 " + strconv.Itoa(primary.port) + " 2",
			"sentinel down-after-milliseconds " + SentinelMaster + " 1000",
			"sentinel failover-timeout " + SentinelMaster + " 5000",
			"sentinel parallel-syncs " + SentinelMaster + " 1",
		}
		p, err := startProc(server, dir, conf, "--sentinel")
		if err != nil {
			s.Close()
			return nil, err
		}
		s.sentinels = append(s.sentinels, p)
	}
	// Ready: the replica is in sync and every sentinel knows the replica and the other sentinels.
	err = eventually(60*time.Second, func() error {
		if err := replicaInSync(replica.addr()); err != nil {
			return err
		}
		for _, p := range s.sentinels {
			if err := sentinelSees(p.addr(), 1, 2); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func replicaInSync(addr string) error {
	c := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: time.Second, MaxRetries: -1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	info, err := c.Info(ctx, "replication").Result()
	if err != nil {
		return err
	}
	if !strings.Contains(info, "master_link_status:up") {
		return fmt.Errorf("replica %s not in sync", addr)
	}
	return nil
}

// sentinelSees checks that the sentinel at addr knows at least replicas replicas and others
// other sentinels.
func sentinelSees(addr string, replicas, others int) error {
	c := redis.NewSentinelClient(&redis.Options{Addr: addr, DialTimeout: time.Second, MaxRetries: -1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	m, err := c.Master(ctx, SentinelMaster).Result()
	if err != nil {
		return err
	}
	if n, _ := strconv.Atoi(m["num-slaves"]); n < replicas {
		return fmt.Errorf("sentinel %s knows %d replicas", addr, n)
	}
	if n, _ := strconv.Atoi(m["num-other-sentinels"]); n < others {
		return fmt.Errorf("sentinel %s knows %d other sentinels", addr, n)
	}
	return nil
}

// SentinelAddrs are the sentinels' addresses.
func (s *Sentinel) SentinelAddrs() []string {
	var out []string
	for _, p := range s.sentinels {
		out = append(out, p.addr())
	}
	return out
}

// URL is the set's redis-sentinel:// URL.
func (s *Sentinel) URL() string {
	return "redis-sentinel://" + strings.Join(s.SentinelAddrs(), ",") + "/0?master_name=" + SentinelMaster
}

// Client returns a failover client (ContextTimeoutEnabled, short dial timeout), which the caller
// closes.
func (s *Sentinel) Client() *redis.Client {
	return redis.NewFailoverClient(&redis.FailoverOptions{MasterName: SentinelMaster,
		SentinelAddrs: s.SentinelAddrs(), DialTimeout: time.Second, ContextTimeoutEnabled: true})
}

// Primary returns the address the sentinels give for the primary.
func (s *Sentinel) Primary() (string, error) {
	var last error
	for _, addr := range s.SentinelAddrs() {
		c := redis.NewSentinelClient(&redis.Options{Addr: addr, DialTimeout: time.Second, MaxRetries: -1})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		a, err := c.GetMasterAddrByName(ctx, SentinelMaster).Result()
		cancel()
		_ = c.Close()
		if err == nil && len(a) == 2 {
			return net.JoinHostPort(a[0], a[1]), nil
		}
		last = err
	}
	return "", fmt.Errorf("no sentinel names the primary: %v", last)
}

// KillPrimary kills (SIGKILL) the current primary and waits until the sentinels promoted the
// replica and it answers as a primary. It returns the killed primary's address.
func (s *Sentinel) KillPrimary(timeout time.Duration) (string, error) {
	old, err := s.Primary()
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	for _, p := range s.data {
		if p.cmd != nil && p.addr() == old {
			p.kill()
		}
	}
	s.mu.Unlock()
	return old, eventually(timeout, func() error {
		now, err := s.Primary()
		if err != nil {
			return err
		}
		if now == old {
			return errors.New("the sentinels still name the killed primary")
		}
		c := redis.NewClient(&redis.Options{Addr: now, DialTimeout: time.Second, MaxRetries: -1})
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		info, err := c.Info(ctx, "replication").Result()
		if err != nil {
			return err
		}
		if !strings.Contains(info, "role:master") {
			return fmt.Errorf("%s is not a primary yet", now)
		}
		return nil
	})
}

// Close kills every process.
func (s *Sentinel) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range append(append([]*proc(nil), s.sentinels...), s.data...) {
		p.kill()
	}
}

// errSkip marks a missing binary: the test is skipped (failed under CI=true), not failed.
type errSkip struct{ error }

func startOrSkip[T any](t testing.TB, start func(string) (T, error)) T {
	t.Helper()
	v, err := start(t.TempDir())
	if err != nil {
		var skip errSkip
		if errors.As(err, &skip) {
			SkipOrFail(t, skip.Error())
		}
		t.Fatal(err)
	}
	return v
}

// StartCluster starts a cluster of the test's own, killed when the test ends.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	c := startOrSkip(t, NewCluster)
	t.Cleanup(c.Close)
	return c
}

// StartSentinel starts a Sentinel set of the test's own, killed when the test ends.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	s := startOrSkip(t, NewSentinel)
	t.Cleanup(s.Close)
	return s
}

var shared struct {
	mu       sync.Mutex
	dir      string
	cluster  *Cluster
	sentinel *Sentinel
	errs     map[string]error
}

func sharedDir() (string, error) {
	if shared.dir == "" {
		d, err := os.MkdirTemp("", "sbredis-")
		if err != nil {
			return "", err
		}
		shared.dir = d
	}
	return shared.dir, nil
}

func sharedGet[T any](t testing.TB, name string, slot *T, start func(string) (T, error)) T {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	var zero T
	if shared.errs == nil {
		shared.errs = make(map[string]error)
	}
	if err := shared.errs[name]; err == nil && any(*slot) == any(zero) {
		dir, err := sharedDir()
		if err == nil {
			dir = filepath.Join(dir, name)
			var v T
			if v, err = start(dir); err == nil {
				*slot = v
			}
		}
		shared.errs[name] = err
	}
	if err := shared.errs[name]; err != nil {
		var skip errSkip
		if errors.As(err, &skip) {
			SkipOrFail(t, skip.Error())
		}
		t.Fatalf("shared %s: %v", name, err)
	}
	return *slot
}

// SharedCluster returns the package's cluster, started on first use. Tests must not kill its
// nodes, and must keep their keys under a Prefix of their own.
func SharedCluster(t testing.TB) *Cluster {
	t.Helper()
	return sharedGet(t, "cluster", &shared.cluster, NewCluster)
}

// SharedSentinel returns the package's Sentinel set, started on first use; the same rules as
// SharedCluster.
func SharedSentinel(t testing.TB) *Sentinel {
	t.Helper()
	return sharedGet(t, "sentinel", &shared.sentinel, NewSentinel)
}

// StopShared kills the shared topologies and removes their files. Call it from TestMain after
// m.Run.
func StopShared() {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.cluster != nil {
		shared.cluster.Close()
		shared.cluster = nil
	}
	if shared.sentinel != nil {
		shared.sentinel.Close()
		shared.sentinel = nil
	}
	if shared.dir != "" {
		_ = os.RemoveAll(shared.dir)
		shared.dir = ""
	}
}
