#!/usr/bin/env bash
# End-to-end: real Postfix (Debian's package) authenticating SMTP clients through
# mailauthd's auth socket, configured with the shipped conf-examples/postfix/ files.
#
# A private Postfix instance (its own config, queue and data folders under a temporary
# folder; the system instance is neither used nor started) listens on 127.0.0.1:
#   port-25 smtpd   Debian's master.cf "smtp" entry on a high port (no AUTH)
#   submission      master.cf.sasl's entry; test-only: no TLS on loopback
#   submissions     master.cf.sasl's entry as shipped (TLS wrapper, self-signed cert)
#   capture         test-only, unchrooted copy of submission whose smtpd_sasl_path
#                   points at a recording proxy in front of mailauthd (the fixture)
# main.cf is a small base plus conf-examples/postfix/sasl.cf as shipped. Every smtpd
# runs chrooted in the private queue folder, as on Debian, and reaches mailauthd at
# smtpd_sasl_path = mailauthd/auth, i.e. <queue>/mailauthd/auth. mailauthd runs as
# nobody, as a non-root daemon would, in a setgid folder of group postfix.
#
# Then swaks (and a raw SMTP session) prove logins, refusals and a store outage.
#
# Needs root. Installs postfix, swaks, libnet-ssleay-perl and openssl when missing.
# Environment:
#   MAILAUTHD_BIN                 the daemon (default target/debug/mailauthd); never built here
#   MAILAUTHD_TEST_POSTGRES_URL   a PostgreSQL database we may create others from; the
#                                 store outage needs it (required when CI is set; without
#                                 it the run uses SQLite and skips the outage checks)
#   ARTIFACTS                     logs, configs and client transcripts go to
#                                 $ARTIFACTS/postfix-e2e (default ci-artifacts; a relative
#                                 path is taken from the repository root)
#   UPDATE_FIXTURES=1             also write tests/fixtures/postfix-3.7-auth.txt
#   KEEP=1                        keep the temporary folder
# Prints one "ok - …" / "not ok - …" line per check, then "N passed, N failed".

set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
cd "$REPO"
# shellcheck source=../lib.sh
. "$REPO/tests/e2e/lib.sh"

EXAMPLES=$REPO/conf-examples/postfix
BIN=${MAILAUTHD_BIN:-target/debug/mailauthd}
ART=${ARTIFACTS:-ci-artifacts}/postfix-e2e
FIXTURE=$REPO/tests/fixtures/postfix-3.7-auth.txt
DAEMON_USER=nobody
DAEMON_GROUP=$(id -gn nobody 2>/dev/null || echo nogroup)

die() { # MESSAGE [DETAIL]
	not_ok "setup: $1" "${2:-}"
	summary || true
	exit 1
}

[ "$(id -u)" = 0 ] || die "run as root (Postfix's master needs it)"
[ -x "$BIN" ] || die "no daemon at $BIN: build it first or set MAILAUTHD_BIN"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

PG_URL=${MAILAUTHD_TEST_POSTGRES_URL:-}
if [ -z "$PG_URL" ] && [ -n "${CI:-}" ]; then
	die "MAILAUTHD_TEST_POSTGRES_URL is not set; CI needs the store-outage checks"
fi

