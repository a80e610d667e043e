#!/usr/bin/env bash
# End-to-end: two mailauthd daemons on one database, one Redis and one key file, each
# answering one Postfix submissions service (the entry of conf-examples/postfix/
# master.cf.submission as shipped, twice, on two loopback ports):
#   service A   SASL at daemon A's auth socket (mailauthd/auth), policy at A's TCP listener
#   service B   SASL at daemon B's auth socket (mailauthd/auth-b), policy at B's listener
# A mailbox whose template allows 2 messages an hour sends alternately through A and B:
# messages 1 and 2 pass, the third gets 450 4.7.1 through either service, so whichever
# daemon answers the count is the one Redis keeps. A mailbox without limits still sends.
#
# Needs root and MAILAUTHD_TEST_REDIS_URL (no Redis: skipped outside CI, a failure in
# CI). Installs postfix, swaks, libnet-ssleay-perl and openssl when missing.
# Environment:
#   MAILAUTHD_BIN                 the daemon (default target/debug/mailauthd); never built here
#   MAILAUTHD_TEST_REDIS_URL      the Redis both daemons share (keys under a prefix of
#                                 this run's own)
#   MAILAUTHD_TEST_POSTGRES_URL   a PostgreSQL database we may create others from
#                                 (required when CI is set; without it both daemons
#                                 share one SQLite file)
#   ARTIFACTS                     logs and configs go to $ARTIFACTS/postfix-shared-limits-e2e
#   KEEP=1                        keep the temporary folder
# Prints one "ok - …" / "not ok - …" line per check, then "N passed, N failed".

set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
cd "$REPO"
# shellcheck source=../lib.sh
. "$REPO/tests/e2e/lib.sh"
# shellcheck source=common.sh
. "$HERE/common.sh"

EXAMPLES=$REPO/conf-examples/postfix
BIN=${MAILAUTHD_BIN:-target/debug/mailauthd}
ART=${ARTIFACTS:-ci-artifacts}/postfix-shared-limits-e2e

REDIS_URL=${MAILAUTHD_TEST_REDIS_URL:-}
if [ -z "$REDIS_URL" ]; then
	[ -z "${CI:-}" ] || die "MAILAUTHD_TEST_REDIS_URL is not set; CI needs the shared-limit checks"
	echo "# MAILAUTHD_TEST_REDIS_URL not set: shared sending limits skipped outside CI"
	exit 0
fi
[ "$(id -u)" = 0 ] || die "run as root (Postfix's master needs it)"
pf_bin
pf_pg_url "CI runs the two daemons on PostgreSQL"

pf_packages
echo "# Postfix $POSTFIX_VERSION, daemon $BIN"

pf_init postfix-shared-limits-e2e
B_CONF=$MD/mailauthd-b.toml
B_LOG=$MD/mailauthd-b.log
B_PID=

collect_artifacts() {
	mkdir -p "$ART" 2>/dev/null || return 0
	cp -f "$PLOG" "$ART/postfix.log" 2>/dev/null || true
	cp -f "$MD_LOG" "$ART/mailauthd-a.log" 2>/dev/null || true
	cp -f "$B_LOG" "$ART/mailauthd-b.log" 2>/dev/null || true
	cp -f "$CONF/main.cf" "$CONF/master.cf" "$ART/" 2>/dev/null || true
	cp -f "$MD_CONF" "$ART/mailauthd-a.toml" 2>/dev/null || true
	cp -f "$B_CONF" "$ART/mailauthd-b.toml" 2>/dev/null || true
	pf_copy_transcripts
}

cleanup() {
	local rc=$?
	set +eu
	stop_pid "$B_PID"
	pf_wind_up "$rc"
}
pf_traps

pick_port SMTP_PORT
pick_port PORT_A
pick_port PORT_B
pick_port POLICY_A
pick_port POLICY_B

