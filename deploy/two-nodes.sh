#!/usr/bin/env bash
# Runs two Switchboard nodes on this machine, sharing one PostgreSQL database, one Redis and one
# data directory (for the development issuer's key), until Ctrl-C.
#   node A: http://127.0.0.1:8001   node B: http://127.0.0.1:8002
# Override SWITCHBOARD_DATABASE_URL / SWITCHBOARD_REDIS_URL to use other servers.
set -euo pipefail
cd "$(dirname "$0")/.."

export SWITCHBOARD_DATABASE_URL="${SWITCHBOARD_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/switchboard?sslmode=disable}"
export SWITCHBOARD_REDIS_URL="${SWITCHBOARD_REDIS_URL:-redis://127.0.0.1:6379/0}"
export SWITCHBOARD_DATA_DIR="${SWITCHBOARD_DATA_DIR:-./data}"

# Create the database on the local server if it is missing (harmless when it exists).
if command -v psql >/dev/null 2>&1 && [[ "$SWITCHBOARD_DATABASE_URL" == postgres://postgres@127.0.0.1:5432/switchboard* ]]; then
  psql -h 127.0.0.1 -U postgres -tc "SELECT 1 FROM pg_database WHERE datname = 'switchboard'" | grep -q 1 ||
    psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE switchboard" >/dev/null
fi

go build -o bin/switchboard ./cmd/switchboard
bin/switchboard migrate

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
SWITCHBOARD_ADDR=127.0.0.1:8001 bin/switchboard serve 2>&1 | sed -u 's/^/[A] /' & pids+=($!)
SWITCHBOARD_ADDR=127.0.0.1:8002 bin/switchboard serve 2>&1 | sed -u 's/^/[B] /' & pids+=($!)
echo "node A on :8001, node B on :8002 — get a token with: bin/switchboard token --user alice --roles get-authors,broadcast"
wait
