#!/usr/bin/env bash
# End to end: the Debian package under a real systemd. Boots Debian 12 with systemd as
# PID 1 in a systemd-nspawn container, installs the .deb there with dpkg and runs
# mailauthd.service as a postmaster would: start (Type=notify), the CLI as root, a login
# through the auth socket, metrics, reload (good and broken config), stop, the unit's
# hardening, then the socket-activation units from conf-examples/systemd/ installed as
# docs/operations.md says.
#
#   tests/e2e/systemd.sh
#
# Environment:
#   MAILAUTHD_DEB     the package to test (CI builds it once, for deb.sh and this suite).
#                     Without it:
#   CARGO_TARGET_DIR  where `cargo deb` puts the package (default target/ under the
#                     repo). <target>/debian/mailauthd_*.deb is reused when it is newer
#                     than the sources; otherwise it is built here.
#   SYSTEMD_ROOT      the Debian 12 tree the container boots (default
#                     /srv/bookworm-systemd). Made with debootstrap when missing (about
#                     300 MB from Debian's mirror, a minute or two) and reused otherwise;
#                     the container runs it with --volatile=overlay, so no run changes it.
#   DEBIAN_MIRROR     debootstrap's mirror (default: debootstrap's own)
#   ARTIFACTS         the container's console, its journal and the unit's logs go to
#                     $ARTIFACTS/systemd-e2e/ (default ci-artifacts under the repo)
#
# Needs root (debootstrap, systemd-nspawn, nsenter). Installs systemd-container and
# debootstrap when missing. Nothing is skipped: a step that cannot run is a failure.
# The container has a private network (loopback only) and is always shut down at the end.
# Prints "ok - ..." / "not ok - ..." per check and "N passed, N failed" last; exits
# non-zero when anything failed.

# ok and not_ok always succeed, so "A && ok || not_ok" is if-then-else here.
# shellcheck disable=SC2015
set -Eeuo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=tests/e2e/lib.sh
. "$HERE/lib.sh"

