#!/usr/bin/env bash
# End-to-end: real Postfix (Debian's package) asking mailauthd's policy service
# (check_policy_service) about every RCPT of its submission services, configured with
# the shipped conf-examples/postfix/ files: main.cf gets sasl.cf and policy.cf, master.cf
# gets master.cf.submission. Only ports and paths are substituted.
#
# A private Postfix instance (its own config, queue and data folders under a temporary
# folder; the system instance is neither used nor started) listens on 127.0.0.1:
#   port-25 smtpd   Debian's master.cf "smtp" entry on a high port (no AUTH); test-only:
#                   it takes mail for example.org, and main.cf's
#                   smtpd_recipient_restrictions ask the policy too, as README.md
#                   suggests for port 25, so unauthenticated requests reach mailauthd
#   submission      master.cf.submission's entry as shipped (STARTTLS required)
#   submissions     master.cf.submission's entry as shipped (TLS wrapper)
#   policy-unix     test-only copy of that submissions entry with
#                   -o mailauthd_policy_socket=unix:mailauthd/policy: the policy over a
#                   unix socket next to the auth socket (README.md, "Reaching the socket")
# Every smtpd runs chrooted in the private queue folder, as on Debian. SASL goes through
# mailauthd's auth socket (<queue>/mailauthd/auth, as SASL.md sets it up); the policy
# goes to mailauthd's TCP policy listener on loopback (policy.cf's
# mailauthd_policy_socket, port substituted). mailauthd runs as nobody.
#
# Then swaks, and openssl s_client for sessions that change something halfway, prove
# sender ownership (own address, alias, multi-target alias, sub-address, alias domain,
# send-as grant, someone else's address), access re-checks within one SMTP session,
# sending limits, unauthenticated sessions, and a store outage.
#
# Needs root. Installs postfix, swaks, libnet-ssleay-perl and openssl when missing.
# Environment:
#   MAILAUTHD_BIN                 the daemon (default target/debug/mailauthd); never built here
#   MAILAUTHD_TEST_POSTGRES_URL   a PostgreSQL database we may create others from; the
#                                 store outage needs it (required when CI is set; without
#                                 it the run uses SQLite and skips the outage checks)
#   ARTIFACTS                     logs, configs and client transcripts go to
#                                 $ARTIFACTS/postfix-policy-e2e (default ci-artifacts; a
#                                 relative path is taken from the repository root)
#   UPDATE_FIXTURES=1             also write tests/fixtures/postfix-3.7-policy.txt: one
#                                 authenticated submission through a test-only service
#                                 whose policy socket is a recording proxy
#                                 (record-auth.pl) in front of mailauthd's unix listener
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
ART=${ARTIFACTS:-ci-artifacts}/postfix-policy-e2e
FIXTURE=$REPO/tests/fixtures/postfix-3.7-policy.txt

[ "$(id -u)" = 0 ] || die "run as root (Postfix's master needs it)"
pf_bin

pf_pg_url "CI needs the store-outage checks"

pf_packages
echo "# Postfix $POSTFIX_VERSION, swaks $(swaks --version 2>/dev/null | head -n1 | awk '{print $NF}'), daemon $BIN"

# ---------------------------------------------------------------------------
# Everything this run starts, and the way back.
pf_init postfix-policy-e2e
TLS_CHILD=
CAPTURE_SOCK=$SOCK_DIR/policy-capture
CAPTURE=$T/postfix-policy-capture.txt
RECORDER_PID=

collect_artifacts() {
	mkdir -p "$ART" 2>/dev/null || return 0
	cp -f "$PLOG" "$ART/postfix.log" 2>/dev/null || true
	cp -f "$MD_LOG" "$ART/mailauthd.log" 2>/dev/null || true
	cp -f "$CONF/main.cf" "$ART/main.cf" 2>/dev/null || true
	cp -f "$CONF/master.cf" "$ART/master.cf" 2>/dev/null || true
	cp -f "$MD_CONF" "$ART/mailauthd.toml" 2>/dev/null || true
	[ ! -e "$CAPTURE" ] || cp -f "$CAPTURE" "$ART/postfix-policy-capture.txt" 2>/dev/null || true
	pf_copy_transcripts
}

cleanup() {
	local rc=$?
	set +eu
	stop_pid "$TLS_CHILD" 2
	stop_pid "$RECORDER_PID"
	pf_wind_up "$rc"
}
pf_traps

pick_port SMTP_PORT
pick_port SUB_PORT
pick_port SUBS_PORT
pick_port UNIX_PORT
pick_port POLICY_PORT
POLICY_SOCK=$SOCK_DIR/policy
CAPTURE_PORT=
[ -z "${UPDATE_FIXTURES:-}" ] || pick_port CAPTURE_PORT

# ---------------------------------------------------------------------------
# mailauthd: its own state, a fresh PostgreSQL database (or SQLite), running as nobody.
md_install "$BIN"
pf_store
pf_socket_dir

