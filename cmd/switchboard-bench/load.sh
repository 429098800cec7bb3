#!/usr/bin/env bash
# The load scenarios of docs/performance.md against a server this script starts and stops:
# builds switchboard and switchboard-bench, starts the server on the embedded default (SQLite,
# in-process limits, development issuer) with raised per-user limits and a temporary data
# directory, pinned to SERVER_CPU; runs each scenario pinned to TOOL_CPU; restarts the server
# between scenarios so each starts from a fresh process. With PostgreSQL on 127.0.0.1 (psql
# reachable as PGUSER), the rpc scenario runs against a database sb_bench created and dropped here.
#
# Environment (defaults): N=10000 CONNECT_N=19000 MESSAGES=300 PRODUCERS=8 RATE=5
# RATE_MESSAGES=100 RPC_N=64 RPC_DURATION=10s SERVER_CPU=0 TOOL_CPU=1 PORT=8000 PGUSER=postgres
# OUT=<temp dir> (results.jsonl, report.txt and the server logs end up there).
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-10000}
CONNECT_N=${CONNECT_N:-19000}
MESSAGES=${MESSAGES:-300}
PRODUCERS=${PRODUCERS:-8}
RATE=${RATE:-5}
RATE_MESSAGES=${RATE_MESSAGES:-100}
RPC_N=${RPC_N:-64}
RPC_DURATION=${RPC_DURATION:-10s}
SERVER_CPU=${SERVER_CPU:-0}
TOOL_CPU=${TOOL_CPU:-1}
PORT=${PORT:-8000}
PGUSER=${PGUSER:-postgres}
OUT=${OUT:-$(mktemp -d /tmp/switchboard-load.XXXXXX)}
BIN=$OUT/bin
DATA=$OUT/data
mkdir -p "$BIN" "$DATA"

ulimit -n "$(ulimit -Hn)"
{
	echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')"
	echo "cpus $(nproc): $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
	echo "memory $(free -m | awk '/Mem:/ {print $2}') MiB; $(go version)"
} | tee "$OUT/machine.txt" >&2
echo "load: results in $OUT (open files limit $(ulimit -n))" >&2
go build -o "$BIN/switchboard" ./cmd/switchboard
go build -o "$BIN/switchboard-bench" ./cmd/switchboard-bench

SERVER_PID=
stop_server() {
	if [ -n "$SERVER_PID" ]; then
		kill -TERM "$SERVER_PID" 2>/dev/null || true
		for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$SERVER_PID" 2>/dev/null || true
		wait "$SERVER_PID" 2>/dev/null || true
		SERVER_PID=
	fi
}
PG_CREATED=
cleanup() {
	stop_server
	if [ -n "$PG_CREATED" ]; then
		psql -h 127.0.0.1 -U "$PGUSER" -qc 'drop database if exists sb_bench' >/dev/null || true
	fi
}
trap cleanup EXIT

# start_server NAME [VAR=value…]: the server on 127.0.0.1:PORT, pinned, until /livez answers.
start_server() {
	local name=$1
	shift
	env SWITCHBOARD_DATA_DIR="$DATA" SWITCHBOARD_ADDR="127.0.0.1:$PORT" \
		SWITCHBOARD_WS_MAX_CONNECTIONS_PER_USER=100000 \
		SWITCHBOARD_RATE_LIMIT_PER_MINUTE=1000000 \
		SWITCHBOARD_WS_MESSAGE_RATE_LIMIT=100000000 \
		SWITCHBOARD_LOG_LEVEL=warn \
		"$@" taskset -c "$SERVER_CPU" "$BIN/switchboard" serve >"$OUT/server-$name.log" 2>&1 &
	SERVER_PID=$!
	for _ in $(seq 1 150); do
		if curl -fsS -o /dev/null http://127.0.0.1:$PORT/livez 2>/dev/null; then
			return 0
		fi
		kill -0 "$SERVER_PID" 2>/dev/null || break
		sleep 0.2
	done
	echo "load: the server did not start; see $OUT/server-$name.log" >&2
	tail -5 "$OUT/server-$name.log" >&2
	exit 1
}

# bench SCENARIO FLAGS…: the load tool pinned to TOOL_CPU; JSON lines are collected.
bench() {
	taskset -c "$TOOL_CPU" "$BIN/switchboard-bench" "$@" --url "ws://127.0.0.1:$PORT" --data-dir "$DATA" --server-pid "$SERVER_PID" \
		| tee -a "$OUT/report.txt" | grep '^{' >>"$OUT/results.jsonl" || true
	sleep 3 # let the server and the kernel forget the closed connections
}

# A fresh server for each connect run: RSS per connection is measured from a clean start.
start_server connect
bench connect --n "$N" --c 64
stop_server
start_server connect-max
bench connect --n "$CONNECT_N" --c 64
stop_server
# Every connection with a token the server has never seen: each handshake pays a full RS256
# verification (the verified-token cache cannot help).
start_server connect-distinct
bench connect --n "$N" --c 64 --per-user 1
stop_server

start_server fanout
bench fanout --n "$N" --messages "$MESSAGES" --size 100 --producers 1 --pin "$SERVER_CPU"
bench fanout --n "$N" --messages "$MESSAGES" --size 100 --producers "$PRODUCERS" --pin "$SERVER_CPU"
bench fanout --n "$N" --messages "$RATE_MESSAGES" --size 100 --rate "$RATE" --pin "$SERVER_CPU"
# Topics: broadcast-to-all, then the same subscribers over 100 dashboards.* topics (100 each at
# N = 10 000), 50 broadcasts per topic on random topics; connect+SUBSCRIBE beside connect alone.
bench fanout --n "$N" --messages 50 --size 100 --topics 100 --producers "$PRODUCERS"
# Slow consumers: 2 KB broadcasts so that ten connections that never read exceed the send budget
# (1 MiB) plus their socket buffers within the run; the readers' p99 with and without them.
bench fanout --n 200 --slow 10 --messages 4000 --size 2000 --rate 400
stop_server

if psql -h 127.0.0.1 -U "$PGUSER" -qc 'select 1' >/dev/null 2>&1; then
	psql -h 127.0.0.1 -U "$PGUSER" -qc 'drop database if exists sb_bench' >/dev/null
	psql -h 127.0.0.1 -U "$PGUSER" -qc 'create database sb_bench' >/dev/null
	PG_CREATED=1
	DSN="postgres://$PGUSER@127.0.0.1:5432/sb_bench?sslmode=disable"
	start_server rpc SWITCHBOARD_DATABASE_URL="$DSN"
	bench rpc --n "$RPC_N" --duration "$RPC_DURATION" --direct-dsn "$DSN" --pin "$SERVER_CPU"
	stop_server
else
	echo "load: no PostgreSQL on 127.0.0.1 for $PGUSER: rpc runs against the embedded SQLite, without --direct-dsn" >&2
	start_server rpc
	bench rpc --n "$RPC_N" --duration "$RPC_DURATION" --pin "$SERVER_CPU"
	stop_server
fi

echo >&2
echo "load: done; $(wc -l <"$OUT/results.jsonl") results in $OUT/results.jsonl, tables in $OUT/report.txt" >&2
grep -v '^{' "$OUT/report.txt" || true