TARGET=${CARGO_TARGET_DIR:-target}
case $TARGET in /*) ;; *) TARGET=$REPO/$TARGET ;; esac
ROOTFS=${SYSTEMD_ROOT:-/srv/bookworm-systemd}
ROOTFS=${ROOTFS%/}
ARTIFACTS=${ARTIFACTS:-ci-artifacts}
case $ARTIFACTS in /*) ;; *) ARTIFACTS=$REPO/$ARTIFACTS ;; esac
OUTDIR=$ARTIFACTS/systemd-e2e
# Packages the tree needs, and one file each installs.
ROOT_PACKAGES="systemd systemd-sysv dbus curl python3"

note() { echo "# $*"; }

die() {
	not_ok "$1" "${2:-}"
	exit 1
}

NSPAWN_PID=
LEADER=
WORK=
CGROUP=
STARTED=$(date +%s)

# Container down, journal kept, cgroups and temporary files gone; runs before the summary.
cleanup() {
	if [ -n "$LEADER" ] && kill -0 "$LEADER" 2>/dev/null; then
		in_ct journalctl -b --no-pager -o short-precise >"$OUTDIR/journal.log" 2>&1 || true
	fi
	if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
		# SIGTERM makes systemd-nspawn power the container off cleanly.
		kill -TERM "$NSPAWN_PID" 2>/dev/null || true
		wait_for 30 sh -c "! kill -0 $NSPAWN_PID 2>/dev/null" || true
		if kill -0 "$NSPAWN_PID" 2>/dev/null; then
			note "the container did not power off within 30 s; killing it"
			# Killing its PID 1 ends every process in the container's PID namespace.
			[ -z "$LEADER" ] || kill -KILL "$LEADER" 2>/dev/null || true
			stop_pid "$NSPAWN_PID" 5
		fi
		wait "$NSPAWN_PID" 2>/dev/null || true
	fi
	local h
	if [ -n "$CGROUP" ]; then
		for h in $(cgroup_hierarchies); do
			[ -d "$h/$CGROUP" ] && find "$h/$CGROUP" -depth -type d -exec rmdir {} \; 2>/dev/null
		done
	fi
	[ -z "$WORK" ] || rm -rf "$WORK"
	return 0
}

finish() {
	local status=$1
	trap - ERR
	set +e
	cleanup
	if [ "$status" != 0 ] && [ "$E2E_FAILED" = 0 ]; then
		not_ok "the script ended early (exit $status)"
	fi
	note "took $(($(date +%s) - STARTED)) s; logs in $OUTDIR"
	summary
	exit $?
}
on_error() {
	not_ok "unexpected error at line $1: $2"
	exit 1
}
trap 'finish $?' EXIT
trap 'on_error $LINENO "$BASH_COMMAND"' ERR
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, systemd-nspawn and nsenter need it)"
rm -rf "$OUTDIR"
mkdir -p "$OUTDIR"

###########################################################################
# Tools on this machine

missing=
command -v systemd-nspawn >/dev/null 2>&1 || missing="$missing systemd-container"
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
command -v nsenter >/dev/null 2>&1 || missing="$missing util-linux"
if [ -n "$missing" ]; then
	note "installing$missing"
	export DEBIAN_FRONTEND=noninteractive
	# shellcheck disable=SC2086
	{ apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing; } \
		>"$OUTDIR/apt.log" 2>&1 || die "apt-get install$missing" "$(tail -n 20 "$OUTDIR/apt.log")"
fi

###########################################################################
# The package: the one given, or reused when newer than everything it is built from

# shellcheck disable=SC2012 # cargo-deb names its packages plainly
deb=$(ls -t "$TARGET"/debian/mailauthd_*.deb 2>/dev/null | head -n 1 || true)
newer=
if [ -n "${MAILAUTHD_DEB:-}" ]; then
	deb=$MAILAUTHD_DEB
	[ -f "$deb" ] || die "MAILAUTHD_DEB names no file: $deb"
elif [ -n "$deb" ]; then
	newer=$(find "$REPO/src" "$REPO/packaging" "$REPO/conf-examples" "$REPO/Cargo.toml" \
		"$REPO/Cargo.lock" "$REPO/README.md" -type f -newer "$deb" -print -quit)
fi
if [ -n "${MAILAUTHD_DEB:-}" ]; then
	ok "package $(basename "$deb") given as MAILAUTHD_DEB"
elif [ -n "$deb" ] && [ -z "$newer" ]; then
	ok "package $(basename "$deb") reused from $TARGET/debian (newer than the sources)"
else
	note "building the package with cargo deb${newer:+ ($newer is newer than $deb)}"
	{
		cd "$REPO"
		command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked
		cargo deb --locked
	} >"$OUTDIR/build.log" 2>&1 || die "cargo deb" "$(tail -n 20 "$OUTDIR/build.log")"
	# shellcheck disable=SC2012
	deb=$(ls -t "$TARGET"/debian/mailauthd_*.deb 2>/dev/null | head -n 1 || true)
	[ -n "$deb" ] || die "cargo deb made no package in $TARGET/debian"
	ok "package $(basename "$deb") built"
fi

###########################################################################
# The Debian 12 tree (cached)

root_missing() { # tree: prints the packages it lacks
	local r=$1 m=
	[ -x "$r/lib/systemd/systemd" ] || m="$m systemd"
	[ -e "$r/sbin/init" ] || m="$m systemd-sysv"
	[ -x "$r/usr/bin/dbus-daemon" ] || m="$m dbus"
	[ -x "$r/usr/bin/curl" ] || m="$m curl"
	[ -x "$r/usr/bin/python3" ] || m="$m python3"
	echo "$m"
}

# What the tree needs besides packages: no timers or getty that could run in the middle
# of a check, and package scripts in a chroot never start services.
prepare_root() { # tree
	local r=$1 unit
	for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
		e2scrub_all.timer fstrim.timer console-getty.service getty@.service; do
		ln -sfn /dev/null "$r/etc/systemd/system/$unit"
	done
	echo bookworm-systemd >"$r/etc/hostname"
	printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
	chmod 0755 "$r/usr/sbin/policy-rc.d"
}

make_root() {
	local tmp
	if [ -x "$ROOTFS/usr/bin/apt-get" ]; then
		local lacks
		lacks=$(root_missing "$ROOTFS")
		note "adding to $ROOTFS:$lacks"
		cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
		chroot "$ROOTFS" env DEBIAN_FRONTEND=noninteractive sh -c \
			"apt-get update -qq && apt-get install -y -qq --no-install-recommends $lacks"
		chroot "$ROOTFS" apt-get clean
		prepare_root "$ROOTFS"
		return
	fi
	# Built aside and moved into place, so an interrupted build is never taken for a tree.
	tmp=$ROOTFS.new.$$
	rm -rf "$tmp"
	mkdir -p "$(dirname "$ROOTFS")"
	# shellcheck disable=SC2086
	debootstrap --variant=minbase --include="$(echo $ROOT_PACKAGES | tr ' ' ,)" \
		bookworm "$tmp" ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"}
	chroot "$tmp" apt-get clean
	prepare_root "$tmp"
	if ! mv -T "$tmp" "$ROOTFS"; then
		# Another run finished its tree first; use that one.
		rm -rf "$tmp"
	fi
}

if [ -n "$(root_missing "$ROOTFS")" ]; then
	note "preparing $ROOTFS (cached: reused when present)"
	t0=$(date +%s)
	make_root >"$OUTDIR/make-root.log" 2>&1 ||
		die "make the Debian 12 tree $ROOTFS" "$(tail -n 20 "$OUTDIR/make-root.log")"
	[ -z "$(root_missing "$ROOTFS")" ] || die "$ROOTFS still lacks:$(root_missing "$ROOTFS")"
	note "$ROOTFS ready in $(($(date +%s) - t0)) s"
fi
grep -q '^VERSION_ID="12"' "$ROOTFS/etc/os-release" ||
	die "$ROOTFS is not Debian 12" "$(cat "$ROOTFS/etc/os-release")"
ok "Debian 12 tree with systemd at $ROOTFS"

###########################################################################
# Boot: systemd as PID 1 of a container with its own PID, mount, network, IPC and UTS
# namespaces. The tree is the lower layer of an overlay with a tmpfs on top; the package
# and this script's helpers come in read-only at /e2e.

WORK=$(mktemp -d /tmp/mailauthd-systemd-e2e.XXXXXX)
chmod 0755 "$WORK"
cp "$deb" "$WORK/mailauthd.deb"
cp "$HERE/systemd/authclient.py" "$WORK/"
mkdir -p "$WORK/systemd"
cp "$REPO"/conf-examples/systemd/* "$WORK/systemd/"

# The cgroup hierarchies systemd uses on this machine: the unified one (cgroup2) and, on
# a legacy or hybrid layout, the name=systemd one.
cgroup_hierarchies() {
	local fs
	fs=$(stat -f -c %T /sys/fs/cgroup)
	if [ "$fs" = cgroup2fs ]; then
		echo /sys/fs/cgroup
		return
	fi
	[ "$(stat -f -c %T /sys/fs/cgroup/systemd 2>/dev/null)" = cgroupfs ] && echo /sys/fs/cgroup/systemd
	[ "$(stat -f -c %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ] && echo /sys/fs/cgroup/unified
	return 0
}

# systemd-nspawn --keep-unit puts the container in a "payload" cgroup below its own: give
# each run a cgroup of its own, so two runs never share one.
CGROUP=mailauthd-e2e-$$
hierarchies=$(cgroup_hierarchies)
[ -n "$hierarchies" ] || die "no cgroup hierarchy for systemd under /sys/fs/cgroup" "$(mount -t cgroup,cgroup2)"
for h in $hierarchies; do mkdir -p "$h/$CGROUP"; done

BOOT_CMD=(systemd-nspawn --directory="$ROOTFS" --volatile=overlay --boot
	--register=no --keep-unit --private-network --machine="mailauthd-e2e-$$"
	--bind-ro="$WORK:/e2e" --console=read-only)
note "booting: ${BOOT_CMD[*]}"
# A shell that moves itself into that cgroup, then becomes systemd-nspawn (same PID).
# shellcheck disable=SC2016
sh -c 'for h in $1; do echo $$ >"$h/$2/cgroup.procs"; done; shift 2; exec "$@"' \
	sh "$hierarchies" "$CGROUP" "${BOOT_CMD[@]}" </dev/null >"$OUTDIR/console.log" 2>&1 &
NSPAWN_PID=$!

container_leader() {
	LEADER=$(pgrep -P "$NSPAWN_PID" | head -n 1 || true)
	[ -n "$LEADER" ] && [ "$(cat "/proc/$LEADER/comm" 2>/dev/null)" = systemd ]
}
wait_for 30 container_leader ||
	die "systemd-nspawn started systemd" "$(tail -n 25 "$OUTDIR/console.log")"

# Runs a command inside the container, as root, with a clean environment.
in_ct() {
	timeout 120 nsenter --target "$LEADER" --all -- \
		env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 \
		"$@"
}

prop() { # UNIT PROPERTY: one property of a unit, as systemctl show --value prints it
	in_ct systemctl show -p "$2" --value "$1"
}

# systemctl answers once PID 1 has its private socket up ("Failed to connect to bus"
# before); --wait then lasts until the boot is over.
state=
system_state() {
	state=$(in_ct systemctl is-system-running --wait 2>&1 || true)
	case $state in
	initializing | starting | running | degraded | maintenance | stopping | offline) return 0 ;;
	esac
	sleep 0.4
	return 1
}
wait_for 60 system_state || true
case $state in
running) ok "systemd booted the container to multi-user (is-system-running: running)" ;;
*) not_ok "systemd booted the container (is-system-running: ${state:-nothing})" \
	"$(in_ct systemctl --failed --no-pager 2>&1 || true)" ;;
esac
pid1=$(in_ct readlink /proc/1/exe || true)
expect_eq "PID 1 in the container is systemd" /usr/lib/systemd/systemd "$pid1"
note "container: $(in_ct systemctl --version | head -n 1), its PID 1 is $LEADER on this machine"

###########################################################################
# Install

# Postfix and Dovecot as the package finds them: their users exist, and postfix is in
# group mailauthd the way earlier versions of the package left it (the upgrade must take
# it out: that group reads the config).
out=$(in_ct sh -ec '
	groupadd --system mailauthd
	useradd --system --no-create-home --shell /usr/sbin/nologin --groups mailauthd postfix
	useradd --system --no-create-home --shell /usr/sbin/nologin dovecot' 2>&1) &&
	ok "users postfix and dovecot exist (postfix in group mailauthd, as an earlier version left it)" ||
	not_ok "users postfix and dovecot exist" "$out"
out=$(in_ct dpkg -i /e2e/mailauthd.deb 2>&1) && ok "dpkg -i installs the package" ||
	not_ok "dpkg -i installs the package" "$out"
printf '%s\n' "$out" >"$OUTDIR/dpkg.log"
got="$(prop mailauthd LoadState) $(prop mailauthd FragmentPath) $(prop mailauthd UnitFileState) $(prop mailauthd ActiveState)"
expect_eq "unit installed, not enabled, not started" \
	"loaded /lib/systemd/system/mailauthd.service disabled inactive" "$got"
got=$(in_ct stat -c '%a %U:%G' /etc/mailauthd/mailauthd.toml || true)
expect_eq "shipped config is 0640 root:mailauthd" "640 root:mailauthd" "$got"
got=$(in_ct sh -c 'getent group mailauthd | cut -d: -f4; getent group mailauthd-sock | cut -d: -f4 | tr , "\n" | sort | tr "\n" " "')
expect_eq "group mailauthd has no members; mailauthd-sock has the daemon, dovecot and postfix" \
	"
dovecot mailauthd postfix " "$got"

###########################################################################
# Configure and start

CONFIG=/etc/mailauthd/mailauthd.toml
# The shipped file (every key commented but the sockets' group) with the metrics listener
# turned on. Written in
# place, so the file keeps its owner and mode.
in_ct sh -c "printf '\n[metrics]\nlisten = \"127.0.0.1:9154\"\n' >>$CONFIG"
in_ct cp "$CONFIG" /root/mailauthd.toml.good
out=$(in_ct mailauthd config check 2>&1) && ok "config check passes" || not_ok "config check passes" "$out"

out=$(in_ct systemctl start mailauthd 2>&1) && ok "systemctl start mailauthd" ||
	not_ok "systemctl start mailauthd" "$out$(in_ct journalctl -u mailauthd --no-pager -n 20 2>&1)"
got=$(prop mailauthd Type)
expect_eq "unit is Type=notify" notify "$got"
got=$(in_ct systemctl is-active mailauthd || true)
expect_eq "active after start: the daemon sent READY=1" active "$got"
MAINPID=$(prop mailauthd MainPID)
status=$(prop mailauthd StatusText)
note "StatusText: $status"
case $status in
"serving "*unix:/run/mailauthd/auth*"metrics tcp:127.0.0.1:9154"*) ok "StatusText says serving, with the sockets and metrics" ;;
*) not_ok "StatusText says serving, with the sockets and metrics (got: $status)" ;;
esac
got=$(in_ct stat -c %U "/proc/$MAINPID" || true)
expect_eq "the daemon runs as mailauthd" mailauthd "$got"
check "journal says mailauthd ready" in_ct sh -c 'journalctl -u mailauthd --no-pager | grep -q "mailauthd ready"'

# Ownership and modes as docs/install.md, the unit and the config's comments give them.
got=$(in_ct stat -c '%a %U:%G' /run/mailauthd || true)
expect_eq "/run/mailauthd is 0755 mailauthd:mailauthd (RuntimeDirectoryMode)" "755 mailauthd:mailauthd" "$got"
for s in auth userdb policy; do
	got=$(in_ct stat -c '%F %a %U:%G' "/run/mailauthd/$s" || true)
	expect_eq "/run/mailauthd/$s is a socket, 0660 mailauthd:mailauthd-sock" "socket 660 mailauthd:mailauthd-sock" "$got"
done
got=$(in_ct stat -c '%F %a %U' /run/mailauthd/control || true)
expect_eq "/run/mailauthd/control is a socket, 0600 mailauthd" "socket 600 mailauthd" "$got"
got=$(in_ct stat -c '%a %U:%G' /var/lib/mailauthd || true)
expect_eq "/var/lib/mailauthd is 0700 mailauthd:mailauthd (StateDirectoryMode)" "700 mailauthd:mailauthd" "$got"
got=$(in_ct stat -c '%a %U' /var/lib/mailauthd/app-password.key || true)
expect_eq "app-password key is 0600 mailauthd" "600 mailauthd" "$got"

###########################################################################
# The CLI as root, a login through the socket, metrics

out=$(in_ct mailauthd domain add example.org 2>&1) && ok "mailauthd domain add example.org (as root)" ||
	not_ok "mailauthd domain add example.org (as root)" "$out"
out=$(printf 'alice-pw\n' | in_ct mailauthd mailbox add alice@example.org --password-stdin 2>&1) &&
	ok "mailauthd mailbox add alice@example.org --password-stdin" ||
	not_ok "mailauthd mailbox add alice@example.org --password-stdin" "$out"
got=$(in_ct stat -c '%U' /var/lib/mailauthd/mailauthd.db || true)
expect_eq "the database stays the daemon's after admin commands" mailauthd "$got"
out=$(printf 'alice-pw\n' | in_ct mailauthd auth test alice@example.org 2>&1) &&
	ok "mailauthd auth test accepts the password" || not_ok "mailauthd auth test accepts the password" "$out"
out=$(printf 'wrong\n' | in_ct mailauthd auth test alice@example.org 2>&1) &&
	not_ok "mailauthd auth test refuses a wrong password" "$out" || ok "mailauthd auth test refuses a wrong password"

out=$(in_ct python3 /e2e/authclient.py auth /run/mailauthd/auth alice@example.org alice-pw imap 2>&1 || true)
printf '%s\n' "$out" >"$OUTDIR/auth-socket.txt"
case $(printf '%s\n' "$out" | head -n 1)/$(printf '%s\n' "$out" | tail -n 1) in
VERSION*/"OK	1	user=alice@example.org") ok "login through the auth socket accepted (the daemon's decision)" ;;
*) not_ok "login through the auth socket accepted (the daemon's decision)" "$out" ;;
esac
out=$(in_ct python3 /e2e/authclient.py auth /run/mailauthd/auth alice@example.org wrong imap 2>&1 || true)
case $(printf '%s\n' "$out" | tail -n 1) in
"FAIL	1"*) ok "wrong password through the auth socket refused" ;;
*) not_ok "wrong password through the auth socket refused" "$out" ;;
esac

