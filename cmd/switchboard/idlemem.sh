#!/usr/bin/env bash
# Memory per idle connection: a fresh server per case, N connections from idlemem.py, the
# server's RSS per connection (and, from its pprof listener after forced collections, the live
# heap and stacks per connection); then the same number of bare connections to the naive gws
# broadcaster of the load tool (switchboard-bench baseline-serve), measured the same way.
#
#   bash cmd/switchboard/idlemem.sh                      # N=10000, modes bare dashboard request
#   NS="10000 19000" MODES="bare dashboard" bash cmd/switchboard/idlemem.sh
#   KEEP=1 keeps the temporary directory (server logs); PING, SETTLE: keepalive and wait
#
# The server runs on the embedded default (SQLite, in-process limits and bus) with raised
# per-user limits and keepalive pings every PING (5s), which the client answers; it measures
# SETTLE (12 s, two pings) after its last connection. Server pinned to SERVER_CPU (0), the client
# to CLIENT_CPU (1). One JSON line per case.
set -euo pipefail

NS=${NS:-10000}
MODES=${MODES:-"bare dashboard request"}
BASELINE=${BASELINE:-1}
PORT=${PORT:-18300}
PPROF=${PPROF:-18301}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
SETTLE=${SETTLE:-12}
PING=${PING:-5s}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/switchboard-idlemem.XXXXXX)
trap 'if [ -n "${PID:-}" ]; then kill "$PID" 2>/dev/null || true; fi; if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else echo "kept $WORK" >&2; fi' EXIT

ulimit -n "$(ulimit -Hn)"
(cd "$ROOT" && go build -o "$WORK/switchboard" ./cmd/switchboard && go build -o "$WORK/switchboard-bench" ./cmd/switchboard-bench)

wait_up() {
	for _ in $(seq 1 100); do
		curl -fsS "http://127.0.0.1:$PORT/livez" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "server did not come up" >&2
	return 1
}

stop() {
	kill -TERM "$PID" 2>/dev/null || true
	wait "$PID" 2>/dev/null || true
	PID=
}

for n in $NS; do
	for mode in $MODES; do
		rm -rf "$WORK/data"
		SWITCHBOARD_ADDR=127.0.0.1:$PORT SWITCHBOARD_PPROF_ADDR=127.0.0.1:$PPROF \
		SWITCHBOARD_DATA_DIR=$WORK/data SWITCHBOARD_LOG_LEVEL=warn \
		SWITCHBOARD_WS_MAX_CONNECTIONS_PER_USER=1000000 SWITCHBOARD_RATE_LIMIT_PER_MINUTE=100000000 \
		SWITCHBOARD_WS_MESSAGE_RATE_LIMIT=100000000 SWITCHBOARD_MAX_PREAUTH_CONNECTIONS_PER_IP=1000000 \
		SWITCHBOARD_WS_PING_INTERVAL=$PING \
			taskset -c "$SERVER_CPU" "$WORK/switchboard" serve >"$WORK/server.log" 2>&1 &
		PID=$!
		wait_up
		token=$(SWITCHBOARD_DATA_DIR=$WORK/data "$WORK/switchboard" token --user idle --roles get-authors --ttl 1h)
		taskset -c "$CLIENT_CPU" python3 "$ROOT/cmd/switchboard/idlemem.py" --addr "127.0.0.1:$PORT" \
			--token "$token" --pid "$PID" --pprof "127.0.0.1:$PPROF" --n "$n" --mode "$mode" \
			--settle "$SETTLE" --label switchboard
		stop
	done
	if [ "$BASELINE" = 1 ]; then
		taskset -c "$SERVER_CPU" "$WORK/switchboard-bench" baseline-serve --duration 10m >"$WORK/baseline.out" 2>&1 &
		PID=$!
		for _ in $(seq 1 100); do grep -q listening "$WORK/baseline.out" && break; sleep 0.1; done
		addr=$(awk '/listening/ {print $2}' "$WORK/baseline.out")
		taskset -c "$CLIENT_CPU" python3 "$ROOT/cmd/switchboard/idlemem.py" --addr "$addr" \
			--pid "$PID" --n "$n" --mode bare --settle "$SETTLE" --label naive-gws
		stop
	fi
done