# The policy listener on TCP, as policy.cf's default socket expects, and on a unix socket
# next to the auth socket for the policy-unix service. [policy] keeps its defaults (null
# sender allowed, no forged-sender check, no trusted networks, no default limits; limits
# come from templates) except the sub-address delimiters: "+-", so a cut at "-" is tested
# to never reach another existing mailbox.
cat >"$MD_CONF" <<EOF
state_directory = "$MD/state"
runtime_directory = "$MD/run"

[store]
url = "$STORE_URL"
connect_timeout_ms = 1000

[auth_socket]
listen = ["unix:$AUTH_SOCK"]
mode = "0660"

[policy_socket]
listen = ["tcp:127.0.0.1:$POLICY_PORT", "unix:$POLICY_SOCK"]
mode = "0660"

[policy]
subaddress_delimiters = "+-"
EOF
md_start
wait_unix "$AUTH_SOCK" 30 || die "mailauthd did not open $AUTH_SOCK" "$(tail -n 20 "$MD_LOG")"
wait_tcp "$POLICY_PORT" 10 || die "mailauthd does not listen on 127.0.0.1:$POLICY_PORT" "$(tail -n 20 "$MD_LOG")"
wait_unix "$POLICY_SOCK" 10 || die "mailauthd did not open $POLICY_SOCK" "$(tail -n 20 "$MD_LOG")"
md_is_daemon || die "the pid of mailauthd serve is not the daemon's ($MD_PID)"

# The recording proxy for the fixture (UPDATE_FIXTURES only): capture service -> proxy
# -> mailauthd's unix policy listener.
if [ -n "$CAPTURE_PORT" ]; then
	perl "$HERE/record-auth.pl" "$CAPTURE_SOCK" "$POLICY_SOCK" "$CAPTURE" 2>>"$MD_LOG" &
	RECORDER_PID=$!
	wait_unix "$CAPTURE_SOCK" 10 || die "the recording proxy did not start"
fi

# Test data, through the CLI.
ALICE_PW='correct horse battery staple'
ERIN_PW='erin-Pass-2024'
DORA_PW='dora-Pass-2024'
LENA_PW='lena-Pass-2024'
RITA_PW='rita-Pass-2024'
MIA_PW='mia-Pass-2024'
mdctl domain add example.org >/dev/null
add_local() { # ADDRESS PASSWORD [mailbox add options]
	local address=$1 password=$2
	shift 2
	printf '%s\n' "$password" | mdctl mailbox add "$address" --password-stdin "$@" >/dev/null
}
add_local alice@example.org "$ALICE_PW"
add_local erin@example.org "$ERIN_PW"
add_local carol@example.org 'carol-Pass-2024'
add_local dora@example.org "$DORA_PW"
# Another mailbox behind alice's "-": with delimiters "+-" it is still not alice's.
ALICE_BOB_PW='alice-bob-Pass-2024'
add_local alice-bob@example.org "$ALICE_BOB_PW"
# Sending limits: at most 2 messages an hour for lena, at most 3 recipients an hour for rita.
mdctl template add two-messages --protocols imap,smtp --send-limits 1h:2:- >/dev/null
mdctl template add three-recipients --protocols imap,smtp --send-limits 1h:-:3 >/dev/null
add_local lena@example.org "$LENA_PW" --template two-messages
add_local rita@example.org "$RITA_PW" --template three-recipients
add_local mia@example.org "$MIA_PW" --template two-messages
mdctl alias add sales@example.org alice@example.org >/dev/null
mdctl alias add team@example.org alice@example.org,erin@example.org >/dev/null
mdctl alias-domain add example.net example.org >/dev/null
mdctl send-as grant alice@example.org @example.com >/dev/null

# ---------------------------------------------------------------------------
# Postfix: a private instance built from Debian's master.cf and the shipped examples.
pf_tls_cert
{
	pf_main_cf_base
	echo
	echo "# ---- conf-examples/postfix/sasl.cf as shipped ----"
	cat "$EXAMPLES/sasl.cf"
	echo
	echo "# ---- conf-examples/postfix/policy.cf as shipped (policy port substituted) ----"
	sed -E "s/^(mailauthd_policy_socket = inet:127\.0\.0\.1:)10040\$/\1$POLICY_PORT/" "$EXAMPLES/policy.cf"
	cat <<'EOF'

# ---- test only: port 25 takes mail for example.org, and asks the policy as README.md
# suggests for port 25 (after reject_unauth_destination) ----
relay_domains = example.org
smtpd_recipient_restrictions = reject_unauth_destination, $mailauthd_policy
EOF
} >"$CONF/main.cf"
grep -q "^mailauthd_policy_socket = inet:127.0.0.1:$POLICY_PORT\$" "$CONF/main.cf" ||
	die "could not put the policy port into main.cf"

