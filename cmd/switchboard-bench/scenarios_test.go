package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The rpc and fanout scenarios end to end against a server child process on the embedded
// default (SQLite), at a few connections: the Go client's workers and producers, the bare
// request baselines, the topic run's checker and the Go-client subscribers all do their work.

// scenarioServer starts the server built for this package's tests with raised limits and
// returns its ws:// base URL, data directory and pid; it is stopped when the test ends.
func scenarioServer(t *testing.T) (url, dataDir string, pid int) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: the scenario tests build and run the server")
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
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dataDir = filepath.Join(dir, "data")
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	env := serverEnv(os.Environ(), map[string]string{
		"SWITCHBOARD_ADDR": addr, "SWITCHBOARD_DATA_DIR": dataDir, "SWITCHBOARD_LOG_LEVEL": "warn",
		"SWITCHBOARD_WS_MAX_CONNECTIONS_PER_USER": "100000", "SWITCHBOARD_RATE_LIMIT_PER_MINUTE": "100000000",
		"SWITCHBOARD_WS_MESSAGE_RATE_LIMIT": "100000000",
	})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	s, err := startServerChild(ctx, serverBinPath, env, addr, "", filepath.Join(dir, "server.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.proc.stop(30 * time.Second); err != nil {
			t.Errorf("server stop: %v\n%s", err, tail(s.logPath, 20))
		}
	})
	return "ws://" + addr, dataDir, s.proc.pid()
}

// runScenario runs the tool with args and returns its JSON results.
func runScenario(t *testing.T, args ...string) []result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err := run(ctx, append(args, "--json-only"), &stdout, &stderr)
	if err != nil {
		t.Fatalf("%s: %v\nstderr:\n%s", strings.Join(args, " "), err, stderr.String())
	}
	var out []result
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<22)
	for sc.Scan() {
		var r result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("JSON line: %v\n%s", err, sc.Bytes())
		}
		out = append(out, r)
	}
	return out
}

func TestScenariosAgainstAServer(t *testing.T) {
	url, dataDir, pid := scenarioServer(t)
	common := []string{"--url", url, "--data-dir", dataDir, "--server-pid", fmt.Sprint(pid)}

	t.Run("rpc with the bare baselines", func(t *testing.T) {
		rs := runScenario(t, append([]string{"rpc", "--n", "4", "--duration", "1s"}, common...)...)
		targets := map[string]int{}
		for _, r := range rs {
			targets[r.Target]++
			if r.OK == 0 || r.Failed != 0 {
				t.Errorf("%s %s: ok %d failed %d %v", r.Target, r.Mode, r.OK, r.Failed, r.Errors)
			}
			if r.Target == "switchboard" && (r.Ratio <= 0 || r.BareP99Ratio <= 0) {
				t.Errorf("%s: no ratio to the bare baseline (%v, %v)", r.Mode, r.Ratio, r.BareP99Ratio)
			}
		}
		if targets["switchboard"] != 4 || targets["bare"] != 4 {
			t.Fatalf("results by target: %v, want 4 and 4", targets)
		}
	})

	t.Run("fanout --topics", func(t *testing.T) {
		rs := runScenario(t, append([]string{"fanout", "--n", "24", "--messages", "5", "--topics", "4", "--producers", "2"}, common...)...)
		if len(rs) != 2 || rs[1].Topics != 4 {
			t.Fatalf("results: %+v", rs)
		}
		all, top := rs[0], rs[1]
		if all.ConnectPS <= 0 || top.SubscribePS <= 0 || top.Ratio <= 0 {
			t.Fatalf("connect %v, connect+SUBSCRIBE %v, ratio %v", all.ConnectPS, top.SubscribePS, top.Ratio)
		}
		if top.GoalMet == nil || !*top.GoalMet || top.Lost != 0 || top.OK != top.Expected || top.Expected == 0 {
			t.Fatalf("topic run: ok %d of %d, lost %d, goal %v, errors %v, notes %v", top.OK, top.Expected, top.Lost, top.GoalMet, top.Errors, top.Notes)
		}
	})

	t.Run("fanout --subscribers go", func(t *testing.T) {
		rs := runScenario(t, append([]string{"fanout", "--n", "12", "--messages", "5", "--subscribers", "go", "--compare=false"}, common...)...)
		if len(rs) != 1 || rs[0].Lost != 0 || rs[0].OK != 12*5 {
			t.Fatalf("results: %+v", rs)
		}
	})
}
