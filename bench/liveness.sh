#!/usr/bin/env bash
# How long one liveness pass (`mailauthd idp check`) takes for N mailboxes linked to the
# test OpenID provider (oidc-provider, tests/e2e/oidc/provider.mjs, on loopback). Every
# mailbox holds a real refresh token: each person signs in once through mailauthd's web
# page, the Authorization Code flow walked over HTTP by bench/liveness_signin.mjs (the
# provider's own login and consent forms, no browser), so the provider issued the token
# and mailauthd stored it sealed, as for a person. See bench/README.md ("Liveness check").
#
#   N=10000                       mailboxes (people at the provider, one sign-in each)
#   BENCH_SIGNIN_CONCURRENCY=8    sign-ins in flight during the set-up
#   BENCH_CONCURRENCY="4"         liveness_concurrency values to measure, one set of
#                                 passes each (e.g. "1 4 16")
#   BENCH_PASSES=2                passes per value
#   MAILAUTHD_BIN                 the binary (default: $CARGO_TARGET_DIR/release/mailauthd,
#                                 CARGO_TARGET_DIR defaulting to ./target); never built here
#   BENCH_OUT                     the report (default bench/results/DATE-liveness.md, -2, -3
#                                 … added rather than overwrite; "-": stdout only)
#   BENCH_SETUP_ONLY=1            the set-up alone (sign-ins, tokens), no pass: for a binary
#                                 without the liveness check
#   BENCH_KEEP=1                  keep the temporary folder (configs, logs, database)
#   BENCH_NOTE                    a line for the report (e.g. which commit the binary is from)
#
# Only loopback; every process it starts is stopped on exit. Needs node (20 or newer) and
# the npm packages of tests/e2e/oidc (installed from the lockfile when missing).
set -euo pipefail
export LC_ALL=C.UTF-8

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OIDC=$ROOT/tests/e2e/oidc
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${MAILAUTHD_BIN:-$CARGO_TARGET_DIR/release/mailauthd}
case $BIN in /*) ;; *) BIN=$ROOT/$BIN ;; esac
N=${N:-10000}
SIGNIN_CONCURRENCY=${BENCH_SIGNIN_CONCURRENCY:-8}
CONCURRENCIES=${BENCH_CONCURRENCY:-4}
PASSES=${BENCH_PASSES:-2}
SETUP_ONLY=${BENCH_SETUP_ONLY:-}
DATE=$(date -u +%Y-%m-%d)
OUT=${BENCH_OUT:-}
if [[ -z $OUT ]]; then
    OUT=bench/results/$DATE-liveness.md
    n=2
    while [[ -e $OUT ]]; do
        OUT=bench/results/$DATE-liveness-$n.md
        n=$((n + 1))
    done
fi
# shellcheck source=../tests/e2e/lib.sh
. "$ROOT/tests/e2e/lib.sh"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $N =~ ^[1-9][0-9]*$ ]] || die "N must be a positive number (got '$N')"
[[ -x $BIN ]] || die "no binary at $BIN: build it (cargo build --release) or set MAILAUTHD_BIN"
command -v node >/dev/null || die "node is needed (Debian: nodejs npm)"
command -v curl >/dev/null || die "curl is needed"
[[ $(node -p 'process.versions.node.split(".")[0]') -ge 20 ]] || die "Node.js 20 or newer is needed"
if [[ ! -d $OIDC/node_modules/oidc-provider ]]; then
    log "installing the npm packages of tests/e2e/oidc from package-lock.json"
    (cd "$OIDC" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi

T=$(mktemp -d /tmp/mailauthd-bench-liveness.XXXXXX)
PROVIDER_PID=
DAEMON_PID=
cleanup() {
    set +e
    stop_pid "$DAEMON_PID" 10
    stop_pid "$PROVIDER_PID"
    if [[ -n ${BENCH_KEEP:-} ]]; then log "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pick_port PROVIDER_PORT || die "no free port"
pick_port WEB_PORT || die "no free port"
BASE=http://127.0.0.1:$WEB_PORT
ISSUER=http://127.0.0.1:$PROVIDER_PORT
SECRET=bench-client-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
printf '%s\n' "$SECRET" >"$T/client-secret"
chmod 600 "$T/client-secret"
mkdir -p "$T/state" "$T/run"

# The people: user00001 … at bench.test, all with the template claim "staff".
WIDTH=$(( ${#N} > 5 ? ${#N} : 5 ))
node -e '
const [n, w] = [Number(process.argv[1]), Number(process.argv[2])];
const a = {};
for (let i = 1; i <= n; i += 1) {
  const id = "user" + String(i).padStart(w, "0");
  a[id] = { email: id + "@bench.test", email_verified: true, name: id, mailcow_template: "staff" };
}
process.stdout.write(JSON.stringify(a));
' "$N" "$WIDTH" >"$T/accounts.json"

cpu_ticks() { # PID: user + system CPU time so far, in clock ticks
    awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
TICKS=$(getconf CLK_TCK)

# The provider keeps everything in memory: room for every grant, token and session of the
# set-up and the passes (a sign-in leaves about ten entries, a pass one access token each).
node "$OIDC/provider.mjs" --port "$PROVIDER_PORT" --accounts "$T/accounts.json" \
    --redirect "$BASE/callback" --post-logout "$BASE/" --client-secret "$SECRET" \
    --store-size $((N * 40 + 10000)) --accounts-cache >"$T/provider.log" 2>&1 &
PROVIDER_PID=$!
wait_for 15 curl -fs -o /dev/null "$ISSUER/.well-known/openid-configuration" ||
    die "the provider did not start: $(cat "$T/provider.log")"

write_config() { # [MORE [oidc] LINES]
    cat >"$T/config.toml" <<EOF
state_directory = "$T/state"
runtime_directory = "$T/run"

[store]
url = "sqlite://$T/state/mailauthd.db"

[log]
level = "warn"

[oidc]
display_name = "Bench SSO"
issuer = "$ISSUER"
client_id = "mailauthd"
client_secret_file = "$T/client-secret"
redirect_url = "$BASE/callback"
timeout_ms = 10000
${1:-}

[web]
listen = "127.0.0.1:$WEB_PORT"
title = "Bench Mail"
mail_host = "mail.bench.test"
secure_cookies = false
EOF
}
# The daemon makes no pass of its own: the passes measured are the command line's.
if [[ -n $SETUP_ONLY ]]; then
    write_config
else
    write_config 'liveness_check_hours = 0'
fi
export MAILAUTHD_CONFIG=$T/config.toml
m() { "$BIN" "$@"; }
out=$(m config check 2>&1) || die "config check failed (a binary without the liveness check? BENCH_SETUP_ONLY=1 measures the set-up alone): $out"
m domain add bench.test >/dev/null
m template add staff --protocols imap,smtp >/dev/null
m mapping add staff staff >/dev/null

"$BIN" serve >"$T/mailauthd.log" 2>&1 &
DAEMON_PID=$!
wait_for 20 curl -fs -o /dev/null "$BASE/healthz" || die "mailauthd did not start: $(tail -n 20 "$T/mailauthd.log")"

LOAD_BEFORE=$(cut -d ' ' -f 1-3 /proc/loadavg)
log "signing in $N people ($SIGNIN_CONCURRENCY at a time) through $BASE and $ISSUER"
p0=$(cpu_ticks "$PROVIDER_PID")
d0=$(cpu_ticks "$DAEMON_PID")
SIGNIN=$(node "$ROOT/bench/liveness_signin.mjs" --base "$BASE" --prefix user --count "$N" \
    --concurrency "$SIGNIN_CONCURRENCY" --width "$WIDTH") || die "sign-ins failed: $SIGNIN"
SETUP_PROVIDER_CPU=$(awk -v a="$p0" -v b="$(cpu_ticks "$PROVIDER_PID")" -v t="$TICKS" 'BEGIN { printf "%.1f", (b - a) / t }')
SETUP_DAEMON_CPU=$(awk -v a="$d0" -v b="$(cpu_ticks "$DAEMON_PID")" -v t="$TICKS" 'BEGIN { printf "%.1f", (b - a) / t }')
log "sign-ins: $SIGNIN"
MAILBOXES=$(m --json mailbox list | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).length))')
[[ $MAILBOXES == "$N" ]] || die "after $N sign-ins there are $MAILBOXES mailboxes"
# The passes run from the command line, on the same database; the daemon stays up as in
# production, idle.
RESULTS=()
if [[ -z $SETUP_ONLY ]]; then
    for c in $CONCURRENCIES; do
        write_config "liveness_check_hours = 0
liveness_concurrency = $c"
        for pass in $(seq 1 "$PASSES"); do
            p0=$(cpu_ticks "$PROVIDER_PID")
            TIMEFORMAT='%R %U %S'
            rc=0
            { time m idp check >"$T/pass.out" 2>"$T/pass.err" || rc=$?; } 2>"$T/pass.time"
            read -r wall user sys <"$T/pass.time"
            prov=$(awk -v a="$p0" -v b="$(cpu_ticks "$PROVIDER_PID")" -v t="$TICKS" 'BEGIN { printf "%.1f", (b - a) / t }')
            oks=$(awk -F '\t' '$2 == "ok"' "$T/pass.out" | wc -l)
            summary_line=$(grep -E '^checked [0-9]+:' "$T/pass.out" || true)
            log "concurrency $c pass $pass: exit $rc, $wall s wall, CLI CPU ${user}+${sys} s, provider CPU $prov s, $oks ok; $summary_line"
            [[ $rc == 0 && $oks == "$N" ]] ||
                die "pass $pass did not answer ok for all $N (exit $rc): $(tail -n 3 "$T/pass.out") $(tail -n 5 "$T/pass.err")"
            RESULTS+=("| $c | $pass | $wall | $user + $sys | $prov | $summary_line |")
        done
    done
fi
LOAD_AFTER=$(cut -d ' ' -f 1-3 /proc/loadavg)

report() {
    echo "# Liveness check: one pass over $N linked mailboxes"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average $LOAD_BEFORE before, $LOAD_AFTER after;"
    echo "binary \`$BIN\` ($("$BIN" --version 2>/dev/null || echo unknown)); provider oidc-provider $(node -p "require('$OIDC/node_modules/oidc-provider/package.json').version") on node $(node --version)."
    [[ -z ${BENCH_NOTE:-} ]] || { echo; echo "$BENCH_NOTE"; }
    echo
    echo "Command: \`N=$N BENCH_SIGNIN_CONCURRENCY=$SIGNIN_CONCURRENCY BENCH_CONCURRENCY=\"$CONCURRENCIES\" BENCH_PASSES=$PASSES${SETUP_ONLY:+ BENCH_SETUP_ONLY=1} bench/liveness.sh\`"
    echo
    echo "## Set-up"
    echo
    echo "$N real sign-ins over HTTP, $SIGNIN_CONCURRENCY at a time: \`$SIGNIN\`"
    echo "(CPU: provider $SETUP_PROVIDER_CPU s, mailauthd $SETUP_DAEMON_CPU s)."
    if [[ -n $SETUP_ONLY ]]; then
        echo
        echo "No pass measured (BENCH_SETUP_ONLY)."
        return
    fi
    echo
    echo "## Passes (\`mailauthd idp check\`)"
    echo
    echo "| liveness_concurrency | pass | wall s | CLI CPU s (user + sys) | provider CPU s | summary |"
    echo "| --- | --- | --- | --- | --- | --- |"
    printf '%s\n' "${RESULTS[@]}"
    echo
    echo "The pass runs in the \`idp check\` process, so its CPU is the command's; the provider"
    echo "(one node process) is on the same 2 cores, and when its CPU is near the wall time it"
    echo "is what the pass waits for."
}
if [[ $OUT == - ]]; then
    report
else
    mkdir -p "$(dirname "$OUT")"
    report | tee "$OUT"
    log "report in $OUT"
fi