# master.cf: Debian's default (port-25 smtpd chrooted), then master.cf.submission as
# shipped; only the service ports change.
sed -E "s/^smtp([[:space:]]+inet[[:space:]])/$SMTP_PORT\1/" "$MASTER_CF_DIST" >"$CONF/master.cf"
{
	echo
	echo "# ---- conf-examples/postfix/master.cf.submission as shipped (ports substituted) ----"
	sed -E -e "s/^submission([[:space:]])/$SUB_PORT\1/" \
		-e "s/^submissions([[:space:]])/$SUBS_PORT\1/" "$EXAMPLES/master.cf.submission"
} >>"$CONF/master.cf"
grep -q "^${SMTP_PORT}[[:space:]]" "$CONF/master.cf" &&
	grep -q "^${SUB_PORT}[[:space:]]" "$CONF/master.cf" &&
	grep -q "^${SUBS_PORT}[[:space:]]" "$CONF/master.cf" ||
	die "could not put the test ports into master.cf"
# Test-only: the submissions entry again, chrooted like it, asking the policy over the
# unix socket in the queue directory instead of TCP.
{
	echo
	echo "# ---- test only: submissions with the policy over a unix socket ----"
	sed -n '/^submissions[[:space:]]/,$p' "$EXAMPLES/master.cf.submission" |
		sed -E -e "s/^submissions([[:space:]])/$UNIX_PORT\1/" \
			-e 's|^(  -o syslog_name=postfix/)submissions$|\1policy-unix|'
	echo "  -o mailauthd_policy_socket=unix:mailauthd/policy"
} >>"$CONF/master.cf"
grep -q "^${UNIX_PORT}[[:space:]]" "$CONF/master.cf" || die "could not add the policy-unix service"
# UPDATE_FIXTURES only: the same again, asking the policy through the recording proxy.
if [ -n "$CAPTURE_PORT" ]; then
	{
		echo
		echo "# ---- test only (UPDATE_FIXTURES): submissions with the policy through the recorder ----"
		sed -n '/^submissions[[:space:]]/,$p' "$EXAMPLES/master.cf.submission" |
			sed -E -e "s/^submissions([[:space:]])/$CAPTURE_PORT\1/" \
				-e 's|^(  -o syslog_name=postfix/)submissions$|\1policy-capture|'
		echo "  -o mailauthd_policy_socket=unix:mailauthd/policy-capture"
	} >>"$CONF/master.cf"
	grep -q "^${CAPTURE_PORT}[[:space:]]" "$CONF/master.cf" || die "could not add the policy-capture service"
fi

# shellcheck disable=SC2086 # CAPTURE_PORT is empty or one port
pf_start "$SMTP_PORT" "$SUB_PORT" "$SUBS_PORT" "$UNIX_PORT" $CAPTURE_PORT
echo "# Postfix master $MASTER_PID: smtp $SMTP_PORT, submission $SUB_PORT, submissions $SUBS_PORT, policy-unix $UNIX_PORT; mailauthd policy $POLICY_PORT"
# An smtpd that cannot reach the auth socket exits before its greeting, and the master
# then throttles the service for a minute: stop here rather than time out at every check.
f=$(transcript submission-ehlo)
smtp_session "$SUB_PORT" "EHLO client.test" "QUIT" >"$f" 2>&1 || true
grep -q '^<- 250-STARTTLS' "$f" ||
	die "submission does not greet and offer STARTTLS" "$(cat "$f"; tail -n 15 "$PLOG")"

# ---------------------------------------------------------------------------
# Clients.

# The reply to the first RCPT TO in a swaks transcript, "CODE TEXT" (or nothing).
# rcpt_replies prints one line per RCPT TO, in order.
rcpt_replies() {
	awk '/^ *[-~*]*> RCPT TO:/ { f = 1; next }
	     f && /^<[-~*]* +[0-9][0-9][0-9][ -]/ { sub(/^<[-~*]* +/, ""); print; f = 0 }' "$1"
}
rcpt_reply() {
	rcpt_replies "$1" | head -n 1
}
# The queue id from "250 2.0.0 Ok: queued as ID", or nothing.
queued_as() {
	sed -n 's/^<[-~*]* *250 2\.0\.0 Ok: queued as \([0-9A-Z]*\).*/\1/p' "$1" | head -n1
}

# send NAME USER PASSWORD SENDER [more swaks args]: a whole message over submissions (TLS
# from the first byte, the shipped settings), authenticated with AUTH PLAIN; prints the
# transcript file.
send() {
	local name=$1 user=$2 pass=$3 sender=$4
	shift 4
	swaks_run "$name" --server "127.0.0.1:$SUBS_PORT" --tls-on-connect --auth PLAIN \
		--auth-user "$user" --auth-password "$pass" --from "$sender" \
		--header "Subject: mailauthd policy e2e $$" "$@"
}

# expect_rcpt NAME WANT_PATTERN FILE: the first RCPT reply matches the extended regular
# expression WANT_PATTERN (anchored at the start).
expect_rcpt() {
	local got
	got=$(rcpt_reply "$3")
	if printf '%s\n' "$got" | grep -Eq "^$2"; then
		ok "$1"
	else
		not_ok "$1 (got: ${got:-no RCPT reply})" "$(cat "$3")"
	fi
}