# What Postfix and Dovecot may reach: the sockets, and nothing else.
as_user() { # USER COMMAND...: as that user with its groups, as its own daemon would run
	local user=$1
	shift
	in_ct setpriv --reuid="$user" --regid="$user" --init-groups --reset-env -- "$@"
}
out=$(as_user postfix python3 /e2e/authclient.py auth /run/mailauthd/auth alice@example.org alice-pw smtp 2>&1 || true)
case $(printf '%s\n' "$out" | head -n 1)/$(printf '%s\n' "$out" | tail -n 1) in
VERSION*/"OK	1	user=alice@example.org") ok "user postfix connects to the auth socket and logs in" ;;
*) not_ok "user postfix connects to the auth socket and logs in" "$out" ;;
esac
out=$(as_user postfix python3 /e2e/authclient.py policy /run/mailauthd/policy someone@example.net alice@example.org 2>&1 || true)
case $out in
action=*) ok "user postfix gets an answer on the policy socket ($(printf '%s\n' "$out" | head -n 1))" ;;
*) not_ok "user postfix gets an answer on the policy socket" "$out" ;;
esac
out=$(as_user dovecot python3 /e2e/authclient.py userdb /run/mailauthd/userdb 2>&1 || true)
case $(printf '%s\n' "$out" | tr '\n' ' ') in
"VERSION	1	"*" SPID	"*) ok "user dovecot connects to the userdb socket" ;;
*) not_ok "user dovecot connects to the userdb socket" "$out" ;;
esac
for f in /etc/mailauthd/mailauthd.toml /var/lib/mailauthd/mailauthd.db /var/lib/mailauthd/app-password.key; do
	for user in postfix dovecot; do
		if out=$(as_user "$user" cat "$f" 2>&1 >/dev/null); then
			not_ok "user $user cannot read $f" "it could"
		else
			ok "user $user cannot read $f ($(printf '%s' "$out" | tail -n 1))"
		fi
	done