# ---------------------------------------------------------------------------
# Packages. Debian's postfix package asks for a configuration type; "No
# configuration" leaves /etc/postfix/main.cf absent, so the system instance has
# nothing to run, and a temporary policy-rc.d stops the package from starting it.
POLICY_RC_CREATED=
remove_policy_rc() {
	if [ -n "$POLICY_RC_CREATED" ]; then
		rm -f /usr/sbin/policy-rc.d
		POLICY_RC_CREATED=
	fi
}
missing=()
[ -x /usr/sbin/postfix ] || missing+=(postfix)
command -v swaks >/dev/null 2>&1 || missing+=(swaks)
perl -MNet::SSLeay -e 1 2>/dev/null || missing+=(libnet-ssleay-perl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
[ -n "$PG_URL" ] && ! command -v psql >/dev/null 2>&1 && missing+=(postgresql-client)
if [ ${#missing[@]} -gt 0 ]; then
	echo "# installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 0755 /usr/sbin/policy-rc.d
		POLICY_RC_CREATED=1
	fi
	install_log=$(mktemp)
	if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
		>"$install_log" 2>&1; then
		remove_policy_rc
		cat "$install_log" >&2
		die "apt-get install ${missing[*]} failed"
	fi
	rm -f "$install_log"
	remove_policy_rc
fi
id postfix >/dev/null 2>&1 || die "no postfix user (Debian's postfix package creates it)"
MASTER_CF_DIST=/usr/share/postfix/master.cf.dist
[ -f "$MASTER_CF_DIST" ] || MASTER_CF_DIST=/etc/postfix/master.cf.proto
[ -f "$MASTER_CF_DIST" ] || die "no Debian master.cf template found"
POSTFIX_VERSION=$(postconf -d -h mail_version 2>/dev/null)
echo "# Postfix $POSTFIX_VERSION, swaks $(swaks --version 2>/dev/null | head -n1 | awk '{print $NF}'), daemon $BIN"

# ---------------------------------------------------------------------------
# Everything this run starts, and the way back.
T=$(mktemp -d /tmp/mailauthd-postfix-e2e.XXXXXX)
chmod 0755 "$T"
PFX=$T/postfix
CONF=$PFX/etc
SPOOL=$PFX/spool
PLOG=$PFX/log/postfix.log
MD=$T/mailauthd
MD_CONF=$MD/mailauthd.toml
MD_LOG=$MD/mailauthd.log
AUTH_SOCK=$SPOOL/mailauthd/auth
CAPTURE_SOCK=$SPOOL/mailauthd/capture
CAPTURE=$T/postfix-auth-capture.txt
MD_PID=
RECORDER_PID=
MASTER_PID=
PG_DB=
PG_ADMIN_URL=

collect_artifacts() {
	mkdir -p "$ART" 2>/dev/null || return 0
	cp -f "$PLOG" "$ART/postfix.log" 2>/dev/null || true
	cp -f "$MD_LOG" "$ART/mailauthd.log" 2>/dev/null || true
	cp -f "$CAPTURE" "$ART/postfix-auth-capture.txt" 2>/dev/null || true
	cp -f "$CONF/main.cf" "$ART/main.cf" 2>/dev/null || true
	cp -f "$CONF/master.cf" "$ART/master.cf" 2>/dev/null || true
	cp -f "$MD_CONF" "$ART/mailauthd.toml" 2>/dev/null || true
	if [ -d "$T/transcripts" ]; then
		rm -rf "$ART/transcripts"
		cp -r "$T/transcripts" "$ART/transcripts" 2>/dev/null || true
	fi
}

stop_postfix() {
	[ -n "$MASTER_PID" ] || MASTER_PID=$(awk '{print $1; exit}' "$SPOOL/pid/master.pid" 2>/dev/null || true)
	[ -n "$MASTER_PID" ] || return 0
	local children
	children=$(pgrep -P "$MASTER_PID" 2>/dev/null | tr '\n' ' ' || true)
	postfix -c "$CONF" stop >/dev/null 2>&1 || true
	wait_for 5 eval '! kill -0 "$MASTER_PID" 2>/dev/null' || stop_pid "$MASTER_PID" 2
	for p in $children; do
		stop_pid "$p" 2
	done
	MASTER_PID=
}

cleanup() {
	local rc=$?
	set +e
	remove_policy_rc
	stop_postfix
	stop_pid "$RECORDER_PID"
	stop_pid "$MD_PID"
	if [ -n "$PG_DB" ]; then
		psql "$PG_ADMIN_URL" -qAtc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1
	fi
	collect_artifacts
	if [ -n "${KEEP:-}" ]; then
		echo "# kept $T"
	else
		rm -rf "$T"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'not_ok "interrupted"; summary || true; exit 130' INT TERM

SMTP_PORT=$(pick_port)
SUB_PORT=$(pick_port)
SUBS_PORT=$(pick_port)
CAP_PORT=$(pick_port)

# ---------------------------------------------------------------------------
# mailauthd: its own state, a fresh PostgreSQL database (or SQLite), running as nobody.
mkdir -p "$MD/state" "$MD/run" "$MD/bin" "$T/transcripts"
chown "$DAEMON_USER:$DAEMON_GROUP" "$MD/state" "$MD/run"
# A copy the daemon user can execute wherever the build lives (e.g. under /root).
install -m 0755 "$BIN" "$MD/bin/mailauthd"

if [ -n "$PG_URL" ]; then
	PG_ADMIN_URL=$PG_URL
	PG_DB=mailauthd_e2e_$$
	case $PG_URL in
	*\?*) PG_QUERY="?${PG_URL#*\?}" ;;
	*) PG_QUERY= ;;
	esac
	PG_BASE=${PG_URL%%\?*}
	STORE_URL=${PG_BASE%/*}/$PG_DB$PG_QUERY
	psql "$PG_ADMIN_URL" -qAtc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
	psql "$PG_ADMIN_URL" -qAtc "CREATE DATABASE $PG_DB" >/dev/null ||
		die "cannot create database $PG_DB through MAILAUTHD_TEST_POSTGRES_URL"
	echo "# store: PostgreSQL database $PG_DB"
else
	STORE_URL=sqlite://$MD/state/mailauthd.db
	echo "# store: SQLite (set MAILAUTHD_TEST_POSTGRES_URL for the store-outage checks)"
fi

# The socket folder, as SASL.md sets it up: owned by the daemon, group postfix,
# setgid so the socket gets group postfix too, no access for anyone else.
mkdir -p "$SPOOL"
install -d -o "$DAEMON_USER" -g postfix -m 2750 "$SPOOL/mailauthd"

cat >"$MD_CONF" <<EOF
state_directory = "$MD/state"
runtime_directory = "$MD/run"

[store]
url = "$STORE_URL"
connect_timeout_ms = 1000

[auth_socket]
listen = ["unix:$AUTH_SOCK"]
mode = "0660"
EOF
chmod 0644 "$MD_CONF"

# The daemon and its CLI run as the daemon user, with a HOME of their own (PostgreSQL's
# client library looks for ~/.pgpass). env and setpriv exec what follows, so a command
# started with & keeps its pid.
AS_DAEMON=(env "HOME=$MD/state" setpriv --reuid="$DAEMON_USER" --regid="$DAEMON_GROUP" --clear-groups --)
mdctl() {
	"${AS_DAEMON[@]}" "$MD/bin/mailauthd" --config "$MD_CONF" "$@"
}

"${AS_DAEMON[@]}" "$MD/bin/mailauthd" --config "$MD_CONF" serve >"$MD_LOG" 2>&1 &
MD_PID=$!
wait_unix "$AUTH_SOCK" 30 || die "mailauthd did not open $AUTH_SOCK" "$(tail -n 20 "$MD_LOG")"
sock_perm=$(stat -c '%a %U:%G' "$AUTH_SOCK")
expect_eq "auth socket is mode 660, group postfix (setgid folder), owned by the daemon user" \
	"660 $DAEMON_USER:postfix" "$sock_perm"

# Test data, through the CLI.
ALICE_PW='correct horse battery staple'
mdctl domain add example.org >/dev/null
mdctl domain add example.net >/dev/null
add_local() { # ADDRESS PASSWORD
	printf '%s\n' "$2" | mdctl mailbox add "$1" --password-stdin >/dev/null
}
add_local alice@example.org "$ALICE_PW"
add_local carol@example.org 'carol-Pass-2024'
add_local dave@example.net 'dave-Pass-2024'
add_local olivia@example.org 'olivia-Stored-Pass'
mdctl mailbox set-authsource olivia@example.org oidc >/dev/null
new_app_password() { # ADDRESS NAME PROTOCOLS -> "ID PASSWORD"
	mdctl --json app-password create "$1" --name "$2" --protocols "$3" |
		perl -MJSON::PP -0777 -ne '$j = decode_json($_); print "$j->{id} $j->{password}\n"'
}
read -r _ OLIVIA_SMTP_AP < <(new_app_password olivia@example.org mua smtp)
read -r _ OLIVIA_IMAP_AP < <(new_app_password olivia@example.org phone imap)
read -r OLIVIA_REVOKE_ID OLIVIA_REVOKE_AP < <(new_app_password olivia@example.org old-laptop smtp)
[ -n "$OLIVIA_SMTP_AP" ] && [ -n "$OLIVIA_IMAP_AP" ] && [ -n "$OLIVIA_REVOKE_AP" ] ||
	die "app-password create --json gave no password"

# ---------------------------------------------------------------------------
# The recording proxy for the fixture: capture service -> proxy -> mailauthd.
perl "$HERE/record-auth.pl" "$CAPTURE_SOCK" "$AUTH_SOCK" "$CAPTURE" 2>>"$MD_LOG" &
RECORDER_PID=$!
wait_unix "$CAPTURE_SOCK" 10 || die "the recording proxy did not start"

# ---------------------------------------------------------------------------
# Postfix: a private instance built from Debian's master.cf and the shipped examples.
mkdir -p "$CONF" "$PFX/data" "$PFX/log"
chown postfix "$PFX/data"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=mail.test \
	-keyout "$CONF/tls.pem" -out "$CONF/tls-cert.pem" >/dev/null 2>&1 ||
	die "openssl could not make a test certificate"
cat "$CONF/tls-cert.pem" >>"$CONF/tls.pem"
chmod 0600 "$CONF/tls.pem"

cat >"$CONF/main.cf" <<EOF
# Test base: a private instance on loopback that discards all mail.
compatibility_level = 3.7
queue_directory = $SPOOL
data_directory = $PFX/data
# No syslog here: Postfix's own postlogd writes the log file. Postfix refuses log
# files outside maillog_file_prefixes (default /var, /dev/stdout).
maillog_file = $PLOG
maillog_file_prefixes = $PFX/log
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mail.test
mydomain = test
mydestination =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
default_transport = discard:
relay_transport = discard:
smtpd_tls_chain_files = $CONF/tls.pem
smtpd_banner = \$myhostname ESMTP mailauthd-e2e

# ---- conf-examples/postfix/sasl.cf as shipped ----
EOF
cat "$EXAMPLES/sasl.cf" >>"$CONF/main.cf"

# master.cf: Debian's default (port-25 smtpd chrooted), then master.cf.sasl as
# shipped; only the service ports change.
sed -E "s/^smtp([[:space:]]+inet[[:space:]])/$SMTP_PORT\1/" "$MASTER_CF_DIST" >"$CONF/master.cf"
{
	echo
	echo "# ---- conf-examples/postfix/master.cf.sasl as shipped (ports substituted) ----"
	sed -E -e "s/^submission([[:space:]])/$SUB_PORT\1/" \
		-e "s/^submissions([[:space:]])/$SUBS_PORT\1/" "$EXAMPLES/master.cf.sasl"
} >>"$CONF/master.cf"
grep -q "^$SMTP_PORT[[:space:]]" "$CONF/master.cf" &&
	grep -q "^$SUB_PORT[[:space:]]" "$CONF/master.cf" &&
	grep -q "^$SUBS_PORT[[:space:]]" "$CONF/master.cf" ||
	die "could not put the test ports into master.cf"
# Test-only, on the submission copy: no TLS on loopback, so PLAIN and LOGIN must be
# allowed without it. submissions keeps the shipped settings.
postconf -c "$CONF" -P \
	"$SUB_PORT/inet/smtpd_tls_security_level=none" \
	"$SUB_PORT/inet/smtpd_tls_auth_only=no" \
	"$SUB_PORT/inet/smtpd_sasl_security_options=noanonymous"
# Test-only: one smtpd process whose auth connection goes through the recording proxy.
# Not chrooted, unlike the others: the relative smtpd_sasl_path works either way.
cat >>"$CONF/master.cf" <<EOF

# ---- test only: the fixture recording ----
$CAP_PORT inet n - n - 1 smtpd
  -o syslog_name=postfix/capture
  -o smtpd_tls_security_level=may
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_sasl_path=mailauthd/capture
  -o smtpd_sasl_security_options=noanonymous
  -o smtpd_tls_auth_only=no
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
EOF

check_out=$(postfix -c "$CONF" check 2>&1) || die "postfix check failed" "$check_out"
[ -z "$check_out" ] || printf '%s\n' "$check_out" | sed 's/^/# postfix check: /'
postfix -c "$CONF" start >/dev/null 2>&1 || die "postfix start failed" "$(tail -n 20 "$PLOG" 2>/dev/null)"
MASTER_PID=$(awk '{print $1; exit}' "$SPOOL/pid/master.pid" 2>/dev/null || true)
[ -n "$MASTER_PID" ] || die "no master.pid"
for p in $SMTP_PORT $SUB_PORT $SUBS_PORT $CAP_PORT; do
	wait_tcp "$p" 10 || die "Postfix does not listen on 127.0.0.1:$p" "$(tail -n 20 "$PLOG")"
done
echo "# Postfix master $MASTER_PID: smtp $SMTP_PORT, submission $SUB_PORT, submissions $SUBS_PORT, capture $CAP_PORT"

# ---------------------------------------------------------------------------
# Clients.
# transcript NAME: a new file name for a client transcript (numbered in run order;
# called inside $(...), so the counter lives in a file).
transcript() {
	local n
	n=$(($(cat "$T/transcripts/.count" 2>/dev/null || echo 0) + 1))
	echo "$n" >"$T/transcripts/.count"
	printf '%s/%02d-%s.txt' "$T/transcripts" "$n" "$(printf '%s' "$1" | tr -c 'A-Za-z0-9' '-' | cut -c1-60)"
}

# swaks_run NAME ARGS...: runs swaks against loopback; prints the transcript file.
# Each run connects from its own loopback address (127.0.1.N), as different clients
# would: mailauthd's brute-force throttle counts failures per client address, and
# one address collecting every refusal of this test would be slowed down.
swaks_run() {
	local name=$1 f n
	shift
	f=$(transcript "$name")
	n=$(cat "$T/transcripts/.count")
	echo "# $(date +%T.%N) from 127.0.1.$((n % 250 + 1))" >"$f"
	swaks --ehlo client.test --timeout 20 --from alice@example.org --to bob@example.org \
		--local-interface "127.0.1.$((n % 250 + 1))" "$@" >>"$f" 2>&1 || true
	echo "# $(date +%T.%N)" >>"$f"
	echo "$f"
}

# The final reply code to the AUTH command in a swaks transcript (334 challenges skipped).
auth_reply() {
	awk '/^ *[-~*]*> AUTH / { f = 1; next }
	     f && /^<[-~*]* +[0-9][0-9][0-9][ -]/ { c = $2; sub(/[ -].*/, "", c); if (c != "334") { print c; exit } }' "$1"
}

