#!/usr/bin/env bash
# mailauthd benchmark: mailauthd against Dovecot 2.3's own auth service on loopback, same
# load generator, same connections, one run. See bench/README.md for what each phase
# measures and how to read the output.
#
# Environment (all optional):
#   BENCH_SKIP_BUILD=1        use the existing release binaries, build nothing
#   CARGO_TARGET_DIR          where the release binaries are (default: ./target)
#   BENCH_DURATION=10         seconds measured per run (plus BENCH_WARMUP=1 before)
#   BENCH_CONNECTIONS=16      connections for the auth runs
#   BENCH_PIPELINE=8          requests in flight per connection for the cheap runs
#   BENCH_MAILBOXES=10000     mailboxes in the database
#   BENCH_APP_PASSWORDS=500   mailboxes with an app password (used in turn by the runs)
#   BENCH_BLF_USERS=200       mailboxes with an imported BLF-CRYPT (cost 5) hash
#   BENCH_ARGON_USERS=32      mailboxes with an Argon2id hash written by mailauthd
#   BENCH_BIG=1000000         mailboxes for the "large database" latency runs (0: skip)
#   BENCH_POLICY_CONNECTIONS=32
#   BENCH_TOKEN_USERS=500     mailboxes bound to an identity, for the access-token runs
#   BENCH_COLD_TOKENS=40000   distinct tokens minted for the cache-cold run (0: no token runs)
#   BENCH_OUT=bench/results/YYYY-MM-DD.md   where the report goes ("-": stdout only;
#                             by default -2, -3, … are added rather than overwrite one)
#   BENCH_PERF=1              also record a CPU profile of mailauthd during the
#                             app-password run (needs perf); its top symbols go in the report
#   BENCH_KEEP=1              keep the temporary folder (configs, logs, raw JSON)
#   BENCH_COMMAND             how the run was started, for the report (default: bench/run.sh)
#   BENCH_POLICY_TOML         TOML enabling the policy listener, @SOCKET@ for its path
#   BENCH_POSTGRES_URL        PostgreSQL server for the PostgreSQL runs (see
#                             bench/postgres-runs.sh; "" skips them)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release/mailauthd
LOADGEN=$CARGO_TARGET_DIR/release/examples/loadgen

DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-1}
CONNS=${BENCH_CONNECTIONS:-16}
PIPELINE=${BENCH_PIPELINE:-8}
MAILBOXES=${BENCH_MAILBOXES:-10000}
APP_PASSWORDS=${BENCH_APP_PASSWORDS:-500}
BLF_USERS=${BENCH_BLF_USERS:-200}
ARGON_USERS=${BENCH_ARGON_USERS:-32}
BIG=${BENCH_BIG:-1000000}
POLICY_CONNS=${BENCH_POLICY_CONNECTIONS:-32}
TOKEN_USERS=${BENCH_TOKEN_USERS:-500}
COLD_TOKENS=${BENCH_COLD_TOKENS:-40000}
DATE=$(date -u +%Y-%m-%d)
OUT=${BENCH_OUT:-}
if [[ -z $OUT ]]; then
    # Never overwrite an earlier report of the same day.
    OUT=bench/results/$DATE.md
    n=2
    while [[ -e $OUT ]]; do
        OUT=bench/results/$DATE-$n.md
        n=$((n + 1))
    done
fi
DOMAIN=bench.test
# Argon2id cost of the hashes mailauthd writes here: `doveadm pw -s ARGON2ID`'s defaults,
# so both servers verify hashes of the same cost (they verify the very same hashes).
ARGON_M=65536 ARGON_T=3 ARGON_P=1

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in python3 jq doveadm dovecot sqlite3; do
    command -v "$tool" >/dev/null || die "$tool is needed (Debian: python3 jq dovecot-core sqlite3)"
done

if [[ -z ${BENCH_SKIP_BUILD:-} ]]; then
    log "building release binaries (BENCH_SKIP_BUILD=1 skips this)"
    cargo build --release
    cargo build --release --example loadgen
fi
[[ -x $BIN && -x $LOADGEN ]] || die "no release binaries in $CARGO_TARGET_DIR/release"

