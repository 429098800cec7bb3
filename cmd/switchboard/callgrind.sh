#!/usr/bin/env bash
# Instructions per operation on the hot paths, counted by valgrind's callgrind: a figure that
# does not move with the machine's load, so a regression of a few percent shows.
#
#   bash cmd/switchboard/callgrind.sh                 # every workload, N=200
#   N=400 WORKLOADS="subscribe broadcast" bash cmd/switchboard/callgrind.sh
#   DB=postgres WORKLOADS="request http-request" bash cmd/switchboard/callgrind.sh
#
# DB=postgres runs the node on a fresh database of the PostgreSQL on 127.0.0.1 (storetest)
# instead of SQLite, so the database's work is another process's and the requests' figures are
# the server's own.
#
# It builds the cmd/switchboard test binary and runs BenchmarkHotPaths/<workload> under callgrind
# with -test.benchtime=${N}x. Go's benchmark runner calls each workload twice (1 op, then N), and
# callgrind dumps the counts of each call between callgrindZero and callgrindDump; the figure is
# (Ir(N) - Ir(1)) / (N - 1), so what a call costs once (waking a goroutine, the first frame on a
# socket) drops out. The counts are every thread's, server and the benchmark's raw-socket client
# (pre-built frames, no client goroutines). GOMAXPROCS=1 and no asynchronous preemption keep
# the scheduler's share steady (callgrind also needs the latter: it cannot follow Go's
# preemption signals; cpu.rdtscp=off because valgrind 3.19 does not decode RDTSCP, which the
# runtime's cputicks uses where the CPU has it). Output: one line per workload; OUT keeps the callgrind files
# (callgrind_annotate them to see where the instructions go).
set -euo pipefail

N=${N:-200}
WORKLOADS=${WORKLOADS:-"connect connect+subscribe subscribe resubscribe control request http-request broadcast"}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$(mktemp -d /tmp/switchboard-callgrind.XXXXXX)}
mkdir -p "$OUT"
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }

(cd "$ROOT" && go test -c -o "$OUT/switchboard.test" ./cmd/switchboard)

printf '%-18s %6s %16s %14s\n' workload N "instructions" "per op"
for w in $WORKLOADS; do
	dir="$OUT/$w"
	rm -rf "$dir"
	mkdir -p "$dir"
	pattern="^BenchmarkHotPaths\$/^$(printf '%s' "$w" | sed 's/[+]/\\+/g')\$"
	(cd "$dir" && HOTPATHS_DB=${DB:-sqlite} GOMAXPROCS=1 GOGC=${GOGC:-off} GODEBUG=asyncpreemptoff=1,cpu.rdtscp=off \
		valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
		--zero-before='*callgrindZero' --dump-before='*callgrindDump' \
		"$OUT/switchboard.test" -test.run '^$' -test.bench "$pattern" -test.benchtime "${N}x" \
		>"$dir/stdout" 2>"$dir/valgrind.log") || { echo "$w: failed, see $dir" >&2; exit 1; }
	# The dumps of --dump-before, in order: the workload's 1-op call, then its N-op call.
	mapfile -t totals < <(for f in $(ls "$dir"/cg.out.* | sort -t. -k3 -n); do
		grep -q '^desc: Trigger: --dump-before' "$f" && awk '/^totals:/ {print $2}' "$f"
	done)
	if [ "${#totals[@]}" -lt 2 ]; then
		echo "$w: expected 2 dumps, got ${#totals[@]} (see $dir)" >&2
		exit 1
	fi
	one=${totals[${#totals[@]}-2]}
	all=${totals[${#totals[@]}-1]}
	per=$(( (all - one) / (N - 1) ))
	printf '%-18s %6d %16d %14d\n' "$w" "$N" "$all" "$per"
done
echo "callgrind files: $OUT" >&2