# expect_auth NAME WANT PORT MECH USER PASSWORD [more swaks args]
expect_auth() {
	local name=$1 want=$2 port=$3 mech=$4 user=$5 pass=$6 f got
	shift 6
	f=$(swaks_run "$name" --server "127.0.0.1:$port" --auth "$mech" \
		--auth-user "$user" --auth-password "$pass" --quit-after AUTH "$@")
	got=$(auth_reply "$f")
	expect_eq "$name" "$want" "$got" "$(cat "$f")"
}

# smtp_session PORT LINE...: a raw SMTP conversation over bash's /dev/tcp; prints
# "<- reply" / "-> command" lines. Reads the greeting, then sends each LINE and reads
# its (possibly multi-line) reply.
smtp_session() {
	local port=$1 line reply
	shift
	exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
	read_reply() {
		while IFS= read -r -t 15 reply <&3; do
			reply=${reply%$'\r'}
			echo "<- $reply"
			case $reply in [0-9][0-9][0-9]-*) ;; *) return 0 ;; esac
		done
		echo "<- (no reply)"
	}
	read_reply
	for line in "$@"; do
		echo "-> $line"
		printf '%s\r\n' "$line" >&3
		read_reply
	done
	exec 3>&-
}

b64() { printf '%s' "$1" | base64 -w0; }
plain_ir() { printf '\0%s\0%s' "$1" "$2" | base64 -w0; }