done
out=$(as_user postfix ls /var/lib/mailauthd 2>&1) && not_ok "user postfix cannot list /var/lib/mailauthd" "$out" ||
	ok "user postfix cannot list /var/lib/mailauthd"
out=$(as_user nobody python3 /e2e/authclient.py auth /run/mailauthd/auth 2>&1) &&
	not_ok "a user outside mailauthd-sock (nobody) cannot connect to the auth socket" "$out" ||
	ok "a user outside mailauthd-sock (nobody) cannot connect to the auth socket"

metrics=$(in_ct curl -sS --max-time 10 http://127.0.0.1:9154/metrics 2>&1 || true)
printf '%s\n' "$metrics" >"$OUTDIR/metrics.txt"
# metric_value NAME LABEL=VALUE...: the sample with all those labels (0 when absent).
metric_value() {
	local name=$1 l
	shift
	printf '%s\n' "$metrics" | grep "^$name{" | {
		local lines
		lines=$(cat)
		for l in "$@"; do lines=$(printf '%s\n' "$lines" | grep -F "$l" || true); done
		printf '%s\n' "$lines" | awk 'NF { sum += $NF } END { print sum + 0 }'
	}
}
got=$(metric_value mailauthd_auth_requests_total 'protocol="imap"' 'outcome="ok"' 'reason="password"')
expect_eq "metrics count the accepted login" 1 "$got" "$(printf '%s\n' "$metrics" | grep auth_requests || true)"
got=$(metric_value mailauthd_auth_requests_total 'protocol="imap"' 'outcome="fail"' 'reason="bad_credentials"')
expect_eq "metrics count the refused login" 1 "$got" "$(printf '%s\n' "$metrics" | grep auth_requests || true)"
check "journal has the decision line" in_ct sh -c \
	'journalctl -u mailauthd --no-pager | grep "auth service=\"imap\" user=\"alice@example.org\"" | grep -q "outcome=\"ok\""'

###########################################################################
# Reload

journal_since() { # CURSOR: the unit's journal after that cursor
	in_ct journalctl -u mailauthd --no-pager --after-cursor="$1" 2>/dev/null || true
}
cursor() {
	in_ct journalctl -u mailauthd -n 1 --show-cursor --no-pager 2>/dev/null | sed -n 's/^-- cursor: //p'
}
journal_has() { # CURSOR TEXT
	journal_since "$1" | grep -qF "$2"
}
# The daemon reports a reload through sd_notify after systemctl reload has returned (the
# ExecReload command only sends SIGHUP), so the status is waited for.
status_serving() { # serving, and no failed reload
	status=$(prop mailauthd StatusText)
	case $status in "serving "*"last reload failed"*) return 1 ;; "serving "*) return 0 ;; esac
	return 1
}
status_reload_failed() {
	status=$(prop mailauthd StatusText)
	case $status in "serving "*"; last reload failed"*) return 0 ;; esac
	return 1
}