# expect_sent NAME FILE: RCPT got 250 and the message was queued (and so passed the
# policy at every recipient).
expect_sent() {
	local got id
	got=$(rcpt_reply "$2")
	id=$(queued_as "$2")
	if [ "${got%% *}" = 250 ] && [ -n "$id" ]; then
		ok "$1 -> 250 (queued as $id)"
	else
		not_ok "$1 -> 250 (RCPT got: ${got:-nothing})" "$(cat "$2")"
	fi
}

# A session driven line by line over TLS from the first byte (submissions), for checks
# that change something in the middle of one SMTP session: openssl s_client as a
# coprocess. tls_open NAME PORT, then tls_say LINE (sets TLS_REPLY to the last line of
# the reply), then tls_close. The transcript is in TLS_LOG.
tls_read() {
	local line
	TLS_REPLY=
	while IFS= read -r -t 20 line <&"${TLS[0]}"; do
		line=${line%$'\r'}
		echo "<- $line" >>"$TLS_LOG"
		TLS_REPLY=$line
		case $line in [0-9][0-9][0-9]-*) ;; *) return 0 ;; esac
	done
	echo "<- (no reply)" >>"$TLS_LOG"
	TLS_REPLY="(no reply)"
	return 0
}
tls_open() {
	TLS_LOG=$(transcript "$1")
	coproc TLS { exec openssl s_client -quiet -nocommands -crlf -connect "127.0.0.1:$2" 2>/dev/null; }
	# bash forgets TLS_PID (and TLS) as soon as the coprocess ends
	TLS_CHILD=$TLS_PID
	echo "# $(date +%T.%N) openssl s_client to 127.0.0.1:$2" >"$TLS_LOG"
	tls_read
}
tls_say() {
	echo "-> $1" >>"$TLS_LOG"
	printf '%s\n' "$1" >&"${TLS[1]}"
	tls_read
}
tls_note() { # a line in the transcript for what the test did meanwhile
	echo "# $(date +%T.%N) $1" >>"$TLS_LOG"
}
tls_close() {
	tls_say QUIT
	wait_for 5 eval '! kill -0 "$TLS_CHILD" 2>/dev/null' || stop_pid "$TLS_CHILD" 2
	TLS_CHILD=
}
# tls_expect NAME PATTERN: the last reply matches the extended regular expression PATTERN.
tls_expect() {
	if printf '%s\n' "$TLS_REPLY" | grep -Eq "^$2"; then
		ok "$1"
	else
		not_ok "$1 (got: $TLS_REPLY)" "$(cat "$TLS_LOG")"
	fi
}

# policy_lines USER: mailauthd's audit lines for the policy requests about USER.
policy_lines() {
	grep -F 'policy service="policy"' "$MD_LOG" | grep -F "user=\"$1\"" || true
}

# ---------------------------------------------------------------------------
echo "# sender ownership (submissions, AUTH PLAIN through the auth socket)"
f=$(send "own address" alice@example.org "$ALICE_PW" alice@example.org)
expect_sent "alice sends as alice@example.org (own address)" "$f"
own_id=$(queued_as "$f")
if [ -n "$own_id" ] && wait_for 10 grep -q "$own_id: to=<bob@example.org>.*status=sent" "$PLOG"; then
	ok "Postfix delivered it (discard transport)"
else
	not_ok "Postfix delivered it (discard transport)" "$(grep "${own_id:-no-queue-id}" "$PLOG")"
fi
f=$(swaks_run "own address over submission" --server "127.0.0.1:$SUB_PORT" --tls --auth PLAIN \
	--auth-user alice@example.org --auth-password "$ALICE_PW" --from alice@example.org)
expect_sent "the same over submission (STARTTLS, the shipped settings)" "$f"
f=$(send "alias" alice@example.org "$ALICE_PW" sales@example.org)
expect_sent "alice sends as sales@example.org (alias of alice)" "$f"
f=$(send "multi-target alias, first target" alice@example.org "$ALICE_PW" team@example.org)
expect_sent "alice sends as team@example.org (alias of alice and erin)" "$f"
f=$(send "multi-target alias, second target" erin@example.org "$ERIN_PW" team@example.org)
expect_sent "erin sends as team@example.org (alias of alice and erin)" "$f"
f=$(send "sub-address" alice@example.org "$ALICE_PW" alice+tag@example.org)
expect_sent "alice sends as alice+tag@example.org (sub-address)" "$f"
f=$(send "sub-address at the second delimiter" alice@example.org "$ALICE_PW" alice-tag@example.org)
expect_sent "alice sends as alice-tag@example.org (sub-address at \"-\", no such mailbox)" "$f"
f=$(send "another mailbox behind the delimiter" alice@example.org "$ALICE_PW" alice-bob@example.org)
expect_rcpt "alice as alice-bob@example.org (an existing mailbox, not alice + tag bob) -> 554 5.7.1 not owned" \
	'554 5\.7\.1 .*<alice-bob@example\.org>: not owned by alice@example\.org$' "$f"