# ---------------------------------------------------------------------------
echo "# services"
f=$(transcript port-25-ehlo)
smtp_session "$SMTP_PORT" "EHLO client.test" "QUIT" >"$f" 2>&1 || true
if grep -q '^<- 220 ' "$f" && grep -q '^<- 250' "$f" && ! grep -q '^<- 250.AUTH' "$f"; then
	ok "port-25 smtpd greets and offers no AUTH (sasl.cf: smtpd_sasl_auth_enable = no)"
else
	not_ok "port-25 smtpd greets and offers no AUTH" "$(cat "$f")"
fi
f=$(transcript submission-ehlo)
smtp_session "$SUB_PORT" "EHLO client.test" "QUIT" >"$f" 2>&1 || true
if grep -q '^<- 250.AUTH PLAIN LOGIN$' "$f"; then
	ok "submission offers AUTH PLAIN LOGIN (mechanisms from mailauthd's handshake)"
else
	not_ok "submission offers AUTH PLAIN LOGIN" "$(cat "$f")"
fi

echo "# local mailbox"
expect_auth "local mailbox, AUTH PLAIN, right password -> 235" 235 "$SUB_PORT" PLAIN alice@example.org "$ALICE_PW"
expect_auth "local mailbox, AUTH LOGIN, right password -> 235" 235 "$SUB_PORT" LOGIN alice@example.org "$ALICE_PW"
expect_auth "local mailbox, AUTH PLAIN, wrong password -> 535" 535 "$SUB_PORT" PLAIN alice@example.org "wrong $ALICE_PW"
expect_auth "local mailbox, AUTH LOGIN, wrong password -> 535" 535 "$SUB_PORT" LOGIN alice@example.org "wrong $ALICE_PW"

