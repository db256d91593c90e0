#!/usr/bin/env bash
# Minimal reproduction of a Caddy reload race that the soak meets (its
# clients retry through it): a request on a fresh connection made while a
# config reload is under way can fail outright. No upgrade module in the
# config: a site that only responds. On Caddy v2.11.9, 300 forced reloads
# against 4 curl loops gave (2026-12-02, 2-core VM): 1209 answered, 80 empty
# replies (curl exit 52), 36 resets (56), 3 connections refused (7).
#
# Why: on Unix each config binds its own SO_REUSEPORT socket
# (listenReusable in Caddy's listen_unix.go), and the kernel spreads new
# connections over every socket bound to the port. When a reload closes
# the old config's socket, the connections still in its accept queue are
# reset (56), a SYN that hashes to it as it closes is refused (7), and a
# connection its server accepted at the last moment has its request read
# and dropped unanswered by net/http, which sees Server.Shutdown under way
# (conn.serve checks shuttingDown() after reading a request) (52).
#
#   soak/repro/reload-eof.sh [caddy binary, default bin/caddy]
# Exits 1 if any request failed (the bug is there), 0 otherwise.
set -euo pipefail
caddy=${1:-bin/caddy}
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cat >"$work/Caddyfile" <<'CONF'
{
	admin 127.0.0.1:18972
	persist_config off
	auto_https off
}
http://127.0.0.1:18970 {
	respond "ok"
}
CONF
HOME=$work XDG_CONFIG_HOME=$work XDG_DATA_HOME=$work "$caddy" run --adapter caddyfile --config "$work/Caddyfile" >"$work/caddy.log" 2>&1 &
pid=$!
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18970/ && break; sleep 0.1; done

# Reload the identical config again and again (forced, so each one really
# swaps the servers) while requests go out on fresh connections.
(
	for _ in $(seq 300); do
		curl -s -o /dev/null -X POST -H 'Content-Type: text/caddyfile' -H 'Cache-Control: must-revalidate' \
			--data-binary @"$work/Caddyfile" http://127.0.0.1:18972/load
	done
) &
reloader=$!
# Four clients, each a loop of curl on a fresh connection; each prints
# curl's exit code per request.
clients=()
for i in 1 2 3 4; do
	while kill -0 "$reloader" 2>/dev/null; do
		code=0
		curl -s -o /dev/null --max-time 5 http://127.0.0.1:18970/ || code=$?
		echo "$code"
	done >"$work/codes.$i" &
	clients+=($!)
done
wait "$reloader" "${clients[@]}"
sort "$work"/codes.* | uniq -c | awk '{printf "%s requests ended with curl exit code %s\n", $1, $2}'
echo "(0: answered; 52: empty reply, closed with no answer; 56: reset; 7: refused)"
! grep -qvx 0 "$work"/codes.*
