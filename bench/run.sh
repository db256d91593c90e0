#!/usr/bin/env bash
# The one command behind `make bench`: installs nginx and HAProxy if they are
# missing, builds bin/caddy (with this module), bin/echo and the load
# harness, then runs bench/cmd/wsbench pinned to CPU 1 (the proxies go to
# CPU 0). Extra arguments go to wsbench, e.g. `bench/run.sh -reps 1 -dur 1s`,
# or `bench/run.sh -tls tls` for the TLS mode alone (default: plain, then TLS).
# On a machine shared with other work, BENCH_NICE=-10 runs the benchmark (and
# every process it starts) at that niceness so it takes priority.
# Every process it starts is killed on exit, however it exits.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/nginx ] || need+=(nginx)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v taskset >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
	echo "== installing ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== building bin/caddy, bin/echo, bench/bin/wsbench"
mkdir -p bin bench/bin
# Build to a temporary name and rename: a binary someone is running is
# replaced, not overwritten in place.
go build -o "bin/.caddy.$$" ./cmd/caddy && mv -f "bin/.caddy.$$" bin/caddy
go build -o "bin/.echo.$$" ./cmd/echo && mv -f "bin/.echo.$$" bin/echo
(cd bench && go build -o bin/wsbench ./cmd/wsbench)

ulimit -n "$(ulimit -Hn)"
pidfile=$(mktemp /tmp/wsbench-pids.XXXXXX)
wsbench_pid=
cleanup() {
	if [ -n "$wsbench_pid" ]; then kill -TERM "$wsbench_pid" 2>/dev/null || true; fi
	sleep 0.2
	# Children wsbench did not get to kill (it died hard): whole groups.
	while read -r pgid; do
		[ -n "$pgid" ] && kill -KILL -- "-$pgid" 2>/dev/null || true
	done <"$pidfile"
	if [ -n "$wsbench_pid" ]; then kill -KILL "$wsbench_pid" 2>/dev/null || true; fi
	rm -f "$pidfile"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

nice_level=${BENCH_NICE:-0}
echo "== running (nofile limit $(ulimit -n), niceness $nice_level)"
nice -n "$nice_level" taskset -c 1 bench/bin/wsbench -pidfile "$pidfile" "$@" &
wsbench_pid=$!
wait "$wsbench_pid"
