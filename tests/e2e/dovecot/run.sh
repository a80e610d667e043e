#!/usr/bin/env bash
# End to end: real Dovecot, through the shipped adapter and configs
# (conf-examples/dovecot/), against the real mailauthd daemon.
#
#   tests/e2e/dovecot/run.sh                    # Dovecot 2.3 installed on this machine
#   tests/e2e/dovecot/run.sh --dovecot 2.4      # Dovecot 2.4 in a Debian 13 chroot
#
# Environment:
#   MAILAUTHD_BIN   the daemon (default target/debug/mailauthd under the repo);
#                   this script never builds it
#   DOVECOT         2.3 or 2.4, like --dovecot (default 2.3, or 2.4 when
#                   DOVECOT_ROOT is set)
#   DOVECOT_ROOT    the 2.4 tree (default /srv/trixie-dovecot); made with
#                   make-dovecot-2.4-root.sh when it is missing or lacks a package
#                   (reused otherwise: the first build downloads ~310 MB)
#   MAILAUTHD_TEST_POSTGRES_URL  e.g. postgres://postgres@127.0.0.1:5432/test: the
#                   store-outage checks run mailauthd on a fresh database made
#                   there (dropped at the end). Without it they are skipped,
#                   or fail when CI is set.
#   ARTIFACTS       logs and configs go to $ARTIFACTS/dovecot-e2e/<version>/
#                   (default ci-artifacts under the repo)
#   UPDATE_FIXTURE  1: write the recorded adapter conversation into
#                   tests/fixtures/dovecot-adapter-auth.txt (its section for this
#                   Dovecot version)
#   KEEP            1: keep the temporary directory
#   DOVECOT_AUTH_DEBUG  1: auth_debug = yes in Dovecot's log
#
# What runs, all on loopback: mailauthd (a temporary config: SQLite, then
# PostgreSQL for the outage) with its auth and userdb sockets; one private
# Dovecot (IMAP, POP3, ManageSieve, LMTP on ports from E2E_PORTS, log_path to a
# file) using conf-examples/dovecot/mailauthd.lua and the version's
# conf.d/auth-mailauthd.conf.ext with only paths, ports and the mail user
# substituted. Clients: curl (IMAP, POP3), bash /dev/tcp dialogues (ManageSieve
# AUTHENTICATE "PLAIN", IMAP LOGIN, LMTP), doveadm user and doveadm auth test.
#
# Needs root (Dovecot's master process). Installs missing Debian packages.
# Prints "ok - ..." / "not ok - ..." per check and "N passed, N failed" last;
# exits non-zero when anything failed.

set -Eeuo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
ADAPTER_DIR=$REPO/conf-examples/dovecot
FIXTURE=$REPO/tests/fixtures/dovecot-adapter-auth.txt

usage() {
	sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
}

DOVECOT=${DOVECOT:-}
while [ $# -gt 0 ]; do
	case $1 in
	--dovecot) DOVECOT=${2:-}; shift 2 ;;
	--dovecot=*) DOVECOT=${1#*=}; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
done
if [ -z "$DOVECOT" ]; then
	if [ -n "${DOVECOT_ROOT:-}" ]; then DOVECOT=2.4; else DOVECOT=2.3; fi
fi
case $DOVECOT in
2.3) ROOT= ;;
2.4) ROOT=${DOVECOT_ROOT:-/srv/trixie-dovecot}; ROOT=${ROOT%/} ;;
*) echo "DOVECOT must be 2.3 or 2.4, not '$DOVECOT'" >&2; exit 2 ;;
esac
V=$DOVECOT