# A change applied live: the log level.
in_ct sh -c "sed '/^\[log\]/,/^\[/ s/^# level = \"info\"/level = \"debug\"/' /root/mailauthd.toml.good >$CONFIG"
in_ct grep -q '^level = "debug"' "$CONFIG" || not_ok "config edited for the reload (log level)"
c=$(cursor)
out=$(in_ct systemctl reload mailauthd 2>&1) && ok "systemctl reload mailauthd" || not_ok "systemctl reload mailauthd" "$out"
got=$(in_ct systemctl is-active mailauthd || true)
expect_eq "active after reload" active "$got"
got=$(prop mailauthd MainPID)
expect_eq "same process after reload" "$MAINPID" "$got"
wait_for 10 journal_has "$c" "configuration reloaded" &&
	ok "journal says configuration reloaded" || not_ok "journal says configuration reloaded" "$(journal_since "$c")"
journal_has "$c" "log level changed" && ok "journal says the log level changed" ||
	not_ok "journal says the log level changed" "$(journal_since "$c")"
wait_for 10 status_serving && ok "StatusText back to serving after reload" ||
	not_ok "StatusText back to serving after reload (got: $status)"

# A broken file: refused, the daemon keeps running with the old configuration.
in_ct sh -c "cat /root/mailauthd.toml.good >$CONFIG; printf '\n[no_such_section]\nkey = 1\n' >>$CONFIG"
c=$(cursor)
out=$(in_ct systemctl reload mailauthd 2>&1) && ok "systemctl reload with a broken config returns" ||
	not_ok "systemctl reload with a broken config returns" "$out"