f=$(send "that mailbox itself" alice-bob@example.org "$ALICE_BOB_PW" alice-bob@example.org)
expect_sent "alice-bob sends as alice-bob@example.org (own address)" "$f"
f=$(send "alias domain" alice@example.org "$ALICE_PW" alice@example.net)
expect_sent "alice sends as alice@example.net (example.net is an alias domain of example.org)" "$f"
f=$(send "send-as grant" alice@example.org "$ALICE_PW" someone@example.com)
expect_sent "alice sends as someone@example.com (send-as grant @example.com)" "$f"

f=$(send "null sender" alice@example.org "$ALICE_PW" '<>')
expect_sent "alice sends with the null sender <> ([policy] null_sender = allow, the default)" "$f"
f=$(send "case" ALICE@Example.ORG "$ALICE_PW" Alice@EXAMPLE.org)
expect_sent "AUTH as ALICE@Example.ORG, sender Alice@EXAMPLE.org (case does not matter)" "$f"
f=$(send "alias, sub-address, alias domain" alice@example.org "$ALICE_PW" Sales+Q3@Example.NET)
expect_sent "alice sends as Sales+Q3@Example.NET (alias, sub-address and alias domain at once)" "$f"

f=$(send "another user's address" alice@example.org "$ALICE_PW" carol@example.org)
expect_rcpt "alice as carol@example.org -> 554 5.7.1 ... <carol@example.org>: not owned by alice@example.org" \
	'554 5\.7\.1 .*<carol@example\.org>: not owned by alice@example\.org$' "$f"
if [ -z "$(queued_as "$f")" ]; then
	ok "... and nothing was queued"
else
	not_ok "... and nothing was queued" "$(cat "$f")"
fi
f=$(send "alias of someone else" erin@example.org "$ERIN_PW" sales@example.org)
expect_rcpt "erin as sales@example.org (alias of alice only) -> 554 5.7.1 not owned" \
	'554 5\.7\.1 .*<sales@example\.org>: not owned by erin@example\.org$' "$f"
f=$(send "granted domain, other user" erin@example.org "$ERIN_PW" someone@example.com)
expect_rcpt "erin as someone@example.com (the grant is alice's) -> 554 5.7.1 not owned" \
	'554 5\.7\.1 .*<someone@example\.com>: not owned by erin@example\.org$' "$f"

# One audit line per policy request, with the rule that decided.
reasons=$(policy_lines alice@example.org | sed -n 's/.* reason="\([a-z_]*\)".*/\1/p' | sort -u | tr '\n' ' ')
expect_eq "mailauthd's audit lines name each rule (alice)" \
	"alias alias_domain not_owned null_sender_allowed own_address send_as subaddress " "$reasons" \
	"$(policy_lines alice@example.org)"
bad_state=$(policy_lines alice@example.org | grep -v ' state="RCPT" ' || true)
expect_eq "Postfix asked at RCPT (smtpd_delay_reject), each time with the SASL user" "" "$bad_state"

sock_perm=$(stat -c '%a %U:%G' "$POLICY_SOCK")
expect_eq "policy unix socket is mode 660, group postfix (setgid folder), owned by the daemon user" \
	"660 $DAEMON_USER:postfix" "$sock_perm"
f=$(swaks_run "policy over unix, own address" --server "127.0.0.1:$UNIX_PORT" --tls-on-connect --auth PLAIN \
	--auth-user alice@example.org --auth-password "$ALICE_PW" --from alice+unix@example.org)
expect_sent "policy over the unix socket (chrooted smtpd, unix:mailauthd/policy): alice+unix@example.org" "$f"
f=$(swaks_run "policy over unix, not owned" --server "127.0.0.1:$UNIX_PORT" --tls-on-connect --auth PLAIN \
	--auth-user alice@example.org --auth-password "$ALICE_PW" --from carol@example.org)
expect_rcpt "policy over the unix socket: carol@example.org -> 554 5.7.1 not owned" \
	'554 5\.7\.1 .*<carol@example\.org>: not owned by alice@example\.org$' "$f"
via_unix=$(grep -F 'sender="alice+unix@example.org"' "$MD_LOG" | grep -c 'policy{peer=unix' || true)
expect_eq "mailauthd got that request on its unix listener" 1 "$via_unix" "$(grep -F 'alice+unix' "$MD_LOG")"

