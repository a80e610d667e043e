#!/usr/bin/env bash
# End-to-end test of the Dovecot Lua adapter (conf-examples/dovecot/) against
# real Dovecot: 2.3 as installed on this machine (Debian 12), or 2.4 inside a
# chroot given as DOVECOT_ROOT (see make-dovecot-2.4-root.sh).
#
# Two private Dovecot instances, neither touching /etc/dovecot or /run/dovecot:
#   backend   stands in for mailauthd: only its auth service, with an
#             auth-client socket and an auth-userdb (auth-master) socket over
#             passwd-files of {PLAIN} users;
#   frontend  IMAP and POP3 on 127.0.0.1 (ports from E2E_PORTS, see lib.sh),
#             authenticating through the shipped mailauthd.lua and
#             conf.d/auth-mailauthd.conf.ext for its Dovecot version (only paths and
#             the mail uid/gid substituted).
# A small Perl server then plays mailauthd signalling a temporary failure by
# closing the connection after AUTH, with a Dovecot-2.4-style (v1.3) handshake.
#
# Needs root. On the host it installs the Debian packages it needs when they
# are missing. KEEP=1 keeps the temporary directory (logs, configs).
# Ends with "N passed, N failed"; exits non-zero on any failure.

set -u
export LC_ALL=C

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
ADAPTER_DIR=$REPO/conf-examples/dovecot
ROOT=${DOVECOT_ROOT:-}
ROOT=${ROOT%/}
# shellcheck source=../lib.sh
. "$REPO/tests/e2e/lib.sh"

die() {
	echo "error: $*" >&2
	E2E_FAILED=$((E2E_FAILED + 1))
	summary
	exit 1
}

# Runs a Dovecot tool on the host or inside DOVECOT_ROOT.
run() {
	if [ -n "$ROOT" ]; then
		chroot "$ROOT" "$@"
	else
		"$@"
	fi
}

if [ "$(id -u)" != 0 ]; then
	die "run as root (Dovecot's master process needs it)"
fi

if ! command -v curl >/dev/null 2>&1 || ! perl -MMIME::Base64 -e1 >/dev/null 2>&1; then
	echo "# installing curl perl"
	export DEBIAN_FRONTEND=noninteractive
	{ apt-get update -qq && apt-get install -y -qq curl perl; } >/dev/null ||
		die "apt-get install curl perl failed"
fi
need_install=
for bin in dovecot doveadm doveconf; do
	[ -x "$ROOT/usr/bin/$bin" ] || [ -x "$ROOT/usr/sbin/$bin" ] || need_install=1
done
[ -e "$ROOT/usr/lib/dovecot/modules/auth/libauthdb_lua.so" ] || need_install=1
[ -e "$ROOT/usr/lib/dovecot/imap" ] || need_install=1
[ -e "$ROOT/usr/lib/dovecot/pop3" ] || need_install=1
ls "$ROOT"/usr/lib/*/lua/*/socket/unix.so >/dev/null 2>&1 || need_install=1
if [ -n "$need_install" ]; then
	[ -z "$ROOT" ] || die "$ROOT lacks dovecot-core, dovecot-imapd, dovecot-pop3d, dovecot-auth-lua or lua-socket"
	echo "# installing dovecot-core dovecot-imapd dovecot-pop3d dovecot-auth-lua lua-socket"
	export DEBIAN_FRONTEND=noninteractive
	{ apt-get update -qq && apt-get install -y -qq dovecot-core dovecot-imapd \
		dovecot-pop3d dovecot-auth-lua lua-socket; } >/dev/null ||
		die "apt-get install failed"
fi
for u in dovecot dovenull nobody; do
	run id -u "$u" >/dev/null 2>&1 || die "system user $u missing (Debian's dovecot-core creates dovecot and dovenull)"
done
DOVECOT_UID=$(run id -u dovecot)
DOVECOT_GID=$(run id -g dovecot)
NOGROUP=$(run id -gn nobody)
NOBODY_UID=$(run id -u nobody)
NOBODY_GID=$(run id -g nobody)

