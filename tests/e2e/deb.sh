#!/usr/bin/env bash
# Installs the Debian package on a clean state and runs the installed binary. The package
# is MAILAUTHD_DEB when set (CI builds it once, for this suite and systemd.sh); otherwise
# `cargo deb` builds it here.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
# shellcheck source=lib.sh
. "$ROOT/tests/e2e/lib.sh"

if [ -n "${MAILAUTHD_DEB:-}" ]; then
	deb=$MAILAUTHD_DEB
else
	command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
	cargo deb --locked
	deb=$(ls -t "${CARGO_TARGET_DIR:-target}"/debian/mailauthd_*.deb | head -1)
fi
dpkg-deb --info "$deb" | sed -n '1,20p'

# A clean state: no earlier install, user, config or data.
dpkg --purge mailauthd >/dev/null 2>&1 || true
rm -rf /etc/mailauthd /var/lib/mailauthd /run/mailauthd
userdel mailauthd >/dev/null 2>&1 || true
groupdel mailauthd >/dev/null 2>&1 || true
groupdel mailauthd-sock >/dev/null 2>&1 || true
# Postfix and Dovecot are installed (CI installs them first). Earlier versions of the
# package put them in group mailauthd, which reads the config: as if upgrading from one.
getent passwd postfix >/dev/null && getent passwd dovecot >/dev/null ||
	{ not_ok "users postfix and dovecot exist (install postfix and dovecot-core)"; exit 1; }
groupadd --system mailauthd
usermod -a -G mailauthd postfix

dpkg -i "$deb"
check "binary installed" eval '[ -x /usr/bin/mailauthd ]'
check "user created" eval 'getent passwd mailauthd >/dev/null'
check "config is 0640 root:mailauthd" eval '[ "$(stat -c "%a %U:%G" /etc/mailauthd/mailauthd.toml)" = "640 root:mailauthd" ]'
check "state folder is 0700 mailauthd" eval '[ "$(stat -c "%a %U" /var/lib/mailauthd)" = "700 mailauthd" ]'
in_group() { id -nG "$1" | tr ' ' '\n' | grep -qx "$2"; }
check "postfix and dovecot are in group mailauthd-sock" eval 'in_group postfix mailauthd-sock && in_group dovecot mailauthd-sock'
check "postfix and dovecot are not in group mailauthd (it reads the config)" eval '! in_group postfix mailauthd && ! in_group dovecot mailauthd'
check "the daemon's user is in group mailauthd-sock (it gives the sockets that group)" eval 'in_group mailauthd mailauthd-sock'
check "unit installed, not enabled" eval '[ -f /lib/systemd/system/mailauthd.service ] && ! [ -e /etc/systemd/system/multi-user.target.wants/mailauthd.service ]'
check "systemd-analyze verify passes" eval 'systemd-analyze verify /lib/systemd/system/mailauthd.service'
# The optional socket-activation units from conf-examples, installed as docs/operations.md says.
install_sockets() {
	cp conf-examples/systemd/mailauthd-*.socket /etc/systemd/system/
	mkdir -p /etc/systemd/system/mailauthd.service.d
	cp conf-examples/systemd/sockets.conf /etc/systemd/system/mailauthd.service.d/
	local rc=0
	systemd-analyze verify /etc/systemd/system/mailauthd-auth.socket /etc/systemd/system/mailauthd-userdb.socket \
		/etc/systemd/system/mailauthd-policy.socket /lib/systemd/system/mailauthd.service || rc=$?
	rm -rf /etc/systemd/system/mailauthd-*.socket /etc/systemd/system/mailauthd.service.d
	return $rc
}
check "socket-activation units verify with the installed service" install_sockets
check "config check from the installed paths" eval '/usr/bin/mailauthd config check'
check "migrate from the installed paths" eval '/usr/bin/mailauthd migrate'
check "database created for the daemon user" eval '[ "$(stat -c "%U" /var/lib/mailauthd/mailauthd.db)" = mailauthd ]'
check "key created 0600 for the daemon user" eval '[ "$(stat -c "%a %U" /var/lib/mailauthd/app-password.key)" = "600 mailauthd" ]'
check "admin commands work as root" eval '/usr/bin/mailauthd domain add example.org && /usr/bin/mailauthd domain list | grep -q example.org'
check "a mailbox added as root" eval 'printf "alice-pw\n" | /usr/bin/mailauthd mailbox add alice@example.org --password-stdin'

# The daemon as the unit runs it (its user, its group, mailauthd-sock besides), with the
# installed config; then what Postfix and Dovecot may reach: the sockets, nothing else.
as_user() { local user=$1; shift; setpriv --reuid="$user" --regid="$user" --init-groups --reset-env -- "$@"; }
client=$(mktemp -d /tmp/mailauthd-deb.XXXXXX)
chmod 0755 "$client"
install -m 0755 tests/e2e/systemd/authclient.py "$client/"
# Not through as_user: $! must be the daemon itself (setpriv execs it), not a subshell.
setpriv --reuid=mailauthd --regid=mailauthd --init-groups --reset-env -- \
	/usr/bin/mailauthd serve >"$client/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [ -S /run/mailauthd/policy ] && break; sleep 0.1; done
check "the daemon started as mailauthd with the installed config" eval '[ -S /run/mailauthd/auth ] && [ -S /run/mailauthd/policy ]'
check "sockets are 0660 mailauthd:mailauthd-sock" eval '[ "$(stat -c "%a %U:%G" /run/mailauthd/auth /run/mailauthd/userdb /run/mailauthd/policy | sort -u)" = "660 mailauthd:mailauthd-sock" ]'
check "postfix logs in through the auth socket" eval '[ "$(as_user postfix python3 "$client/authclient.py" auth /run/mailauthd/auth alice@example.org alice-pw smtp | tail -n 1)" = "OK	1	user=alice@example.org" ]'
check "postfix gets an answer on the policy socket" eval 'as_user postfix python3 "$client/authclient.py" policy /run/mailauthd/policy someone@example.net alice@example.org | grep -q "^action="'
check "dovecot connects to the userdb socket" eval 'as_user dovecot python3 "$client/authclient.py" userdb /run/mailauthd/userdb | grep -q "^SPID	"'
for f in /etc/mailauthd/mailauthd.toml /var/lib/mailauthd/mailauthd.db /var/lib/mailauthd/app-password.key; do
	for user in postfix dovecot; do
		check "$user cannot read $f" eval "! as_user $user cat $f >/dev/null 2>&1"
	done
done
check "nobody (not in mailauthd-sock) cannot connect to the auth socket" eval '! as_user nobody python3 "$client/authclient.py" auth /run/mailauthd/auth >/dev/null 2>&1'
kill "$daemon"
status=0
wait "$daemon" || status=$?
check "the daemon stopped cleanly on SIGTERM (exit 0, \"stopped\" logged)" eval '[ "$status" = 0 ] && grep -q "stopped" "$client/daemon.log"'
rm -rf "$client"

dpkg --purge mailauthd >/dev/null
rm -rf /var/lib/mailauthd
gpasswd -d postfix mailauthd-sock >/dev/null 2>&1 || true
gpasswd -d dovecot mailauthd-sock >/dev/null 2>&1 || true
check "purged" eval '! [ -x /usr/bin/mailauthd ]'
summary
