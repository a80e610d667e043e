# shellcheck shell=bash
# Shared by the scripts that run a private Postfix (postfix/run.sh: SASL, policy.sh: the
# policy service, shared-limits.sh; devices.sh and oidc/people-leave.sh).
# Source it after tests/e2e/lib.sh:
#   . "$REPO/tests/e2e/postfix/common.sh"
# It defines functions only, die MESSAGE [DETAIL] among them (a failed setup step), and
# starts nothing. The caller defines cleanup and collect_artifacts; pf_traps sets the
# usual two traps, and pf_cleanup and pf_wind_up do the shared part of the way back.
#
# pf_init NAME sets the paths every function here uses:
#   T        the temporary folder (/tmp/mailauthd-NAME.XXXXXX)
#   PFX      the private Postfix instance: CONF (config), SPOOL (queue), PLOG (its log)
#   MD       mailauthd's folder: MD_CONF, MD_LOG, state/, run/, bin/mailauthd
#   SOCK_DIR the folder for mailauthd's unix sockets inside the queue directory, as
#            SASL.md sets it up (smtpd_sasl_path = mailauthd/auth finds it, chrooted or not)
#   AUTH_SOCK the daemon's auth socket there (SOCK_DIR/auth)

DAEMON_USER=nobody
DAEMON_GROUP=$(id -gn nobody 2>/dev/null || echo nogroup)
POLICY_RC_CREATED=
MD_PID=
MASTER_PID=
PG_DB=
PG_ADMIN_URL=

# die MESSAGE [DETAIL]: a setup step failed: one "not ok - setup: …" line (DETAIL as
# comments), the summary line, exit 1 (through the caller's cleanup once pf_traps ran).
die() {
	not_ok "setup: $1" "${2:-}"
	summary || true
	exit 1
}

# pf_bin: BIN, the daemon to test, must be executable; made absolute, as md_install and
# the checks after a change of folder need it.
pf_bin() {
	[ -x "$BIN" ] || die "no daemon at $BIN: build it first or set MAILAUTHD_BIN"
	BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
}

# pf_pg_url WHY: PG_URL from MAILAUTHD_TEST_POSTGRES_URL (empty: SQLite). In CI (CI set)
# it must be set; WHY says what would otherwise go unchecked.
pf_pg_url() {
	PG_URL=${MAILAUTHD_TEST_POSTGRES_URL:-}
	if [ -z "$PG_URL" ] && [ -n "${CI:-}" ]; then
		die "MAILAUTHD_TEST_POSTGRES_URL is not set; $1"
	fi
}

pf_init() { # NAME
	T=$(mktemp -d "/tmp/mailauthd-$1.XXXXXX")
	chmod 0755 "$T"
	PFX=$T/postfix
	CONF=$PFX/etc
	SPOOL=$PFX/spool
	PLOG=$PFX/log/postfix.log
	SOCK_DIR=$SPOOL/mailauthd
	AUTH_SOCK=$SOCK_DIR/auth
	MD=$T/mailauthd
	MD_CONF=$MD/mailauthd.toml
	MD_LOG=$MD/mailauthd.log
	mkdir -p "$MD/state" "$MD/run" "$MD/bin" "$T/transcripts"
}

# ---------------------------------------------------------------------------
# Packages. Debian's postfix package asks for a configuration type; "No
# configuration" leaves /etc/postfix/main.cf absent, so the system instance has
# nothing to run, and a temporary policy-rc.d stops the package from starting it.
remove_policy_rc() {
	if [ -n "$POLICY_RC_CREATED" ]; then
		rm -f /usr/sbin/policy-rc.d
		POLICY_RC_CREATED=
	fi
}

# pf_packages: installs postfix, swaks, libnet-ssleay-perl and openssl when missing (and
# postgresql-client when PG_URL is set); sets MASTER_CF_DIST and POSTFIX_VERSION.
pf_packages() {
	local missing=() install_log
	[ -x /usr/sbin/postfix ] || missing+=(postfix)
	command -v swaks >/dev/null 2>&1 || missing+=(swaks)
	perl -MNet::SSLeay -e 1 2>/dev/null || missing+=(libnet-ssleay-perl)
	command -v openssl >/dev/null 2>&1 || missing+=(openssl)
	[ -n "${PG_URL:-}" ] && ! command -v psql >/dev/null 2>&1 && missing+=(postgresql-client)
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
}

