#!/usr/bin/env bash
# Rate limiter throughput beside the physical limit of the same Redis: redis-benchmark SET at 64
# connections, then BenchmarkRedisRateLimiter at 64 concurrent callers, then their ratio
# (target: the limiter reaches at least 40% of the SET rate).
#   usage: store/limits/bench.sh            (REDIS_HOST, REDIS_PORT, BENCH_N override defaults)
set -euo pipefail
cd "$(dirname "$0")/../.."

host="${REDIS_HOST:-127.0.0.1}"
port="${REDIS_PORT:-6379}"
n="${BENCH_N:-200000}"
export SWITCHBOARD_TEST_REDIS_URL="redis://${host}:${port}/0"

echo "== redis-benchmark -h ${host} -p ${port} -t set -c 64 -n ${n} -q"
set_line="$(redis-benchmark -h "$host" -p "$port" -t set -c 64 -n "$n" -q | tr '\r' '\n' | grep 'requests per second' | tail -1)"
echo "$set_line"
set_rps="$(awk '{print $2}' <<<"$set_line")"

echo "== go test -run '^\$' -bench BenchmarkRedisRateLimiter -benchtime ${n}x ./store/limits/"
bench_out="$(go test -run '^$' -bench 'BenchmarkRedisRateLimiter$' -benchtime "${n}x" ./store/limits/)"
echo "$bench_out"
checks="$(awk '/^BenchmarkRedisRateLimiter/ { for (i = 2; i <= NF; i++) if ($i == "checks/s") print $(i-1) }' <<<"$bench_out")"
p99="$(awk '/^BenchmarkRedisRateLimiter/ { for (i = 2; i <= NF; i++) if ($i == "p99-ms") print $(i-1) }' <<<"$bench_out")"

if [[ -z "$set_rps" || -z "$checks" ]]; then
  echo "could not read both rates (Redis down?)" >&2
  exit 1
fi
awk -v s="$set_rps" -v c="$checks" -v p="$p99" 'BEGIN {
  printf "== summary: SET %.0f req/s; limiter %.0f checks/s (p99 %s ms) = %.0f%% of SET (target >= 40%%)\n", s, c, p, 100 * c / s
}'
