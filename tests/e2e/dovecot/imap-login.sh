#!/usr/bin/env bash
# One real IMAP login through a private Dovecot 2.3 and the shipped mailauthd adapter.
#
#   imap-login.sh ADDRESS PASSWORD
#
#   MAILAUTHD_RUNTIME_DIR   folder with the running daemon's sockets `auth` and `userdb`
#                           (Dovecot's auth-worker user `dovecot` must be able to connect)
#   KEEP=1                  keep the temporary folder
#
# Starts Dovecot (IMAP only, a free port on 127.0.0.1, its own base_dir, config and log in
# a temporary folder) with conf-examples/dovecot/mailauthd.lua and
# conf-examples/dovecot/2.3/conf.d/auth-mailauthd.conf.ext, only paths substituted; logs in
# with curl; stops Dovecot. Exits 0 only when Dovecot accepted the login; otherwise prints
# curl's transcript and the tail of Dovecot's log. Needs root (Dovecot drops privileges).

set -euo pipefail
export LC_ALL=C.UTF-8

[ $# -eq 2 ] || { echo "usage: $0 ADDRESS PASSWORD" >&2; exit 2; }
USER_ADDR=$1
PASS=$2
RUN=${MAILAUTHD_RUNTIME_DIR:?set MAILAUTHD_RUNTIME_DIR to mailauthd runtime_directory}

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
ADAPTER_DIR=$REPO/conf-examples/dovecot
SNIPPET_SRC=$ADAPTER_DIR/2.3/conf.d/auth-mailauthd.conf.ext
# shellcheck source=../lib.sh
. "$REPO/tests/e2e/lib.sh"

fail() { echo "imap-login: $*" >&2; exit 1; }

command -v dovecot >/dev/null 2>&1 || fail "dovecot not installed"
command -v curl >/dev/null 2>&1 || fail "curl not installed"
case $(dovecot --version 2>/dev/null) in
2.3.*) ;;
*) fail "expected Dovecot 2.3, found '$(dovecot --version 2>/dev/null)'" ;;
esac
[ -S "$RUN/auth" ] || fail "no auth socket at $RUN/auth"
[ -S "$RUN/userdb" ] || fail "no userdb socket at $RUN/userdb"
NOGROUP=$(id -gn nobody)

D=$(mktemp -d /tmp/mailauthd-imap-login.XXXXXX)
chmod 0755 "$D"
mkdir -p "$D/run" "$D/state" "$D/vmail"
chown nobody:"$NOGROUP" "$D/vmail"
LOG=$D/dovecot.log
: >"$LOG"

stop_dovecot() {
	local pid i
	[ -f "$D/run/master.pid" ] || return 0
	pid=$(cat "$D/run/master.pid" 2>/dev/null) || return 0
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for i in $(seq 1 50); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
	stop_dovecot
	if [ "${KEEP:-0}" = 1 ]; then
		echo "imap-login: kept $D" >&2
	else
		rm -rf "$D"
	fi
}
trap cleanup EXIT

pick_port PORT 2>/dev/null || fail "no free port in $E2E_PORTS"

# The shipped adapter and config; only paths (and the mail user) substituted.
install -m 0644 "$ADAPTER_DIR/mailauthd.lua" "$D/mailauthd.lua"
sed -e "s#/etc/dovecot/mailauthd.lua#$D/mailauthd.lua#g" \
	-e "s#/run/mailauthd/auth\b#$RUN/auth#g" \
	-e "s#/run/mailauthd/userdb\b#$RUN/userdb#g" \
	-e "s#uid=vmail gid=vmail#uid=nobody gid=$NOGROUP#g" \
	-e "s#/var/vmail/#$D/vmail/#g" \
	"$SNIPPET_SRC" >"$D/auth-mailauthd.conf.ext"
for want in "file=$D/mailauthd.lua" "MAILAUTHD_AUTH_SOCKET=$RUN/auth" \
	"MAILAUTHD_USERDB_SOCKET=$RUN/userdb" "uid=nobody" "home=$D/vmail/"; do
	grep -qF -- "$want" "$D/auth-mailauthd.conf.ext" ||
		fail "shipped config changed shape: could not substitute '$want'"
done

cat >"$D/dovecot.conf" <<CONF
instance_name = mailauthd-imap-login
base_dir = $D/run
state_dir = $D/state
log_path = $LOG
protocols = imap
listen = 127.0.0.1
ssl = no
default_internal_user = dovecot
default_login_user = dovenull
auth_verbose = yes
mail_location = maildir:~/Maildir
service imap-login {
  inet_listener imap {
    port = $PORT
  }
  inet_listener imaps {
    port = 0
  }
}
!include $D/auth-mailauthd.conf.ext
CONF

show_log() {
	echo "--- Dovecot log (tail) ---"
	tail -n 30 "$LOG" 2>/dev/null || true
}

dovecot -c "$D/dovecot.conf" >"$D/start.out" 2>&1 || {
	cat "$D/start.out"
	show_log
	fail "dovecot did not start"
}
dovecot_up() { tcp_port_in_use "$PORT" && [ -S "$D/run/auth-userdb" ]; }
wait_for 10 dovecot_up || { show_log; fail "dovecot is not listening on 127.0.0.1:$PORT"; }

# curl exits 67 for any refused login; read the server's reply in the transcript.
RC=0
OUT=$(curl -v -sS --max-time 30 --user "$USER_ADDR:$PASS" "imap://127.0.0.1:$PORT/" 2>&1) || RC=$?
if [ "$RC" -eq 0 ] && grep -Eq '^< A[0-9]+ OK .*Logged in' <<<"$OUT"; then
	echo "Dovecot accepted the IMAP login of $USER_ADDR on 127.0.0.1:$PORT"
	grep -E '^< A[0-9]+ OK .*Logged in' <<<"$OUT"
	exit 0
fi
echo "Dovecot did not accept the IMAP login of $USER_ADDR (curl exit $RC)"
grep -E '^[<>] ' <<<"$OUT" | grep -Ev '^> A[0-9]* (LOGIN|AUTHENTICATE)' | tail -n 20 || true
show_log
exit 1