# pf_install_missing PACKAGE...: apt-get install of the packages a caller found missing
# beside pf_packages' (none: nothing to do); the package lists are updated only when the
# first attempt fails.
pf_install_missing() {
	local install_log
	[ $# -gt 0 ] || return 0
	echo "# installing $*"
	install_log=$(mktemp)
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
		>"$install_log" 2>&1 || {
		apt-get update -qq >/dev/null 2>&1
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			"$@" >"$install_log" 2>&1
	} || die "apt-get install $* failed" "$(tail -n 20 "$install_log")"
	rm -f "$install_log"
}

# pf_dovecot_23: dies unless the installed Dovecot is 2.3 (the private instance's
# config is written for 2.3).
pf_dovecot_23() {
	case $(dovecot --version 2>/dev/null) in
	2.3.*) ;;
	*) die "expected Dovecot 2.3, found '$(dovecot --version 2>/dev/null)'" ;;
	esac
}

# ---------------------------------------------------------------------------
# The store: a fresh PostgreSQL database made through PG_URL, or SQLite. Sets STORE_URL
# (and PG_DB, PG_ADMIN_URL for the outage and the cleanup).
pf_store() {
	local pg_query pg_base
	if [ -n "${PG_URL:-}" ]; then
		PG_ADMIN_URL=$PG_URL
		PG_DB=mailauthd_e2e_$$
		case $PG_URL in
		*\?*) pg_query="?${PG_URL#*\?}" ;;
		*) pg_query= ;;
		esac
		pg_base=${PG_URL%%\?*}
		STORE_URL=${pg_base%/*}/$PG_DB$pg_query
		psql "$PG_ADMIN_URL" -qAtc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
		psql "$PG_ADMIN_URL" -qAtc "CREATE DATABASE $PG_DB" >/dev/null ||
			die "cannot create database $PG_DB through MAILAUTHD_TEST_POSTGRES_URL"
		echo "# store: PostgreSQL database $PG_DB"
	else
		STORE_URL=sqlite://$MD/state/mailauthd.db
		echo "# store: SQLite (set MAILAUTHD_TEST_POSTGRES_URL for the store-outage checks)"
	fi
}

# pg_outage_start / pg_outage_end: the database refuses new connections and loses the
# ones it has; then takes them again. Nothing is restarted.
pg_outage_start() {
	psql "$PG_ADMIN_URL" -qAt >/dev/null <<EOF
ALTER DATABASE $PG_DB ALLOW_CONNECTIONS false;
SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '$PG_DB';
EOF
}
pg_outage_end() {
	psql "$PG_ADMIN_URL" -qAtc "ALTER DATABASE $PG_DB ALLOW_CONNECTIONS true" >/dev/null
}

# ---------------------------------------------------------------------------
# mailauthd as the daemon user (nobody), as a non-root daemon would run.

# pf_socket_dir: SOCK_DIR as SASL.md sets it up: owned by the daemon, group postfix,
# setgid so the sockets get group postfix too, no access for anyone else.
pf_socket_dir() {
	mkdir -p "$SPOOL"
	install -d -o "$DAEMON_USER" -g postfix -m 2750 "$SOCK_DIR"
}

# md_install BIN: a copy the daemon user can execute wherever the build lives (e.g.
# under /root), and state folders it owns.
md_install() {
	chown "$DAEMON_USER:$DAEMON_GROUP" "$MD/state" "$MD/run"
	install -m 0755 "$1" "$MD/bin/mailauthd"
}

# The daemon and its CLI run as the daemon user, with a HOME of their own (PostgreSQL's
# client library looks for ~/.pgpass).
as_daemon() {
	env "HOME=$MD/state" setpriv --reuid="$DAEMON_USER" --regid="$DAEMON_GROUP" --clear-groups -- "$@"
}
mdctl() {
	as_daemon "$MD/bin/mailauthd" --config "$MD_CONF" "$@"
}

# md_start: `mailauthd serve` with MD_CONF, logging to MD_LOG; sets MD_PID. Started as a
# plain command, not through as_daemon: a function run with & gets a subshell of its own,
# and $! would be that subshell, not the daemon. env and setpriv exec what follows, so
# this way $! is the daemon's pid.
md_start() {
	chmod 0644 "$MD_CONF"
	env "HOME=$MD/state" setpriv --reuid="$DAEMON_USER" --regid="$DAEMON_GROUP" --clear-groups -- \
		"$MD/bin/mailauthd" --config "$MD_CONF" serve >"$MD_LOG" 2>&1 &
	MD_PID=$!
}

# md_sockets_toml: the [auth_socket] and [userdb_socket] sections for a daemon that the
# private Postfix (AUTH_SOCK, in its queue) and a private Dovecot
# (tests/e2e/dovecot/imap-login.sh, through MD/run) both reach. Test-only mode 0666:
# Dovecot's auth-worker user (dovecot) connects to the sockets in run/.
md_sockets_toml() {
	cat <<EOF
[auth_socket]
listen = ["unix:$AUTH_SOCK", "unix:$MD/run/auth"]
mode = "0666"

[userdb_socket]
listen = ["unix:$MD/run/userdb"]
mode = "0666"
EOF
}

# md_wait_sockets: after md_start, until the sockets of md_sockets_toml answer.
md_wait_sockets() {
	wait_unix "$AUTH_SOCK" 30 || die "mailauthd did not open $AUTH_SOCK" "$(tail -n 20 "$MD_LOG")"
	wait_unix "$MD/run/userdb" 10 || die "mailauthd did not open $MD/run/userdb" "$(tail -n 20 "$MD_LOG")"
}

# md_is_daemon: true when MD_PID is mailauthd itself (call once its sockets answer), so
# stop_pid "$MD_PID" stops the daemon and not some process in between.
md_is_daemon() {
	[ "$(readlink "/proc/$MD_PID/exe" 2>/dev/null)" = "$MD/bin/mailauthd" ]
}

# ---------------------------------------------------------------------------
# The private Postfix instance (its own config, queue and data folders; the system
# instance is neither used nor started).

# pf_tls_cert: a self-signed certificate and key in CONF/tls.pem.
pf_tls_cert() {
	mkdir -p "$CONF" "$PFX/data" "$PFX/log"
	chown postfix "$PFX/data"
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=mail.test \
		-keyout "$CONF/tls.pem" -out "$CONF/tls-cert.pem" >/dev/null 2>&1 ||
		die "openssl could not make a test certificate"
	cat "$CONF/tls-cert.pem" >>"$CONF/tls.pem"
	chmod 0600 "$CONF/tls.pem"
}

# pf_main_cf_base: prints the test base of main.cf; the caller appends the shipped files.
pf_main_cf_base() {
	cat <<EOF
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
EOF
}

# pf_sasl_conf: the instance of SASL.md: a test certificate (pf_tls_cert), main.cf (the
# test base, then conf-examples/postfix/sasl.cf as shipped) and master.cf (Debian's,
# port-25 smtpd chrooted, then master.cf.sasl as shipped). Only the service ports change:
# smtp to SMTP_PORT, submission to SUB_PORT, submissions to SUBS_PORT.
pf_sasl_conf() {
	pf_tls_cert
	{
		pf_main_cf_base
		echo
		echo "# ---- conf-examples/postfix/sasl.cf as shipped ----"
		cat "$REPO/conf-examples/postfix/sasl.cf"
	} >"$CONF/main.cf"
	sed -E "s/^smtp([[:space:]]+inet[[:space:]])/$SMTP_PORT\1/" "$MASTER_CF_DIST" >"$CONF/master.cf"
	{
		echo
		echo "# ---- conf-examples/postfix/master.cf.sasl as shipped (ports substituted) ----"
		sed -E -e "s/^submission([[:space:]])/$SUB_PORT\1/" \
			-e "s/^submissions([[:space:]])/$SUBS_PORT\1/" "$REPO/conf-examples/postfix/master.cf.sasl"
	} >>"$CONF/master.cf"
	if ! grep -q "^${SMTP_PORT}[[:space:]]" "$CONF/master.cf" ||
		! grep -q "^${SUB_PORT}[[:space:]]" "$CONF/master.cf" ||
		! grep -q "^${SUBS_PORT}[[:space:]]" "$CONF/master.cf"; then
		die "could not put the test ports into master.cf"
	fi
}

# pf_start PORT...: postfix check (warnings shown as comments), start, wait for the
# ports; sets MASTER_PID.
pf_start() {
	local check_out p
	check_out=$(postfix -c "$CONF" check 2>&1) || die "postfix check failed" "$check_out"
	[ -z "$check_out" ] || printf '%s\n' "$check_out" | sed 's/^/# postfix check: /'
	postfix -c "$CONF" start >/dev/null 2>&1 || die "postfix start failed" "$(tail -n 20 "$PLOG" 2>/dev/null)"
	MASTER_PID=$(awk '{print $1; exit}' "$SPOOL/pid/master.pid" 2>/dev/null || true)
	[ -n "$MASTER_PID" ] || die "no master.pid"
	for p in "$@"; do
		wait_tcp "$p" 10 || die "Postfix does not listen on 127.0.0.1:$p" "$(tail -n 20 "$PLOG")"
	done
}

stop_postfix() {
	[ -n "$MASTER_PID" ] || MASTER_PID=$(awk '{print $1; exit}' "$SPOOL/pid/master.pid" 2>/dev/null || true)
	[ -n "$MASTER_PID" ] || return 0
	local children p
	children=$(pgrep -P "$MASTER_PID" 2>/dev/null | tr '\n' ' ' || true)
	postfix -c "$CONF" stop >/dev/null 2>&1 || true
	wait_for 5 eval '! kill -0 "$MASTER_PID" 2>/dev/null' || stop_pid "$MASTER_PID" 2
	for p in $children; do
		stop_pid "$p" 2
	done
	MASTER_PID=
}

# still_running: true when mailauthd and the same Postfix master are still up.
still_running() {
	kill -0 "$MD_PID" 2>/dev/null && kill -0 "$MASTER_PID" 2>/dev/null &&
		[ "$(awk '{print $1; exit}' "$SPOOL/pid/master.pid")" = "$MASTER_PID" ]
}

# pf_cleanup: stops Postfix and mailauthd, drops the database (not the folder T).
pf_cleanup() {
	remove_policy_rc
	stop_postfix
	stop_pid "$MD_PID"
	if [ -n "$PG_DB" ]; then
		psql "$PG_ADMIN_URL" -qAtc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1
	fi
	return 0
}

# pf_copy_transcripts: the client transcripts of this run into ART/transcripts (for the
# caller's collect_artifacts; the copy of an earlier run is replaced).
pf_copy_transcripts() {
	if [ -d "$T/transcripts" ]; then
		rm -rf "$ART/transcripts"
		cp -r "$T/transcripts" "$ART/transcripts" 2>/dev/null || true
	fi
}

# pf_wind_up RC: the shared end of the caller's cleanup (after it stopped what only it
# started): pf_cleanup, the caller's collect_artifacts, T removed unless KEEP is set, then
# exit RC.
pf_wind_up() {
	pf_cleanup
	collect_artifacts
	if [ -n "${KEEP:-}" ]; then
		echo "# kept $T"
	else
		rm -rf "$T"
	fi
	exit "$1"
}

# pf_traps: the caller's cleanup runs on exit; an interrupt is a failed check, then the
# summary line, then exit 130 (through cleanup).
pf_traps() {
	trap cleanup EXIT
	trap 'not_ok "interrupted"; summary || true; exit 130' INT TERM
}

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