f=$(swaks_run submit --server "127.0.0.1:$SUB_PORT" --auth PLAIN \
	--auth-user alice@example.org --auth-password "$ALICE_PW" \
	--header "Subject: mailauthd e2e $$")
queue_id=$(sed -n 's/^<- *250 2\.0\.0 Ok: queued as \([0-9A-Z]*\).*/\1/p' "$f" | head -n1)
if [ -n "$queue_id" ]; then
	ok "authenticated mail is accepted after DATA -> 250 (queued as $queue_id)"
	if wait_for 10 grep -q "$queue_id: to=<bob@example.org>.*status=sent" "$PLOG"; then
		ok "Postfix delivered it (discard transport)"
	else
		not_ok "Postfix delivered it (discard transport)" "$(grep "$queue_id" "$PLOG")"
	fi
else
	not_ok "authenticated mail is accepted after DATA -> 250" "$(cat "$f")"
fi
f=$(swaks_run unauthenticated --server "127.0.0.1:$SUB_PORT" --quit-after RCPT)
if grep -Eq '^<\*\* +554 5\.7\.1 ' "$f"; then
	ok "submission refuses mail without AUTH -> 554 5.7.1 (master.cf.sasl relay restrictions)"
else
	not_ok "submission refuses mail without AUTH -> 554 5.7.1" "$(cat "$f")"
