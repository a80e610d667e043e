#!/usr/bin/env bash
# Builds a Debian 13 (trixie) directory tree with Dovecot 2.4 for
# adapter-against-dovecot.sh, from Debian's packages (about 300 MB, ~2 min):
#
#   tests/e2e/dovecot/make-dovecot-2.4-root.sh /srv/trixie-dovecot
#   DOVECOT_ROOT=/srv/trixie-dovecot tests/e2e/dovecot/adapter-against-dovecot.sh
#
# Dovecot then runs with chroot(8); it needs no /proc, and /dev comes from
# debootstrap. Needs root and debootstrap (installed when missing).
set -eu

DIR=${1:?usage: $0 DIR}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ -x "$DIR/usr/sbin/dovecot" ] && [ -e "$DIR/usr/lib/dovecot/modules/auth/libauthdb_lua.so" ]; then
	echo "$DIR already has Dovecot: $(chroot "$DIR" dovecot --version)"
	exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq debootstrap >/dev/null
fi
debootstrap --variant=minbase \
	--include=dovecot-core,dovecot-imapd,dovecot-pop3d,dovecot-auth-lua,lua-socket \
	trixie "$DIR" "$MIRROR"
echo "built $DIR: $(chroot "$DIR" dovecot --version)"
