package main

// The JavaScript client's tests (transport/web/client/test/*.test.js) run with Node's own test
// runner from here, so that `go test ./...` runs them. The nodes they talk to are started by
// this Go test in-process (jsfixture_test.go), not by Node: the servers then run under the race
// detector with the rest of the suite, tokens are minted without a subprocess, and nothing is
// built first. The tests that need no server (the close-code policy, the protobuf codec, the
// client against a scripted socket) run in the same `node --test`.

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"switchboard/store/redistest"
)

// nodeBinary finds Node.js (version 20 or newer), or skips the test (fails under CI=true). It
// returns the flags that give Node a WebSocket (Node 20 has it behind a flag; 22 by default).
func nodeBinary(t *testing.T) (string, []string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		redistest.SkipOrFail(t, "node (Node.js 20 or newer) is not installed: the JavaScript client's tests need it")
		return "", nil
	}
	out, err := exec.Command(node, "-e", "console.log(process.versions.node.split('.')[0], typeof WebSocket)").Output()
	if err != nil {
		t.Fatalf("%s -e: %v", node, err)
	}
	fields := strings.Fields(string(out))
	if len(fields) != 2 {
		t.Fatalf("%s -e printed %q", node, out)
	}
	if major, _ := strconv.Atoi(fields[0]); major < 20 {
		redistest.SkipOrFail(t, "node "+strings.TrimSpace(string(out))+" is older than 20: the JavaScript client's tests need Node.js 20 or newer")
	}
	if fields[1] != "function" {
		return node, []string{"--experimental-websocket"}
	}
	return node, nil
}

func TestJSClient(t *testing.T) {
	node, flags := nodeBinary(t)
	files, err := filepath.Glob(filepath.Join("..", "..", "transport", "web", "client", "test", "*.test.js"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no JavaScript tests found: %v", err)
	}
	fx := newJSFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args := append(flags, "--test", "--test-reporter=spec")
	// SWITCHBOARD_JS_TEST_ARGS adds arguments for node, e.g. --test-name-pattern=restart.
	args = append(append(args, strings.Fields(os.Getenv("SWITCHBOARD_JS_TEST_ARGS"))...), files...)
	cmd := exec.CommandContext(ctx, node, args...)
	cmd.Env = append(os.Environ(), "SWITCHBOARD_FIXTURE="+fx.url, "NO_COLOR=1")
	out, err := cmd.CombinedOutput()
	t.Logf("node %s:\n%s", strings.Join(args, " "), out)
	if err != nil {
		t.Fatalf("the JavaScript client's tests failed: %v", err)
	}
}
