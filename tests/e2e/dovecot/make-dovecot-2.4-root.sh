#!/usr/bin/env bash
# Builds a Debian 13 (trixie) directory tree with Dovecot 2.4 for the Dovecot
# end-to-end tests, from Debian's packages (about 310 MB, ~2 min):
#
#   tests/e2e/dovecot/make-dovecot-2.4-root.sh /srv/trixie-dovecot
#   DOVECOT_ROOT=/srv/trixie-dovecot tests/e2e/dovecot/adapter-against-dovecot.sh
#   DOVECOT=2.4 DOVECOT_ROOT=/srv/trixie-dovecot tests/e2e/dovecot/run.sh
#
# Dovecot then runs with chroot(8); it needs no /proc, and /dev comes from
# debootstrap. Needs root and debootstrap (installed when missing).
#
# Cacheable: a tree that exists already is reused; packages it lacks (an older
# tree built without ManageSieve or LMTP) are added with apt-get inside it.
# DEBIAN_MIRROR overrides debootstrap's default mirror.
set -eu

DIR=${1:?usage: $0 DIR}
PACKAGES="dovecot-core dovecot-imapd dovecot-pop3d dovecot-managesieved dovecot-lmtpd dovecot-auth-lua lua-socket curl"

# Package whose files show it is in the tree: name and one file it installs.
have() {
	case $1 in
	dovecot-core) [ -x "$DIR/usr/sbin/dovecot" ] ;;
	dovecot-imapd) [ -e "$DIR/usr/lib/dovecot/imap" ] ;;
	dovecot-pop3d) [ -e "$DIR/usr/lib/dovecot/pop3" ] ;;
	dovecot-managesieved) [ -e "$DIR/usr/lib/dovecot/managesieve-login" ] ;;
	dovecot-lmtpd) [ -e "$DIR/usr/lib/dovecot/lmtp" ] ;;
	dovecot-auth-lua) [ -e "$DIR/usr/lib/dovecot/modules/auth/libauthdb_lua.so" ] ;;
	lua-socket) ls "$DIR"/usr/lib/*/lua/*/socket/unix.so >/dev/null 2>&1 ;;
	curl) [ -x "$DIR/usr/bin/curl" ] ;;
	*) return 1 ;;
	esac
}

# Keeps package scripts inside the tree from starting services.
no_services() {
	mkdir -p "$DIR/usr/sbin"
	printf '#!/bin/sh\nexit 101\n' >"$DIR/usr/sbin/policy-rc.d"
	chmod 0755 "$DIR/usr/sbin/policy-rc.d"
}

if [ -x "$DIR/usr/sbin/dovecot" ] && [ -x "$DIR/usr/bin/apt-get" ]; then
	missing=
	for p in $PACKAGES; do
		have "$p" || missing="$missing $p"
	done
	if [ -z "$missing" ]; then
		echo "$DIR already has Dovecot: $(chroot "$DIR" dovecot --version)"
		exit 0
	fi
	echo "adding to $DIR:$missing"
	no_services
	cp /etc/resolv.conf "$DIR/etc/resolv.conf" 2>/dev/null || true
	# shellcheck disable=SC2086
	chroot "$DIR" env DEBIAN_FRONTEND=noninteractive sh -c \
		"apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing" >/dev/null
	chroot "$DIR" apt-get clean
	echo "updated $DIR: $(chroot "$DIR" dovecot --version)"
	exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq debootstrap >/dev/null
fi
# shellcheck disable=SC2086
debootstrap --variant=minbase --include="$(echo $PACKAGES | tr ' ' ,)" \
	trixie "$DIR" ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"}
no_services
chroot "$DIR" apt-get clean
echo "built $DIR: $(chroot "$DIR" dovecot --version)"