# ---------------------------------------------------------------------------
# Two daemons: one store, one Redis (under this run's own prefixes), one key file.
md_install "$BIN"
mkdir -p "$MD/state-b" "$MD/run-b"
chown "$DAEMON_USER:$DAEMON_GROUP" "$MD/state-b" "$MD/run-b"
pf_store
pf_socket_dir
PREFIX=mailauthd-e2e-$$-$RANDOM
daemon_conf() { # STATE RUN AUTH_SOCKET POLICY_PORT
	cat <<EOF
state_directory = "$1"
runtime_directory = "$2"

[store]
url = "$STORE_URL"
connect_timeout_ms = 1000

[credentials]
key_file = "$MD/state/app-password.key"

[auth_socket]
listen = ["unix:$3"]
mode = "0660"

[policy_socket]
listen = ["tcp:127.0.0.1:$4"]

[redis]
url = "$REDIS_URL"
send_limits_prefix = "$PREFIX:limits:"

[throttle]
redis_prefix = "$PREFIX:throttle:"
EOF
}
daemon_conf "$MD/state" "$MD/run" "$SOCK_DIR/auth" "$POLICY_A" >"$MD_CONF"
daemon_conf "$MD/state-b" "$MD/run-b" "$SOCK_DIR/auth-b" "$POLICY_B" >"$B_CONF"
chmod 0644 "$B_CONF"

# A first: it creates the key file B reads.
md_start
wait_unix "$SOCK_DIR/auth" 30 || die "daemon A did not open its auth socket" "$(tail -n 20 "$MD_LOG")"
wait_tcp "$POLICY_A" 10 || die "daemon A does not listen on $POLICY_A" "$(tail -n 20 "$MD_LOG")"
md_is_daemon || die "the pid of daemon A is not the daemon's ($MD_PID)"
env "HOME=$MD/state-b" setpriv --reuid="$DAEMON_USER" --regid="$DAEMON_GROUP" --clear-groups -- \
	"$MD/bin/mailauthd" --config "$B_CONF" serve >"$B_LOG" 2>&1 &
B_PID=$!
wait_unix "$SOCK_DIR/auth-b" 30 || die "daemon B did not open its auth socket" "$(tail -n 20 "$B_LOG")"
wait_tcp "$POLICY_B" 10 || die "daemon B does not listen on $POLICY_B" "$(tail -n 20 "$B_LOG")"

LENA_PW='lena-Pass-2024'
ALICE_PW='alice-Pass-2024'
mdctl domain add example.org >/dev/null
mdctl template add two-messages --protocols imap,smtp --send-limits 1h:2:- >/dev/null
printf '%s\n' "$LENA_PW" | mdctl mailbox add lena@example.org --password-stdin --template two-messages >/dev/null
printf '%s\n' "$ALICE_PW" | mdctl mailbox add alice@example.org --password-stdin >/dev/null

# ---------------------------------------------------------------------------
# Postfix: the shipped sasl.cf and policy.cf; the shipped submissions entry twice.
pf_tls_cert
{
	pf_main_cf_base
	echo
	echo "# ---- conf-examples/postfix/sasl.cf as shipped ----"
	cat "$EXAMPLES/sasl.cf"
	echo
	echo "# ---- conf-examples/postfix/policy.cf as shipped (each service names its daemon) ----"
	cat "$EXAMPLES/policy.cf"
} >"$CONF/main.cf"
# Debian's master.cf, its port-25 smtpd moved to a free port (not used here).
sed -E "s/^smtp([[:space:]]+inet[[:space:]])/$SMTP_PORT\1/" "$MASTER_CF_DIST" >"$CONF/master.cf"
service() { # PORT NAME AUTH_SOCKET POLICY_PORT
	echo
	echo "# ---- master.cf.submission's submissions entry: $2 ----"
	sed -n '/^submissions[[:space:]]/,$p' "$EXAMPLES/master.cf.submission" |
		sed -E -e "s/^submissions([[:space:]])/$1\1/" \
			-e "s|^(  -o syslog_name=postfix/)submissions\$|\1$2|"
	echo "  -o smtpd_sasl_path=mailauthd/$3"
	echo "  -o mailauthd_policy_socket=inet:127.0.0.1:$4"
}
{
	service "$PORT_A" daemon-a auth "$POLICY_A"
	service "$PORT_B" daemon-b auth-b "$POLICY_B"
} >>"$CONF/master.cf"
if ! grep -q "^${PORT_A}[[:space:]]" "$CONF/master.cf" || ! grep -q "^${PORT_B}[[:space:]]" "$CONF/master.cf"; then
	die "could not add the two services to master.cf"
fi
pf_start "$SMTP_PORT" "$PORT_A" "$PORT_B"
echo "# Postfix master $MASTER_PID: service A $PORT_A (policy $POLICY_A), service B $PORT_B (policy $POLICY_B); Redis prefix $PREFIX"