if [ -n "$CAPTURE_PORT" ]; then
	echo "# fixture: one submission through the recording proxy (UPDATE_FIXTURES)"
	f=$(swaks_run "policy capture" --server "127.0.0.1:$CAPTURE_PORT" --tls-on-connect --auth PLAIN \
		--auth-user alice@example.org --auth-password "$ALICE_PW" --from alice@example.org)
	expect_sent "alice sends as alice@example.org through the recording proxy" "$f"
	stop_pid "$RECORDER_PID"
	RECORDER_PID=
	# The first request of the first connection, as raw bytes: each "C: " line plus its
	# LF, up to and including the empty line that ends the request.
	request=$T/postfix-policy-request.txt
	perl -ne 'if (/^C: (.*)$/) { print "$1\n"; exit if $1 eq "" } elsif (/^# \(no LF/) { exit 1 }' \
		"$CAPTURE" >"$request" || true
	if grep -qx 'request=smtpd_access_policy' "$request" && grep -qx 'protocol_state=RCPT' "$request" &&
		grep -qx 'sasl_username=alice@example.org' "$request" && grep -qx 'sender=alice@example.org' "$request" &&
		grep -qx 'recipient=bob@example.org' "$request" && [ "$(tail -c 2 "$request" | od -An -c | tr -d ' ')" = '\n\n' ]; then
		ok "recorded an RCPT request for alice -> bob, ending with the empty line"
		{
			echo "# What Postfix $POSTFIX_VERSION (Debian) smtpd sends to check_policy_service: the RCPT-stage"
			echo "# smtpd_access_policy request, recorded by tests/e2e/postfix/policy.sh (UPDATE_FIXTURES=1)"
			echo "# through a proxy (record-auth.pl) in front of mailauthd's unix policy listener."
			echo "# SMTP session: swaks to a copy of master.cf.submission's submissions service (TLS from"
			echo "# the first byte, chrooted smtpd, policy_context=submissions), AUTH PLAIN as"
			echo "# alice@example.org, MAIL FROM:<alice@example.org>, RCPT TO:<bob@example.org>."
			echo "# After these '#' lines: the request's raw bytes as received (name=value lines, LF"
			echo "# only), ending with the empty line."
			cat "$request"
		} >"$FIXTURE"
		echo "# wrote $FIXTURE"
	else
		not_ok "recorded an RCPT request for alice -> bob, ending with the empty line" "$(cat "$CAPTURE")"
	fi
fi

# ---------------------------------------------------------------------------
echo "# access re-checks within one SMTP session (openssl s_client on submissions)"
tls_open "dora disabled mid-session" "$SUBS_PORT"
tls_expect "greeting over TLS" '220 '
tls_say "EHLO client.test"
tls_say "AUTH PLAIN $(plain_ir dora@example.org "$DORA_PW")"
tls_expect "dora authenticates -> 235" '235 '
tls_say "MAIL FROM:<dora@example.org>"
tls_say "RCPT TO:<bob@example.org>"
tls_expect "dora, before any change: RCPT -> 250" '250 '
tls_say "RSET"
mdctl mailbox set dora@example.org --active 0 >/dev/null
tls_note "mailauthd mailbox set dora@example.org --active 0"
tls_say "MAIL FROM:<dora@example.org>"
tls_expect "dora disabled, same session: MAIL FROM -> 250 (the policy is asked at RCPT)" '250 '
tls_say "RCPT TO:<bob@example.org>"
tls_expect "dora disabled, same session: RCPT -> 554 5.7.1 <dora@example.org>: this account may not send mail" \
	'554 5\.7\.1 .*<dora@example\.org>: this account may not send mail$'
tls_say "RSET"
mdctl mailbox set dora@example.org --active 1 >/dev/null
tls_note "mailauthd mailbox set dora@example.org --active 1"
tls_say "MAIL FROM:<dora@example.org>"
tls_say "RCPT TO:<bob@example.org>"
tls_expect "dora enabled again, same session: RCPT -> 250" '250 '
tls_say "RSET"
mdctl mailbox set dora@example.org --protocols imap,pop3 >/dev/null
tls_note "mailauthd mailbox set dora@example.org --protocols imap,pop3"
tls_say "MAIL FROM:<dora@example.org>"
tls_say "RCPT TO:<bob@example.org>"
tls_expect "SMTP removed from dora's protocols, same session: RCPT -> 554 5.7.1" \
	'554 5\.7\.1 .*<dora@example\.org>: this account may not send mail$'
tls_close
reasons=$(policy_lines dora@example.org | sed -n 's/.* reason="\([a-z_]*\)".*/\1/p' | tr '\n' ' ')
expect_eq "mailauthd's audit lines for dora, in order" \
	"own_address mailbox_disabled own_address smtp_not_allowed " "$reasons" "$(policy_lines dora@example.org)"

# ---------------------------------------------------------------------------
echo "# sending limits (templates: two-messages 1h:2:-, three-recipients 1h:-:3)"
f=$(send "limit, message 1" lena@example.org "$LENA_PW" lena@example.org)
expect_sent "lena, message 1 of 2" "$f"
f=$(send "limit, message 2" lena@example.org "$LENA_PW" lena@example.org \
	--to bob@example.org,carl@example.org,dana@example.org)
got=$(rcpt_replies "$f" | cut -c1-3 | tr '\n' ' ')
if [ "$got" = "250 250 250 " ] && [ -n "$(queued_as "$f")" ]; then
	ok "lena, message 2 of 2 with three recipients -> 250 each (a message counts once)"
else
	not_ok "lena, message 2 of 2 with three recipients -> 250 each (got: $got)" "$(cat "$f")"