fi
expect_auth "submissions (TLS wrapper, shipped settings), AUTH PLAIN -> 235" 235 "$SUBS_PORT" PLAIN \
	alice@example.org "$ALICE_PW" --tls-on-connect
expect_auth "submissions (TLS wrapper, shipped settings), AUTH LOGIN, wrong password -> 535" 535 "$SUBS_PORT" LOGIN \
	alice@example.org "nope" --tls-on-connect

echo "# oidc mailbox and app passwords"
expect_auth "oidc mailbox with its stored password -> 535" 535 "$SUB_PORT" PLAIN olivia@example.org 'olivia-Stored-Pass'
expect_auth "oidc mailbox with an SMTP app password, PLAIN -> 235" 235 "$SUB_PORT" PLAIN olivia@example.org "$OLIVIA_SMTP_AP"
expect_auth "oidc mailbox with an SMTP app password, LOGIN -> 235" 235 "$SUB_PORT" LOGIN olivia@example.org "$OLIVIA_SMTP_AP"
expect_auth "oidc mailbox with an IMAP-only app password -> 535" 535 "$SUB_PORT" PLAIN olivia@example.org "$OLIVIA_IMAP_AP"
expect_auth "app password before revocation -> 235" 235 "$SUB_PORT" PLAIN olivia@example.org "$OLIVIA_REVOKE_AP"
mdctl app-password revoke olivia@example.org "$OLIVIA_REVOKE_ID" >/dev/null
expect_auth "revoked app password, the very next attempt -> 535" 535 "$SUB_PORT" PLAIN olivia@example.org "$OLIVIA_REVOKE_AP"

echo "# mailbox and domain state"
expect_auth "carol before any change -> 235" 235 "$SUB_PORT" PLAIN carol@example.org 'carol-Pass-2024'
mdctl mailbox set carol@example.org --active 0 >/dev/null
expect_auth "mailbox active 0 (disabled) -> 535" 535 "$SUB_PORT" PLAIN carol@example.org 'carol-Pass-2024'
mdctl mailbox set carol@example.org --active 2 >/dev/null
expect_auth "mailbox active 2 (receives mail, no login) -> 535" 535 "$SUB_PORT" LOGIN carol@example.org 'carol-Pass-2024'
mdctl mailbox set carol@example.org --active 1 --protocols imap,pop3,sieve >/dev/null
expect_auth "SMTP removed from the mailbox's protocols -> 535" 535 "$SUB_PORT" PLAIN carol@example.org 'carol-Pass-2024'
mdctl mailbox set carol@example.org --protocols imap,smtp >/dev/null
expect_auth "SMTP allowed again -> 235" 235 "$SUB_PORT" PLAIN carol@example.org 'carol-Pass-2024'
expect_auth "dave@example.net before the domain is disabled -> 235" 235 "$SUB_PORT" PLAIN dave@example.net 'dave-Pass-2024'
mdctl domain set example.net --active false >/dev/null
expect_auth "domain inactive -> 535" 535 "$SUB_PORT" PLAIN dave@example.net 'dave-Pass-2024'
expect_auth "unknown user -> 535" 535 "$SUB_PORT" PLAIN nobody-here@example.org 'whatever-password'
expect_auth "unknown domain -> 535" 535 "$SUB_PORT" LOGIN someone@unknown.example 'whatever-password'

