#!/usr/bin/env bash
# End-to-end test of what happens when people leave: the liveness check against a real
# OpenID provider (the npm package oidc-provider on a loopback port), with real sign-ins in
# a real browser (Debian's chromium, driven by browser.mjs) and the app passwords made there
# used on a private Dovecot 2.3 (IMAP, tests/e2e/dovecot/imap-login.sh) and a private
# Postfix (SMTP AUTH on the shipped submissions entry, tests/e2e/postfix/common.sh).
#
# Three people (alice, bob, carol) sign in and each make an app password, so that one of
# them leaving stays within the brake (max(1, 10 %) of three is one). Then:
#   1. `idp check` answers ok for all three;
#   2. alice is deleted at the provider (removed from its accounts file, which it reads on
#      every request): `idp check --dry-run` withholds, `idp check` suspends her; her app
#      password is refused at Dovecot and Postfix, bob's still works, her open web page
#      session ends, her mail is still delivered (userdb);
#   3. alice is back at the provider and signs in again: her app password works again;
#   4. carol is deleted and the daemon's own periodic check (liveness_check_hours =
#      0.0005, about 2 s) suspends her;
#   5. the provider restarts and so forgets every grant: every refresh is refused, the
#      brake holds in the daemon and in `idp check` (exit 1), nobody is suspended;
#   6. the provider is stopped: `idp check` exits 3 and says it is unreachable;
#   7. the provider knows the client by another secret: `invalid_client`, exit 1.
# The contract these steps check is in the [oidc] liveness_* keys of
# conf-examples/mailauthd.toml and `mailauthd idp check --help`.
#
#   MAILAUTHD_BIN   the binary to test (default: target/debug/mailauthd; build it first)
#   ARTIFACTS       screenshots, logs and `idp check` outputs go to $ARTIFACTS/people-leave
#                   (default: ci-artifacts)
#   KEEP=1          keep the temporary folder (configs, logs, database)
#
# Needs root (Dovecot and Postfix). Installs chromium, Dovecot 2.3, postfix, swaks, curl,
# python3 (apt) and the npm packages from the committed lockfile when missing; a missing
# tool is a failure, never a skip. Only loopback addresses are used. Prints one
# "ok - …" / "not ok - …" line per check, then "N passed, N failed"; exits non-zero on any
# failure.