fi
f=$(send "limit, message 3" lena@example.org "$LENA_PW" lena@example.org)
expect_rcpt "lena, message 3 -> 450 4.7.1 <lena@example.org>: sending limit of 2 messages per 1h reached" \
	'450 4\.7\.1 .*<lena@example\.org>: sending limit of 2 messages per 1h reached, try again later$' "$f"
f=$(send "limit, other user" alice@example.org "$ALICE_PW" alice@example.org)
expect_sent "alice (no limits) meanwhile" "$f"
f=$(send "recipient limit" rita@example.org "$RITA_PW" rita@example.org \
	--to bob@example.org,carl@example.org,dana@example.org,emil@example.org)
got=$(rcpt_replies "$f" | sed 's/^\([0-9]*\) \([0-9.]*\).*/\1 \2/' | tr '\n' ' ')
if [ "$got" = "250 2.1.5 250 2.1.5 250 2.1.5 450 4.7.1 " ] &&
	rcpt_replies "$f" | tail -n 1 | grep -q '<rita@example\.org>: sending limit of 3 recipients per 1h reached, try again later$'; then
	ok "rita, four recipients -> 250, 250, 250, then 450 4.7.1 sending limit of 3 recipients per 1h"
else
	not_ok "rita, four recipients -> 250, 250, 250, then 450 4.7.1 (got: $got)" "$(cat "$f")"
fi
if [ -n "$(queued_as "$f")" ]; then
	ok "... and the message went to the three accepted recipients"
else
	not_ok "... and the message went to the three accepted recipients" "$(cat "$f")"
fi
f=$(send "recipient limit, next message" rita@example.org "$RITA_PW" rita@example.org)
expect_rcpt "rita, next message -> 450 4.7.1 (still over the recipient limit)" \
	'450 4\.7\.1 .*sending limit of 3 recipients per 1h reached' "$f"

# Several messages in one SMTP session: Postfix gives each transaction its own instance.
tls_open "limit, one session" "$SUBS_PORT"
tls_say "EHLO client.test"
tls_say "AUTH PLAIN $(plain_ir mia@example.org "$MIA_PW")"
tls_say "MAIL FROM:<mia@example.org>"
tls_say "RCPT TO:<bob@example.org>"
tls_expect "mia, one session, message 1: RCPT -> 250" '250 '
tls_say "DATA"
echo "-> (header, body and the final dot)" >>"$TLS_LOG"
printf 'Subject: mailauthd policy e2e %s\n\nmessage 1\n.\n' "$$" >&"${TLS[1]}"
tls_read
tls_expect "mia, message 1 queued" '250 2\.0\.0 Ok: queued'
tls_say "MAIL FROM:<mia@example.org>"
tls_say "RCPT TO:<bob@example.org>"
tls_say "RCPT TO:<carl@example.org>"
tls_expect "mia, same session, message 2 (given up with RSET): RCPTs -> 250" '250 '
tls_say "RSET"
tls_say "MAIL FROM:<mia@example.org>"
tls_say "RCPT TO:<bob@example.org>"
tls_expect "mia, same session, message 3 -> 450 4.7.1 (message 2 counted though it was given up)" \
	'450 4\.7\.1 .*<mia@example\.org>: sending limit of 2 messages per 1h reached'
tls_close

# ---------------------------------------------------------------------------
echo "# unauthenticated sessions (policy answers DUNNO)"
before=$(policy_lines - | grep -c 'reason="unauthenticated"' || true)
f=$(swaks_run "port 25, local sender, no AUTH" --server "127.0.0.1:$SMTP_PORT" \
	--from carol@example.org --to bob@example.org)
expect_sent "port 25 without AUTH, sender carol@example.org (policy asked, no sender check)" "$f"
after=$(policy_lines - | grep -c 'reason="unauthenticated"' || true)
if [ "$after" -gt "$before" ] && policy_lines - | grep -q 'sender="carol@example.org".* action="dunno" reason="unauthenticated"'; then
	ok "mailauthd was asked and answered DUNNO (reason unauthenticated)"
else
	not_ok "mailauthd was asked and answered DUNNO (reason unauthenticated)" "$(tail -n 5 "$MD_LOG")"
fi
f=$(swaks_run "submissions, no AUTH" --server "127.0.0.1:$SUBS_PORT" --tls-on-connect \
	--from alice@example.org --to bob@example.org --quit-after RCPT)
expect_rcpt "submissions without AUTH -> 554 5.7.1 Access denied (mailauthd_relay_restrictions)" \
	'554 5\.7\.1 <bob@example\.org>: Recipient address rejected: Access denied$' "$f"
rip=$(sed -n '1s/.* from //p' "$f")
asked=$(policy_lines - | grep -F "rip=\"$rip\"" || true)
expect_eq "... decided before the policy would be asked (no request from $rip)" "" "$asked"