# ---------------------------------------------------------------------------
echo "# fixture recording (capture service -> recording proxy -> mailauthd)"
expect_auth "recorded: AUTH PLAIN with initial response -> 235" 235 "$CAP_PORT" PLAIN alice@example.org "$ALICE_PW"
expect_auth "recorded: AUTH LOGIN (CONT round trips) -> 235" 235 "$CAP_PORT" LOGIN alice@example.org "$ALICE_PW"
expect_auth "recorded: AUTH PLAIN, wrong password -> 535" 535 "$CAP_PORT" PLAIN alice@example.org "wrong"
expect_auth "recorded: STARTTLS, then AUTH PLAIN -> 235" 235 "$CAP_PORT" PLAIN alice@example.org "$ALICE_PW" --tls
stop_pid "$RECORDER_PID"
RECORDER_PID=
shape_problems=$(perl -ne '
	BEGIN { $state = "start"; @want = (); }
	next if /^#/;
	chomp;
	push @lines, $_;
	END {
		my @s = grep { /^S: / } @lines; my @c = grep { /^C: / } @lines;
		my @p;
		push @p, "server does not start with VERSION\t1\t2" unless @s && $s[0] eq "S: VERSION\t1\t2";
		my ($first_mech) = grep { $s[$_] =~ /^S: MECH\t/ } 0..$#s;
		my ($spid) = grep { $s[$_] =~ /^S: SPID\t/ } 0..$#s;
		push @p, "no MECH before SPID" unless defined $first_mech && defined $spid && $first_mech < $spid;
		push @p, "no DONE" unless grep { $_ eq "S: DONE" } @s;
		push @p, "Postfix sent no VERSION" unless grep { /^C: VERSION\t1\t\d+$/ } @c;
		push @p, "Postfix sent no CPID" unless grep { /^C: CPID\t\d+$/ } @c;
		my $ip = qr/127\.\d+\.\d+\.\d+/;
		push @p, "no AUTH PLAIN with service=smtp, nologin, lip, rip and resp= last"
			unless grep { /^C: AUTH\t\d+\tPLAIN\tservice=smtp\tnologin\tlip=127\.0\.0\.1\trip=$ip\tresp=\S+$/ } @c;
		push @p, "no AUTH LOGIN without resp="
			unless grep { /^C: AUTH\t\d+\tLOGIN\tservice=smtp\tnologin\tlip=127\.0\.0\.1\trip=$ip$/ } @c;
		push @p, "no AUTH with secured after STARTTLS"
			unless grep { /^C: AUTH\t\d+\tPLAIN\tservice=smtp\tnologin\tlip=127\.0\.0\.1\trip=$ip\tsecured\tresp=\S+$/ } @c;
		push @p, "no CONT round trip" unless (grep { /^S: CONT\t/ } @s) && (grep { /^C: CONT\t/ } @c);
		push @p, "no OK with user=" unless grep { /^S: OK\t\d+\tuser=alice\@example\.org/ } @s;
		push @p, "no FAIL" unless grep { /^S: FAIL\t\d+/ } @s;
		print join("\n", @p);
	}' "$CAPTURE")
if [ -z "$shape_problems" ]; then
	ok "recorded conversation has the expected shape (handshake, PLAIN, LOGIN with CONT, secured, OK, FAIL)"
	if [ -n "${UPDATE_FIXTURES:-}" ]; then
		{
			echo "# What Postfix $POSTFIX_VERSION (Debian) smtpd sends on its auth socket (smtpd_sasl_type = dovecot)"
			echo "# and what mailauthd answers, recorded by tests/e2e/postfix/run.sh through a proxy."
			echo "# One protocol line per file line: \"S: \" mailauthd -> Postfix, \"C: \" Postfix -> mailauthd,"
			echo "# then the line's raw bytes without the final LF; TABs are real TAB characters (not escaped)."
			echo "# Lines are in the order they reached the proxy: Postfix sends VERSION and CPID without"
			echo "# waiting for the handshake, so the two sides' first lines may come in either order."
			echo "# Four SMTP sessions, one after another, served by one smtpd process over one auth"
			echo "# connection: AUTH PLAIN (right password), AUTH LOGIN (right password), AUTH PLAIN"
			echo "# (wrong password), STARTTLS then AUTH PLAIN (right password). Each session came from"
			echo "# its own loopback address (rip=). The password is the test's: $ALICE_PW"
			cat "$CAPTURE"
		} >"$FIXTURE"
		echo "# wrote $FIXTURE"
	fi
else
	not_ok "recorded conversation has the expected shape" "$shape_problems
$(cat "$CAPTURE")"
fi

# ---------------------------------------------------------------------------
if [ -n "$PG_URL" ]; then
	echo "# store outage (PostgreSQL database refuses connections; both daemons keep running)"
	psql "$PG_ADMIN_URL" -qAt >/dev/null <<EOF
ALTER DATABASE $PG_DB ALLOW_CONNECTIONS false;
SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '$PG_DB';
EOF
	expect_auth "outage: AUTH PLAIN -> 454 (not 535)" 454 "$SUB_PORT" PLAIN alice@example.org "$ALICE_PW"
	expect_auth "outage: AUTH LOGIN -> 454 (not 535)" 454 "$SUB_PORT" LOGIN alice@example.org "$ALICE_PW"
	expect_auth "outage: wrong password -> 454 too (nothing can be checked)" 454 "$SUB_PORT" PLAIN alice@example.org "wrong"
	f=$(transcript outage-raw-session)
	smtp_session "$SUB_PORT" "EHLO client.test" \
		"AUTH PLAIN $(plain_ir alice@example.org "$ALICE_PW")" \
		"AUTH PLAIN $(plain_ir alice@example.org "$ALICE_PW")" \
		"MAIL FROM:<someone@example.com>" "RCPT TO:<bob@example.org>" "QUIT" >"$f" 2>&1 || true
	if grep -q '^<- 220 ' "$f"; then
		ok "outage: a client is still greeted (220)"
	else
		not_ok "outage: a client is still greeted (220)" "$(cat "$f")"
	fi
	if grep -q '^<- 250.AUTH PLAIN LOGIN$' "$f"; then
		ok "outage: EHLO works and still offers AUTH PLAIN LOGIN (handshake completes)"
	else
		not_ok "outage: EHLO works and still offers AUTH PLAIN LOGIN" "$(cat "$f")"
	fi
	n454=$(grep -c '^<- 454 4\.7\.0 ' "$f" || true)
	expect_eq "outage: two AUTHs in one session both get 454 4.7.0 (Postfix reconnects at once)" 2 "$n454" "$(cat "$f")"
	if grep -q '^<- 554 5\.7\.1 ' "$f"; then
		ok "outage: the session goes on without AUTH (RCPT refused as unauthenticated)"
	else
		not_ok "outage: the session goes on without AUTH" "$(cat "$f")"
	fi
	f=$(transcript outage-port-25)
	smtp_session "$SMTP_PORT" "EHLO client.test" "QUIT" >"$f" 2>&1 || true
	if grep -q '^<- 220 ' "$f" && grep -q '^<- 221 ' "$f"; then
		ok "outage: port-25 smtpd greets and says goodbye as usual"
	else
		not_ok "outage: port-25 smtpd greets and says goodbye as usual" "$(cat "$f")"
	fi

	psql "$PG_ADMIN_URL" -qAtc "ALTER DATABASE $PG_DB ALLOW_CONNECTIONS true" >/dev/null
	expect_auth "after recovery: AUTH PLAIN -> 235, nothing restarted" 235 "$SUB_PORT" PLAIN alice@example.org "$ALICE_PW"
	expect_auth "after recovery: AUTH LOGIN with an app password -> 235" 235 "$SUB_PORT" LOGIN olivia@example.org "$OLIVIA_SMTP_AP"
	expect_auth "after recovery: wrong password -> 535 again" 535 "$SUB_PORT" PLAIN alice@example.org "wrong"
	if kill -0 "$MD_PID" 2>/dev/null && kill -0 "$MASTER_PID" 2>/dev/null &&
		[ "$(awk '{print $1; exit}' "$SPOOL/pid/master.pid")" = "$MASTER_PID" ]; then
		ok "mailauthd ($MD_PID) and Postfix's master ($MASTER_PID) ran throughout"
	else
		not_ok "mailauthd and Postfix's master ran throughout"
	fi
	lost=$(grep -c 'Connection lost to authentication server' "$PLOG" || true)
	if [ "$lost" -ge 1 ]; then
		ok "Postfix logged the outage as 'Connection lost to authentication server' ($lost times)"
	else
		not_ok "Postfix logged the outage as 'Connection lost to authentication server'" "$(tail -n 30 "$PLOG")"
	fi
else
	echo "# skipped: store outage (no MAILAUTHD_TEST_POSTGRES_URL)"
fi

# ---------------------------------------------------------------------------
echo "# logs"
bad=$(grep -E 'no SASL authentication mechanisms|throttling|fatal:|panic' "$PLOG" || true)
expect_eq "Postfix never lost the SASL handshake (no 'no SASL authentication mechanisms', no throttling, no fatal)" "" "$bad"
# Temporary failures are logged as errors on purpose; anything else is not expected.
bad=$(grep -E 'panicked|ERROR' "$MD_LOG" | grep -v 'outcome="tempfail" reason="store_unavailable"' || true)
expect_eq "mailauthd logged no panic and no error besides the outage's temporary failures" "" "$bad"

summary