set -euo pipefail
export LC_ALL=C.UTF-8

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
cd "$REPO"
MAILAUTHD_BIN=${MAILAUTHD_BIN:-$REPO/target/debug/mailauthd}
case $MAILAUTHD_BIN in /*) ;; *) MAILAUTHD_BIN=$REPO/$MAILAUTHD_BIN ;; esac
ARTIFACTS=${ARTIFACTS:-$REPO/ci-artifacts}
case $ARTIFACTS in /*) ;; *) ARTIFACTS=$REPO/$ARTIFACTS ;; esac
ART=$ARTIFACTS/people-leave
SHOTS=$ART/screenshots
IMAP_LOGIN=$REPO/tests/e2e/dovecot/imap-login.sh
# shellcheck source=../lib.sh
. "$REPO/tests/e2e/lib.sh"
# shellcheck source=../postfix/common.sh
. "$REPO/tests/e2e/postfix/common.sh"

[ "$(id -u)" = 0 ] || die "run as root (Dovecot and Postfix need it)"

# --- what the test needs -------------------------------------------------------------

pf_packages
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-dejavu-core)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
[ -x /usr/sbin/dovecot ] || missing+=(dovecot-core)
[ -e /usr/lib/dovecot/imap ] || missing+=(dovecot-imapd)
[ -e /usr/lib/dovecot/modules/auth/libauthdb_lua.so ] || missing+=(dovecot-auth-lua)
ls /usr/lib/*/lua/*/socket/unix.so >/dev/null 2>&1 || missing+=(lua-socket)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v curl >/dev/null 2>&1 || missing+=(curl)
pf_install_missing "${missing[@]}"
pf_dovecot_23
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "Node.js 20 or newer is needed (found $(node --version))"
if [ ! -d "$HERE/node_modules/oidc-provider" ] || [ ! -d "$HERE/node_modules/playwright-core" ]; then
	echo "# installing npm packages from package-lock.json"
	(cd "$HERE" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) ||
		die "npm ci in $HERE failed"
fi
[ -x "$MAILAUTHD_BIN" ] || die "$MAILAUTHD_BIN is missing: run cargo build first (or set MAILAUTHD_BIN)"
echo "# Postfix $POSTFIX_VERSION, Dovecot $(dovecot --version | awk '{print $1}'), node $(node --version), $(/usr/bin/chromium --version 2>/dev/null | head -n 1), daemon $MAILAUTHD_BIN"

# --- everything this run starts, and the way back --------------------------------------

pf_init people-leave
PROVIDER_PID=
HOLD_PID=

collect_artifacts() {
	mkdir -p "$ART" 2>/dev/null || return 0
	cp -f "$PLOG" "$ART/postfix.log" 2>/dev/null || true
	cp -f "$MD"/mailauthd.log* "$ART/" 2>/dev/null || true
	cp -f "$MD_CONF" "$ART/mailauthd.toml" 2>/dev/null || true
	cp -f "$T"/provider*.log "$T"/idp-*.txt "$ART/" 2>/dev/null || true
	pf_copy_transcripts
}

cleanup() {
	local rc=$?
	set +e
	# The held browser runs in a subshell: its node process first, then the subshell.
	[ -z "$HOLD_PID" ] || pkill -TERM -P "$HOLD_PID" 2>/dev/null
	stop_pid "$HOLD_PID"
	stop_pid "$PROVIDER_PID"
	pf_wind_up "$rc"
}
pf_traps

rm -rf "$ART"
mkdir -p "$SHOTS"
pick_port PROVIDER_PORT || die "no free port"
pick_port WEB_PORT || die "no free port"
pick_port METRICS_PORT || die "no free port"
pick_port SMTP_PORT || die "no free port"
pick_port SUB_PORT || die "no free port"
pick_port SUBS_PORT || die "no free port"
BASE=http://127.0.0.1:$WEB_PORT
ISSUER=http://127.0.0.1:$PROVIDER_PORT
CLIENT_SECRET=e2e-client-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
OTHER_SECRET=e2e-other-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')

# --- the people at the provider ------------------------------------------------------
# The provider reads this file on every request that needs an account: a person missing
# from it has been deleted there.

write_accounts() { # NAME...: the people the provider knows
	local name sep=
	{
		echo "{"
		for name in "$@"; do
			printf '%s  "%s": { "email": "%s@example.org", "email_verified": true, "name": "%s", "mailcow_template": "staff" }' \
				"$sep" "$name" "$name" "${name^}"
			sep=$',\n'
		done
		printf '\n}\n'
	} >"$T/accounts.next.json"
	mv "$T/accounts.next.json" "$T/accounts.json"
}
write_accounts alice bob carol

# provider_start SECRET: the provider, with the client registered under SECRET. Its grants
# and refresh tokens live in its memory, so every start begins with none.
PROVIDER_STARTS=0
provider_start() {
	PROVIDER_STARTS=$((PROVIDER_STARTS + 1))
	node "$HERE/provider.mjs" --port "$PROVIDER_PORT" --accounts "$T/accounts.json" \
		--redirect "$BASE/callback" --post-logout "$BASE/?signed-out" \
		--client-secret "$1" >"$T/provider-$PROVIDER_STARTS.log" 2>&1 &
	PROVIDER_PID=$!
	wait_for 15 curl -fs -o /dev/null "$ISSUER/.well-known/openid-configuration" ||
		die "the provider did not start" "$(cat "$T/provider-$PROVIDER_STARTS.log")"
}
provider_stop() {
	stop_pid "$PROVIDER_PID"
	PROVIDER_PID=
	! tcp_port_in_use "$PROVIDER_PORT" || die "the provider still listens on $PROVIDER_PORT after it was stopped"
}

# --- mailauthd, as nobody: auth socket for Postfix (queue folder) and Dovecot ---------

md_install "$MAILAUTHD_BIN"
pf_socket_dir
printf '%s\n' "$CLIENT_SECRET" >"$MD/client-secret"
chown "$DAEMON_USER:$DAEMON_GROUP" "$MD/client-secret"
chmod 0600 "$MD/client-secret"

write_config() { # [MORE [oidc] LINES]: MD_CONF, put in place in one rename
	cat >"$MD_CONF.next" <<EOF
state_directory = "$MD/state"
runtime_directory = "$MD/run"

[store]
url = "sqlite://$MD/state/mailauthd.db"

[credentials]
argon2_memory_kib = 8192
argon2_iterations = 1

$(md_sockets_toml)

[log]
level = "info"

[oidc]
display_name = "Example SSO"
issuer = "$ISSUER"
client_id = "mailauthd"
client_secret_file = "$MD/client-secret"
redirect_url = "$BASE/callback"
timeout_ms = 5000
${1:-}

[web]
listen = "127.0.0.1:$WEB_PORT"
title = "Example Mail"
mail_host = "mail.example.org"
# The test talks plain HTTP on loopback, without a TLS proxy in front.
secure_cookies = false

[metrics]
listen = "127.0.0.1:$METRICS_PORT"
EOF
	chmod 0644 "$MD_CONF.next"
	mv "$MD_CONF.next" "$MD_CONF"
}

# md_up: starts the daemon with MD_CONF (an earlier log kept as mailauthd.log.N) and waits
# for its sockets and web page.
MD_STARTS=0
md_up() {
	MD_STARTS=$((MD_STARTS + 1))
	[ ! -f "$MD_LOG" ] || mv "$MD_LOG" "$MD_LOG.$((MD_STARTS - 1))"
	md_start
	md_wait_sockets
	wait_for 10 curl -fs -o /dev/null "$BASE/healthz" || die "the web page does not answer" "$(tail -n 20 "$MD_LOG")"
	md_is_daemon || die "the pid of mailauthd serve is not the daemon's ($MD_PID)"
}
md_down() {
	stop_pid "$MD_PID" 10
	MD_PID=
}
# The daemon's logs of this run, every start.
md_logs() { cat "$MD"/mailauthd.log.* "$MD_LOG" 2>/dev/null || true; }

write_config
mdctl config check >/dev/null || die "config check failed" "$(mdctl config check 2>&1)"
mdctl domain add example.org >/dev/null || die "domain add"
mdctl template add staff --quota 2G --protocols imap,pop3,smtp >/dev/null || die "template add"
mdctl mapping add staff staff >/dev/null || die "mapping add"
provider_start "$CLIENT_SECRET"
md_up

# --- Postfix: the private instance, shipped sasl.cf and master.cf.sasl (ports changed) --

pf_sasl_conf
pf_start "$SMTP_PORT" "$SUB_PORT" "$SUBS_PORT"
echo "# provider $ISSUER, web page $BASE, Postfix submissions 127.0.0.1:$SUBS_PORT, state in $T"

# --- helpers ---------------------------------------------------------------------------

json() { # $1 = JavaScript expression over j; JSON on stdin
	node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{try{const j=JSON.parse(s);const v=eval(process.argv[1]);console.log(v===undefined||v===null?"":typeof v==="string"?v:JSON.stringify(v))}catch(e){console.log("")}})' "$1"
}

browser() { # $1 = action, $2 = screenshot prefix, rest = options
	local action=$1 prefix=$2
	shift 2
	node "$HERE/browser.mjs" "$action" --base "$BASE" --shots "$SHOTS" --prefix "$prefix" "$@" ||
		echo '{"error":"the browser driver failed"}'
}

# imap NAME PASSWORD: one IMAP login of NAME@example.org through a private Dovecot 2.3 and
# the shipped adapter; 0 when Dovecot accepted it. DETAIL: the transcript.
imap() {
	local f rc=0
	f=$(transcript "imap-$1")
	MAILAUTHD_RUNTIME_DIR=$MD/run bash "$IMAP_LOGIN" "$1@example.org" "$2" >"$f" 2>&1 || rc=$?
	DETAIL=$(cat "$f")
	return "$rc"
}
imap_refused() { # NAME PASSWORD: Dovecot refused the login as a wrong password (not a temporary failure)
	! imap "$@" && grep -q 'Dovecot did not accept the IMAP login' <<<"$DETAIL" &&
		grep -qE '^< A[0-9]+ NO \[AUTHENTICATIONFAILED\]' <<<"$DETAIL"
}

# smtp NAME PASSWORD: AUTH PLAIN of NAME@example.org on Postfix's submissions port (TLS
# from the first byte); sets SMTP_CODE (the final reply code) and SMTP_DETAIL (the
# transcript).
SMTP_CODE='' SMTP_DETAIL=''
smtp() {
	local f
	f=$(swaks_run "smtp-$1" --server "127.0.0.1:$SUBS_PORT" --tls-on-connect --auth PLAIN \
		--auth-user "$1@example.org" --auth-password "$2" --quit-after AUTH)
	SMTP_DETAIL=$(cat "$f")
	SMTP_CODE=$(auth_reply "$f")
}

# smtp_check NAME CODE CHECK: smtp with NAME's app password (SECRET), then the check named
# CHECK that the AUTH reply code is CODE (235 accepted, 535 refused).
smtp_check() {
	smtp "$1" "${SECRET[$1]}"
	expect_eq "$3" "$2" "$SMTP_CODE" "$SMTP_DETAIL"
}

# bob_still_logs_in: bob, who stays, keeps IMAP (Dovecot) and SMTP AUTH (Postfix).
bob_still_logs_in() {
	check "bob's app password still logs in to IMAP (Dovecot)" imap bob "${SECRET[bob]}"
	smtp_check bob 235 "bob's app password still passes SMTP AUTH (Postfix)"
}

# idp_check NAME [ARGS...]: `mailauthd idp check ARGS` as the daemon user; sets IDP_RC,
# IDP_OUT (stdout) and IDP_ERR (stderr), kept as idp-NAME.txt.
IDP_RC=0 IDP_OUT='' IDP_ERR=''
idp_check() {
	local name=$1
	shift
	IDP_RC=0
	mdctl idp check "$@" >"$T/idp.out" 2>"$T/idp.err" || IDP_RC=$?
	IDP_OUT=$(cat "$T/idp.out")
	IDP_ERR=$(cat "$T/idp.err")
	{
		echo "\$ mailauthd idp check $*"
		echo "exit $IDP_RC"
		echo "--- stdout"
		printf '%s\n' "$IDP_OUT"
		echo "--- stderr"
		printf '%s\n' "$IDP_ERR"
	} >"$T/idp-$name.txt"
}
idp_detail() { printf 'exit %s\n--- stdout\n%s\n--- stderr\n%s\n' "$IDP_RC" "$IDP_OUT" "$IDP_ERR"; }
# idp_line NAME: the ANSWER<TAB>CHANGE of NAME@example.org in the last idp_check's output.
idp_line() {
	awk -F '\t' -v a="$1@example.org" '$1 == a { print $2 "\t" $3 }' <<<"$IDP_OUT"
}
# idp_says NAME ANSWER CHANGE: that line is exactly ANSWER<TAB>CHANGE.
idp_says() {
	[ "$(idp_line "$1")" = "$2"$'\t'"$3" ]
}
idp_summary() { grep -E '^checked [0-9]+:' <<<"$IDP_OUT" || true; }

# identity NAME: the `identity:` line of `mailauthd mailbox show NAME@example.org`.
identity() {
	mdctl mailbox show "$1@example.org" 2>&1 | grep -E '^identity:?[[:space:]]' || true
}
is_suspended() { # NAME: the identity line says suspended, identity_revoked
	local line
	line=$(identity "$1")
	DETAIL="identity line: ${line:-none}"
	grep -q suspended <<<"$line" && grep -q identity_revoked <<<"$line"
}
not_suspended() { # NAME: there is an identity line and it does not say suspended
	local line
	line=$(identity "$1")
	DETAIL="identity line: ${line:-none}"
	[ -n "$line" ] && ! grep -q suspended <<<"$line"
}

metric() { # NAME{LABELS} as written on the metrics page: its value, or nothing
	curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null |
		awk -v k="$1" '$1 == k { print $2; exit }'
}
metric_at_least() { # NAME{LABELS} MIN
	local v
	v=$(metric "$1")
	DETAIL="$1 = ${v:-absent}"
	[ -n "$v" ] && awk -v v="$v" -v m="$2" 'BEGIN { exit !(v + 0 >= m) }'
}

# userdb NAME: the userdb socket's answer for NAME@example.org (Dovecot's LMTP asks this
# before it delivers): USER when the mailbox receives mail.
userdb() {
	python3 - "$MD/run/userdb" "$1@example.org" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(b"VERSION\t1\t0\nUSER\t1\t" + sys.argv[2].encode() + b"\tservice=lmtp\n")
buf = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    buf += chunk
    for line in buf.split(b"\n")[:-1]:
        parts = line.split(b"\t")
        if parts[0] in (b"USER", b"NOTFOUND", b"FAIL") and len(parts) > 1 and parts[1] == b"1":
            print(parts[0].decode())
            sys.exit(0)
print("no answer")
EOF
}

log_mark() { md_logs | wc -l; }
log_since() { md_logs | tail -n "+$(($1 + 1))"; }

# ======================================================================================
echo "# 1. three people sign in and each make an app password"

declare -A SECRET
for who in alice bob carol; do
	out=$(browser app-password "1-$who-app-password" --login "$who" --name laptop --protocols imap,smtp)
	SECRET[$who]=$(json 'j.secret || ""' <<<"$out")
	if [[ ${SECRET[$who]} =~ ^[a-z]{4}(-[a-z]{4}){4}$ ]] && [ "$(json 'j.address' <<<"$out")" = "$who@example.org" ]; then
		ok "$who signs in through the provider in Chromium and makes an app password for IMAP and SMTP"
	else
		not_ok "$who signs in through the provider in Chromium and makes an app password" "$out"
		SECRET[$who]=none-$who
	fi
done
for who in alice bob carol; do
	check "$who's app password logs in to IMAP through real Dovecot" imap "$who" "${SECRET[$who]}"
done
for who in alice bob carol; do
	smtp_check "$who" 235 "$who's app password passes SMTP AUTH on real Postfix (submissions)"
done

idp_check 1-all
DETAIL=$(idp_detail) check "idp check: exit 0, alice, bob and carol each ok with no change, then the summary line" \
	eval '[ "$IDP_RC" = 0 ] && idp_says alice ok none && idp_says bob ok none && idp_says carol ok none && [ -n "$(idp_summary)" ]'
DETAIL=$(idp_detail) check "idp check's summary line says three mailboxes were checked (checked 3:)" \
	eval 'grep -qE "^checked 3:" <<<"$IDP_OUT"'
check "mailbox show has an identity line for alice, not suspended" not_suspended alice

# ======================================================================================
echo "# 2. alice is deleted at the provider"

# Alice's browser, signed in while she still exists, keeps its page open through step 2.
rm -f "$T/hold-ready" "$T/hold-release"
browser hold 2-alice-open-page --login alice --out "$T" >"$T/hold.json" &
HOLD_PID=$!
wait_for 60 test -e "$T/hold-ready" || true

write_accounts bob carol

idp_check 2-dry-run --dry-run
DETAIL=$(idp_detail) check "idp check --dry-run: exit 0, alice invalid_grant withheld, bob and carol ok" \
	eval '[ "$IDP_RC" = 0 ] && idp_says alice invalid_grant withheld && idp_says bob ok none && idp_says carol ok none'
check "after the dry run alice is not suspended" not_suspended alice
check "after the dry run alice's app password still logs in to IMAP (Dovecot)" imap alice "${SECRET[alice]}"

mark=$(log_mark)
idp_check 2-alice-gone
DETAIL=$(idp_detail) check "idp check: exit 0, alice invalid_grant suspended, bob and carol ok" \
	eval '[ "$IDP_RC" = 0 ] && idp_says alice invalid_grant suspended && idp_says bob ok none && idp_says carol ok none'
check "mailbox show alice: identity line says suspended, identity_revoked" is_suspended alice
check "mailbox show bob: not suspended" not_suspended bob
check "alice's app password is refused at IMAP (real Dovecot)" imap_refused alice "${SECRET[alice]}"
smtp_check alice 535 "alice's app password is refused at SMTP AUTH (real Postfix: 535, not a temporary failure)"
bob_still_logs_in
DETAIL=$(log_since "$mark" | grep ' auth ' | tail -n 10) check \
	"the daemon's audit log refuses alice's logins with reason identity_revoked" \
	eval 'log_since "$mark" | grep " auth " | grep -qE "user=\"?alice@example\.org\"?.* outcome=\"?fail\"? reason=\"?identity_revoked"'
DETAIL=$(userdb alice 2>&1) check "alice's mail is still delivered: the userdb socket answers USER for her" \
	eval '[ "$(userdb alice 2>&1)" = USER ]'

touch "$T/hold-release"
wait "$HOLD_PID" 2>/dev/null || true
HOLD_PID=
hold=$(cat "$T/hold.json" 2>/dev/null || true)
if [ "$(json 'j.before.address' <<<"$hold")" = alice@example.org ] && [ -z "$(json 'j.after.address' <<<"$hold")" ] &&
	[ "$(json 'j.released' <<<"$hold")" = true ] && [ -z "$(json 'j.error' <<<"$hold")" ]; then
	ok "alice's web page session, open before the suspension, has ended (the reloaded page is signed out)"
else
	not_ok "alice's web page session, open before the suspension, has ended" "$hold"
fi

idp_check 2-alice-again alice@example.org
DETAIL=$(idp_detail) check "idp check alice@example.org: exit 0, invalid_grant still_suspended, only her line" \
	eval '[ "$IDP_RC" = 0 ] && idp_says alice invalid_grant still_suspended && [ -z "$(idp_line bob)" ]'
idp_check 2-unknown nobody@example.org
DETAIL=$(idp_detail) check "idp check of an address without a mailbox is a usage error (exit 2) naming the address" \
	eval '[ "$IDP_RC" = 2 ] && grep -qF nobody@example.org <<<"$IDP_ERR$IDP_OUT"'

# ======================================================================================
echo "# 3. alice is back at the provider and signs in again"

write_accounts alice bob carol
out=$(browser signin 3-alice-back --login alice)
if [ "$(json 'j.address' <<<"$out")" = alice@example.org ]; then
	ok "alice signs in again in Chromium and reaches her account page"
else
	not_ok "alice signs in again in Chromium and reaches her account page" "$out"
fi
check "the sign-in lifted the suspension: mailbox show alice is not suspended" not_suspended alice
check "alice's app password logs in to IMAP again (Dovecot)" imap alice "${SECRET[alice]}"
smtp_check alice 235 "alice's app password passes SMTP AUTH again (Postfix)"

# ======================================================================================
echo "# 4. carol is deleted; the daemon's periodic check (about every 2 s) suspends her"

write_accounts alice bob
md_down
write_config 'liveness_check_hours = 0.0005'
md_up
waited=0
until is_suspended carol || [ "$waited" -ge 60 ]; do
	sleep 1
	waited=$((waited + 1))
done
DETAIL="after ${waited} s: $(identity carol)
$(md_logs | grep -iE 'liveness|identity|refresh' | tail -n 10)" check \
	"within 60 s of the daemon's start, its periodic check suspends carol (mailbox show: suspended, identity_revoked)" \
	is_suspended carol
! is_suspended carol || echo "# carol suspended after about ${waited} s"
check "carol's app password is refused at IMAP (Dovecot)" imap_refused carol "${SECRET[carol]}"
smtp_check carol 535 "carol's app password is refused at SMTP AUTH (Postfix)"
check "alice is not suspended by the periodic passes" not_suspended alice
check "bob is not suspended by the periodic passes" not_suspended bob
check "alice's app password still logs in to IMAP (Dovecot)" imap alice "${SECRET[alice]}"
bob_still_logs_in
check "metrics: mailauthd_identity_suspensions_total counts the suspension" \
	metric_at_least mailauthd_identity_suspensions_total 1
check "metrics: mailauthd_identity_checks_total{answer=\"invalid_grant\"} counts carol's refusal" \
	metric_at_least 'mailauthd_identity_checks_total{answer="invalid_grant"}' 1
check "metrics: mailauthd_identity_checks_total{answer=\"ok\"} counts the others" \
	metric_at_least 'mailauthd_identity_checks_total{answer="ok"}' 2

# ======================================================================================
echo "# 5. the provider restarts and has forgotten every grant: the brake holds"

mark=$(log_mark)
provider_stop
provider_start "$CLIENT_SECRET"
# The line of a pass that the refusals braked: while the provider restarts, a pass may
# also find it unreachable, and suspend nobody for that reason.
brake_logged() {
	log_since "$mark" | grep -E '(^|[[:space:]])(WARN|ERROR)[[:space:]]' | grep -i brake | grep -q invalid_grant
}
wait_for 30 brake_logged || true
DETAIL=$(log_since "$mark" | grep -iE 'identity check|brake' | tail -n 10) check \
	"within 30 s the daemon's periodic check logs the brake at WARN or ERROR, for invalid_grant answers" \
	brake_logged
check "metrics: mailauthd_identity_check_brake_total counts the brake" \
	metric_at_least mailauthd_identity_check_brake_total 1
# From here the command line runs the passes alone: the daemon's check is off.
md_down
write_config 'liveness_check_hours = 0'
md_up
idp_check 5-brake
DETAIL=$(idp_detail) check "idp check: exit 1, the message mentions the brake" \
	eval '[ "$IDP_RC" = 1 ] && grep -qi brake <<<"$IDP_OUT$IDP_ERR"'
DETAIL=$(idp_detail) check "idp check: alice and bob invalid_grant withheld, no line says suspended" \
	eval 'idp_says alice invalid_grant withheld && idp_says bob invalid_grant withheld && ! grep -qP "\tsuspended$" <<<"$IDP_OUT"'
check "bob is not suspended" not_suspended bob
check "alice is not suspended" not_suspended alice
bob_still_logs_in

# ======================================================================================
echo "# 6. the provider is stopped"

provider_stop
idp_check 6-unreachable
DETAIL=$(idp_detail) check "idp check: exit 3, the message says the provider is unreachable, no line says suspended" \
	eval '[ "$IDP_RC" = 3 ] && grep -qiE "unreachable|(cannot|could not|can.t) (be )?reach" <<<"$IDP_OUT$IDP_ERR" && ! grep -qP "\tsuspended$" <<<"$IDP_OUT"'
check "bob is not suspended" not_suspended bob
check "alice is not suspended" not_suspended alice
check "bob's app password still logs in to IMAP (Dovecot)" imap bob "${SECRET[bob]}"

# ======================================================================================
echo "# 7. the provider knows the client by another secret"

provider_start "$OTHER_SECRET"
idp_check 7-invalid-client
DETAIL=$(idp_detail) check "idp check: exit 1, the answers are invalid_client, no line says suspended" \
	eval '[ "$IDP_RC" = 1 ] && grep -q invalid_client <<<"$IDP_OUT$IDP_ERR" && ! grep -qP "\tsuspended$" <<<"$IDP_OUT"'
check "bob is not suspended" not_suspended bob
check "alice is not suspended" not_suspended alice
check "bob's app password still logs in to IMAP (Dovecot)" imap bob "${SECRET[bob]}"

# ======================================================================================
echo "# the daemon's logs"

if md_logs | grep -qiE 'panicked|stack backtrace'; then
	not_ok "no panic in the daemon's logs" "$(md_logs | grep -iE 'panicked|backtrace')"
else
	ok "no panic in the daemon's logs"
fi
leaked=
for s in "$CLIENT_SECRET" "$OTHER_SECRET" "${SECRET[alice]}" "${SECRET[bob]}" "${SECRET[carol]}"; do
	if md_logs | grep -qF "$s"; then leaked+=" ${s:0:6}…"; fi
done
if [ -z "$leaked" ] && ! grep -qF -e "$CLIENT_SECRET" -e "$OTHER_SECRET" "$T"/idp-*.txt 2>/dev/null; then
	ok "no client secret or app password in the daemon's logs or idp check's output"
else
	not_ok "no client secret or app password in the daemon's logs or idp check's output" "leaked:$leaked"
fi

echo "# screenshots and logs in $ART"
summary
