package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The stress scenario end to end: a private redis-server and a server child process (built
// once per test binary), a few seconds of load with a Redis kill in the middle. It needs
// redis-server on PATH: without it the test skips (and fails under CI=true).

var (
	serverBinOnce sync.Once
	serverBinDir  string
	serverBinPath string
	serverBinErr  error
)

// TestMain removes the server binary stressServerBin built.
func TestMain(m *testing.M) {
	code := m.Run()
	if serverBinDir != "" {
		_ = os.RemoveAll(serverBinDir)
	}
	os.Exit(code)
}

// stressServerBin builds cmd/switchboard once for the tests of this package.
func stressServerBin(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis-server is not installed: the stress scenario test needs it (apt-get install redis-server)")
		}
		t.Skip("redis-server is not installed: skipping the stress scenario test (apt-get install redis-server)")
	}
	if testing.Short() {
		t.Skip("-short: the stress scenario test builds and runs the server")
	}
	serverBinOnce.Do(func() {
		serverBinDir, serverBinErr = os.MkdirTemp("", "switchboard-stress-test-")
		if serverBinErr == nil {
			serverBinPath, serverBinErr = buildServer(context.Background(), serverBinDir)
		}
	})
	if serverBinErr != nil {
		t.Fatal(serverBinErr)
	}
	return serverBinPath
}

// stressJSON returns the stress report of the run's JSON line.
func stressJSON(t *testing.T, stdout []byte) *stressReport {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(stdout))
	sc.Buffer(make([]byte, 1<<20), 1<<22)
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.HasPrefix(line, []byte("{")) {
			continue
		}
		var r result
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("JSON line: %v\n%s", err, line)
		}
		if r.Scenario == "stress" && r.Stress != nil {
			return r.Stress
		}
	}
	t.Fatalf("no stress JSON line in the output:\n%s", stdout)
	return nil
}

// portClosed reports whether nothing listens on 127.0.0.1:port any more.
func portClosed(port int) bool {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
	if err != nil {
		return true
	}
	_ = c.Close()
	return false
}

func TestStressScenarioWithRedisKill(t *testing.T) {
	bin := stressServerBin(t)
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	plot := filepath.Join(t.TempDir(), "stress.svg")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err = run(ctx, []string{"stress", "--duration", "7s", "--n", "4", "--topics", "3", "--topics-per-sub", "2",
		"--churners", "2", "--rpc-clients", "1", "--rate", "16", "--kill-redis-at", "2s", "--redis-down", "1s",
		"--redis-port", fmt.Sprint(port), "--server-bin", bin, "--plot", plot, "--timeout", "15s", "--settle-timeout", "15s"},
		&stdout, &stderr)
	t.Logf("stderr:\n%s\nstdout:\n%s", stderr.String(), stdout.String())
	if err != nil && !strings.Contains(err.Error(), "invariant violations") {
		t.Fatalf("run: %v", err) // anything but a verdict on the server is the tool's failure
	}
	r := stressJSON(t, stdout.Bytes())

	// The fault happened and Redis came back.
	if len(r.Faults) != 1 || r.Faults[0].Kind != "redis-kill" || r.Faults[0].DownS <= 0 || r.Faults[0].Err != "" {
		t.Fatalf("faults = %+v, want one redis-kill that ended", r.Faults)
	}
	// Load went through before and after it.
	if r.Published == 0 || r.TopicMessages == 0 || r.AllMessages == 0 || r.Answers == 0 {
		t.Fatalf("published %d, topic deliveries %d, to all %d, answers %d: the run did nothing",
			r.Published, r.TopicMessages, r.AllMessages, r.Answers)
	}
	// The topic invariants hold across the kill: every subscriber got every message once and
	// in order, or was told (recovered:false, 1013), and reached every topic's end.
	for _, v := range r.Violations {
		switch v.Kind {
		case vGap, vDuplicate, vEpochSilent, vBeforeAnswer, vNotSubscribed, vNoSeq, vRecoveredEpoch,
			vRecoveredBack, vSubscribeError, vProducerOrder, vTail, vUndecodable, vServerPanic, vServerDied, vServerExit:
			t.Errorf("%d× %s: %v", v.Count, v.Kind, v.Examples)
		default:
			// Close codes and answer order are judged too; the server's own tests cover them,
			// and a run this short on a busy machine says little more about them.
			t.Logf("server finding: %d× %s: %v", v.Count, v.Kind, v.Examples)
		}
	}
	// Closes of the kinds the churners provoke were seen with their codes.
	seen := strings.Join(sortedKeys(r.Closes), "\n")
	for _, want := range []string{"churner normal: 1000", "churner too-big: 1009", "churner binary: 1003", "subscriber (closed 1000 at the end): 1000"} {
		if !strings.Contains(seen, want) {
			t.Errorf("no close %q among\n%s", want, seen)
		}
	}
	// The memory check ran against a baseline taken after forced collections.
	if r.Baseline.Goroutines == 0 || r.Baseline.RSSMiB == 0 || !r.Baseline.GCForced || r.Bounds.Goroutines == 0 {
		t.Fatalf("baseline %+v bounds %+v", r.Baseline, r.Bounds)
	}
	// The plot is a parseable SVG with the fault marked.
	doc, err := os.ReadFile(plot)
	if err != nil {
		t.Fatal(err)
	}
	if c := svgCounts(t, doc); c["polyline"] < 3 || !bytes.Contains(doc, []byte("redis kill -9")) {
		t.Fatalf("plot: %v polylines, kill marked: %v", c["polyline"], bytes.Contains(doc, []byte("redis kill -9")))
	}
	// Everything the run started is gone.
	if !portClosed(port) {
		t.Fatalf("the private redis-server on port %d still listens after the run", port)
	}
}

func TestStressScenarioStopsItsChildrenWhenCancelled(t *testing.T) {
	bin := stressServerBin(t)
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	// Cancelled (as SIGINT does through main's context) in the middle of the run.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr lockedBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"stress", "--duration", "60s", "--n", "2", "--churners", "1", "--rpc-clients", "1",
			"--rate", "5", "--redis-port", fmt.Sprint(port), "--server-bin", bin, "--plot", ""}, &stdout, &stderr)
	}()
	// Wait for the load to start (its progress line), then cancel.
	if !waitFor(60*time.Second, func() bool { return strings.Contains(stderr.String(), "stress run ") }) {
		cancel()
		t.Fatalf("the run did not start within 60s:\n%s", stderr.String())
	}
	cancel()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "interrupted") {
			t.Fatalf("run = %v, want interrupted", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the run did not end within 60s of being cancelled")
	}
	if !portClosed(port) {
		t.Fatalf("the private redis-server on port %d still listens after the cancelled run", port)
	}
}

// lockedBuffer is a bytes.Buffer that a running scenario writes while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitFor polls cond every 20 ms until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}
