#!/usr/bin/env bash
# One real IMAP login through a private Dovecot 2.3 and the shipped mailauthd adapter.
#
#   imap-login.sh ADDRESS PASSWORD
#
#   MAILAUTHD_RUNTIME_DIR   folder with the running daemon's sockets `auth` and `userdb`
#                           (Dovecot's auth-worker user `dovecot` must be able to connect)
#   KEEP=1                  keep the temporary folder
#   MAIL_PROTOCOL=pop3      log in over POP3 instead (Dovecot then serves both)
#
# Starts Dovecot (IMAP only, a free port on 127.0.0.1, its own base_dir, config and log in
# a temporary folder; private-23.sh) with conf-examples/dovecot/mailauthd.lua and
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
# shellcheck source=../lib.sh
. "$REPO/tests/e2e/lib.sh"
# shellcheck source=private-23.sh
. "$HERE/private-23.sh"

fail() { echo "imap-login: $*" >&2; exit 1; }

command -v dovecot >/dev/null 2>&1 || fail "dovecot not installed"
command -v curl >/dev/null 2>&1 || fail "curl not installed"

D=$(mktemp -d /tmp/mailauthd-imap-login.XXXXXX)
chmod 0755 "$D"

cleanup() {
	dv23_stop "$D"
	if [ "${KEEP:-0}" = 1 ]; then
		echo "imap-login: kept $D" >&2
	else
		rm -rf "$D"
	fi
}
trap cleanup EXIT

PROTO=${MAIL_PROTOCOL:-imap}
case $PROTO in
imap) NAME=IMAP WELCOMED='^< A[0-9]+ OK .*Logged in' ;;
pop3) NAME=POP3 WELCOMED='^< \+OK Logged in' ;;
*) fail "MAIL_PROTOCOL is imap or pop3, not $PROTO" ;;
esac
pick_port PORT 2>/dev/null || fail "no free port in $E2E_PORTS"
LOGIN_PORT=$PORT
if [ "$PROTO" = pop3 ]; then
	pick_port DV23_POP3_PORT 2>/dev/null || fail "no free port in $E2E_PORTS"
	LOGIN_PORT=$DV23_POP3_PORT
	export DV23_POP3_PORT
fi
show_log() { dv23_log "$D"; }
dv23_conf "$D" "$RUN" "$PORT" || fail "could not write the Dovecot config"
dv23_start "$D" || {
	show_log
	fail "dovecot did not start"
}

# curl exits 67 for any refused login; read the server's reply in the transcript.
RC=0
OUT=$(curl -v -sS --max-time 30 --user "$USER_ADDR:$PASS" "$PROTO://127.0.0.1:$LOGIN_PORT/" 2>&1) || RC=$?
if [ "$RC" -eq 0 ] && grep -Eq "$WELCOMED" <<<"$OUT"; then
	echo "Dovecot accepted the $NAME login of $USER_ADDR on 127.0.0.1:$LOGIN_PORT"
	grep -E "$WELCOMED" <<<"$OUT"
	exit 0
fi
echo "Dovecot did not accept the $NAME login of $USER_ADDR (curl exit $RC)"
grep -E '^[<>] ' <<<"$OUT" | grep -Ev '^> (A[0-9]* )?(LOGIN|AUTHENTICATE|AUTH|USER|PASS)' | tail -n 20 || true
show_log
exit 1