DOVECOT_VERSION=$(run dovecot --version 2>/dev/null | head -n1)
case $DOVECOT_VERSION in
2.3.*) V=2.3 ;;
2.4.*) V=2.4 ;;
*) die "unsupported Dovecot version '$DOVECOT_VERSION'" ;;
esac
echo "# Dovecot $DOVECOT_VERSION${ROOT:+ in $ROOT}"

# HT: the temporary directory as the host sees it; T: as Dovecot sees it.
mkdir -p "$ROOT/tmp"
HT=$(mktemp -d "$ROOT/tmp/mailauthd-dovecot-e2e.XXXXXX")
T=${HT#"$ROOT"}
chmod 0755 "$HT"
FAKE_PID=

stop_dovecot() { # conf (as Dovecot sees it)
	[ -f "$ROOT$1" ] || return 0
	local base pid i p children alive
	base=$(run doveconf -c "$1" -h base_dir 2>/dev/null) || return 0
	[ -f "$ROOT$base/master.pid" ] || return 0
	pid=$(cat "$ROOT$base/master.pid" 2>/dev/null)
	[ -n "$pid" ] || return 0
	# Dovecot's auth process outlives its master while clients stay connected;
	# a stopped instance must not answer any more, so its children go too.
	children=$(pgrep -P "$pid" | tr '\n' ' ')
	run dovecot -c "$1" stop >/dev/null 2>&1
	for i in $(seq 1 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null
	for p in $children; do
		kill -TERM "$p" 2>/dev/null
	done
	for i in $(seq 1 50); do
		alive=
		for p in $children; do
			kill -0 "$p" 2>/dev/null && alive=1
		done
		[ -z "$alive" ] && return 0
		sleep 0.1
	done
	for p in $children; do
		kill -KILL "$p" 2>/dev/null
	done
	return 0
}

stop_fake() {
	if [ -n "$FAKE_PID" ]; then
		kill "$FAKE_PID" 2>/dev/null
		wait "$FAKE_PID" 2>/dev/null
		FAKE_PID=
	fi
}

cleanup() {
	stop_dovecot "$T/frontend/dovecot.conf"
	stop_dovecot "$T/backend/dovecot.conf"
	stop_fake
	if [ "${KEEP:-0}" = 1 ]; then
		echo "# kept $HT"
	else
		rm -rf "$HT"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pick_port IMAP_PORT || die "no free port in $E2E_PORTS"
pick_port POP3_PORT || die "no free port in $E2E_PORTS"

mkdir -p "$HT/backend" "$HT/frontend" "$HT/sock" "$HT/vmail" "$HT/homes/bob"
chown "$NOBODY_UID:$NOBODY_GID" "$HT/vmail" "$HT/homes/bob"

###########################################################################
# Backend: Dovecot's auth service standing in for mailauthd.

# passwd-file: user:password:uid:gid:gecos:home:shell:extra fields.
# No uid/gid (mailauthd sends none): the frontend's defaults apply. bob gets a
# home of his own. A login without a domain gets example.org appended, so the
# canonical user= differs from the login name.
cat >"$HT/backend/users.example.org" <<EOF
alice@example.org:{PLAIN}alice-secret::::::userdb_quota_rule=*:bytes=1048576
bob@example.org:{PLAIN}bob-secret::::$T/homes/bob::userdb_quota_rule=*:bytes=2097152
dave@example.org:{PLAIN}dave-secret::::::userdb_quota_rule=*:bytes=4194304
EOF
# A domain whose user file the backend cannot read: its lookups fail
# internally, and Dovecot answers FAIL code=temp_fail (auth) or FAIL (userdb).
echo "carol@broken.example:{PLAIN}carol-secret::::::" >"$HT/backend/users.broken.example"
chown "$DOVECOT_UID" "$HT/backend/users.example.org"
chmod 0400 "$HT/backend/users.example.org"
chmod 0000 "$HT/backend/users.broken.example"

if [ "$V" = 2.3 ]; then
	cat >"$HT/backend/dovecot.conf" <<EOF
instance_name = mailauthd-e2e-backend
base_dir = $T/backend/run
state_dir = $T/backend/state
log_path = $T/backend/dovecot.log
protocols = none
listen = 127.0.0.1
ssl = no
default_internal_user = dovecot
default_login_user = dovenull
auth_mechanisms = plain login
auth_default_realm = example.org
auth_verbose = yes
# Logs each client connection and AUTH line (resp=<hidden>).
auth_debug = yes
passdb {
  driver = passwd-file
  args = scheme=PLAIN $T/backend/users.%d
}
userdb {
  driver = passwd-file
  args = $T/backend/users.%d
}
EOF
else
	cat >"$HT/backend/dovecot.conf" <<EOF
dovecot_config_version = 2.4.1
dovecot_storage_version = 2.4.1
instance_name = mailauthd-e2e-backend
base_dir = $T/backend/run
state_dir = $T/backend/state
log_path = $T/backend/dovecot.log
protocols =
listen = 127.0.0.1
ssl = no
default_internal_user = dovecot
default_login_user = dovenull
auth_mechanisms = plain login
auth_default_domain = example.org
auth_verbose = yes
# Logs each client connection and AUTH line (resp=<hidden>).
auth_debug = yes
passdb passwd-file {
  passwd_file_path = $T/backend/users.%{user | domain}
  default_password_scheme = PLAIN
}
userdb passwd-file {
  passwd_file_path = $T/backend/users.%{user | domain}
}
EOF
fi
cat >>"$HT/backend/dovecot.conf" <<EOF
service auth {
  user = dovecot
  unix_listener auth-client {
    mode = 0660
    user = dovecot
    group = dovecot
  }
  unix_listener auth-userdb {
    mode = 0660
    user = dovecot
    group = dovecot
  }
}
EOF

start_backend() {
	rm -f "$HT/backend/run/auth-client" "$HT/backend/run/auth-userdb"
	run dovecot -c "$T/backend/dovecot.conf" || return 1
	local i
	for i in $(seq 1 100); do
		[ -S "$HT/backend/run/auth-client" ] && [ -S "$HT/backend/run/auth-userdb" ] && return 0
		sleep 0.1
	done
	return 1
}

# The frontend's socket paths are symlinks, so the test can swap servers.
point_sockets_at_backend() {
	ln -sfn "$T/backend/run/auth-client" "$HT/sock/auth.sock"
	ln -sfn "$T/backend/run/auth-userdb" "$HT/sock/userdb.sock"
}

###########################################################################
# Frontend: the shipped adapter and config, paths substituted.

install -m 0644 "$ADAPTER_DIR/mailauthd.lua" "$HT/frontend/mailauthd.lua"
SNIPPET_SRC=$ADAPTER_DIR/$V/conf.d/auth-mailauthd.conf.ext
[ -f "$SNIPPET_SRC" ] || die "missing $SNIPPET_SRC"
sed -e "s#/etc/dovecot/mailauthd.lua#$T/frontend/mailauthd.lua#g" \
	-e "s#/run/mailauthd/auth\b#$T/sock/auth.sock#g" \
	-e "s#/run/mailauthd/userdb\b#$T/sock/userdb.sock#g" \
	-e "s#uid=vmail gid=vmail#uid=nobody gid=$NOGROUP#g" \
	-e "s#^mail_uid = vmail\$#mail_uid = nobody#" \
	-e "s#^mail_gid = vmail\$#mail_gid = $NOGROUP#" \
	-e "s#/var/vmail/#$T/vmail/#g" \
	"$SNIPPET_SRC" >"$HT/frontend/auth-mailauthd.conf.ext"
if [ "$V" = 2.3 ]; then
	WANT="file=$T/frontend/mailauthd.lua|MAILAUTHD_AUTH_SOCKET=$T/sock/auth.sock|MAILAUTHD_USERDB_SOCKET=$T/sock/userdb.sock|uid=nobody|home=$T/vmail/"
else
	WANT="lua_file = $T/frontend/mailauthd.lua|auth_socket = $T/sock/auth.sock|userdb_socket = $T/sock/userdb.sock|mail_uid = nobody|mail_home = $T/vmail/"
fi
IFS='|' read -r -a wants <<<"$WANT"
for want in "${wants[@]}"; do
	grep -qF -- "$want" "$HT/frontend/auth-mailauthd.conf.ext" ||
		die "shipped config changed shape: could not substitute '$want'"
done

{
	if [ "$V" = 2.4 ]; then
		echo "dovecot_config_version = 2.4.1"
		echo "dovecot_storage_version = 2.4.1"
	fi
	cat <<EOF
instance_name = mailauthd-e2e-frontend
base_dir = $T/frontend/run
state_dir = $T/frontend/state
log_path = $T/frontend/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = no
default_internal_user = dovecot
default_login_user = dovenull
auth_verbose = yes
EOF
	if [ "$V" = 2.3 ]; then
		echo "mail_location = maildir:~/Maildir"
	else
		echo "mail_driver = maildir"
		echo "mail_path = ~/Maildir"
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
!include $T/frontend/auth-mailauthd.conf.ext
EOF
} >"$HT/frontend/dovecot.conf"

start_frontend() {
	run dovecot -c "$T/frontend/dovecot.conf" || return 1
	local i
	for i in $(seq 1 100); do
		if tcp_port_in_use "$IMAP_PORT" && tcp_port_in_use "$POP3_PORT" && [ -S "$HT/frontend/run/auth-userdb" ]; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

###########################################################################
# Helpers

# login PROTO USER PASS [curl args...]: sets OUT (verbose transcript) and RC.
login() {
	local proto=$1 user=$2 pass=$3 port
	shift 3
	case $proto in
	imap) port=$IMAP_PORT ;;
	pop3) port=$POP3_PORT ;;
	esac
	OUT=$(curl -v -sS --max-time 30 "$@" -u "$user:$pass" "$proto://127.0.0.1:$port/" 2>&1)
	RC=$?
}

expect_login_ok() { # name proto user pass [curl args]
	local name=$1
	shift
	login "$@"
	if [ "$RC" = 0 ]; then
		ok "$name"
	else
		not_ok "$name (curl exit $RC)" "$OUT"
	fi
}

# curl exits 67 for every refused login: the reply text tells them apart.
expect_login_reply() { # name pattern proto user pass [curl args]
	local name=$1 pattern=$2
	shift 2
	login "$@"
	if [ "$RC" != 0 ] && printf '%s\n' "$OUT" | grep -Eq -- "$pattern"; then
		ok "$name"
	else
		not_ok "$name (curl exit $RC, wanted /$pattern/)" "$OUT"
	fi
}

expect_log() { # name file pattern (the log process may lag a moment)
	local i
	for i in $(seq 1 30); do
		grep -Eq -- "$3" "$2" && break
		sleep 0.1
	done
	if grep -Eq -- "$3" "$2"; then
		ok "$1"
	else
		not_ok "$1 (no /$3/ in $(basename "$2"))" "$(tail -n 15 "$2" 2>/dev/null)"
	fi
}

# The IMAP LOGIN command (curl always uses AUTHENTICATE when offered).
imap_login_command() { # user pass: sets OUT to the server's lines
	local line
	OUT=
	exec 3<>"/dev/tcp/127.0.0.1/$IMAP_PORT" || return 1
	IFS= read -r -t 10 line <&3 && OUT=$line
	printf 'a LOGIN "%s" "%s"\r\n' "$1" "$2" >&3
	while IFS= read -r -t 30 line <&3; do
		line=${line%$'\r'}
		OUT="$OUT"$'\n'"$line"
		case $line in "a "*) break ;; esac
	done
	printf 'b LOGOUT\r\n' >&3
	exec 3<&- 3>&-
}

doveadm_user() { # user: sets OUT and RC
	OUT=$(run doveadm -c "$T/frontend/dovecot.conf" user "$1" 2>&1)
	RC=$?
}

has_field() { # field value-regexp: in OUT (doveadm user output)
	printf '%s\n' "$OUT" | grep -Eq "^$1[[:space:]]+$2\$"
}

###########################################################################
# Phase 1: backend up

start_backend || die "backend Dovecot did not start: $(tail -n 20 "$HT/backend/dovecot.log" 2>/dev/null)"
point_sockets_at_backend
start_frontend || die "frontend Dovecot did not start: $(tail -n 20 "$HT/frontend/dovecot.log" 2>/dev/null)"
echo "# backend sockets in $HT/backend/run, frontend imap=$IMAP_PORT pop3=$POP3_PORT"

expect_login_ok "IMAP AUTHENTICATE PLAIN with the right password logs in" \
	imap alice@example.org alice-secret --login-options AUTH=PLAIN
expect_login_ok "IMAP AUTHENTICATE LOGIN with the right password logs in" \
	imap alice@example.org alice-secret --login-options AUTH=LOGIN
expect_login_ok "IMAP login for a user with a home of his own" \
	imap bob@example.org bob-secret
imap_login_command alice@example.org alice-secret
if printf '%s\n' "$OUT" | grep -q '^a OK .*Logged in'; then
	ok "IMAP LOGIN command with the right password logs in"
else
	not_ok "IMAP LOGIN command with the right password logs in" "$OUT"
fi
imap_login_command alice@example.org wrong-secret
if printf '%s\n' "$OUT" | grep -q '^a NO \[AUTHENTICATIONFAILED\]'; then
	ok "IMAP LOGIN command with a wrong password is refused"
else
	not_ok "IMAP LOGIN command with a wrong password is refused" "$OUT"
fi
expect_login_reply "IMAP wrong password is refused" 'NO \[AUTHENTICATIONFAILED\]' \
	imap alice@example.org wrong-secret
expect_login_reply "IMAP unknown user is refused" 'NO \[AUTHENTICATIONFAILED\]' \
	imap nobody-here@example.org some-secret
expect_login_ok "POP3 with the right password logs in" \
	pop3 alice@example.org alice-secret
expect_login_reply "POP3 wrong password is refused" '-ERR \[AUTH\] Authentication failed' \
	pop3 alice@example.org wrong-secret
expect_login_reply "POP3 unknown user is refused" '-ERR \[AUTH\] Authentication failed' \
	pop3 nobody-here@example.org some-secret

# The backend canonicalises "dave" to dave@example.org; the frontend must
# carry on as that user (user= of the OK reply applied). dave logs in only
# this way, so his log lines come from this test.
expect_login_ok "IMAP login as 'dave' (no domain) is accepted" imap dave dave-secret
expect_log "frontend carries on as the canonical user from the OK reply" \
	"$HT/frontend/dovecot.log" 'imap-login: (Info: )?(Login|Logged in): user=<dave@example\.org>'
if [ -d "$HT/vmail/example.org/dave/Maildir" ]; then
	ok "mail for the canonical user lands in the config's default home"
else
	not_ok "mail for the canonical user lands in the config's default home" "$(find "$HT/vmail" 2>&1)"
fi
if [ -d "$HT/homes/bob/Maildir" ]; then
	ok "a home sent by the userdb socket overrides the default home"
else
	not_ok "a home sent by the userdb socket overrides the default home" "$(find "$HT/homes" 2>&1)"
fi

# Each auth-worker keeps its connection: far fewer connections than AUTHs.
n_conn=$(grep -Ec 'auth: Debug: (.*: )?auth client connected' "$HT/backend/dovecot.log")
n_auth=$(grep -Ec 'auth: Debug: (.*: )?client in: AUTH' "$HT/backend/dovecot.log")
n_workers=$(pgrep -P "$(cat "$HT/frontend/run/master.pid")" -f 'frontend/auth -w' | wc -l)
if [ "$n_auth" -ge 8 ] && [ "$n_conn" -ge 1 ] && [ "$n_conn" -le "$n_workers" ]; then
	ok "auth connections are reused ($n_auth AUTH lines over $n_conn connection(s), $n_workers auth-worker(s))"
else
	not_ok "auth connections are reused ($n_auth AUTH lines over $n_conn connection(s), $n_workers auth-worker(s))" \
		"$(grep -E 'auth client connected|client in: AUTH' "$HT/backend/dovecot.log")"
fi

# FAIL code=temp_fail from the auth socket is a temporary failure.
expect_login_reply "IMAP login the backend cannot check (FAIL code=temp_fail) is a temporary failure" \
	'NO \[UNAVAILABLE\]' imap carol@broken.example carol-secret
expect_login_reply "POP3 login the backend cannot check (FAIL code=temp_fail) is a temporary failure" \
	'-ERR \[SYS/TEMP\]' pop3 carol@broken.example carol-secret

doveadm_user alice@example.org
if [ "$V" = 2.3 ]; then
	# 2.3: the userdb's default_fields supply uid, gid and home.
	if [ "$RC" = 0 ] && has_field quota_rule '\*:bytes=1048576' &&
		has_field home "$T/vmail/example.org/alice" && has_field uid "(nobody|$NOBODY_UID)"; then
		ok "doveadm user shows quota_rule from the userdb socket plus the config's defaults"
	else
		not_ok "doveadm user shows quota_rule from the userdb socket plus the config's defaults (exit $RC)" "$OUT"
	fi
else
	# 2.4: the defaults are the global mail_uid/mail_gid/mail_home settings.
	if [ "$RC" = 0 ] && has_field quota_rule '\*:bytes=1048576'; then
		ok "doveadm user shows quota_rule from the userdb socket"
	else
		not_ok "doveadm user shows quota_rule from the userdb socket (exit $RC)" "$OUT"
	fi
fi
doveadm_user bob@example.org
if [ "$RC" = 0 ] && has_field quota_rule '\*:bytes=2097152' && has_field home "$T/homes/bob"; then
	ok "doveadm user shows the home the userdb socket sent"
else
	not_ok "doveadm user shows the home the userdb socket sent (exit $RC)" "$OUT"
fi
doveadm_user alice
if [ "$RC" = 0 ] && has_field user 'alice@example\.org'; then
	ok "doveadm user takes the canonical user name from the USER reply"
else
	not_ok "doveadm user takes the canonical user name from the USER reply (exit $RC)" "$OUT"
fi
doveadm_user nobody-here@example.org
if [ "$RC" = 67 ] && printf '%s\n' "$OUT" | grep -q "doesn't exist"; then
	ok "doveadm user for an unknown user says it does not exist (exit 67)"
else
	not_ok "doveadm user for an unknown user says it does not exist (exit $RC)" "$OUT"
fi
doveadm_user carol@broken.example
if [ "$RC" = 75 ]; then
	ok "doveadm user whose lookup fails on the backend is a temporary failure (exit 75)"
else
	not_ok "doveadm user whose lookup fails on the backend is a temporary failure (exit $RC)" "$OUT"
fi

###########################################################################
# Phase 2: backend stopped

stop_dovecot "$T/backend/dovecot.conf"
expect_login_reply "IMAP login with the backend stopped is a temporary failure" \
	'NO \[UNAVAILABLE\]' imap alice@example.org alice-secret
expect_login_reply "POP3 login with the backend stopped is a temporary failure" \
	'-ERR \[SYS/TEMP\]' pop3 alice@example.org alice-secret
doveadm_user alice@example.org
if [ "$RC" = 75 ]; then
	ok "doveadm user with the backend stopped is a temporary failure (exit 75)"
else
	not_ok "doveadm user with the backend stopped is a temporary failure (exit $RC)" "$OUT"
fi

###########################################################################
# Phase 3: a scripted auth server (Perl) plays mailauthd on the auth socket;
# the backend answers userdb lookups again. It greets the v1.3 way (MECH..DONE
# only after the client's VERSION) and answers by login name:
#   disabled@…  FAIL code=user_disabled      expired@…  FAIL code=pass_expired
#   tempflag@…  FAIL with the legacy temp flag
#   cont@…      CONT (a SASL round PLAIN with resp= never needs)
#   bobby       a reply for another id first, then OK user=bob@example.org
#   anyone else the connection is closed after AUTH: mailauthd's way of saying
#               "temporary failure" (Postfix turns any FAIL into 535).

cat >"$HT/fake-server.pl" <<'EOF'
use strict;
use warnings;
use IO::Socket::UNIX;
use Socket qw(SOCK_STREAM);
use MIME::Base64 qw(decode_base64);
my ($path, $logfile) = @ARGV;
unlink $path;
my $srv = IO::Socket::UNIX->new(Type => SOCK_STREAM, Local => $path, Listen => 16)
	or die "listen $path: $!";
chmod 0666, $path;
open my $log, '>>', $logfile or die "$logfile: $!";
$log->autoflush(1);
my %kids;
$SIG{TERM} = sub { kill 'TERM', keys %kids; unlink $path; exit 0 };
$SIG{CHLD} = 'IGNORE';
sub serve {
	my ($c) = @_;
	$c->autoflush(1);
	print $c "VERSION\t1\t3\n";
	my $first = <$c>;
	return unless defined $first && $first =~ /^VERSION\t1\t/;
	print $log "C: $first";
	print $c "MECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\nSPID\t$$\nCUID\t1\nCOOKIE\t"
		. ("0" x 32) . "\nDONE\n";
	while (defined(my $l = <$c>)) {
		print $log "C: $l";
		next unless $l =~ /^AUTH\t(\d+)\t/;
		my $id = $1;
		my ($resp) = $l =~ /\tresp=([^\t\n]*)$/;
		my (undef, $user) = split /\0/, decode_base64($resp // '');
		$user //= '';
		if ($user =~ /^disabled@/) {
			print $c "FAIL\t$id\tuser=$user\tcode=user_disabled\n";
		} elsif ($user =~ /^expired@/) {
			print $c "FAIL\t$id\tuser=$user\tcode=pass_expired\n";
		} elsif ($user =~ /^tempflag@/) {
			print $c "FAIL\t$id\tuser=$user\ttemp\n";
		} elsif ($user =~ /^cont@/) {
			print $c "CONT\t$id\t\n";
		} elsif ($user eq 'bobby') {
			print $c "FAIL\t" . ($id + 1000) . "\tuser=someone-else\n";
			print $c "OK\t$id\tuser=bob\@example.org\n";
		} else {
			return;
		}
	}
}
while (1) {
	my $c = $srv->accept or next;
	my $pid = fork;
	if (defined $pid && $pid == 0) {
		%kids = ();
		$SIG{TERM} = 'DEFAULT';
		serve($c);
		close $c;
		exit 0;
	}
	$kids{$pid} = 1 if $pid;
	close $c;
}
EOF
perl "$HT/fake-server.pl" "$HT/fake.sock" "$HT/fake.log" &
FAKE_PID=$!
for i in $(seq 1 50); do [ -S "$HT/fake.sock" ] && break; sleep 0.1; done
start_backend || die "backend Dovecot did not restart"
point_sockets_at_backend
ln -sfn "$T/fake.sock" "$HT/sock/auth.sock"

expect_login_reply "IMAP login when the server closes the connection after AUTH is a temporary failure" \
	'NO \[UNAVAILABLE\]' imap alice@example.org alice-secret --login-options AUTH=PLAIN
expect_login_reply "POP3 login when the server closes the connection after AUTH is a temporary failure" \
	'-ERR \[SYS/TEMP\]' pop3 alice@example.org alice-secret

# What went over the wire, checked field by field. The service parameter is
# service= for Dovecot 2.3 and protocol= for 2.4 (service_key = auto).
SVC_KEY=service
[ "$V" = 2.4 ] && SVC_KEY=protocol
AUTH_LINE=$(grep -m1 -P '^C: AUTH\t' "$HT/fake.log" | sed 's/^C: //')
WANT_RESP=$(printf '\0%s\0%s' alice@example.org alice-secret | base64 -w0)
check_auth_field() { # name regexp
	if printf '%s\n' "$AUTH_LINE" | grep -Pq -- "$2"; then
		ok "AUTH line: $1"
	else
		not_ok "AUTH line: $1" "$(printf '%s' "$AUTH_LINE" | cat -A)"
	fi
}
expect_log "client handshake sends VERSION 1.2 first" "$HT/fake.log" '^C: VERSION	1	2$'
expect_log "client handshake sends CPID" "$HT/fake.log" '^C: CPID	[1-9][0-9]*$'
check_auth_field "AUTH <id> PLAIN $SVC_KEY=imap" "^AUTH\\t[0-9]+\\tPLAIN\\t$SVC_KEY=imap\\t"
check_auth_field "carries secured" '\tsecured\t'
check_auth_field "carries rip and lip" '\tlip=127\.0\.0\.1\trip=127\.0\.0\.1\t'
check_auth_field "ends with resp=base64(NUL user NUL password)" "\\tresp=\\Q$WANT_RESP\\E\$"
if grep -q "$SVC_KEY=pop3" "$HT/fake.log"; then
	ok "AUTH line: POP3 logins carry $SVC_KEY=pop3"
else
	not_ok "AUTH line: POP3 logins carry $SVC_KEY=pop3" "$(cat "$HT/fake.log")"
fi

expect_login_ok "OK user=<canonical> after another id's reply: the login continues as the canonical user" \
	imap bobby bobby-secret
expect_log "frontend logs the canonical user of the OK reply" \
	"$HT/frontend/dovecot.log" 'imap-login: (Info: )?(Login|Logged in): user=<bob@example\.org>.*'
expect_login_reply "FAIL with the temp flag is a temporary failure" \
	'NO \[UNAVAILABLE\]' imap tempflag@example.org some-secret
expect_login_reply "FAIL code=pass_expired is an expired password" \
	'NO \[EXPIRED\]' imap expired@example.org some-secret
expect_log "FAIL code=pass_expired is logged as an expired password" \
	"$HT/frontend/dovecot.log" '\(password expired[,)].*user=<expired@example\.org>'
expect_login_reply "FAIL code=user_disabled is refused" \
	'NO \[AUTHENTICATIONFAILED\]' imap disabled@example.org some-secret
expect_log "FAIL code=user_disabled is logged as a disabled user" \
	"$HT/frontend/dovecot.log" '\(user disabled[,)].*user=<disabled@example\.org>'
expect_login_reply "an unexpected CONT is a temporary failure" \
	'NO \[UNAVAILABLE\]' imap cont@example.org some-secret
expect_login_ok "the connection dropped after CONT is replaced for the next login" \
	imap bobby bobby-secret
# 8 AUTHs; the server closed 2 connections and the adapter dropped one (CONT):
# one more connection per extra auth-worker at most.
n_conn=$(grep -c '^C: VERSION' "$HT/fake.log")
n_workers=$(pgrep -P "$(cat "$HT/frontend/run/master.pid")" -f 'frontend/auth -w' | wc -l)
if [ "$n_conn" -le $((3 + n_workers)) ]; then
	ok "answered requests keep the connection (8 logins over $n_conn connections)"
else
	not_ok "answered requests keep the connection (8 logins over $n_conn connections)" "$(cat "$HT/fake.log")"
fi
stop_fake

###########################################################################
# Phase 4: the backend on the auth socket again; stale connections (the
# scripted server's are closed now) are replaced without an error.

point_sockets_at_backend
expect_login_ok "IMAP login works again once the backend is back" imap alice@example.org alice-secret
expect_login_ok "POP3 login works again once the backend is back" pop3 bob@example.org bob-secret
doveadm_user alice@example.org
if [ "$RC" = 0 ]; then
	ok "doveadm user works again once the backend is back"
else
	not_ok "doveadm user works again once the backend is back (exit $RC)" "$OUT"
fi

stop_dovecot "$T/backend/dovecot.conf"
start_backend || die "backend Dovecot did not restart"
expect_login_ok "IMAP login right after a backend restart reconnects transparently" \
	imap alice@example.org alice-secret
doveadm_user alice@example.org
if [ "$RC" = 0 ]; then
	ok "doveadm user right after a backend restart reconnects transparently"
else
	not_ok "doveadm user right after a backend restart reconnects transparently (exit $RC)" "$OUT"
fi

# The frontend must not have logged Lua errors or crashes.
BAD='Fatal|Panic|lua_pcall|attempt to|stack traceback|invalid return value'
if grep -Eq "$BAD" "$HT/frontend/dovecot.log"; then
	not_ok "frontend log has no Lua errors, fatals or panics" "$(grep -E "$BAD" "$HT/frontend/dovecot.log")"
else
	ok "frontend log has no Lua errors, fatals or panics"
fi

summary
