#!/usr/bin/env bash
# Slow HTTP against the web page while examples/loadgen drives app-password logins on the
# auth socket: how the auth socket answers (p50/p99) with and without the flood, and how
# fast the server closes the slow connections. tests/daemon.rs runs a smaller version of
# this (5,000 connections, once each) as a test; this is the 20,000 of the hardening issue.
#
# Environment (all optional):
#   SLOW_CONNECTIONS=20000  slow HTTP connections, split over SLOW_PROCESSES client processes
#                           (each process stays under the descriptor limit)
#   SLOW_PROCESSES=2
#   SLOW_INTERVAL=2         seconds between the header bytes of one connection
#   SLOW_RECONNECT=1        open a connection again as soon as the server closes it
#   BENCH_DURATION=20       seconds the logins are measured, with and without the flood
#   BENCH_CONNECTIONS=4     loadgen connections; BENCH_PIPELINE=1 requests in flight each
#   BENCH_PROFILE=release   release or debug: which build of mailauthd and loadgen to use
#   BENCH_SKIP_BUILD=1      build nothing
#   CARGO_TARGET_DIR        where the binaries are (default: ./target)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PROFILE=${BENCH_PROFILE:-release}
BIN=$CARGO_TARGET_DIR/$PROFILE/mailauthd
LOADGEN=$CARGO_TARGET_DIR/$PROFILE/examples/loadgen
SLOW=${SLOW_CONNECTIONS:-20000}
PROCS=${SLOW_PROCESSES:-2}
INTERVAL=${SLOW_INTERVAL:-2}
DURATION=${BENCH_DURATION:-20}
CONNS=${BENCH_CONNECTIONS:-4}
PIPELINE=${BENCH_PIPELINE:-1}

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
command -v jq >/dev/null || die "jq is needed"
command -v python3 >/dev/null || die "python3 is needed"

if [[ -z ${BENCH_SKIP_BUILD:-} ]]; then
    flag=()
    [[ $PROFILE == release ]] && flag=(--release)
    cargo build "${flag[@]}" --bin mailauthd --example loadgen >&2
fi
[[ -x $BIN && -x $LOADGEN ]] || die "no $BIN or $LOADGEN"

# Each process may use the hard limit; the daemon holds at most [web] max_connections.
ulimit -n "$(ulimit -Hn)"

T=$(mktemp -d)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$T"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$T/state" "$T/run"
cat >"$T/mailauthd.toml" <<EOF
state_directory = "$T/state"
runtime_directory = "$T/run"
[log]
level = "warn"
[web]
listen = "127.0.0.1:$PORT"
secure_cookies = false
EOF
m() { "$BIN" --config "$T/mailauthd.toml" "$@"; }
m domain add example.org >/dev/null
for i in $(seq 1 20); do
    m mailbox add "user$i@example.org" --no-password >/dev/null
    m --json app-password create "user$i@example.org" --name bench --protocols imap \
        | jq -r --arg u "user$i@example.org" '"\($u)\t\(.password)"' >>"$T/creds.tsv"
done

"$BIN" --config "$T/mailauthd.toml" serve 2>"$T/daemon.log" &
DAEMON=$!
PIDS+=("$DAEMON")
for _ in $(seq 100); do [[ -S $T/run/auth ]] && break; sleep 0.1; done
[[ -S $T/run/auth ]] || die "daemon did not start: $(cat "$T/daemon.log")"

logins() { # LABEL
    local out
    out=$("$LOADGEN" --json --warmup 1 --duration "$DURATION" auth --target "unix:$T/run/auth" \
        --creds "$T/creds.tsv" --connections "$CONNS" --pipeline "$PIPELINE" --rip 192.0.2.7)
    jq -r --arg l "$1" '"\($l): \(.rps)/s ok=\(.ok) fail=\(.fail) tempfail=\(.tempfail) unanswered=\(.unanswered) latency ms p50=\(.latency_ms.p50) p99=\(.latency_ms.p99) max=\(.latency_ms.max)"' <<<"$out"
}

rss() { awk '$1 == "VmRSS:" { print $2 " KiB" }' "/proc/$DAEMON/status"; }

echo "mailauthd $PROFILE build; $SLOW slow connections (a header byte every ${INTERVAL}s) in $PROCS processes$([[ ${SLOW_RECONNECT:-1} == 1 ]] && echo ', reconnecting when closed')"
echo "auth logins: loadgen auth --connections $CONNS --pipeline $PIPELINE --duration $DURATION (app passwords)"
logins "without the flood"
echo "daemon RSS idle: $(rss)"

per=$(( (SLOW + PROCS - 1) / PROCS ))
reconnect=()
[[ ${SLOW_RECONNECT:-1} == 1 ]] && reconnect=(--reconnect)
FLOOD_FOR=$((DURATION + 6))
for i in $(seq 1 "$PROCS"); do
    python3 "$ROOT/bench/slow_http.py" --port "$PORT" --connections "$per" --interval "$INTERVAL" \
        --duration "$FLOOD_FOR" "${reconnect[@]}" >"$T/slow-$i.json" &
    PIDS+=("$!")
done
sleep 3
logins "during the flood"
echo "daemon RSS during the flood: $(rss), descriptors: $(ls /proc/$DAEMON/fd | wc -l)"
for i in $(seq 1 "$PROCS"); do
    wait "${PIDS[$i]}" || true
    echo "slow clients $i: $(cat "$T/slow-$i.json")"
done
curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null && echo "web page answers again after the flood"
grep -c "connection limit reached" "$T/daemon.log" | sed 's/^/log lines about the connection cap (at most one a second): /'
