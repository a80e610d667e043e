# shellcheck shell=bash
# A private Dovecot 2.3 instance with the shipped mailauthd adapter: its own base_dir,
# config, log and mail folders in a folder of the caller's, listening on 127.0.0.1 only.
# Shared by imap-login.sh (one login, then stopped) and the suites that keep one running
# (oauth/roundcube.sh: a webmail client reads and stores mail through it).
# Source it after tests/e2e/lib.sh:
#   . "$REPO/tests/e2e/dovecot/private-23.sh"
# It defines functions only and starts nothing by itself. Each prints what went wrong on
# stderr and returns non-zero; the caller decides how to fail. Needs root (Dovecot drops
# privileges to dovecot, dovenull and, for mail, nobody).

DV23_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)

# dv23_conf DIR RUNTIME_DIR IMAP_PORT [LMTP_PORT]: DIR/dovecot.conf for IMAP on
# 127.0.0.1:IMAP_PORT (and LMTP on LMTP_PORT when given), authenticating and looking up
# users through the daemon whose sockets `auth` and `userdb` are in RUNTIME_DIR, with
# conf-examples/dovecot/mailauthd.lua and conf-examples/dovecot/2.3/conf.d/
# auth-mailauthd.conf.ext as shipped, only paths (and the mail user) substituted. Mail
# lives in DIR/vmail/DOMAIN/NAME/Maildir, owned by nobody. With DV23_POP3_PORT set, POP3
# listens there too.
dv23_conf() {
	local d=$1 run=$2 imap_port=$3 lmtp_port=${4:-} nogroup want
	local adapter_dir=$DV23_REPO/conf-examples/dovecot
	local snippet_src=$adapter_dir/2.3/conf.d/auth-mailauthd.conf.ext
	case $(dovecot --version 2>/dev/null) in
	2.3.*) ;;
	*)
		echo "expected Dovecot 2.3, found '$(dovecot --version 2>/dev/null)'" >&2
		return 1
		;;
	esac
	[ -S "$run/auth" ] || { echo "no auth socket at $run/auth" >&2; return 1; }
	[ -S "$run/userdb" ] || { echo "no userdb socket at $run/userdb" >&2; return 1; }
	nogroup=$(id -gn nobody)
	mkdir -p "$d/run" "$d/state" "$d/vmail"
	chown nobody:"$nogroup" "$d/vmail"
	: >"$d/dovecot.log"

	install -m 0644 "$adapter_dir/mailauthd.lua" "$d/mailauthd.lua"
	sed -e "s#/etc/dovecot/mailauthd.lua#$d/mailauthd.lua#g" \
		-e "s#/run/mailauthd/auth\b#$run/auth#g" \
		-e "s#/run/mailauthd/userdb\b#$run/userdb#g" \
		-e "s#uid=vmail gid=vmail#uid=nobody gid=$nogroup#g" \
		-e "s#/var/vmail/#$d/vmail/#g" \
		"$snippet_src" >"$d/auth-mailauthd.conf.ext"
	for want in "file=$d/mailauthd.lua" "MAILAUTHD_AUTH_SOCKET=$run/auth" \
		"MAILAUTHD_USERDB_SOCKET=$run/userdb" "uid=nobody" "home=$d/vmail/"; do
		grep -qF -- "$want" "$d/auth-mailauthd.conf.ext" || {
			echo "shipped config changed shape: could not substitute '$want'" >&2
			return 1
		}
	done

	{
		cat <<CONF
instance_name = $(basename "$d")
base_dir = $d/run
state_dir = $d/state
log_path = $d/dovecot.log
protocols = imap${DV23_POP3_PORT:+ pop3}${lmtp_port:+ lmtp}
listen = 127.0.0.1
ssl = no
default_internal_user = dovecot
default_login_user = dovenull
auth_verbose = yes
mail_location = maildir:~/Maildir
service imap-login {
  inet_listener imap {
    port = $imap_port
  }
  inet_listener imaps {
    port = 0
  }
}
CONF
		if [ -n "${DV23_POP3_PORT:-}" ]; then
			cat <<CONF
service pop3-login {
  inet_listener pop3 {
    port = $DV23_POP3_PORT
  }
  inet_listener pop3s {
    port = 0
  }
}
CONF
		fi
		if [ -n "$lmtp_port" ]; then
			cat <<CONF
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $lmtp_port
  }
}
CONF
		fi
		echo "!include $d/auth-mailauthd.conf.ext"
	} >"$d/dovecot.conf"
}

# dv23_start DIR: starts the instance of DIR/dovecot.conf and waits (10 s) until it
# listens on its ports and its auth service is up.
dv23_start() {
	local d=$1 ports p up
	ports=$(awk '/inet_listener/ { l = 1 } l && $1 == "port" { if ($3 != 0) print $3; l = 0 }' "$d/dovecot.conf")
	dovecot -c "$d/dovecot.conf" >"$d/start.out" 2>&1 || {
		cat "$d/start.out" >&2
		return 1
	}
	for _ in $(seq 1 100); do
		up=1
		for p in $ports; do
			tcp_port_in_use "$p" || up=
		done
		[ -S "$d/run/auth-userdb" ] || up=
		[ -z "$up" ] || return 0
		sleep 0.1
	done
	echo "Dovecot is not listening on 127.0.0.1:$(echo "$ports" | tr '\n' ' ')" >&2
	return 1
}

# dv23_stop DIR: stops the instance (TERM, then KILL after 5 s); nothing when it is not
# running.
dv23_stop() {
	local d=$1 pid
	[ -f "$d/run/master.pid" ] || return 0
	pid=$(cat "$d/run/master.pid" 2>/dev/null) || return 0
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for _ in $(seq 1 50); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
}

# dv23_log DIR [LINES]: the tail of the instance's log.
dv23_log() {
	echo "--- Dovecot log (tail) ---"
	tail -n "${2:-30}" "$1/dovecot.log" 2>/dev/null || true
}