# ---------------------------------------------------------------------------
if [ -n "$PG_URL" ]; then
	echo "# store outage (PostgreSQL database refuses connections; both daemons keep running)"
	default_action=$(postconf -c "$CONF" -h smtpd_policy_service_default_action)
	tls_open "outage mid-session" "$SUBS_PORT"
	tls_say "EHLO client.test"
	tls_say "AUTH PLAIN $(plain_ir alice@example.org "$ALICE_PW")"
	tls_expect "before the outage: alice authenticates -> 235" '235 '
	tls_say "MAIL FROM:<alice@example.org>"
	tls_say "RCPT TO:<bob@example.org>"
	tls_expect "before the outage: RCPT -> 250" '250 '
	pg_outage_start
	tls_note "outage: ALLOW_CONNECTIONS false, backends terminated"
	outage_from=$(wc -l <"$PLOG")
	tls_say "RCPT TO:<carl@example.org>"
	tls_expect "outage, same session: RCPT -> Postfix's default action ($default_action)" \
		"451 4\.3\.5 .*Sender policy service temporarily unavailable\$"
	tls_say "RCPT TO:<dana@example.org>"
	tls_expect "outage: the next RCPT too" "451 4\.3\.5 "
	f=$(swaks_run "outage, port 25" --server "127.0.0.1:$SMTP_PORT" --from carol@example.org --to bob@example.org)
	expect_sent "outage: port 25 without AUTH still takes mail (its DUNNO needs no database)" "$f"
	pg_outage_end
	tls_note "outage over: ALLOW_CONNECTIONS true"
	tls_say "RCPT TO:<emil@example.org>"
	tls_expect "after recovery, same session: RCPT -> 250, nothing restarted" '250 '
	tls_say "DATA"
	tls_expect "DATA -> 354" '354 '
	echo "-> (header, body and the final dot)" >>"$TLS_LOG"
	printf 'Subject: mailauthd policy e2e outage %s\n\nsent across the outage\n.\n' "$$" >&"${TLS[1]}"
	tls_read
	tls_expect "the message goes out to the recipients accepted before and after the outage -> 250" '250 2\.0\.0 Ok: queued'
	tls_close
	f=$(send "after recovery, new session" alice@example.org "$ALICE_PW" sales@example.org)
	expect_sent "after recovery: a new session as an alias" "$f"
	f=$(send "after recovery, not owned" alice@example.org "$ALICE_PW" carol@example.org)
	expect_rcpt "after recovery: someone else's address -> 554 5.7.1 again" '554 5\.7\.1 ' "$f"
	if still_running; then
		ok "mailauthd ($MD_PID) and Postfix's master ($MASTER_PID) ran throughout"
	else
		not_ok "mailauthd and Postfix's master ran throughout"
	fi
	outage_log=$(tail -n +"$((outage_from + 1))" "$PLOG")
	n=$(printf '%s\n' "$outage_log" | grep -c "warning: problem talking to server 127\.0\.0\.1:$POLICY_PORT" || true)
	if [ "$n" -ge 2 ]; then
		ok "Postfix logged 'problem talking to server 127.0.0.1:$POLICY_PORT' ($n times)"
	else
		not_ok "Postfix logged 'problem talking to server 127.0.0.1:$POLICY_PORT'" "$outage_log"
	fi
	# Each outage request gets no answer: mailauthd logs it and closes the connection.
	# Postfix retries on a fresh connection (try_limit=2), so at least two connections.
	disconnects=$(grep -F 'action="disconnect" reason="store_unavailable"' "$MD_LOG" || true)
	answered=$(grep -F 'policy service="policy" user="alice@example.org"' "$MD_LOG" |
		sed -n '/reason="store_unavailable"/,$p' | grep -v 'reason="store_unavailable"' | head -n 1)
	peers=$(printf '%s\n' "$disconnects" | sed -n 's/.*policy{peer=\([^}]*\)}.*/\1/p' | sort -u | wc -l)
	if [ "$peers" -ge 2 ]; then
		ok "mailauthd answered no outage request, closed the connection instead (on $peers connections: Postfix retried)"
	else
		not_ok "mailauthd closed the connection for each outage request, Postfix retried on a new one" \
			"$(grep -F 'service="policy"' "$MD_LOG" | tail -n 10)"
	fi
	if printf '%s\n' "$answered" | grep -q 'sender="alice@example.org".* action="dunno" reason="own_address"'; then
		ok "mailauthd's next answer after the outage is a real decision (own_address)"
	else
		not_ok "mailauthd's next answer after the outage is a real decision" "$answered"
	fi
else
	echo "# skipped: store outage (no MAILAUTHD_TEST_POSTGRES_URL)"
fi

# ---------------------------------------------------------------------------
echo "# logs"
bad=$(grep -E 'fatal:|panic|throttling|no SASL authentication mechanisms' "$PLOG" || true)
expect_eq "Postfix logged no fatal error, panic or throttling" "" "$bad"
bad=$(grep -E 'panicked|ERROR' "$MD_LOG" |
	grep -v 'action="disconnect" reason="store_unavailable"' || true)
expect_eq "mailauthd logged no panic and no error besides the outage's" "" "$bad"

summary