BIN=${MAILAUTHD_BIN:-target/debug/mailauthd}
case $BIN in /*) ;; *) BIN=$REPO/$BIN ;; esac
ARTIFACTS=${ARTIFACTS:-ci-artifacts}
case $ARTIFACTS in /*) ;; *) ARTIFACTS=$REPO/$ARTIFACTS ;; esac
OUTDIR=$ARTIFACTS/dovecot-e2e/$V
PG_URL=${MAILAUTHD_TEST_POSTGRES_URL:-}

###########################################################################
# Reporting: ok, not_ok, check and summary from lib.sh

# shellcheck source=../lib.sh
. "$REPO/tests/e2e/lib.sh"
SKIPPED=0

skip() { # name reason: neither passed nor failed
	SKIPPED=$((SKIPPED + 1))
	echo "# SKIP - $1: $2"
}

note() {
	echo "# $*"
}

die() {
	not_ok "$1" "${2:-}"
	exit 1
}

# Fills in the summary; runs last (EXIT trap), after cleanup.
STARTED=$(date +%s)
finish() {
	local status=$1
	trap - ERR
	set +e
	cleanup
	if [ "$status" != 0 ] && [ "$E2E_FAILED" = 0 ]; then
		not_ok "the script ended early (exit $status)"
	fi
	note "Dovecot $V pass took $(($(date +%s) - STARTED)) s; logs in $OUTDIR"
	[ "$SKIPPED" = 0 ] || note "$SKIPPED check(s) skipped"
	summary && exit 0
	exit 1
}
on_error() {
	not_ok "unexpected error at line $1: $2"
	exit 1
}

###########################################################################
# Prerequisites

# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() { :; } # until there is something to clean up
trap 'finish $?' EXIT
trap 'on_error $LINENO "$BASH_COMMAND"' ERR
trap 'exit 130' INT TERM
[ "$(id -u)" = 0 ] || die "run as root (Dovecot's master process needs it)"
[ -x "$BIN" ] || die "no mailauthd at $BIN: build it (cargo build) or set MAILAUTHD_BIN"
rm -rf "$OUTDIR"
mkdir -p "$OUTDIR"

# Runs a command on the host or inside DOVECOT_ROOT.
run() {
	if [ -n "$ROOT" ]; then
		chroot "$ROOT" "$@"
	else
		"$@"
	fi
}

apt_install() {
	note "installing $*"
	export DEBIAN_FRONTEND=noninteractive
	if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@"; } >"$OUTDIR/apt.log" 2>&1; then
		die "apt-get install $*" "$(tail -n 20 "$OUTDIR/apt.log")"
	fi
}

# Dovecot's pieces, as files in a tree ("" = this machine).
dovecot_missing() { # tree
	local r=$1 missing=
	[ -x "$r/usr/sbin/dovecot" ] || missing="$missing dovecot-core"
	[ -e "$r/usr/lib/dovecot/imap" ] || missing="$missing dovecot-imapd"
	[ -e "$r/usr/lib/dovecot/pop3" ] || missing="$missing dovecot-pop3d"
	[ -e "$r/usr/lib/dovecot/managesieve-login" ] || missing="$missing dovecot-managesieved"
	[ -e "$r/usr/lib/dovecot/lmtp" ] || missing="$missing dovecot-lmtpd"
	[ -e "$r/usr/lib/dovecot/modules/auth/libauthdb_lua.so" ] || missing="$missing dovecot-auth-lua"
	ls "$r"/usr/lib/*/lua/*/socket/unix.so >/dev/null 2>&1 || missing="$missing lua-socket"
	echo "$missing"
}

host_missing=$(dovecot_missing "")
[ -n "$ROOT" ] && host_missing=
command -v curl >/dev/null 2>&1 || host_missing="$host_missing curl"
command -v perl >/dev/null 2>&1 || host_missing="$host_missing perl"
command -v base64 >/dev/null 2>&1 || host_missing="$host_missing coreutils"
if [ -n "$PG_URL" ] && ! command -v psql >/dev/null 2>&1; then
	host_missing="$host_missing postgresql-client"
fi
# shellcheck disable=SC2086
[ -z "$host_missing" ] || apt_install $host_missing
if [ -n "$ROOT" ] && [ -n "$(dovecot_missing "$ROOT")" ]; then
	note "preparing $ROOT with make-dovecot-2.4-root.sh (cached: reused when present)"
	bash "$HERE/make-dovecot-2.4-root.sh" "$ROOT" >"$OUTDIR/make-root.log" 2>&1 ||
		die "make-dovecot-2.4-root.sh $ROOT" "$(tail -n 20 "$OUTDIR/make-root.log")"
	[ -z "$(dovecot_missing "$ROOT")" ] || die "$ROOT still lacks:$(dovecot_missing "$ROOT")"
fi

for u in dovecot dovenull nobody; do
	run id -u "$u" >/dev/null 2>&1 || die "system user $u missing${ROOT:+ in $ROOT}"
done
NOGROUP=$(run id -gn nobody)
NOBODY_UID=$(run id -u nobody)
NOBODY_GID=$(run id -g nobody)
DOVECOT_VERSION=$(run dovecot --version 2>/dev/null | head -n1)
case $DOVECOT_VERSION in
"$V".*) ;;
*) die "expected Dovecot $V${ROOT:+ in $ROOT}, found '$DOVECOT_VERSION'" ;;
esac
note "Dovecot $DOVECOT_VERSION${ROOT:+ in $ROOT}; mailauthd $("$BIN" --version 2>/dev/null | head -n1) at $BIN"

###########################################################################
# Layout. HT: the temporary directory as this machine sees it; T: as Dovecot
# sees it (the same for 2.3; inside DOVECOT_ROOT for 2.4). mailauthd runs on
# this machine; its sockets live inside HT, so a chrooted Dovecot reaches them
# without any mount.

mkdir -p "$ROOT/tmp"
HT=$(mktemp -d "$ROOT/tmp/mailauthd-dovecot-e2e.XXXXXX")
T=${HT#"$ROOT"}
chmod 0755 "$HT"
M=$HT/mailauthd            # mailauthd: configs, state, sockets (host paths)
D=$HT/dovecot              # Dovecot: config, run, state, log
mkdir -p "$M/run" "$D" "$HT/sock" "$HT/vmail" "$HT/recorder"
chmod 0755 "$M" "$M/run" "$HT/sock" "$HT/recorder"
chown "$NOBODY_UID:$NOBODY_GID" "$HT/vmail"
MLOG=$OUTDIR/mailauthd.log  # every daemon in this pass appends here
DLOG=$D/dovecot.log
: >"$MLOG"

MAILAUTHD_PID=
RECORDER_PID=
PG_DB=
PG_ADMIN_URL=

stop_dovecot() {
	[ -f "$D/dovecot.conf" ] || return 0
	local pid i p children alive
	[ -f "$D/run/master.pid" ] || return 0
	pid=$(cat "$D/run/master.pid" 2>/dev/null)
	[ -n "$pid" ] || return 0
	# The auth processes may outlive the master while clients stay connected.
	children=$(pgrep -P "$pid" | tr '\n' ' ' || true)
	run dovecot -c "$T/dovecot/dovecot.conf" stop >/dev/null 2>&1 || true
	for i in $(seq 1 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	for p in $children; do kill -TERM "$p" 2>/dev/null || true; done
	for i in $(seq 1 30); do
		alive=
		for p in $children; do kill -0 "$p" 2>/dev/null && alive=1; done
		[ -z "$alive" ] && break
		sleep 0.1
	done
	for p in $children; do kill -KILL "$p" 2>/dev/null || true; done
	rm -f "$D/run/master.pid"
}

pg_admin() { # psql on the database the URL names (never our own)
	psql "$PG_ADMIN_URL" -X -q -v ON_ERROR_STOP=1 -At "$@"
}

cleanup() {
	stop_dovecot
	stop_pid "$RECORDER_PID"
	RECORDER_PID=
	stop_pid "$MAILAUTHD_PID"
	MAILAUTHD_PID=
	if [ -n "$PG_DB" ]; then
		pg_admin -c "DROP DATABASE IF EXISTS \"$PG_DB\" WITH (FORCE)" >/dev/null 2>&1 ||
			note "could not drop database $PG_DB"
		PG_DB=
	fi
	if [ -d "$HT" ]; then
		cp "$DLOG" "$OUTDIR/dovecot.log" 2>/dev/null
		cp "$D/dovecot.conf" "$D/auth-mailauthd.conf.ext" "$OUTDIR/" 2>/dev/null
		cp "$M"/*.toml "$OUTDIR/" 2>/dev/null
		cp "$HT/recorder/auth.txt" "$OUTDIR/adapter-auth-conversation.txt" 2>/dev/null
		cp "$HT"/lmtp-*.txt "$OUTDIR/" 2>/dev/null
		if [ "${KEEP:-0}" = 1 ]; then
			note "kept $HT"
		else
			rm -rf "$HT"
		fi
	fi
}

###########################################################################
# Ports

# Free on 127.0.0.2 as well: Dovecot listens there too (the throttle checks come from it).
for port in IMAP_PORT POP3_PORT SIEVE_PORT LMTP_PORT; do
	pick_port "$port" 127.0.0.2 || die "no free port in $E2E_PORTS"
done

###########################################################################
# mailauthd

# The throttle may not be in this build: its section is only written when the
# binary accepts it. Loopback's own address is trusted so the
# other checks are never delayed; the throttle check logs in from 127.0.0.2.
THROTTLE_TOML='[throttle]
trusted_networks = ["127.0.0.1"]
free_failures = 2
base_delay_ms = 100
max_delay_ms = 400
network_block_after = 4
account_block_after = 50
block_secs = 120
'
HAVE_THROTTLE=
printf '%s' "$THROTTLE_TOML" >"$M/throttle-probe.toml"
if "$BIN" --config "$M/throttle-probe.toml" config check >"$M/throttle-probe.out" 2>&1; then
	HAVE_THROTTLE=1
elif "$BIN" throttle --help >/dev/null 2>&1; then
	die "mailauthd has a throttle command but rejects this test's [throttle] section: update THROTTLE_TOML in $0" \
		"$(cat "$M/throttle-probe.out")"
fi
rm -f "$M/throttle-probe.toml" "$M/throttle-probe.out"

# Who may connect: the shipped configs run the auth workers as the dovecot
# user, so 2.3 gets the README's group + 0660. The 2.4 tree has its own users
# (its dovecot uid/gid mean nothing here), so 2.4 gets 0666.
if [ -z "$ROOT" ]; then
	SOCKET_ACCESS='group = "dovecot"
mode = "0660"'
else
	SOCKET_ACCESS='mode = "0666"'
fi

write_mailauthd_config() { # file state-dir [store-url]
	{
		echo "state_directory = \"$2\""
		echo "runtime_directory = \"$M/run\""
		echo
		if [ -n "${3:-}" ]; then
			echo "[store]"
			echo "url = \"$3\""
			# A login during an outage waits this long for a connection.
			echo "connect_timeout_ms = 1000"
			echo
		fi
		echo "[auth_socket]"
		echo "listen = [\"unix:$M/run/auth.sock\"]"
		echo "$SOCKET_ACCESS"
		echo
		echo "[userdb_socket]"
		echo "listen = [\"unix:$M/run/userdb.sock\"]"
		echo "$SOCKET_ACCESS"
		echo
		echo "[log]"
		echo 'level = "info"'
		if [ -n "$HAVE_THROTTLE" ]; then
			echo
			printf '%s' "$THROTTLE_TOML"
		fi
	} >"$1"
}

CONF=
mctl() { # admin CLI against the current daemon's config
	"$BIN" --config "$CONF" "$@"
}

start_mailauthd() { # config
	CONF=$1
	echo "===== $(date -u +%FT%TZ) starting mailauthd --config $(basename "$CONF")" >>"$MLOG"
	local from i
	from=$(stat -c %s "$MLOG")
	"$BIN" --config "$CONF" serve >>"$MLOG" 2>&1 &
	MAILAUTHD_PID=$!
	for i in $(seq 1 150); do
		if tail -c +"$((from + 1))" "$MLOG" | grep 'mailauthd ready' >/dev/null; then
			return 0
		fi
		kill -0 "$MAILAUTHD_PID" 2>/dev/null || break
		sleep 0.1
	done
	return 1
}

stop_mailauthd() {
	stop_pid "$MAILAUTHD_PID"
	MAILAUTHD_PID=
}

# mailauthd's decision log since a mark.
MARK=0
mark() {
	MARK=$(stat -c %s "$MLOG")
}
decisions_since_mark() {
	tail -c +"$((MARK + 1))" "$MLOG" | grep ' auth ' || true
}
# Waits (up to 3 s) for the decision line about USER with OUTCOME and REASON.
saw_decision() { # user outcome reason
	local i pattern="user=\"$1\".* outcome=\"$2\" reason=\"$3\""
	for i in $(seq 1 30); do
		decisions_since_mark | grep -Eq -- "$pattern" && return 0
		sleep 0.1
	done
	return 1
}

###########################################################################
# Dovecot: the shipped adapter and config, paths substituted

install -m 0644 "$ADAPTER_DIR/mailauthd.lua" "$D/mailauthd.lua"
SNIPPET_SRC=$ADAPTER_DIR/$V/conf.d/auth-mailauthd.conf.ext
[ -f "$SNIPPET_SRC" ] || die "missing $SNIPPET_SRC"
sed -e "s#/etc/dovecot/mailauthd.lua#$T/dovecot/mailauthd.lua#g" \
	-e "s#/run/mailauthd/auth\b#$T/sock/auth.sock#g" \
	-e "s#/run/mailauthd/userdb\b#$T/sock/userdb.sock#g" \
	-e "s#uid=vmail gid=vmail#uid=nobody gid=$NOGROUP#g" \
	-e "s#^mail_uid = vmail\$#mail_uid = nobody#" \
	-e "s#^mail_gid = vmail\$#mail_gid = $NOGROUP#" \
	-e "s#/var/vmail/#$T/vmail/#g" \
	"$SNIPPET_SRC" >"$D/auth-mailauthd.conf.ext"
if [ "$V" = 2.3 ]; then
	WANT="file=$T/dovecot/mailauthd.lua|MAILAUTHD_AUTH_SOCKET=$T/sock/auth.sock|MAILAUTHD_USERDB_SOCKET=$T/sock/userdb.sock|uid=nobody|home=$T/vmail/"
else
	WANT="lua_file = $T/dovecot/mailauthd.lua|auth_socket = $T/sock/auth.sock|userdb_socket = $T/sock/userdb.sock|mail_uid = nobody|mail_home = $T/vmail/"
fi
IFS='|' read -r -a wants <<<"$WANT"
for want in "${wants[@]}"; do
	grep -qF -- "$want" "$D/auth-mailauthd.conf.ext" ||
		die "shipped config changed shape: could not substitute '$want'"
done

# The adapter's socket paths are symlinks: normally to mailauthd's sockets,
# for the recording to the recorder's.
point_auth_at() { # path as Dovecot sees it
	ln -sfn "$1" "$HT/sock/auth.sock"
}
ln -sfn "$T/mailauthd/run/userdb.sock" "$HT/sock/userdb.sock"
point_auth_at "$T/mailauthd/run/auth.sock"

{
	if [ "$V" = 2.4 ]; then
		echo "dovecot_config_version = 2.4.1"
		echo "dovecot_storage_version = 2.4.1"
	fi
	cat <<EOF
instance_name = mailauthd-e2e-dovecot
base_dir = $T/dovecot/run
state_dir = $T/dovecot/state
log_path = $T/dovecot/dovecot.log
protocols = imap pop3 sieve lmtp
# 127.0.0.2 too: the throttle check comes from a second source address.
listen = 127.0.0.1, 127.0.0.2
ssl = no
default_internal_user = dovecot
default_login_user = dovenull
auth_verbose = yes
EOF
	[ "${DOVECOT_AUTH_DEBUG:-0}" = 1 ] && echo "auth_debug = yes"
	if [ "$V" = 2.3 ]; then
		cat <<EOF
mail_location = maildir:~/Maildir
plugin {
  sieve = file:~/sieve;active=~/.dovecot.sieve
}
EOF
	else
		cat <<EOF
mail_driver = maildir
mail_path = ~/Maildir
sieve_script personal {
  driver = file
  path = ~/sieve
  active_path = ~/.dovecot.sieve
}
EOF
	fi
	cat <<EOF
service imap-login {
  inet_listener imap {
    port = $IMAP_PORT
  }
  inet_listener imaps {
    port = 0
  }
}
service pop3-login {
  inet_listener pop3 {
    port = $POP3_PORT
  }
  inet_listener pop3s {
    port = 0
  }
}
service managesieve-login {
  inet_listener sieve {
    port = $SIEVE_PORT
  }
}
service lmtp {
  inet_listener lmtp {
    port = $LMTP_PORT
  }
}
# Dovecot's own auth penalty off (its documented switch: auth cannot reach
# this socket). It would hold each further refused login from one address back
# by up to 15 s before it even reaches mailauthd; mailauthd's throttle is what
# is tested here.
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
!include $T/dovecot/auth-mailauthd.conf.ext
EOF
} >"$D/dovecot.conf"

start_dovecot() {
	run dovecot -c "$T/dovecot/dovecot.conf" >"$D/start.out" 2>&1 || return 1
	local i
	for i in $(seq 1 100); do
		if tcp_port_in_use "$IMAP_PORT" && tcp_port_in_use "$POP3_PORT" && tcp_port_in_use "$SIEVE_PORT" &&
			tcp_port_in_use "$LMTP_PORT" && [ -S "$D/run/auth-userdb" ]; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

###########################################################################
# Clients. Each sets OUT (what the client saw) and RC.

# curl for IMAP and POP3. curl exits 67 for any refused login, a wrong
# password and a temporary failure alike: the checks read the server's reply
# in the -v transcript.
curl_login() { # proto user pass [curl args...]
	local proto=$1 user=$2 pass=$3 port
	shift 3
	case $proto in
	imap) port=$IMAP_PORT ;;
	pop3) port=$POP3_PORT ;;
	esac
	RC=0
	OUT=$(curl -v -sS --max-time 30 "$@" -u "$user:$pass" "$proto://${HOST:-127.0.0.1}:$port/" 2>&1) || RC=$?
}

# ManageSieve: greeting, AUTHENTICATE "PLAIN" with an initial response; on
# success LISTSCRIPTS (served by the post-login process) and LOGOUT.
sieve_login() { # user pass
	local line b64 reply=
	OUT=
	RC=1
	b64=$(printf '\0%s\0%s' "$1" "$2" | base64 -w0)
	if ! exec 3<>"/dev/tcp/${HOST:-127.0.0.1}/$SIEVE_PORT"; then
		OUT="cannot connect to port $SIEVE_PORT"
		return 0
	fi
	while IFS= read -r -t 10 line <&3; do
		line=${line%$'\r'}
		OUT="$OUT< $line"$'\n'
		case $line in OK*) break ;; esac
	done
	printf 'AUTHENTICATE "PLAIN" "%s"\r\n' "$b64" >&3
	OUT="$OUT> AUTHENTICATE \"PLAIN\" \"<base64 of NUL $1 NUL password>\""$'\n'
	while IFS= read -r -t 30 line <&3; do
		line=${line%$'\r'}
		OUT="$OUT< $line"$'\n'
		case $line in OK* | NO* | BYE*) reply=$line; break ;; esac
	done
	case $reply in
	OK*)
		printf 'LISTSCRIPTS\r\n' >&3
		OUT="$OUT> LISTSCRIPTS"$'\n'
		while IFS= read -r -t 30 line <&3; do
			line=${line%$'\r'}
			OUT="$OUT< $line"$'\n'
			case $line in OK*) RC=0; break ;; NO* | BYE*) break ;; esac
		done
		printf 'LOGOUT\r\n' >&3 || true
		;;
	esac
	exec 3<&- 3>&-
}

# IMAP's LOGIN command (curl always uses AUTHENTICATE when the server offers it).
imap_login_command() { # user pass
	local line
	OUT=
	RC=1
	exec 3<>"/dev/tcp/127.0.0.1/$IMAP_PORT" || return 0
	IFS= read -r -t 10 line <&3 && OUT="< ${line%$'\r'}"$'\n'
	printf 'a LOGIN "%s" "%s"\r\n' "$1" "$2" >&3
	OUT="$OUT> a LOGIN \"$1\" \"<password>\""$'\n'
	while IFS= read -r -t 30 line <&3; do
		line=${line%$'\r'}
		OUT="$OUT< $line"$'\n'
		case $line in "a OK"*) RC=0; break ;; "a "*) break ;; esac
	done
	printf 'b LOGOUT\r\n' >&3 || true
	exec 3<&- 3>&-
}

# LMTP: one transaction for the given recipients; the message says NAME.
# OUT holds the dialogue (also kept in the artifacts).
LMTP_N=0
lmtp_deliver() { # name rcpt...
	local name=$1 line rcpt accepted=0
	shift
	LMTP_N=$((LMTP_N + 1))
	OUT=
	RC=0
	exec 3<>"/dev/tcp/127.0.0.1/$LMTP_PORT" || { OUT="cannot connect"; RC=1; return 0; }
	lmtp_read() { # reads one (possibly multi-line) reply into LINE
		LINE=
		while IFS= read -r -t 30 line <&3; do
			line=${line%$'\r'}
			OUT="$OUT< $line"$'\n'
			LINE=$line
			case $line in [0-9][0-9][0-9]-*) ;; *) return 0 ;; esac
		done
		LINE="(no reply)"
	}
	lmtp_send() {
		printf '%s\r\n' "$1" >&3
		OUT="$OUT> $1"$'\n'
	}
	lmtp_read
	lmtp_send "LHLO e2e.invalid"
	lmtp_read
	lmtp_send "MAIL FROM:<sender@e2e.invalid>"
	lmtp_read
	for rcpt in "$@"; do
		lmtp_send "RCPT TO:<$rcpt>"
		lmtp_read
		case $LINE in 2*) accepted=$((accepted + 1)) ;; esac
	done
	if [ "$accepted" -gt 0 ]; then
		lmtp_send "DATA"
		lmtp_read
		{
			printf 'From: sender@e2e.invalid\r\nSubject: %s\r\nMessage-ID: <%s.%s@e2e.invalid>\r\n\r\n' \
				"$name" "$LMTP_N" "$$"
			printf 'marker %s\r\n.\r\n' "$name"
		} >&3
		OUT="$OUT> (message \"$name\")"$'\n'
		for _ in $(seq 1 "$accepted"); do
			lmtp_read
		done
	fi
	lmtp_send "QUIT"
	lmtp_read
	exec 3<&- 3>&-
	printf '%s' "$OUT" >"$HT/lmtp-$LMTP_N.txt"
}

doveadm_user() { # user
	RC=0
	OUT=$(run doveadm -c "$T/dovecot/dovecot.conf" user "$1" 2>&1) || RC=$?
}

# In an LMTP dialogue (OUT): the reply to RCPT TO:<address> has this code.
rcpt_got() { # address code
	grep -A1 -F "> RCPT TO:<$1>" <<<"$OUT" | grep -Eq "^< $2 "
}
# In an LMTP dialogue (OUT): N "250" replies after the message.
delivered_to() { # n
	[ "$(sed -n '/^> (message/,$p' <<<"$OUT" | grep -cE '^< 250 ')" = "$1" ]
}
# doveadm user (OUT, RC) succeeded and shows this field.
user_field() { # field value-regexp
	[ "$RC" = 0 ] && grep -Eq "^$1[[:space:]]+$2\$" <<<"$OUT"
}

###########################################################################
# Checks

# What each door says (Dovecot's own words).
IMAP_REFUSED='NO \[AUTHENTICATIONFAILED\] Authentication failed'
POP3_REFUSED='-ERR \[AUTH\] Authentication failed'
SIEVE_REFUSED='^< NO "Authentication failed'
IMAP_TEMP='NO \[UNAVAILABLE\] Temporary authentication failure'
POP3_TEMP='-ERR \[SYS/TEMP\] Temporary authentication failure'
SIEVE_TEMP='^< NO \(TRYLATER\) "Temporary authentication failure'

attempt() { # proto user pass: runs the client
	case $1 in
	imap | pop3) curl_login "$1" "$2" "$3" ;;
	sieve) sieve_login "$2" "$3" ;;
	esac
}

# Logged in, and mailauthd decided it with this credential (password or
# app_password).
expect_in() { # name proto user pass credential
	local name=$1
	mark
	attempt "$2" "$3" "$4"
	if [ "$RC" != 0 ]; then
		not_ok "$name (client exit $RC)" "$OUT"$'\n'"mailauthd: $(decisions_since_mark)"
	elif ! saw_decision "$3" ok "$5"; then
		not_ok "$name (no ok/$5 decision in mailauthd's log)" "$(decisions_since_mark)"
	else
		ok "$name"
	fi
}

# Refused with the door's "authentication failed", and mailauthd refused it
# for this reason.
expect_refused() { # name proto user pass reason
	local name=$1 want
	case $2 in
	imap) want=$IMAP_REFUSED ;;
	pop3) want=$POP3_REFUSED ;;
	sieve) want=$SIEVE_REFUSED ;;
	esac
	mark
	attempt "$2" "$3" "$4"
	if [ "$RC" = 0 ] || ! grep -Eq -- "$want" <<<"$OUT"; then
		not_ok "$name (client exit $RC, wanted /$want/)" "$OUT"$'\n'"mailauthd: $(decisions_since_mark)"
	elif ! saw_decision "$3" fail "$5"; then
		not_ok "$name (no fail/$5 decision in mailauthd's log)" "$(decisions_since_mark)"
	else
		ok "$name"
	fi
}

expect_temp() { # name proto user pass
	local name=$1 want
	case $2 in
	imap) want=$IMAP_TEMP ;;
	pop3) want=$POP3_TEMP ;;
	sieve) want=$SIEVE_TEMP ;;
	esac
	mark
	attempt "$2" "$3" "$4"
	if [ "$RC" = 0 ] || ! grep -Eq -- "$want" <<<"$OUT"; then
		not_ok "$name (client exit $RC, wanted /$want/)" "$OUT"$'\n'"mailauthd: $(decisions_since_mark)"
	elif ! saw_decision "$3" tempfail store_unavailable; then
		not_ok "$name (no tempfail/store_unavailable decision in mailauthd's log)" "$(decisions_since_mark)"
	else
		ok "$name"
	fi
}

###########################################################################
# Phase 1: mailauthd on SQLite, accounts, Dovecot

write_mailauthd_config "$M/mailauthd-sqlite.toml" "$M/state-sqlite"
start_mailauthd "$M/mailauthd-sqlite.toml" || die "mailauthd (SQLite) did not start" "$(tail -n 20 "$MLOG")"

ALICE_PW='Alice-correct-horse-1'
OLGA_PW='Olga-stored-password-2'
IVAN_PW='Ivan-imap-only-3'
PAT_PW='Pat-receives-only-4'
DAN_PW='Dan-disabled-5'
EVE_PW='Eve-domain-off-6'
provision() {
	mctl domain add example.org
	mctl domain add off.example
	printf '%s\n' "$ALICE_PW" | mctl mailbox add alice@example.org --password-stdin
	mctl mailbox set alice@example.org --quota 1G
	# An oidc mailbox that still has a stored password (switching keeps it).
	printf '%s\n' "$OLGA_PW" | mctl mailbox add olga@example.org --password-stdin
	mctl mailbox set-authsource olga@example.org oidc
	printf '%s\n' "$IVAN_PW" | mctl mailbox add ivan@example.org --password-stdin
	mctl mailbox set ivan@example.org --protocols imap
	printf '%s\n' "$PAT_PW" | mctl mailbox add pat@example.org --password-stdin
	mctl mailbox set pat@example.org --active 2 --quota 2G
	printf '%s\n' "$DAN_PW" | mctl mailbox add dan@example.org --password-stdin
	mctl mailbox set dan@example.org --active 0
	printf '%s\n' "$EVE_PW" | mctl mailbox add eve@off.example --password-stdin
	mctl domain set off.example --active false
}
provision >"$OUTDIR/provision.log" 2>&1 || die "provisioning with the admin CLI" "$(cat "$OUTDIR/provision.log")"

json_field() { # key: from the JSON on stdin (flat, one key per line)
	sed -n "s/^ *\"$1\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p" | head -n1
}
app_password() { # address name protocols: sets APP_PW and APP_ID
	local json
	json=$(mctl app-password create "$1" --name "$2" --protocols "$3" --json) ||
		die "app-password create $1 --name $2" "$json"
	APP_PW=$(json_field password <<<"$json")
	APP_ID=$(json_field id <<<"$json")
	if [ -z "$APP_PW" ] || [ -z "$APP_ID" ]; then
		die "app-password create $1 --name $2: no password/id in its JSON" "$json"
	fi
}
app_password olga@example.org laptop imap,pop3,sieve
OLGA_APP_ALL=$APP_PW
app_password olga@example.org imap-only imap
OLGA_APP_IMAP=$APP_PW

start_dovecot || die "Dovecot did not start" "$(cat "$D/start.out" 2>/dev/null; tail -n 20 "$DLOG" 2>/dev/null)"
note "imap=$IMAP_PORT pop3=$POP3_PORT sieve=$SIEVE_PORT lmtp=$LMTP_PORT; work dir $HT"

###########################################################################
# Phase 2: record one real conversation between the adapter and mailauthd

# The shared recording proxy (also used for Postfix) between the adapter and
# mailauthd's auth socket.
RECORDER=$HERE/../postfix/record-auth.pl
REC=$HT/recorder/auth.txt
perl "$RECORDER" "$HT/recorder/auth.sock" "$M/run/auth.sock" "$REC" 2>"$OUTDIR/recorder.err" &
RECORDER_PID=$!
for _ in $(seq 1 50); do [ -S "$HT/recorder/auth.sock" ] && break; sleep 0.1; done
[ -S "$HT/recorder/auth.sock" ] || die "the recorder did not start" "$(cat "$OUTDIR/recorder.err")"
point_auth_at "$T/recorder/auth.sock"

expect_in "IMAP (AUTHENTICATE PLAIN): local mailbox with its password logs in" imap alice@example.org "$ALICE_PW" password
imap_login_command alice@example.org "$ALICE_PW"
DETAIL=$OUT check "IMAP (LOGIN command): local mailbox with its password logs in" test "$RC" = 0
expect_in "POP3: local mailbox with its password logs in" pop3 alice@example.org "$ALICE_PW" password
expect_in "ManageSieve: local mailbox with its password logs in (and LISTSCRIPTS works)" sieve alice@example.org "$ALICE_PW" password
expect_refused "IMAP: wrong password is refused" imap alice@example.org 'not-the-password' bad_credentials

# The recording ends here: the recorder goes, the adapter's connections to it
# close, and the next logins must reconnect to mailauthd on their own.
point_auth_at "$T/mailauthd/run/auth.sock"
stop_pid "$RECORDER_PID"
RECORDER_PID=
# The recording holds real TABs; these checks read it with TAB shown as \t.
SHOWN=$HT/recorder/auth.shown
sed 's/\t/\\t/g' "$REC" >"$SHOWN"
shown_has() { # ERE over the shown recording ('\\t' matches a TAB)
	grep -Eq -- "$1" "$SHOWN"
}
first_lines() { # connection direction n: its first lines, '|'-joined, CPID/SPID/CUID/COOKIE values as N
	awk -v n="$1" -v d="$2: " '/^# connection [0-9]+$/ {on = ($3 == n)} on && index($0, d) == 1 {print substr($0, 4)}' "$SHOWN" |
		head -n "$3" | sed -E 's/^(CPID|SPID|CUID|COOKIE)\\t[0-9a-f]+$/\1\\tN/' | tr '\n' '|'
}
DETAIL=$(cat "$SHOWN") check "recording: the adapter opens with VERSION 1 2 and CPID <pid>" \
	test "$(first_lines 1 C 2)" = 'VERSION\t1\t2|CPID\tN|'
DETAIL=$(cat "$SHOWN") check "recording: mailauthd greets VERSION 1 2, MECH PLAIN, MECH LOGIN, SPID, CUID, COOKIE, DONE" \
	test "$(first_lines 1 S 7)" = 'VERSION\t1\t2|MECH\tPLAIN\tplaintext|MECH\tLOGIN\tplaintext|SPID\tN|CUID\tN|COOKIE\tN|DONE|'
svc_key=service
[ "$V" = 2.4 ] && svc_key=protocol
for svc in imap pop3 sieve; do
	DETAIL=$(grep -E '^C: AUTH' "$SHOWN") check "recording: the adapter sends AUTH <id> PLAIN $svc_key=$svc secured ... rip=127.0.0.1 resp=<base64> (resp last)" \
		shown_has '^C: AUTH\\t[0-9]+\\tPLAIN\\t'"$svc_key=$svc"'\\tsecured\\t.*\\trip=127\.0\.0\.1\\tresp=[A-Za-z0-9+/]+=*$'
done
DETAIL=$(grep -E '^S: (OK|FAIL)' "$SHOWN") check "recording: mailauthd answers OK <id> user=alice@example.org" \
	shown_has '^S: OK\\t[0-9]+\\tuser=alice@example\.org$'
DETAIL=$(grep -E '^S: (OK|FAIL)' "$SHOWN") check "recording: mailauthd answers the wrong password with FAIL <id> user=... reason=..." \
	shown_has '^S: FAIL\\t[0-9]+\\tuser=alice@example\.org\\treason=[^\\]+$'

# UPDATE_FIXTURE=1: this version's recording replaces its section of the
# fixture; the other version's section is kept.
if [ "${UPDATE_FIXTURE:-0}" = 1 ]; then
	tmp=$HT/fixture
	{
		where="Debian 12"
		[ -z "$ROOT" ] || where="Debian 13 tree, chroot"
		echo "# == Dovecot $DOVECOT_VERSION ($where), conf-examples/dovecot/$V/conf.d/auth-mailauthd.conf.ext"
		echo "# Logins, in order: IMAP AUTHENTICATE PLAIN, IMAP LOGIN, POP3, ManageSieve as alice with"
		echo "# her password; IMAP as alice with a wrong password."
		if [ -n "$ROOT" ]; then
			echo "# Dovecot ran in a chroot without /proc, so the adapter's CPID is a random number."
		fi
		cat "$REC"
	} >"$tmp.section"
	cat >"$tmp.head" <<'EOF'
# What the shipped Dovecot adapter (conf-examples/dovecot/mailauthd.lua) sends on mailauthd's
# auth socket and what the real daemon answers, recorded by tests/e2e/dovecot/run.sh with
# UPDATE_FIXTURE=1: real Dovecot with the shipped config, real clients (curl, a ManageSieve
# dialogue), and the recording proxy tests/e2e/postfix/record-auth.pl between the adapter
# and the socket. One section per Dovecot version, each starting with a "# == Dovecot" line.
# One protocol line per file line: "C: " adapter -> mailauthd, "S: " mailauthd -> adapter,
# then the line's raw bytes without the final LF; TABs are real TAB characters (not
# escaped). Lines are in the order they reached the proxy: the adapter sends VERSION and
# CPID without waiting for the handshake. "# connection N" lines mark connections; the
# recording ended (the proxy stopped) while the adapter still held them open. resp= is
# base64(NUL user NUL password); the only mailbox is alice@example.org, whose (throw-away)
# password is Alice-correct-horse-1, so a replay against a daemon where alice has that
# password must get the same answers. SPID, CPID, CUID, COOKIE and session= differ on
# every run.
EOF
	for ver in 2.3 2.4; do
		if [ "$ver" = "$V" ]; then
			cat "$tmp.section"
		elif [ -f "$FIXTURE" ]; then
			awk -v v="$ver" '/^# == Dovecot / {on = (index($0, "# == Dovecot " v ".") == 1)} on' "$FIXTURE"
		fi
	done >"$tmp.body"
	cat "$tmp.head" "$tmp.body" >"$FIXTURE"
	note "wrote the Dovecot $V section of $FIXTURE"
fi

###########################################################################
# Phase 3: who gets in, through every door

expect_in "IMAP: first login after the recorder went reconnects to mailauthd" imap alice@example.org "$ALICE_PW" password
expect_in "IMAP: oidc mailbox with an app password logs in" imap olga@example.org "$OLGA_APP_ALL" app_password

expect_refused "IMAP: oidc mailbox with its stored password is refused" imap olga@example.org "$OLGA_PW" oidc_needs_app_password
expect_refused "POP3: oidc mailbox with its stored password is refused" pop3 olga@example.org "$OLGA_PW" oidc_needs_app_password
expect_refused "ManageSieve: oidc mailbox with its stored password is refused" sieve olga@example.org "$OLGA_PW" oidc_needs_app_password
expect_in "POP3: oidc mailbox with an app password (imap,pop3,sieve) logs in" pop3 olga@example.org "$OLGA_APP_ALL" app_password
expect_in "ManageSieve: oidc mailbox with an app password (imap,pop3,sieve) logs in" sieve olga@example.org "$OLGA_APP_ALL" app_password
# Last use (time, address, protocol) is written off the hot path, batched.
last_use_recorded() { # name ip service
	local i compact
	for i in $(seq 1 50); do
		compact=$(mctl app-password list olga@example.org --json 2>&1 | tr -d ' \n')
		grep -Eq "\"name\":\"$1\"[^{}]*\"last_used\":\{\"at\":[0-9]+,\"ip\":\"$2\",\"service\":\"$3\"\}" <<<"$compact" &&
			return 0
		sleep 0.1
	done
	DETAIL=$compact
	return 1
}
check "the app password's last use is recorded: ManageSieve from 127.0.0.1, as Dovecot passed it" \
	last_use_recorded laptop '127\.0\.0\.1' sieve

expect_in "IMAP: an IMAP-only app password logs in on IMAP" imap olga@example.org "$OLGA_APP_IMAP" app_password
expect_refused "POP3: an IMAP-only app password is refused" pop3 olga@example.org "$OLGA_APP_IMAP" app_password_protocol
expect_refused "ManageSieve: an IMAP-only app password is refused" sieve olga@example.org "$OLGA_APP_IMAP" app_password_protocol

# Revocation: Dovecot's auth cache is off in the shipped configs, so the very
# next attempt after the revoke is refused.
app_password olga@example.org to-revoke imap
expect_in "IMAP: an app password works before it is revoked" imap olga@example.org "$APP_PW" app_password
mctl app-password revoke olga@example.org "$APP_ID" >>"$OUTDIR/provision.log" 2>&1 ||
	die "app-password revoke olga@example.org $APP_ID" "$(tail -n 5 "$OUTDIR/provision.log")"
expect_refused "IMAP: the revoked app password is refused on the very next attempt" imap olga@example.org "$APP_PW" oidc_needs_app_password

expect_in "IMAP: mailbox allowed only IMAP logs in on IMAP" imap ivan@example.org "$IVAN_PW" password
expect_refused "POP3: mailbox allowed only IMAP is refused on POP3, right password or not" pop3 ivan@example.org "$IVAN_PW" protocol_not_allowed

expect_refused "IMAP: mailbox with active 2 (receives mail, no login) is refused" imap pat@example.org "$PAT_PW" mailbox_no_login
expect_refused "POP3: mailbox with active 0 is refused" pop3 dan@example.org "$DAN_PW" mailbox_disabled
expect_refused "IMAP: mailbox in an inactive domain is refused" imap eve@off.example "$EVE_PW" domain_disabled
expect_refused "ManageSieve: unknown user is refused" sieve nobody-here@example.org 'some-password' unknown_user
expect_refused "IMAP: unknown user is refused" imap nobody-here@example.org 'some-password' unknown_user

# Switching the auth source keeps the stored password: olga's refusals above
# were the auth source's doing, not a wrong password.
mctl mailbox set-authsource olga@example.org local >>"$OUTDIR/provision.log" 2>&1
expect_in "IMAP: the same stored password works once olga is switched back to local" imap olga@example.org "$OLGA_PW" password
mctl mailbox set-authsource olga@example.org oidc >>"$OUTDIR/provision.log" 2>&1

# Many at once: Dovecot spreads them over several auth-worker processes, each
# with its own connection; mailauthd answers every one.
parallel_logins() { # n
	local i u p pid ok_count=0 pids=()
	for i in $(seq 1 "$1"); do
		if [ $((i % 2)) = 1 ]; then u=alice@example.org p=$ALICE_PW; else u=olga@example.org p=$OLGA_APP_ALL; fi
		curl -sS --max-time 30 -u "$u:$p" "imap://127.0.0.1:$IMAP_PORT/" >/dev/null 2>"$HT/parallel-$i.err" &
		pids+=($!)
	done
	for pid in "${pids[@]}"; do
		if wait "$pid"; then ok_count=$((ok_count + 1)); fi
	done
	DETAIL="$ok_count of $1 logged in; $(cat "$HT"/parallel-*.err)"
	[ "$ok_count" = "$1" ]
}
mark
check "IMAP: 16 logins at once (password and app password) all get in" parallel_logins 16
n=$(decisions_since_mark | grep -c 'outcome="ok"' || true)
DETAIL=$(decisions_since_mark) check "mailauthd decided all 16 of them (saw $n)" test "$n" = 16

###########################################################################
# Phase 4: the userdb socket: doveadm user and LMTP delivery

doveadm_user alice@example.org
DETAIL=$OUT check "doveadm user: quota_rule from mailauthd's userdb socket (1G)" \
	user_field quota_rule '\*:bytes=1073741824'
doveadm_user nobody-here@example.org
DETAIL=$OUT check "doveadm user: an unknown user does not exist (exit 67)" test "$RC" = 67

# The README's way to try a login by hand. Without -x service=…, doveadm sends
# service=doveadm, which is no mail protocol: mailauthd refuses it.
doveadm_auth_test() { # user pass [options]
	RC=0
	OUT=$(run doveadm -c "$T/dovecot/dovecot.conf" auth test "${@:3}" "$1" "$2" 2>&1) || RC=$?
}
doveadm_auth_ok() { # user: OUT/RC of doveadm auth test, then the decision
	[ "$RC" = 0 ] && grep -q 'auth succeeded' <<<"$OUT" && saw_decision "$1" ok password
}
doveadm_auth_refused() { # user reason
	[ "$RC" != 0 ] && grep -q 'auth failed' <<<"$OUT" && saw_decision "$1" fail "$2"
}
mark
doveadm_auth_test alice@example.org "$ALICE_PW" -x service=imap
DETAIL=$OUT$'\n'$(decisions_since_mark) check "doveadm auth test -x service=imap: the right password succeeds" \
	doveadm_auth_ok alice@example.org
mark
doveadm_auth_test alice@example.org "$ALICE_PW"
DETAIL=$OUT$'\n'$(decisions_since_mark) check "doveadm auth test without -x service=: refused as service doveadm (unknown_service)" \
	doveadm_auth_refused alice@example.org unknown_service

lmtp_deliver "first delivery" alice@example.org nobody-here@example.org pat@example.org dan@example.org
DETAIL=$OUT check "LMTP: RCPT to a mailbox found through the userdb socket is accepted" \
	rcpt_got alice@example.org 250
DETAIL=$OUT check "LMTP: RCPT to an unknown user is rejected (550)" \
	rcpt_got nobody-here@example.org 550
DETAIL=$OUT check "LMTP: RCPT to a mailbox with active 2 (receives mail) is accepted" \
	rcpt_got pat@example.org 250
DETAIL=$OUT check "LMTP: RCPT to a mailbox with active 0 is rejected (550)" \
	rcpt_got dan@example.org 550
DETAIL=$OUT check "LMTP: the message is accepted for both recipients after DATA" \
	delivered_to 2
files=$(grep -rl 'marker first delivery' "$HT/vmail/example.org/alice/Maildir/new" 2>/dev/null | wc -l)
DETAIL=$(find "$HT/vmail" 2>&1 | head -n 30) check "LMTP: the message is in alice's Maildir (home from the config's defaults)" test "$files" = 1
RC=0
OUT=$(curl -sS --max-time 30 -u "alice@example.org:$ALICE_PW" "imap://127.0.0.1:$IMAP_PORT/INBOX;UID=1" 2>&1) || RC=$?
DETAIL=$OUT check "IMAP: alice reads the delivered message back" \
	grep -q "marker first delivery" <<<"$OUT"

###########################################################################
# Phase 5: repeated failures are throttled
#
# A binary that does not accept THROTTLE_TOML's [throttle] section fails this phase.
# 127.0.0.1 is a trusted network there; these attempts come from 127.0.0.2,
# which Dovecot passes on as rip=.

if [ -n "$HAVE_THROTTLE" ]; then
	mark
	for i in 1 2 3 4 5; do
		HOST=127.0.0.2 curl_login imap alice@example.org "wrong-password-$i" --interface 127.0.0.2
	done
	HOST=127.0.0.2 curl_login imap alice@example.org "$ALICE_PW" --interface 127.0.0.2
	if [ "$RC" != 0 ] && grep -Eq -- "$IMAP_REFUSED" <<<"$OUT" &&
		saw_decision alice@example.org fail throttled; then
		ok "IMAP: after repeated failures from 127.0.0.2 even the right password is refused (throttled)"
	else
		not_ok "IMAP: after repeated failures from 127.0.0.2 even the right password is refused (throttled)" \
			"$OUT"$'\n'"$(decisions_since_mark)"
	fi
	expect_in "IMAP: the same mailbox still logs in from a trusted address" imap alice@example.org "$ALICE_PW" password
	# The block is held by the running daemon: the CLI lists and lifts it.
	OUT=$(mctl --json throttle list 2>&1 | tr -d ' \n') || true
	DETAIL=$OUT check "throttle list shows 127.0.0.2/32 blocked" \
		grep -Eq '\{[^{}]*"key":"127\.0\.0\.2/32"[^{}]*"blocked_until_ms":[0-9]+' <<<"$OUT"
	OUT=$(mctl throttle clear 127.0.0.2 2>&1) || true
	mark
	HOST=127.0.0.2 curl_login imap alice@example.org "$ALICE_PW" --interface 127.0.0.2
	if [ "$RC" = 0 ] && saw_decision alice@example.org ok password; then
		ok "IMAP: after throttle clear 127.0.0.2 the right password gets in from there again"
	else
		not_ok "IMAP: after throttle clear 127.0.0.2 the right password gets in from there again" \
			"clear said: $OUT"$'\n'"$(decisions_since_mark)"
	fi
else
	not_ok "repeated failures are throttled: this mailauthd does not accept the [throttle] section"
fi

###########################################################################
# Phase 6: store outage, with mailauthd on PostgreSQL

outage_checks() {
	if ! command -v psql >/dev/null 2>&1; then
		not_ok "store outage: psql is needed"
		return 0
	fi
	PG_ADMIN_URL=$PG_URL
	if ! pg_admin -c 'SELECT 1' >/dev/null 2>"$OUTDIR/psql.err"; then
		not_ok "store outage: PostgreSQL at MAILAUTHD_TEST_POSTGRES_URL answers" "$(cat "$OUTDIR/psql.err")"
		PG_ADMIN_URL=
		return 0
	fi
	local db base query pg_db_url pid_before
	db=mailauthd_dovecot_e2e_${V//./}_$$
	base=${PG_URL%%\?*}
	query=${PG_URL#"$base"}
	pg_db_url=${base%/*}/$db$query
	pg_admin -c "CREATE DATABASE \"$db\"" >/dev/null
	PG_DB=$db
	note "PostgreSQL database $db"

	stop_mailauthd
	write_mailauthd_config "$M/mailauthd-postgres.toml" "$M/state-postgres" "$pg_db_url"
	start_mailauthd "$M/mailauthd-postgres.toml" || {
		not_ok "mailauthd on PostgreSQL starts" "$(tail -n 20 "$MLOG")"
		return 0
	}
	pid_before=$MAILAUTHD_PID
	{
		mctl domain add example.org
		printf '%s\n' "$ALICE_PW" | mctl mailbox add alice@example.org --password-stdin
		printf '%s\n' "$OLGA_PW" | mctl mailbox add olga@example.org --password-stdin
		mctl mailbox set-authsource olga@example.org oidc
	} >>"$OUTDIR/provision.log" 2>&1 || {
		not_ok "provisioning on PostgreSQL" "$(tail -n 10 "$OUTDIR/provision.log")"
		return 0
	}
	app_password olga@example.org laptop imap,pop3,sieve
	local olga_app=$APP_PW

	# The adapter's connections went with the SQLite daemon: it reconnects.
	expect_in "PostgreSQL: IMAP login through the restarted daemon (adapter reconnects)" imap alice@example.org "$ALICE_PW" password
	expect_in "PostgreSQL: POP3 app-password login" pop3 olga@example.org "$olga_app" app_password

	note "outage: ALTER DATABASE $db ALLOW_CONNECTIONS false, pg_terminate_backend"
	pg_admin -c "ALTER DATABASE \"$db\" ALLOW_CONNECTIONS false" \
		-c "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '$db'" >/dev/null

	expect_temp "outage: IMAP says NO [UNAVAILABLE] Temporary authentication failure" imap alice@example.org "$ALICE_PW"
	expect_temp "outage: POP3 says -ERR [SYS/TEMP]" pop3 alice@example.org "$ALICE_PW"
	expect_temp "outage: ManageSieve says NO (TRYLATER)" sieve alice@example.org "$ALICE_PW"
	expect_temp "outage: an app-password login is a temporary failure too, not a refusal" imap olga@example.org "$olga_app"
	lmtp_deliver "during the outage" alice@example.org
	DETAIL=$OUT check "outage: LMTP defers the recipient (451) instead of rejecting it" \
		rcpt_got alice@example.org 451
	doveadm_user alice@example.org
	DETAIL=$OUT check "outage: doveadm user is a temporary failure (exit 75)" test "$RC" = 75
	DETAIL=$(tail -n 20 "$MLOG") check "outage: mailauthd is still running" kill -0 "$pid_before"

	note "outage over: ALLOW_CONNECTIONS true"
	pg_admin -c "ALTER DATABASE \"$db\" ALLOW_CONNECTIONS true" >/dev/null
	expect_in "recovered: IMAP login works again with nothing restarted" imap alice@example.org "$ALICE_PW" password
	expect_in "recovered: POP3 login works again" pop3 alice@example.org "$ALICE_PW" password
	expect_in "recovered: ManageSieve login works again" sieve olga@example.org "$olga_app" app_password
	lmtp_deliver "after the outage" alice@example.org
	DETAIL=$OUT check "recovered: LMTP delivers again" \
		delivered_to 1
	DETAIL=$(tail -n 20 "$MLOG") check "recovered: the same mailauthd process throughout" test "$MAILAUTHD_PID" = "$pid_before"
}

if [ -n "$PG_URL" ]; then
	outage_checks
elif [ -n "${CI:-}" ]; then
	not_ok "store outage: MAILAUTHD_TEST_POSTGRES_URL is not set (required in CI)"
else
	skip "store outage (PostgreSQL)" "MAILAUTHD_TEST_POSTGRES_URL is not set"
fi

###########################################################################
# Logs

BAD='Fatal|Panic|lua_pcall|attempt to|stack traceback|invalid return value'
if grep -Eq "$BAD" "$DLOG"; then
	not_ok "Dovecot's log has no Lua errors, fatals or panics" "$(grep -E "$BAD" "$DLOG")"
else
	ok "Dovecot's log has no Lua errors, fatals or panics"
fi
# A temporary failure is logged at ERROR (the outage's); nothing else may be.
unexpected=$(grep -E 'panicked| ERROR ' "$MLOG" | grep -vE ' ERROR auth .*outcome="tempfail" reason="store_unavailable"$' || true)
DETAIL=$unexpected check "mailauthd's log has no panics, and no errors besides the outage's temporary failures" \
	test -z "$unexpected"