. bench/postgres-runs.sh
T=$(mktemp -d /tmp/mailauthd-bench.XXXXXX)
chmod 755 "$T"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    pg_drop
    if [[ -n ${BENCH_KEEP:-} ]]; then
        log "kept $T"
    else
        rm -rf "$T"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop() { # PID: stop one process this script started and wait for it
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# mailauthd started on the current config, logging to LOG, once its auth socket is up.
start_mailauthd() { # LOG
    "$BIN" --config "$MA/mailauthd.toml" serve >"$1" 2>&1 &
    MA_PID=$!
    PIDS+=("$MA_PID")
    wait_socket "$MA/run/auth"
    sleep 1
}

# A freshly started mailauthd, the two app-password runs (labels ending in SUFFIX), the
# daemon stopped: the large-database and PostgreSQL runs.
app_password_runs() { # SUFFIX LOG
    start_mailauthd "$2"
    measure "app passwords$1" mailauthd "$MA_PID" auth --target "$MA_AUTH" --creds "$T/app.tsv" "${AUTH_CHEAP[@]}"
    measure "app passwords, 1 conn x 1$1" mailauthd "$MA_PID" auth --target "$MA_AUTH" --creds "$T/app.tsv" --connections 1 --pipeline 1
    stop "$MA_PID"
}

wait_socket() { # PATH
    local i
    for i in $(seq 1 100); do
        [[ -S $1 ]] && return 0
        sleep 0.1
    done
    die "no socket at $1"
}

tree_ticks() { # PID: CPU ticks (1/100 s) of a process and its children
    local total=0 p t
    for p in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
        t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null) || t=0
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

rss_kib() { # PID FIELD (VmRSS or VmHWM)
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

RESULTS=$T/results.jsonl
: >"$RESULTS"

# measure LABEL SERVER PID[,PID] LOADGEN-ARGS...: one loadgen run, with the CPU time of
# the server (and its children); with two PIDs, of both, also reported apart
measure() {
    local label=$1 server=$2 pids
    IFS=, read -r -a pids <<<"$3"
    shift 3
    local load out p
    local -a t0=() t1=()
    load=$(cut -d' ' -f1 /proc/loadavg)
    for p in "${pids[@]}"; do t0+=("$(tree_ticks "$p")"); done
    local warmup=${RUN_WARMUP:-$WARMUP} duration=${RUN_DURATION:-$DURATION}
    out=$("$LOADGEN" --json --warmup "$warmup" --duration "$duration" "$@") || true
    for p in "${pids[@]}"; do t1+=("$(tree_ticks "$p")"); done
    [[ -n $out ]] || out='{"error":"no output"}'
    local parts="[]" i
    for i in "${!pids[@]}"; do
        parts=$(jq -c --argjson t $((t1[i] - t0[i])) '. + [$t / 100]' <<<"$parts")
    done
    jq -c --arg lbl "$label" --arg server "$server" --argjson parts "$parts" \
        --argjson load "$load" --arg cmd "loadgen --warmup $warmup --duration $duration $*" \
        '. + {"label": $lbl, "server": $server, "server_cpu_s": ($parts | add),
              "server_cpu_parts_s": $parts, "loadavg": $load, "command": $cmd}' \
        <<<"$out" >>"$RESULTS"
    jq -r 'def one: "\(.name // "-"): \(.rps)/s ok=\(.ok) fail=\(.fail) tempfail=\(.tempfail) p50=\(.latency_ms.p50)ms p99=\(.latency_ms.p99)ms";
           "  \(.["label"]) [\(.server)]: " + (if .groups then ([.groups[] | one] | join(" | ")) else one end)
           + "  (server CPU \(.server_cpu_s)s, load \(.loadavg))"' <<<"$(tail -n1 "$RESULTS")" >&2
}

# ---------------------------------------------------------------------------------------
log "1. mailauthd: database with $MAILBOXES mailboxes in $T"
MA=$T/mailauthd
mkdir -p "$MA/state" "$MA/run"
POLICY_SOCKET=$MA/run/policy
write_config() { # EXTRA-TOML
    cat >"$MA/mailauthd.toml" <<EOF
state_directory = "$MA/state"
runtime_directory = "$MA/run"

# 0666: Dovecot's auth workers (user dovecot) connect through the Lua adapter.
[auth_socket]
listen = ["unix:$MA/run/auth"]
mode = "0666"

[userdb_socket]
listen = ["unix:$MA/run/userdb"]
mode = "0666"

[hash_pool]
workers = 2

[credentials]
argon2_memory_kib = $ARGON_M
argon2_iterations = $ARGON_T
argon2_parallelism = $ARGON_P
# Keep imported BLF-CRYPT hashes as they are, so every BLF-CRYPT login verifies bcrypt.
rehash_on_login = false
# Off for the comparison (Dovecot's auth cache is off too); on for the "warm" runs.
verify_cache_entries = ${VERIFY_CACHE:-0}

[log]
level = "warn"
$1
EOF
}
# The policy listener is newer than the auth socket; use it when this build has one.
POLICY_TOML=""
POLICY_OVERRIDE=${BENCH_POLICY_TOML:-}
for candidate in \
    "${POLICY_OVERRIDE//@SOCKET@/$POLICY_SOCKET}" \
    "[policy_socket]"$'\n'"listen = [\"unix:$POLICY_SOCKET\"]" \
    "[policy]"$'\n'"listen = [\"unix:$POLICY_SOCKET\"]"; do
    [[ -n $candidate ]] || continue
    write_config "$candidate"
    if "$BIN" --config "$MA/mailauthd.toml" config check >/dev/null 2>&1; then
        POLICY_TOML=$candidate
        break
    fi
done
write_config "$POLICY_TOML"
MCTL=("$BIN" --config "$MA/mailauthd.toml")
"${MCTL[@]}" migrate >/dev/null
"${MCTL[@]}" domain add "$DOMAIN" >/dev/null
DB=$MA/state/mailauthd.db

# Argon2id: through the CLI, as a postmaster would (two at a time: one per core).
for i in $(seq 1 "$ARGON_USERS"); do printf 'a%04d@%s\targon-pw-%04d\n' "$i" "$DOMAIN" "$i"; done >"$T/argon.tsv"
# shellcheck disable=SC2016 # expanded by sh -c, not here
tr '\t' ' ' <"$T/argon.tsv" | xargs -P 2 -L 1 sh -c \
    'printf "%s\n" "$3" | "$0" --config "$1" mailbox add "$2" --password-stdin --protocols all >/dev/null' \
    "$BIN" "$MA/mailauthd.toml"
sqlite3 "$DB" "SELECT address || ':' || password_hash FROM mailboxes WHERE address LIKE 'a%' ORDER BY address" >"$T/argon.passwd"
[[ $(wc -l <"$T/argon.passwd") -eq $ARGON_USERS ]] || die "Argon2id mailboxes missing"
# The same hashes must verify in Dovecot, or the comparison is void.
first_hash=$(head -n1 "$T/argon.passwd" | cut -d: -f2-)
doveadm pw -t "$first_hash" -p "$(head -n1 "$T/argon.tsv" | cut -f2)" >/dev/null ||
    die "doveadm does not verify mailauthd's Argon2id hash"

# BLF-CRYPT cost 5 from doveadm, imported as they would be from a Dovecot passdb.
for i in $(seq 1 "$BLF_USERS"); do printf 'b%04d@%s\tblf-pw-%04d\n' "$i" "$DOMAIN" "$i"; done >"$T/blf.tsv"
# shellcheck disable=SC2016 # expanded by sh -c, not here
tr '\t' ' ' <"$T/blf.tsv" | xargs -P 2 -L 1 sh -c \
    'printf "%s\t%s\n" "$0" "$(doveadm pw -s BLF-CRYPT -r 5 -p "$1")"' >"$T/blf.import"
[[ $(grep -c 'BLF-CRYPT' "$T/blf.import") -eq $BLF_USERS ]] || die "BLF-CRYPT hashes missing"
tr '\t' ':' <"$T/blf.import" >"$T/blf.passwd"
"${MCTL[@]}" mailbox import "$T/blf.passwd" >/dev/null

# The bulk: plain mailboxes u0000001.. with a stored Argon2id hash, the first
# $APP_PASSWORDS with an app password each (lookup hashes computed with the key file).
BULK=$((MAILBOXES - ARGON_USERS - BLF_USERS))
((BULK >= APP_PASSWORDS)) || die "BENCH_MAILBOXES too small"
python3 bench/populate.py mailboxes "$DB" "$DOMAIN" 1 "$BULK" "$first_hash"
# One app password through the CLI (which also creates the server key file), the rest
# by the script with that key: the run proves both kinds of hashes verify.
cli_user=$(printf 'u%07d@%s' "$APP_PASSWORDS" "$DOMAIN")
cli_pw=$("${MCTL[@]}" app-password create "$cli_user" --name bench --protocols all --json | jq -r .password)
python3 bench/populate.py app-passwords "$DB" "$MA/state/app-password.key" "$DOMAIN" 1 "$((APP_PASSWORDS - 1))" "$T/app.tsv"
printf '%s\t%s\n' "$cli_user" "$cli_pw" >>"$T/app.tsv"
python3 bench/populate.py plain-passwd "$DOMAIN" 1 "$BULK" "$T/plain.passwd" "$T/plain.tsv" "$APP_PASSWORDS"
log "   $(sqlite3 "$DB" 'SELECT count(*) FROM mailboxes') mailboxes, $(sqlite3 "$DB" 'SELECT count(*) FROM app_passwords') app passwords"

# Policy senders: each app-password mailbox sending as itself (the common, allowed case).
awk -F'\t' '{ print $1 "\t" $1 }' "$T/app.tsv" >"$T/senders.tsv"

# ---------------------------------------------------------------------------------------
log "2. Dovecot $(dovecot --version | cut -d' ' -f1): private auth service"
DC=$T/dovecot
mkdir -p "$DC/run" "$DC/state"
DC_PID=""
dovecot_base() {
    cat <<EOF
# Dovecot's auth service only: no protocols, no mail listeners.
base_dir = $DC/run
state_dir = $DC/state
instance_name = mailauthd-bench-$$
protocols =
log_path = $DC/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
auth_cache_size = 0
service auth {
  unix_listener auth-client {
    mode = 0666
  }
}
EOF
}
launch_dovecot() { # CONFIG-FILE
    rm -f "$DC/run/auth-client"
    dovecot -F -c "$1" &
    DC_PID=$!
    PIDS+=("$DC_PID")
    wait_socket "$DC/run/auth-client"
}
start_dovecot() { # PASSWD-FILE...: one passwd-file passdb per file, tried in order
    local f
    {
        dovecot_base
        printf 'userdb {\n  driver = static\n  args = uid=65534 gid=65534 home=/nonexistent\n}\n'
        for f in "$@"; do
            printf 'passdb {\n  driver = passwd-file\n  args = %s\n}\n' "$f"
        done
    } >"$DC/dovecot.conf"
    chmod 644 "$@"
    launch_dovecot "$DC/dovecot.conf"
}
# The shipped adapter as conf-examples/dovecot/README.md installs it, paths substituted.
start_dovecot_adapter() {
    install -m 0644 conf-examples/dovecot/mailauthd.lua "$DC/mailauthd.lua"
    {
        dovecot_base | grep -v -e '^auth_mechanisms' -e '^auth_cache_size'
        sed -e "s#/etc/dovecot/mailauthd.lua#$DC/mailauthd.lua#g" \
            -e "s#/run/mailauthd/auth\b#$MA/run/auth#g" \
            -e "s#/run/mailauthd/userdb\b#$MA/run/userdb#g" \
            -e "s#uid=vmail gid=vmail#uid=65534 gid=65534#" \
            conf-examples/dovecot/2.3/conf.d/auth-mailauthd.conf.ext
    } >"$DC/dovecot-adapter.conf"
    launch_dovecot "$DC/dovecot-adapter.conf"
}

DC_AUTH=unix:$DC/run/auth-client
MA_AUTH=unix:$MA/run/auth
AUTH_CHEAP=(--connections "$CONNS" --pipeline "$PIPELINE")
# Hashed logins: one request in flight per connection is already 8x the two cores.
AUTH_HASHED=(--connections "$CONNS" --pipeline 1)

log "3. mailauthd (release) serving"
"$BIN" --config "$MA/mailauthd.toml" serve >"$MA/serve.log" 2>&1 &
MA_PID=$!
PIDS+=("$MA_PID")
wait_socket "$MA/run/auth"
sleep 2
RSS_IDLE=$(rss_kib "$MA_PID" VmRSS)
log "   idle RSS ${RSS_IDLE} KiB"

log "4. runs: ${DURATION}s each after ${WARMUP}s warm-up"
start_dovecot "$T/plain.passwd"
measure "PLAIN passwd-file" dovecot "$DC_PID" auth --target "$DC_AUTH" --creds "$T/plain.tsv" "${AUTH_CHEAP[@]}"
stop "$DC_PID"

PERF_FILE=""
if [[ -n ${BENCH_PERF:-} ]] && command -v perf >/dev/null; then
    PERF_FILE=$T/perf.data
    perf record -F 199 --call-graph dwarf,8192 -p "$MA_PID" -o "$PERF_FILE" -- sleep "$((WARMUP + DURATION))" >/dev/null 2>&1 &
    PIDS+=("$!")
fi
measure "app passwords" mailauthd "$MA_PID" auth --target "$MA_AUTH" --creds "$T/app.tsv" "${AUTH_CHEAP[@]}"
measure "app passwords, 1 conn x 1" mailauthd "$MA_PID" auth --target "$MA_AUTH" --creds "$T/app.tsv" --connections 1 --pipeline 1
if [[ -n $PERF_FILE ]]; then
    wait "${PIDS[-1]}" 2>/dev/null || true
    unset 'PIDS[-1]'
fi
ADAPTER=no
# lua-socket's unix module for Dovecot's Lua 5.4; the lua5.4 interpreter itself is not needed.
lua_socket_unix() {
    lua5.4 -e 'require("socket.unix")' 2>/dev/null \
        || compgen -G '/usr/lib/*/lua/5.4/socket/unix.so' >/dev/null
}
if [[ -e /usr/lib/dovecot/modules/auth/libauthdb_lua.so ]] && lua_socket_unix; then
    ADAPTER=yes
    start_dovecot_adapter
    measure "app passwords via the Lua adapter" "dovecot+mailauthd" "$DC_PID,$MA_PID" auth --target "$DC_AUTH" --creds "$T/app.tsv" "${AUTH_CHEAP[@]}"
    stop "$DC_PID"
else
    log "   Dovecot's Lua passdb or lua-socket missing: adapter run skipped (apt-get install dovecot-auth-lua lua-socket)"
fi

start_dovecot "$T/blf.passwd"
measure "BLF-CRYPT cost 5" dovecot "$DC_PID" auth --target "$DC_AUTH" --creds "$T/blf.tsv" "${AUTH_HASHED[@]}"
stop "$DC_PID"
measure "BLF-CRYPT cost 5 (imported)" mailauthd "$MA_PID" auth --target "$MA_AUTH" --creds "$T/blf.tsv" "${AUTH_HASHED[@]}"

# Argon2id passdb first, the PLAIN one behind it for the head-of-line run.
start_dovecot "$T/argon.passwd" "$T/plain.passwd"
measure "ARGON2ID m=64M t=3" dovecot "$DC_PID" auth --target "$DC_AUTH" --creds "$T/argon.tsv" "${AUTH_HASHED[@]}"
measure "head-of-line: ARGON2ID saturating" dovecot "$DC_PID" mixed \
    --auth "name=argon2id,target=$DC_AUTH,creds=$T/argon.tsv,connections=8,pipeline=2" \
    --auth "name=plain,target=$DC_AUTH,creds=$T/plain.tsv,connections=4,pipeline=1"
stop "$DC_PID"
measure "Argon2id m=64M t=3" mailauthd "$MA_PID" auth --target "$MA_AUTH" --creds "$T/argon.tsv" "${AUTH_HASHED[@]}"
HOL_POLICY=()
if [[ -n $POLICY_TOML ]]; then
    HOL_POLICY=(--policy "name=policy,target=unix:$POLICY_SOCKET,senders=$T/senders.tsv,connections=4")
fi
measure "head-of-line: Argon2id saturating" mailauthd "$MA_PID" mixed \
    --auth "name=argon2id,target=$MA_AUTH,creds=$T/argon.tsv,connections=8,pipeline=2" \
    --auth "name=app,target=$MA_AUTH,creds=$T/app.tsv,connections=4,pipeline=1" \
    "${HOL_POLICY[@]}"

if [[ -n $POLICY_TOML ]]; then
    measure "policy" mailauthd "$MA_PID" policy --target "unix:$POLICY_SOCKET" --senders "$T/senders.tsv" --connections "$POLICY_CONNS"
else
    log "   this mailauthd build has no policy listener: policy runs only against Python"
fi
python3 bench/policy_server.py "unix:$T/py-policy" &
PY_PID=$!
PIDS+=("$PY_PID")
wait_socket "$T/py-policy"
measure "policy" python "$PY_PID" policy --target "unix:$T/py-policy" --senders "$T/senders.tsv" --connections "$POLICY_CONNS"
stop "$PY_PID"

RSS_LOADED=$(rss_kib "$MA_PID" VmRSS)
RSS_PEAK=$(rss_kib "$MA_PID" VmHWM)
log "   RSS after the runs ${RSS_LOADED} KiB, peak ${RSS_PEAK} KiB"
stop "$MA_PID"

# The same hashed logins with the verification cache on: after the first login of each
# mailbox, a repeat with the same password skips the hash (the mailbox is still read).
log "4b. hashed logins with the verification cache on"
VERIFY_CACHE=10000 write_config "$POLICY_TOML"
start_mailauthd "$MA/serve.log"
measure "BLF-CRYPT cost 5 (imported), cache warm" mailauthd "$MA_PID" auth --target "$MA_AUTH" --creds "$T/blf.tsv" "${AUTH_HASHED[@]}"
measure "Argon2id m=64M t=3, cache warm" mailauthd "$MA_PID" auth --target "$MA_AUTH" --creds "$T/argon.tsv" "${AUTH_HASHED[@]}"
stop "$MA_PID"

# ---------------------------------------------------------------------------------------
. bench/token-runs.sh
write_config "$POLICY_TOML"

# ---------------------------------------------------------------------------------------
if pg_start; then
    pg_measure ""
fi

# ---------------------------------------------------------------------------------------
BIG_NOTE=""
if ((BIG > MAILBOXES)); then
    log "5. growing the database to $BIG mailboxes (each with an app password)"
    start=$(date +%s)
    python3 bench/populate.py fill "$DB" "$DOMAIN" "$((BULK + 1))" "$((BIG - MAILBOXES))" "$first_hash"
    BIG_NOTE="filled in $(($(date +%s) - start)) s"
    # Written out before mailauthd starts: the kernel's write-back of the new file is not
    # part of what the runs measure.
    sync
    log "   $BIG_NOTE; $(sqlite3 "$DB" 'SELECT count(*) FROM mailboxes') mailboxes"
    app_password_runs " @ $BIG" "$MA/serve.log"
    if [[ -n $PG_URL ]]; then
        log "6b. PostgreSQL: $(pg_copy_rows) mailboxes copied from SQLite"
        pg_measure " @ $BIG"
    fi
else
    log "5. large-database runs skipped (BENCH_BIG=$BIG)"
fi

# ---------------------------------------------------------------------------------------
PERF_TOP=""
if [[ -n $PERF_FILE && -s $PERF_FILE ]]; then
    PERF_TOP=$T/perf-top.txt
    # Inclusive ("children") view: which code paths the time is spent under.
    perf report -i "$PERF_FILE" --children --sort sym -g none --percent-limit 3 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -n 60 >"$PERF_TOP" || true
fi

jq -n \
    --arg date "$(date -u '+%Y-%m-%d %H:%M UTC')" \
    --arg cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
    --arg cores "$(nproc)" \
    --arg mem "$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)" \
    --arg kernel "$(uname -r)" \
    --arg dovecot "$(dovecot --version)" \
    --arg commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --arg src_commit "$(git log -1 --format=%h -- src Cargo.toml Cargo.lock 2>/dev/null || echo unknown)" \
    --arg command "${BENCH_COMMAND:-bench/run.sh}" --arg nice "$(nice)" \
    --arg mailboxes "$MAILBOXES" --arg big "$BIG" --arg big_note "$BIG_NOTE" \
    --arg app "$APP_PASSWORDS" --arg blf "$BLF_USERS" --arg argon "$ARGON_USERS" \
    --arg duration "$DURATION" --arg warmup "$WARMUP" \
    --arg policy "$([[ -n $POLICY_TOML ]] && echo yes || echo no)" --arg adapter "$ADAPTER" \
    --argjson rss_idle "$RSS_IDLE" --argjson rss_loaded "$RSS_LOADED" --argjson rss_peak "$RSS_PEAK" \
    '$ARGS.named' >"$T/meta.json"

python3 bench/report.py "$T/meta.json" "$RESULTS" ${PERF_TOP:+"$PERF_TOP"} >"$T/report.md"
if [[ $OUT == - ]]; then
    cat "$T/report.md"
else
    mkdir -p "$(dirname "$OUT")"
    cp "$T/report.md" "$OUT"
    cp "$RESULTS" "${OUT%.md}.jsonl"
    cat "$T/report.md"
    log "report written to $OUT (raw figures in ${OUT%.md}.jsonl)"
fi