# ---------------------------------------------------------------------------
rcpt_reply() {
	awk '/^ *[-~*]*> RCPT TO:/ { f = 1; next }
	     f && /^<[-~*]* +[0-9][0-9][0-9][ -]/ { sub(/^<[-~*]* +/, ""); print; exit }' "$1"
}
queued_as() {
	sed -n 's/^<[-~*]* *250 2\.0\.0 Ok: queued as \([0-9A-Z]*\).*/\1/p' "$1" | head -n1
}
send() { # NAME PORT USER PASSWORD
	swaks_run "$1" --server "127.0.0.1:$2" --tls-on-connect --auth PLAIN \
		--auth-user "$3" --auth-password "$4" --from "$3" \
		--header "Subject: mailauthd shared limits e2e $$"
}
expect_sent() { # NAME FILE
	local got id
	got=$(rcpt_reply "$2")
	id=$(queued_as "$2")
	if [ "${got%% *}" = 250 ] && [ -n "$id" ]; then
		ok "$1 -> 250 (queued as $id)"
	else
		not_ok "$1 -> 250 (RCPT got: ${got:-nothing})" "$(cat "$2")"
	fi
}
expect_limited() { # NAME FILE
	local got
	got=$(rcpt_reply "$2")
	if printf '%s\n' "$got" | grep -Eq '^450 4\.7\.1 .*<lena@example\.org>: sending limit of 2 messages per 1h reached, try again later$'; then
		ok "$1 -> 450 4.7.1 sending limit of 2 messages per 1h"
	else
		not_ok "$1 -> 450 4.7.1 (got: ${got:-no RCPT reply})" "$(cat "$2")"
	fi
}
# Policy audit lines with reason=message_limit in a daemon's log.
limited_in() { grep -c 'message_limit' "$1" || true; }

echo "# lena (1h:2:-) alternates between the services, so between the daemons"
f=$(send "lena, message 1 through A" "$PORT_A" lena@example.org "$LENA_PW")
expect_sent "lena, message 1 through A" "$f"
f=$(send "lena, message 2 through B" "$PORT_B" lena@example.org "$LENA_PW")
expect_sent "lena, message 2 through B" "$f"
f=$(send "lena, message 3 through A" "$PORT_A" lena@example.org "$LENA_PW")
expect_limited "lena, message 3 through A (A counted one itself, Redis two)" "$f"
f=$(send "lena, message 3 again through B" "$PORT_B" lena@example.org "$LENA_PW")
expect_limited "lena, message 3 through B" "$f"
f=$(send "alice (no limits) through B" "$PORT_B" alice@example.org "$ALICE_PW")
expect_sent "alice (no limits) through B meanwhile" "$f"

a_limited=$(limited_in "$MD_LOG")
b_limited=$(limited_in "$B_LOG")
if [ "$a_limited" -ge 1 ] && [ "$b_limited" -ge 1 ]; then
	ok "each daemon deferred lena itself (audit lines: A $a_limited, B $b_limited)"
else
	not_ok "each daemon deferred lena itself (audit lines: A $a_limited, B $b_limited)"
fi
if grep -q 'Redis does not answer' "$MD_LOG" "$B_LOG"; then
	not_ok "Redis answered every daemon throughout" "$(grep -h 'Redis' "$MD_LOG" "$B_LOG")"
else
	ok "Redis answered every daemon throughout (no fallback logged)"
fi
keys=$(redis-cli -u "$REDIS_URL" --scan --pattern "$PREFIX:limits:*" 2>/dev/null | wc -l || echo 0)
if command -v redis-cli >/dev/null 2>&1; then
	if [ "$keys" -ge 1 ]; then
		ok "the counts are in Redis ($keys keys under $PREFIX:limits:)"
	else
		not_ok "the counts are in Redis (no keys under $PREFIX:limits:)"
	fi
	redis-cli -u "$REDIS_URL" --scan --pattern "$PREFIX:*" 2>/dev/null |
		xargs -r redis-cli -u "$REDIS_URL" DEL >/dev/null 2>&1 || true
fi
if still_running && kill -0 "$B_PID" 2>/dev/null; then
	ok "Postfix and both daemons still running"
else
	not_ok "Postfix and both daemons still running"
fi

summary