got=$(in_ct systemctl is-active mailauthd || true)
expect_eq "still active after a refused reload" active "$got"
got=$(prop mailauthd MainPID)
expect_eq "same process after a refused reload" "$MAINPID" "$got"
wait_for 10 journal_has "$c" "reload refused" &&
	ok "journal says reload refused" || not_ok "journal says reload refused" "$(journal_since "$c")"
wait_for 10 status_reload_failed && ok "StatusText says last reload failed" ||
	not_ok "StatusText says last reload failed (got: $status)"
note "StatusText: $status"
out=$(in_ct python3 /e2e/authclient.py auth /run/mailauthd/auth alice@example.org alice-pw imap 2>&1 || true)
case $(printf '%s\n' "$out" | tail -n 1) in
"OK	1	user=alice@example.org") ok "logins still accepted after a refused reload" ;;
*) not_ok "logins still accepted after a refused reload" "$out" ;;
esac
in_ct sh -c "cat /root/mailauthd.toml.good >$CONFIG"
in_ct systemctl reload mailauthd || not_ok "systemctl reload with the config fixed"
wait_for 10 status_serving && ok "StatusText serving again after the config is fixed" ||
	not_ok "StatusText serving again after the config is fixed (got: $status)"

###########################################################################
# Hardening, seen from the running daemon

