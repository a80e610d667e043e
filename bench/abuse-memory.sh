#!/usr/bin/env bash
# Resident memory of mailauthd under abuse loads, with Argon2id hashes of m=64 MiB, t=3
# in the store and the default hash pool (one worker per core): idle, then each load of
# bench/abuse_clients.py in turn, sampling VmRSS every 100 ms. Prints a Markdown table.
#
#   bench/abuse-memory.sh                     # release build (cargo build --release first)
#   MAILAUTHD_BIN=target/debug/mailauthd bench/abuse-memory.sh
#   BENCH_OUT=bench/results/DATE-abuse-memory.md bench/abuse-memory.sh
#
# Everything runs on unix sockets under a temporary folder; nothing on the network.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${MAILAUTHD_BIN:-target/release/mailauthd}
[ -x "$BIN" ] || { echo "no daemon at $BIN (cargo build --release, or set MAILAUTHD_BIN)" >&2; exit 2; }
BIN=$(realpath "$BIN")
SMOKE=${BENCH_SMOKE:-}
T=$(mktemp -d)
PID=
cleanup() {
	[ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT

cat >"$T/mailauthd.toml" <<CONF
state_directory = "$T/state"
runtime_directory = "$T/run"
[credentials]
argon2_memory_kib = 65536
argon2_iterations = 3
[auth_socket]
max_connections = 4096
[throttle]
# The loads measure memory, not the throttle: nothing is delayed or blocked.
enabled = false
CONF
md() { "$BIN" --config "$T/mailauthd.toml" "$@"; }
md domain add example.org >/dev/null
printf 'bench-password\n' | md mailbox add alice@example.org --password-stdin >/dev/null
"$BIN" --config "$T/mailauthd.toml" serve 2>"$T/daemon.log" &
PID=$!
for _ in $(seq 100); do [ -S "$T/run/auth" ] && break; sleep 0.1; done
[ -S "$T/run/auth" ] || { echo "daemon did not start" >&2; cat "$T/daemon.log" >&2; exit 1; }
sleep 1
rss() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# run LOAD ARGS...: peak and after-load RSS while abuse_clients.py runs LOAD.
run() {
	local peak=0 r out
	python3 bench/abuse_clients.py "$T/run/auth" "$@" >"$T/out.json" &
	local client=$!
	while kill -0 "$client" 2>/dev/null; do
		r=$(rss)
		[ "$r" -gt "$peak" ] && peak=$r
		sleep 0.1
	done
	wait "$client"
	sleep 1
	out=$(cat "$T/out.json")
	printf '| %s | %s | %s | `%s` |\n' "$*" "$(mib "$peak")" "$(mib "$(rss)")" "$out"
}

idle=$(rss)
{
	echo "# mailauthd resident memory under abuse"
	echo
	echo "$(date -u +%F) · $(uname -m) · $(nproc) cores · $("$BIN" --version 2>/dev/null || echo mailauthd) · Argon2id m=64 MiB t=3, default hash pool"
	echo
	echo "Idle after start: $(mib "$idle") MiB."
	echo
	echo "| load | peak RSS (MiB) | RSS after (MiB) | replies |"
	echo "| --- | --- | --- | --- |"
	if [ -n "$SMOKE" ]; then
		run pipelined 2 10
	else
		run pipelined 1 120
		run pipelined 100 120
		run idle 2000 5
		run pipelined 100 120
	fi
} | tee "${BENCH_OUT:-/dev/null}"
