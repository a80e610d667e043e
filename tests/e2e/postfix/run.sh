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
# shellcheck source=common.sh
. "$HERE/common.sh"

BIN=${MAILAUTHD_BIN:-target/debug/mailauthd}
ART=${ARTIFACTS:-ci-artifacts}/postfix-e2e
FIXTURE=$REPO/tests/fixtures/postfix-3.7-auth.txt

[ "$(id -u)" = 0 ] || die "run as root (Postfix's master needs it)"
pf_bin

pf_pg_url "CI needs the store-outage checks"

# ---------------------------------------------------------------------------
# Packages (common.sh).
pf_packages
echo "# Postfix $POSTFIX_VERSION, swaks $(swaks --version 2>/dev/null | head -n1 | awk '{print $NF}'), daemon $BIN"

# ---------------------------------------------------------------------------
# Everything this run starts, and the way back.
pf_init postfix-e2e
CAPTURE_SOCK=$SOCK_DIR/capture
CAPTURE=$T/postfix-auth-capture.txt
RECORDER_PID=

collect_artifacts() {
	mkdir -p "$ART" 2>/dev/null || return 0
	cp -f "$PLOG" "$ART/postfix.log" 2>/dev/null || true
	cp -f "$MD_LOG" "$ART/mailauthd.log" 2>/dev/null || true
	cp -f "$CAPTURE" "$ART/postfix-auth-capture.txt" 2>/dev/null || true
	cp -f "$CONF/main.cf" "$ART/main.cf" 2>/dev/null || true
	cp -f "$CONF/master.cf" "$ART/master.cf" 2>/dev/null || true
	cp -f "$MD_CONF" "$ART/mailauthd.toml" 2>/dev/null || true
	pf_copy_transcripts
}

cleanup() {
	local rc=$?
	set +e
	stop_pid "$RECORDER_PID"
	pf_wind_up "$rc"
}
pf_traps

pick_port SMTP_PORT
pick_port SUB_PORT
pick_port SUBS_PORT
pick_port CAP_PORT

# ---------------------------------------------------------------------------
# mailauthd: its own state, a fresh PostgreSQL database (or SQLite), running as nobody.
md_install "$BIN"
pf_store
pf_socket_dir

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
md_start
wait_unix "$AUTH_SOCK" 30 || die "mailauthd did not open $AUTH_SOCK" "$(tail -n 20 "$MD_LOG")"
md_is_daemon || die "the pid of mailauthd serve is not the daemon's ($MD_PID)"
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
# main.cf: the test base and sasl.cf; master.cf: Debian's default (port-25 smtpd
# chrooted), then master.cf.sasl as shipped; only the service ports change.
pf_sasl_conf
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

pf_start "$SMTP_PORT" "$SUB_PORT" "$SUBS_PORT" "$CAP_PORT"
echo "# Postfix master $MASTER_PID: smtp $SMTP_PORT, submission $SUB_PORT, submissions $SUBS_PORT, capture $CAP_PORT"

# ---------------------------------------------------------------------------
# Clients (and transcript, swaks_run, auth_reply, smtp_session in common.sh).
# expect_auth NAME WANT PORT MECH USER PASSWORD [more swaks args]
expect_auth() {
	local name=$1 want=$2 port=$3 mech=$4 user=$5 pass=$6 f got
	shift 6
	f=$(swaks_run "$name" --server "127.0.0.1:$port" --auth "$mech" \
		--auth-user "$user" --auth-password "$pass" --quit-after AUTH "$@")
	got=$(auth_reply "$f")
	expect_eq "$name" "$want" "$got" "$(cat "$f")"
}

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
	pg_outage_start
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

	pg_outage_end
	expect_auth "after recovery: AUTH PLAIN -> 235, nothing restarted" 235 "$SUB_PORT" PLAIN alice@example.org "$ALICE_PW"
	expect_auth "after recovery: AUTH LOGIN with an app password -> 235" 235 "$SUB_PORT" LOGIN olivia@example.org "$OLIVIA_SMTP_AP"
	expect_auth "after recovery: wrong password -> 535 again" 535 "$SUB_PORT" PLAIN alice@example.org "wrong"
	if still_running; then
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
echo "# guesses sent in parallel from one client address"
# 60 SMTP sessions at once from 127.0.0.5, each with one wrong password, as a guesser
# sends them: Postfix opens an auth connection per smtpd process, and every attempt is
# charged while it is in flight, so no more than network_block_after (15, the default)
# reach the password check, and the right password is refused while the block holds.
ATTACKER=127.0.0.5
attack_swaks() { # FILE PASSWORD
	swaks --ehlo client.test --timeout 30 --local-interface "$ATTACKER" \
		--server "127.0.0.1:$SUB_PORT" --from carol@example.org --to bob@example.org \
		--auth PLAIN --auth-user carol@example.org --auth-password "$2" --quit-after AUTH >"$1" 2>&1 || true
}
attackers=()
for i in $(seq 1 60); do
	attack_swaks "$T/transcripts/parallel-$i.txt" "guess-$i-carol" &
	attackers+=($!)
done
wait "${attackers[@]}"
n535=$(for i in $(seq 1 60); do auth_reply "$T/transcripts/parallel-$i.txt"; done | grep -c '^535$' || true)
expect_eq "60 parallel wrong passwords from one address -> 535 each" 60 "$n535" \
	"$(cat "$T/transcripts/parallel-1.txt")"
checked=$(grep "rip=\"$ATTACKER\"" "$MD_LOG" | grep -c 'reason="bad_credentials"' || true)
throttled=$(grep "rip=\"$ATTACKER\"" "$MD_LOG" | grep -c 'reason="throttled"' || true)
if [ "$checked" -le 15 ] && [ $((checked + throttled)) -eq 60 ]; then
	ok "of 60 parallel guesses $checked reached the password check, $throttled were throttled"
else
	not_ok "at most 15 of 60 parallel guesses reach the password check (checked $checked, throttled $throttled)" \
		"$(grep "rip=\"$ATTACKER\"" "$MD_LOG" | tail -n 5)"
fi
attack_swaks "$T/transcripts/attacker-right.txt" 'carol-Pass-2024'
expect_eq "the right password from that address while the block holds -> 535" 535 \
	"$(auth_reply "$T/transcripts/attacker-right.txt")" "$(cat "$T/transcripts/attacker-right.txt")"
expect_auth "carol from another address is not held up -> 235" 235 "$SUB_PORT" PLAIN carol@example.org 'carol-Pass-2024'
mdctl throttle clear "$ATTACKER" >/dev/null
attack_swaks "$T/transcripts/attacker-cleared.txt" 'carol-Pass-2024'
expect_eq "after throttle clear, the right password from that address -> 235" 235 \
	"$(auth_reply "$T/transcripts/attacker-cleared.txt")" "$(cat "$T/transcripts/attacker-cleared.txt")"

# ---------------------------------------------------------------------------
echo "# logs"
bad=$(grep -E 'no SASL authentication mechanisms|throttling|fatal:|panic' "$PLOG" || true)
expect_eq "Postfix never lost the SASL handshake (no 'no SASL authentication mechanisms', no throttling, no fatal)" "" "$bad"
# Temporary failures are logged as errors on purpose; anything else is not expected.
bad=$(grep -E 'panicked|ERROR' "$MD_LOG" | grep -v 'outcome="tempfail" reason="store_unavailable"' || true)
expect_eq "mailauthd logged no panic and no error besides the outage's temporary failures" "" "$bad"

summary