security=$(in_ct systemd-analyze security mailauthd --no-pager 2>&1 || true)
printf '%s\n' "$security" >"$OUTDIR/security.txt"
exposure=$(printf '%s\n' "$security" | grep -o 'Overall exposure level for mailauthd.service: .*' || true)
if [ -n "$exposure" ]; then
	ok "systemd-analyze security rates the unit"
	note "$exposure"
else
	not_ok "systemd-analyze security rates the unit" "$security"
fi
proc=$(in_ct grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' "/proc/$MAINPID/status" | tr -s '\t ' ' ' | tr '\n' ' ')
expect_eq "no capabilities, no new privileges, seccomp filter" \
	"CapEff: 0000000000000000 CapBnd: 0000000000000000 NoNewPrivs: 1 Seccomp: 2 " "$proc"
# The daemon's own mount namespace: read-only system, writable state, a /dev without the
# container's /dev/net/tun.
view=$(in_ct sh -c '[ -e /dev/net/tun ] && echo tun || echo no-tun')
expect_eq "the container has /dev/net/tun (to compare the daemon's /dev with)" tun "$view"
view=$(in_ct nsenter --target "$MAINPID" --mount sh -c '
	touch /etc/mailauthd/x 2>/dev/null && echo etc-writable || echo etc-ro
	touch /usr/x 2>/dev/null && echo usr-writable || echo usr-ro
	touch /var/lib/mailauthd/.w 2>/dev/null && rm -f /var/lib/mailauthd/.w && echo state-rw || echo state-ro
	[ -e /dev/net/tun ] && echo container-dev || echo private-dev' 2>&1 | tr '\n' ' ')
expect_eq "the daemon sees /etc and /usr read-only, its state writable, a private /dev" \
	"etc-ro usr-ro state-rw private-dev " "$view"
got=$(prop mailauthd LimitNOFILE)
note "LimitNOFILE: unit asks 65536, systemd reports $got; the daemon has $(in_ct sh -c "grep 'open files' /proc/$MAINPID/limits | tr -s ' '")"

###########################################################################
# Stop

c=$(cursor)
out=$(in_ct systemctl stop mailauthd 2>&1) && ok "systemctl stop mailauthd" || not_ok "systemctl stop mailauthd" "$out"
got=$(in_ct systemctl is-active mailauthd || true)
expect_eq "inactive after stop" inactive "$got"
wait_for 10 journal_has "$c" "stopped" && ok "journal says stopped" ||
	not_ok "journal says stopped" "$(journal_since "$c")"
# systemd forgets a stopped unit nothing refers to (ExecMainStatus then reads 0 whatever
# happened), so the exit is read from its journal: "Deactivated successfully" only when
# the main process exited with status 0; otherwise "Main process exited, code=…" and
# "Failed with result …".
stop_log=$(journal_since "$c")
if printf '%s\n' "$stop_log" | grep -q 'mailauthd.service: Deactivated successfully' &&
	! printf '%s\n' "$stop_log" | grep -qE 'Main process exited|Failed with result|Killing process'; then
	ok "stopped cleanly: exit status 0, Result=success, nothing killed"
else
	not_ok "stopped cleanly: exit status 0, Result=success, nothing killed" "$stop_log"
fi
got=$(in_ct sh -c '[ -e /run/mailauthd ] && echo present || echo removed')
expect_eq "runtime folder removed on stop" removed "$got"

###########################################################################
# Socket activation, installed as docs/operations.md "Socket activation" says

out=$(in_ct sh -ec '
	cp /e2e/systemd/mailauthd-*.socket /etc/systemd/system/
	mkdir -p /etc/systemd/system/mailauthd.service.d
	cp /e2e/systemd/sockets.conf /etc/systemd/system/mailauthd.service.d/
	systemctl daemon-reload
	systemctl enable --now mailauthd-auth.socket mailauthd-userdb.socket mailauthd-policy.socket
	systemctl restart mailauthd' 2>&1) &&
	ok "socket units installed and enabled, mailauthd restarted (the documented commands)" ||
	not_ok "socket units installed and enabled, mailauthd restarted (the documented commands)" "$out"
got=$(in_ct systemctl is-active mailauthd-auth.socket mailauthd-userdb.socket mailauthd-policy.socket mailauthd |
	tr '\n' ' ' || true)
expect_eq "sockets listening and mailauthd active" "active active active active " "$got"
got=$(in_ct systemctl is-enabled mailauthd-auth.socket mailauthd-userdb.socket mailauthd-policy.socket |
	tr '\n' ' ' || true)
expect_eq "socket units enabled" "enabled enabled enabled " "$got"
for s in auth userdb policy; do
	got=$(in_ct stat -c '%F %a %U:%G' "/run/mailauthd/$s" || true)
	expect_eq "/run/mailauthd/$s from the socket unit: 0660 mailauthd:mailauthd-sock" "socket 660 mailauthd:mailauthd-sock" "$got"
done
inode=$(in_ct stat -c %i /run/mailauthd/auth || true)

auth_login() { # NAME: one login through the auth socket, handshake first
	local out
	out=$(in_ct python3 /e2e/authclient.py auth /run/mailauthd/auth alice@example.org alice-pw imap 2>&1 || true)
	printf '%s\n' "$out" >>"$OUTDIR/auth-socket.txt"
	if printf '%s\n' "$out" | head -n 1 | grep -q '^VERSION	1	' &&
		printf '%s\n' "$out" | grep -q '^DONE$' &&
		[ "$(printf '%s\n' "$out" | tail -n 1)" = "OK	1	user=alice@example.org" ]; then
		ok "$1"
	else
		not_ok "$1" "$out"
	fi
}
auth_login "activated auth socket: handshake VERSION…DONE, login accepted"
out=$(as_user postfix python3 /e2e/authclient.py auth /run/mailauthd/auth alice@example.org alice-pw smtp 2>&1 || true)
[ "$(printf '%s\n' "$out" | tail -n 1)" = "OK	1	user=alice@example.org" ] &&
	ok "user postfix logs in through the activated auth socket" ||
	not_ok "user postfix logs in through the activated auth socket" "$out"
out=$(in_ct python3 /e2e/authclient.py userdb /run/mailauthd/userdb 2>&1 || true)
case $(printf '%s\n' "$out" | tr '\n' ' ') in
"VERSION	1	"*" SPID	"*) ok "activated userdb socket answers (VERSION, SPID)" ;;
*) not_ok "activated userdb socket answers (VERSION, SPID)" "$out" ;;
esac
out=$(in_ct python3 /e2e/authclient.py policy /run/mailauthd/policy someone@example.net alice@example.org 2>&1 || true)
case $out in
action=*) ok "activated policy socket answers ($(printf '%s\n' "$out" | head -n 1))" ;;
*) not_ok "activated policy socket answers" "$out" ;;
esac
status_serving && ok "StatusText says serving with the passed sockets" ||
	not_ok "StatusText says serving with the passed sockets (got: $status)"

