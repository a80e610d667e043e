#!/usr/bin/env bash
# End-to-end test of page sessions in the store and OpenID Connect Back-Channel Logout:
# two daemons (A and B) on one fresh PostgreSQL database, the real OpenID provider (npm
# oidc-provider, its back-channel logout pointed at A) and Chromium (playwright-core). The
# browser signs in through A and is signed in on B too (cookies are per host, not port);
# A restarts and the browser is still signed in; the browser ends its session at the
# provider's end-session endpoint, the provider POSTs a logout token to A, and both A and B
# show the signed-out page. A forged logout token posted with curl gets 400.
#
#   MAILAUTHD_BIN   the binary to test (default: target/debug/mailauthd; build it first)
#   ARTIFACTS       screenshots go to $ARTIFACTS/screenshots (default: ci-artifacts)
#   PGURL           the PostgreSQL server (default: postgres://postgres@127.0.0.1:5432);
#                   a database is created for the run and dropped at the end
#   KEEP=1          keep the temporary folder (configs, logs)
#
# Installs chromium, curl, nodejs, postgresql-client (apt) and the npm packages from the
# committed lockfile when missing. Only loopback addresses are used. Ends with
# "N passed, N failed"; exits non-zero on any failure.

set -euo pipefail
export LC_ALL=C.UTF-8

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
MAILAUTHD_BIN=${MAILAUTHD_BIN:-$REPO/target/debug/mailauthd}
case $MAILAUTHD_BIN in /*) ;; *) MAILAUTHD_BIN=$REPO/$MAILAUTHD_BIN ;; esac
ARTIFACTS=${ARTIFACTS:-$REPO/ci-artifacts}
case $ARTIFACTS in /*) ;; *) ARTIFACTS=$REPO/$ARTIFACTS ;; esac
SHOTS=$ARTIFACTS/screenshots
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
# shellcheck source=../lib.sh
. "$REPO/tests/e2e/lib.sh"

PIDS=()
DB=mailauthd_e2e_sessions_$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
DB_CREATED=

cleanup() {
	local status=$? pid
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [ -n "$DB_CREATED" ]; then
		psql -q "$PGURL/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
	fi
	if [ -n "${TMP:-}" ]; then
		if [ "${KEEP:-}" = 1 ]; then echo "# kept $TMP"; else rm -rf "$TMP"; fi
	fi
	exit "$status"
}
trap cleanup EXIT

die() {
	echo "error: $*" >&2
	E2E_FAILED=$((E2E_FAILED + 1))
	summary
	exit 1
}

need_apt=()
[ -x /usr/bin/chromium ] || need_apt+=(chromium fonts-dejavu-core)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
if [ "${#need_apt[@]}" -gt 0 ]; then
	echo "# installing ${need_apt[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if [ ! -d "$HERE/node_modules/oidc-provider" ] || [ ! -d "$HERE/node_modules/playwright-core" ]; then
	echo "# installing npm packages from package-lock.json"
	(cd "$HERE" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi
[ -x "$MAILAUTHD_BIN" ] || die "$MAILAUTHD_BIN is missing: run cargo build first (or set MAILAUTHD_BIN)"

psql -q "$PGURL/postgres" -c "CREATE DATABASE $DB" >/dev/null || die "cannot create database $DB at $PGURL"
DB_CREATED=1

TMP=$(mktemp -d /tmp/mailauthd-e2e-sessions.XXXXXX)
mkdir -p "$SHOTS"
rm -f "$SHOTS"/sessions-*.png
pick_port PROVIDER_PORT || die "no free port"
pick_port PORT_A || die "no free port"
pick_port PORT_B || die "no free port"
BASE_A=http://127.0.0.1:$PORT_A
BASE_B=http://127.0.0.1:$PORT_B
ISSUER=http://127.0.0.1:$PROVIDER_PORT
CLIENT_SECRET=e2e-client-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
printf '%s\n' "$CLIENT_SECRET" >"$TMP/client-secret"
chmod 600 "$TMP/client-secret"
cat >"$TMP/accounts.json" <<EOF
{ "alice": { "email": "alice@example.org", "email_verified": true, "name": "Alice", "mailcow_template": "staff" } }
EOF

write_config() { # $1 = name (a, b), $2 = port
	mkdir -p "$TMP/$1/state" "$TMP/$1/run"
	cat >"$TMP/$1/config.toml" <<EOF
state_directory = "$TMP/$1/state"
runtime_directory = "$TMP/$1/run"

[store]
url = "$PGURL/$DB"

[credentials]
argon2_memory_kib = 8192
argon2_iterations = 1

[log]
level = "info"

[oidc]
display_name = "Example SSO"
issuer = "$ISSUER"
client_id = "mailauthd"
client_secret_file = "$TMP/client-secret"
redirect_url = "$BASE_A/callback"
timeout_ms = 5000

[web]
listen = "127.0.0.1:$2"
title = "Example Mail"
# Plain HTTP on loopback, without a TLS proxy in front.
secure_cookies = false
EOF
}
write_config a "$PORT_A"
write_config b "$PORT_B"

m() { "$MAILAUTHD_BIN" --config "$TMP/a/config.toml" "$@"; }
json() { # $1 = JavaScript expression over j; JSON on stdin
	node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{try{const j=JSON.parse(s);const v=eval(process.argv[1]);console.log(v===undefined||v===null?"":typeof v==="string"?v:JSON.stringify(v))}catch(e){console.log("")}})' "$1"
}
wait_http() { wait_for 10 curl -fsk -o /dev/null "$1" 2>/dev/null; }

m migrate >/dev/null || die "migrate failed"
m domain add example.org >/dev/null
m template add staff --quota 1G --protocols imap,smtp >/dev/null
m mapping add staff staff >/dev/null

node "$HERE/provider.mjs" --port "$PROVIDER_PORT" --accounts "$TMP/accounts.json" \
	--redirect "$BASE_A/callback" --post-logout "$BASE_A/?signed-out" \
	--client-secret "$CLIENT_SECRET" --backchannel-logout "$BASE_A/backchannel-logout" \
	>"$TMP/provider.log" 2>&1 &
PIDS+=($!)
start_daemon() { # $1 = a or b; sets DAEMON_<A|B>
	"$MAILAUTHD_BIN" --config "$TMP/$1/config.toml" serve >>"$TMP/$1/mailauthd.log" 2>&1 &
	PIDS+=($!)
	printf -v "DAEMON_${1^^}" '%s' "$!"
}
start_daemon a
start_daemon b
wait_http "$ISSUER/.well-known/openid-configuration" || die "provider did not start: $(cat "$TMP/provider.log")"
wait_http "$BASE_A/healthz" || die "daemon A did not start: $(cat "$TMP/a/mailauthd.log")"
wait_http "$BASE_B/healthz" || die "daemon B did not start: $(cat "$TMP/b/mailauthd.log")"

# --- one browser through the whole story ---------------------------------------------

MARK=$TMP/browser
node "$HERE/browser.mjs" shared-session --base "$BASE_A" --other "$BASE_B" --issuer "$ISSUER" \
	--shots "$SHOTS" --prefix sessions --login alice --out "$MARK" >"$TMP/browser.json" 2>"$TMP/browser.err" &
BROWSER=$!
PIDS+=("$BROWSER")

wait_for 90 test -e "$MARK.ready" || die "the browser did not sign in: $(cat "$TMP/browser.json" "$TMP/browser.err")"
# Restart A while the browser holds its cookie.
kill -TERM "$DAEMON_A"
wait "$DAEMON_A" 2>/dev/null || true
start_daemon a
wait_http "$BASE_A/healthz" || die "daemon A did not come back: $(cat "$TMP/a/mailauthd.log")"
touch "$MARK.go"
wait_for 90 test -e "$MARK.ended" || die "the browser did not end its session: $(cat "$TMP/browser.json" "$TMP/browser.err")"
# The provider sends the logout token as it ends the session; give it a moment to land.
wait_for 10 grep -q '"back-channel logout"\|back-channel logout' "$TMP/a/mailauthd.log" || true
touch "$MARK.checked"
wait "$BROWSER" || true
out=$(cat "$TMP/browser.json")

check_json() { # $1 = name, $2 = expression, $3 = expected
	local got
	got=$(json "$2" <<<"$out")
	if [ "$got" = "$3" ]; then ok "$1"; else not_ok "$1" "expected $3, got '$got'
$out
$(cat "$TMP/browser.err")"; fi
}
check_json "the browser signs in through the provider on daemon A" 'j.first.address' alice@example.org
check_json "daemon B, on the same database, knows the session (same host, another port)" 'j.other.address' alice@example.org
check_json "after a restart of daemon A the browser is still signed in on A" 'j.afterRestart.address' alice@example.org
check_json "and on B" 'j.otherAfterRestart.address' alice@example.org
check_json "after signing out at the provider (back-channel logout to A), A shows the signed-out page" 'j.afterLogout.address' ''
check_json "and B shows the signed-out page too" 'j.otherAfterLogout.address' ''
check_json "the signed-out page is the sign-in page, not an error (A)" 'j.afterLogout.status' 200
check_json "the signed-out page is the sign-in page, not an error (B)" 'j.otherAfterLogout.status' 200

if grep -q 'mech="\?backchannel_logout"\? outcome="\?ok"\?\|backchannel_logout.*outcome.*ok' "$TMP/a/mailauthd.log"; then
	ok "daemon A logged the accepted back-channel logout (audit line)"
else
	not_ok "daemon A logged the accepted back-channel logout (audit line)" "$(tail -n 20 "$TMP/a/mailauthd.log")"
fi

# Mail logins are not suspended by a page logout.
state=$(m --json mailbox show alice@example.org | json 'j.mailbox.state')
if [ "$state" = active ]; then
	ok "the mailbox is still active after the logout (mail logins untouched)"
else
	not_ok "the mailbox is still active after the logout" "$(m --json mailbox show alice@example.org 2>&1)"
fi

# --- a forged logout token -----------------------------------------------------------

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
header=$(printf '{"alg":"RS256","kid":"forged"}' | b64url)
claims=$(printf '{"iss":"%s","aud":"mailauthd","iat":%s,"jti":"forged-1","sub":"alice","events":{"http://schemas.openid.net/event/backchannel-logout":{}}}' "$ISSUER" "$now" | b64url)
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/forger.pem" 2>/dev/null
sig=$(printf '%s.%s' "$header" "$claims" | openssl dgst -sha256 -sign "$TMP/forger.pem" -binary | b64url)
for target in "$BASE_A" "$BASE_B"; do
	code=$(curl -s -o "$TMP/forged.json" -w '%{http_code}' --data-urlencode "logout_token=$header.$claims.$sig" "$target/backchannel-logout")
	if [ "$code" = 400 ] && grep -q '"error":"invalid_request"' "$TMP/forged.json"; then
		ok "a forged logout token posted with curl to $target gets 400 with a JSON error"
	else
		not_ok "a forged logout token posted with curl to $target gets 400" "$code $(cat "$TMP/forged.json")"
	fi
done
unsigned=$(printf '{"alg":"none"}' | b64url).$claims.
code=$(curl -s -o /dev/null -w '%{http_code}' --data-urlencode "logout_token=$unsigned" "$BASE_B/backchannel-logout")
if [ "$code" = 400 ]; then ok "an unsigned logout token gets 400"; else not_ok "an unsigned logout token gets 400" "$code"; fi

summary
[ "$E2E_FAILED" -eq 0 ]
