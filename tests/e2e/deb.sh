#!/usr/bin/env bash
# Builds the Debian package, installs it on a clean state, and runs the installed binary.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
passed=0 failed=0
check() { if eval "$2"; then echo "ok - $1"; passed=$((passed+1)); else echo "not ok - $1"; failed=$((failed+1)); fi; }

command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
cargo deb --locked
deb=$(ls -t target/debian/mailauthd_*.deb | head -1)
dpkg-deb --info "$deb" | sed -n '1,20p'

# A clean state: no earlier install, user, config or data.
dpkg --purge mailauthd >/dev/null 2>&1 || true
rm -rf /etc/mailauthd /var/lib/mailauthd /run/mailauthd
userdel mailauthd >/dev/null 2>&1 || true
groupdel mailauthd >/dev/null 2>&1 || true

dpkg -i "$deb"
check "binary installed" '[ -x /usr/bin/mailauthd ]'
check "user created" 'getent passwd mailauthd >/dev/null'
check "config is 0640 root:mailauthd" '[ "$(stat -c "%a %U:%G" /etc/mailauthd/mailauthd.toml)" = "640 root:mailauthd" ]'
check "state folder belongs to mailauthd" '[ "$(stat -c "%U" /var/lib/mailauthd)" = mailauthd ]'
check "unit installed, not enabled" '[ -f /lib/systemd/system/mailauthd.service ] && ! [ -e /etc/systemd/system/multi-user.target.wants/mailauthd.service ]'
check "systemd-analyze verify passes" 'systemd-analyze verify /lib/systemd/system/mailauthd.service'
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
check "config check from the installed paths" '/usr/bin/mailauthd config check'
check "migrate from the installed paths" '/usr/bin/mailauthd migrate'
check "database created for the daemon user" '[ "$(stat -c "%U" /var/lib/mailauthd/mailauthd.db)" = mailauthd ]'
check "key created 0600 for the daemon user" '[ "$(stat -c "%a %U" /var/lib/mailauthd/app-password.key)" = "600 mailauthd" ]'
check "admin commands work as root" '/usr/bin/mailauthd domain add example.org && /usr/bin/mailauthd domain list | grep -q example.org'

dpkg --purge mailauthd >/dev/null
rm -rf /var/lib/mailauthd
check "purged" '! [ -x /usr/bin/mailauthd ]'
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