old=$(prop mailauthd MainPID)
out=$(in_ct systemctl restart mailauthd 2>&1) && ok "systemctl restart mailauthd" || not_ok "systemctl restart mailauthd" "$out"
new=$(prop mailauthd MainPID)
[ "$old" != "$new" ] && [ "$new" != 0 ] && ok "a new daemon process after restart" ||
	not_ok "a new daemon process after restart (MainPID $old, then $new)"
got=$(in_ct stat -c %i /run/mailauthd/auth || true)
expect_eq "restart keeps the auth socket file (same inode)" "$inode" "$got"
auth_login "login accepted after restart"

out=$(in_ct systemctl stop mailauthd 2>&1) && ok "systemctl stop mailauthd (sockets stay)" ||
	not_ok "systemctl stop mailauthd (sockets stay)" "$out"
got=$(in_ct systemctl is-active mailauthd mailauthd-auth.socket | tr '\n' ' ' || true)
expect_eq "mailauthd inactive, auth socket still listening" "inactive active " "$got"
got=$(in_ct stat -c %i /run/mailauthd/auth || true)
expect_eq "stop keeps the auth socket file (same inode)" "$inode" "$got"
auth_login "a connection while mailauthd is stopped starts it and is answered"
got=$(in_ct systemctl is-active mailauthd || true)
expect_eq "socket activation started mailauthd" active "$got"
status_serving && ok "StatusText says serving after socket activation" ||
	not_ok "StatusText says serving after socket activation (got: $status)"

out=$(in_ct systemctl stop mailauthd-auth.socket mailauthd-userdb.socket mailauthd-policy.socket mailauthd 2>&1) &&
	ok "sockets and service stop" || not_ok "sockets and service stop" "$out"
# The socket units keep this unit loaded, so its exit status is still known.
got="$(prop mailauthd Result) $(prop mailauthd ExecMainCode) $(prop mailauthd ExecMainStatus)"
# ExecMainCode 1 is CLD_EXITED: the daemon exited by itself, with status 0.
expect_eq "socket-activated daemon stopped cleanly (Result=success, exited with status 0)" "success 1 0" "$got"
in_ct journalctl -u 'mailauthd*' --no-pager -o short-precise >"$OUTDIR/mailauthd.log" 2>&1 || true
