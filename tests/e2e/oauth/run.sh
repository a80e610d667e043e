#!/usr/bin/env bash
# End-to-end test of webmail sign-on by token (SASL OAUTHBEARER and XOAUTH2): access
# tokens from a real OpenID provider (the npm package oidc-provider on a loopback port,
# tests/e2e/oidc/provider.mjs, with a second client "webmail"), fetched by
# tests/e2e/oauth/get-token.mjs through the provider's own sign-in pages as a webmail
# would, and used with curl (--oauth2-bearer; OAUTHBEARER) and sasl-login.py (XOAUTH2) on
#   - a private Dovecot 2.3 (IMAP, POP3, ManageSieve) with the shipped Lua adapter, which hands the
#     token to mailauthd's auth socket (conf-examples/dovecot/mailauthd.lua);
#   - a private Dovecot 2.4 (IMAP, POP3, ManageSieve; the Debian 13 tree of
#     tests/e2e/dovecot/make-dovecot-2.4-root.sh) whose token mechanisms ask mailauthd's
#     introspection endpoint (conf-examples/dovecot/2.4/conf.d/auth-mailauthd-oauth2.conf.ext);
#   - a private Postfix (SMTP AUTH on the shipped submissions entry, postfix/common.sh).
# Both kinds of token: JWT access tokens (RFC 9068, requested for a resource, verified by
# mailauthd with the provider's keys) and opaque ones (checked through the provider's
# RFC 7662 introspection).
#
# The mailboxes: alice, bob and carol sign in once at mailauthd's web page (plain HTTP
# through the provider's pages), which provisions them from the staff template; erin
# exists only at the provider; dave is a local mailbox with a password. Then:
#   1. tokens log in through each door, with each mechanism; PLAIN still works;
#   2. refusals, each with its audit reason in the daemon's log: a token for another
#      service's audience (token_audience), a broken signature (token_bad_signature),
#      a malformed JWT (token_malformed), an unknown opaque token (token_inactive),
#      another person's token for alice's mailbox (token_not_for_mailbox), erin's token
#      (token_unbound), bob's on a protocol his mailbox does not allow
#      (protocol_not_allowed);
#   3. the introspection endpoint as Dovecot 2.4 sees it: client authentication (401),
#      no service (400), no-store, the answer's fields;
#   4. carol's mailbox is disabled: her token is refused on the next login
#      (mailbox_disabled) at every door;
#   5. a token is revoked at the provider: refused after the daemon's short cache
#      (token_inactive);
#   6. the provider is stopped: a token the daemon has not seen gets the doors'
#      temporary failures (Postfix 454, Dovecot [UNAVAILABLE] / [SYS/TEMP]), never
#      "authentication failed" (identity_provider_unavailable), while a JWT still logs
#      in with the keys the daemon holds;
#   7. no panic and no token in the daemon's log.
#
#   MAILAUTHD_BIN   the binary to test (default: target/debug/mailauthd; build it first)
#   DOVECOT_ROOT    the Dovecot 2.4 tree (default /srv/trixie-dovecot; built when missing)
#   ARTIFACTS       logs, configs and transcripts go to $ARTIFACTS/oauth (default ci-artifacts)
#   KEEP=1          keep the temporary folders
#
# Needs root (Dovecot, Postfix, chroot). Installs Dovecot 2.3, postfix, swaks, curl,
# node and npm (apt) and the npm packages of tests/e2e/oidc from its lockfile when
# missing; a missing tool is a failure, never a skip. Only loopback addresses are used.
# Prints one "ok - …" / "not ok - …" line per check, then "N passed, N failed"; exits
# non-zero on any failure.

set -euo pipefail
export LC_ALL=C.UTF-8

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
OIDC=$REPO/tests/e2e/oidc
cd "$REPO"
MAILAUTHD_BIN=${MAILAUTHD_BIN:-$REPO/target/debug/mailauthd}
case $MAILAUTHD_BIN in /*) ;; *) MAILAUTHD_BIN=$REPO/$MAILAUTHD_BIN ;; esac
ARTIFACTS=${ARTIFACTS:-$REPO/ci-artifacts}
case $ARTIFACTS in /*) ;; *) ARTIFACTS=$REPO/$ARTIFACTS ;; esac
ART=$ARTIFACTS/oauth
ROOT24=${DOVECOT_ROOT:-/srv/trixie-dovecot}
ROOT24=${ROOT24%/}
ADAPTER_DIR=$REPO/conf-examples/dovecot
# shellcheck source=../lib.sh
. "$REPO/tests/e2e/lib.sh"
# shellcheck source=../postfix/common.sh
. "$REPO/tests/e2e/postfix/common.sh"

[ "$(id -u)" = 0 ] || die "run as root (Dovecot and Postfix need it)"

# --- what the test needs -------------------------------------------------------------

pf_packages
missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
[ -x /usr/sbin/dovecot ] || missing+=(dovecot-core)
[ -e /usr/lib/dovecot/imap ] || missing+=(dovecot-imapd)
[ -e /usr/lib/dovecot/pop3 ] || missing+=(dovecot-pop3d)
[ -e /usr/lib/dovecot/modules/auth/libauthdb_lua.so ] || missing+=(dovecot-auth-lua)
ls /usr/lib/*/lua/*/socket/unix.so >/dev/null 2>&1 || missing+=(lua-socket)
command -v curl >/dev/null 2>&1 || missing+=(curl)
pf_install_missing "${missing[@]}"
pf_dovecot_23
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "Node.js 20 or newer is needed (found $(node --version))"
if [ ! -d "$OIDC/node_modules/oidc-provider" ]; then
	echo "# installing npm packages from package-lock.json"
	(cd "$OIDC" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) ||
		die "npm ci in $OIDC failed"
fi
if [ ! -x "$ROOT24/usr/sbin/dovecot" ] || [ ! -e "$ROOT24/usr/lib/dovecot/pop3" ] ||
	[ ! -e "$ROOT24/usr/lib/dovecot/modules/auth/libauthdb_lua.so" ]; then
	echo "# preparing $ROOT24 with make-dovecot-2.4-root.sh (cached: reused when present)"
	bash "$REPO/tests/e2e/dovecot/make-dovecot-2.4-root.sh" "$ROOT24" >/tmp/mailauthd-oauth-make-root.log 2>&1 ||
		die "make-dovecot-2.4-root.sh $ROOT24" "$(tail -n 20 /tmp/mailauthd-oauth-make-root.log)"
fi
case $(chroot "$ROOT24" dovecot --version 2>/dev/null) in
2.4.*) ;;
*) die "expected Dovecot 2.4 in $ROOT24, found '$(chroot "$ROOT24" dovecot --version 2>&1 | head -n 1)'" ;;
esac
[ -x "$MAILAUTHD_BIN" ] || die "$MAILAUTHD_BIN is missing: run cargo build first (or set MAILAUTHD_BIN)"
echo "# Postfix $POSTFIX_VERSION, Dovecot $(dovecot --version | awk '{print $1}') and $(chroot "$ROOT24" dovecot --version | awk '{print $1}'), node $(node --version), $(curl --version | head -n 1 | awk '{print $1, $2}'), daemon $MAILAUTHD_BIN"

# --- everything this run starts, and the way back --------------------------------------

pf_init oauth
PROVIDER_PID=
# Dovecot 2.3 runs on this machine (folder D23); Dovecot 2.4 in ROOT24 (folder H24 as
# this machine sees it, D24 as the chrooted Dovecot does). mailauthd, on this machine,
# also listens on sockets inside H24, so the chrooted Dovecot reaches them.
D23=$T/dovecot-2.3
mkdir -p "$ROOT24/tmp"
H24=$(mktemp -d "$ROOT24/tmp/mailauthd-oauth.XXXXXX")
D24=${H24#"$ROOT24"}
chmod 0755 "$H24"
mkdir -p "$D23/run" "$D23/state" "$D23/vmail" "$H24/run" "$H24/state" "$H24/vmail" "$H24/sock"
chown nobody:"$DAEMON_GROUP" "$D23/vmail" "$H24/vmail"
chown "$DAEMON_USER:$DAEMON_GROUP" "$H24/sock"

collect_artifacts() {
	mkdir -p "$ART" 2>/dev/null || return 0
	cp -f "$PLOG" "$ART/postfix.log" 2>/dev/null || true
	cp -f "$MD"/mailauthd.log* "$MD_CONF" "$ART/" 2>/dev/null || true
	cp -f "$T"/provider*.log "$T"/tokens-*.json "$ART/" 2>/dev/null || true
	cp -f "$D23/dovecot.log" "$ART/dovecot-2.3.log" 2>/dev/null || true
	cp -f "$D23/dovecot.conf" "$ART/dovecot-2.3.conf" 2>/dev/null || true
	cp -f "$H24/dovecot.log" "$ART/dovecot-2.4.log" 2>/dev/null || true
	cp -f "$H24/dovecot.conf" "$ART/dovecot-2.4.conf" 2>/dev/null || true
	pf_copy_transcripts
}

# dovecot_stop DIR [ROOT]: the Dovecot whose base_dir is DIR/run (its auth processes too).
dovecot_stop() {
	local dir=$1 pid children p
	pid=$(cat "$dir/run/master.pid" 2>/dev/null || true)
	[ -n "$pid" ] || return 0
	children=$(pgrep -P "$pid" 2>/dev/null | tr '\n' ' ' || true)
	stop_pid "$pid"
	for p in $children; do stop_pid "$p" 2; done
	rm -f "$dir/run/master.pid"
}

cleanup() {
	local rc=$?
	set +e
	dovecot_stop "$D23"
	dovecot_stop "$H24"
	stop_pid "$PROVIDER_PID"
	if [ -n "${KEEP:-}" ]; then
		echo "# kept $H24"
	else
		collect_artifacts
		rm -rf "$H24"
	fi
	pf_wind_up "$rc"
}
pf_traps

rm -rf "$ART"
mkdir -p "$ART"
for p in PROVIDER_PORT WEB_PORT SMTP_PORT SUB_PORT SUBS_PORT IMAP23 POP323 SIEVE23 IMAP24 POP324 SIEVE24; do
	pick_port "$p" || die "no free port"
done
BASE=http://127.0.0.1:$WEB_PORT
ISSUER=http://127.0.0.1:$PROVIDER_PORT
CLIENT_SECRET=e2e-client-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
WEBMAIL_SECRET=e2e-webmail-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
DOVECOT_SECRET=e2e-dovecot-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
# Where the provider sends a webmail's users back (Roundcube's callback); nothing needs
# to listen there: get-token.mjs reads the code from the redirect.
WEBMAIL_REDIRECT=http://127.0.0.1:$WEB_PORT/webmail/index.php/login/oauth
# Resource indicators: tokens for MAIL_RESOURCE are JWTs with aud = webmail (what
# mailauthd accepts), for OTHER_RESOURCE JWTs with aud = that URL (another service's).
MAIL_RESOURCE=https://mail.example.org/
OTHER_RESOURCE=https://files.example.org/

# --- the people at the provider ------------------------------------------------------

cat >"$T/accounts.json" <<'EOF'
{
  "alice": { "email": "alice@example.org", "email_verified": true, "name": "Alice", "mailcow_template": "staff" },
  "bob":   { "email": "bob@example.org", "email_verified": true, "name": "Bob", "mailcow_template": "staff" },
  "carol": { "email": "carol@example.org", "email_verified": true, "name": "Carol", "mailcow_template": "staff" },
  "erin":  { "email": "erin@example.org", "email_verified": true, "name": "Erin", "mailcow_template": "staff" }
}
EOF

PROVIDER_STARTS=0
provider_start() {
	PROVIDER_STARTS=$((PROVIDER_STARTS + 1))
	node "$OIDC/provider.mjs" --port "$PROVIDER_PORT" --accounts "$T/accounts.json" \
		--redirect "$BASE/callback" --post-logout "$BASE/?signed-out" --client-secret "$CLIENT_SECRET" \
		--webmail-client webmail --webmail-secret "$WEBMAIL_SECRET" --webmail-redirect "$WEBMAIL_REDIRECT" \
		--resource "$MAIL_RESOURCE" --other-resource "$OTHER_RESOURCE" \
		>"$T/provider-$PROVIDER_STARTS.log" 2>&1 &
	PROVIDER_PID=$!
	wait_for 15 curl -fs -o /dev/null "$ISSUER/.well-known/openid-configuration" ||
		die "the provider did not start" "$(cat "$T/provider-$PROVIDER_STARTS.log")"
}
provider_stop() {
	stop_pid "$PROVIDER_PID"
	PROVIDER_PID=
	! tcp_port_in_use "$PROVIDER_PORT" || die "the provider still listens on $PROVIDER_PORT after it was stopped"
}

# --- mailauthd, as nobody: auth socket for Postfix (queue folder) and both Dovecots -----

md_install "$MAILAUTHD_BIN"
pf_socket_dir
for f in client-secret dovecot-secret; do
	case $f in client-secret) printf '%s\n' "$CLIENT_SECRET" ;; *) printf '%s\n' "$DOVECOT_SECRET" ;; esac >"$MD/$f"
	chown "$DAEMON_USER:$DAEMON_GROUP" "$MD/$f"
	chmod 0600 "$MD/$f"
done

cat >"$MD_CONF" <<EOF
state_directory = "$MD/state"
runtime_directory = "$MD/run"

[store]
url = "sqlite://$MD/state/mailauthd.db"

[credentials]
argon2_memory_kib = 8192
argon2_iterations = 1

# Test-only mode 0666: the Dovecots' auth workers (user dovecot, on this machine and in
# the 2.4 tree) connect.
[auth_socket]
listen = ["unix:$AUTH_SOCK", "unix:$MD/run/auth", "unix:$H24/sock/auth"]
mode = "0666"

[userdb_socket]
listen = ["unix:$MD/run/userdb", "unix:$H24/sock/userdb"]
mode = "0666"

[log]
level = "info"

# Every login here comes from loopback; the refusals this test makes on purpose must not
# slow the checks after them.
[throttle]
enabled = false

[oidc]
display_name = "Example SSO"
issuer = "$ISSUER"
client_id = "mailauthd"
client_secret_file = "$MD/client-secret"
redirect_url = "$BASE/callback"
timeout_ms = 3000

[oauth]
audiences = ["webmail"]
required_scope = "email"
introspection = "auto"
timeout_ms = 2000
# Short, so that a token revoked at the provider is refused within seconds.
cache_seconds = 2

[[oauth.introspection_clients]]
client_id = "dovecot"
client_secret_file = "$MD/dovecot-secret"

[web]
listen = "127.0.0.1:$WEB_PORT"
title = "Example Mail"
mail_host = "mail.example.org"
# The test talks plain HTTP on loopback, without a TLS proxy in front.
secure_cookies = false
EOF

if ! out=$(mdctl config check 2>&1); then
	die "mailauthd config check refuses the test's config ([oauth] and its introspection client)" "$out"
fi
mdctl domain add example.org >/dev/null || die "domain add"
mdctl template add staff --quota 1G --protocols imap,pop3,sieve,smtp >/dev/null || die "template add"
mdctl mapping add staff staff >/dev/null || die "mapping add"
DAVE_PASSWORD=dave-local-password-1
echo "$DAVE_PASSWORD" | mdctl mailbox add dave@example.org --password-stdin >/dev/null || die "mailbox add dave"
provider_start
md_start
md_wait_sockets
wait_unix "$H24/sock/userdb" 10 || die "mailauthd did not open $H24/sock/userdb" "$(tail -n 20 "$MD_LOG")"
wait_for 10 curl -fs -o /dev/null "$BASE/healthz" || die "the web page does not answer" "$(tail -n 20 "$MD_LOG")"
md_is_daemon || die "the pid of mailauthd serve is not the daemon's ($MD_PID)"

# --- Postfix: the private instance, shipped sasl.cf and master.cf.sasl (ports changed) --

pf_sasl_conf
pf_start "$SMTP_PORT" "$SUB_PORT" "$SUBS_PORT"

# --- the two Dovecots, with the shipped adapter and configs (only paths and ports) ------

# dovecot_common NAME DIR IMAP POP3: the settings both versions share.
sieve_listener() { # PORT
	cat <<EOF
protocols = imap pop3 sieve
service managesieve-login {
  inet_listener sieve {
    port = $1
  }
}
EOF
}

dovecot_common() {
	cat <<EOF
instance_name = mailauthd-oauth-$1
base_dir = $2/run
state_dir = $2/state
log_path = $2/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = no
default_internal_user = dovecot
default_login_user = dovenull
auth_verbose = yes
service imap-login {
  inet_listener imap {
    port = $3
  }
  inet_listener imaps {
    port = 0
  }
}
service pop3-login {
  inet_listener pop3 {
    port = $4
  }
  inet_listener pop3s {
    port = 0
  }
}
# Dovecot's own penalty for refused logins would hold each refusal back for seconds.
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
EOF
}

# 2.3: the shipped snippet (mechanisms plain login oauthbearer xoauth2).
install -m 0644 "$ADAPTER_DIR/mailauthd.lua" "$D23/mailauthd.lua"
sed -e "s#/etc/dovecot/mailauthd.lua#$D23/mailauthd.lua#g" \
	-e "s#/run/mailauthd/auth\b#$MD/run/auth#g" \
	-e "s#/run/mailauthd/userdb\b#$MD/run/userdb#g" \
	-e "s#uid=vmail gid=vmail#uid=nobody gid=$DAEMON_GROUP#g" \
	-e "s#/var/vmail/#$D23/vmail/#g" \
	"$ADAPTER_DIR/2.3/conf.d/auth-mailauthd.conf.ext" >"$D23/auth-mailauthd.conf.ext"
for want in "file=$D23/mailauthd.lua" "MAILAUTHD_AUTH_SOCKET=$MD/run/auth" "uid=nobody" \
	"auth_mechanisms = plain login oauthbearer xoauth2"; do
	grep -qF -- "$want" "$D23/auth-mailauthd.conf.ext" ||
		die "the shipped 2.3 config changed shape: no '$want'"
done
{
	dovecot_common 23 "$D23" "$IMAP23" "$POP323"
	# ManageSieve too: the adapter hands its tokens over the same way.
	sieve_listener "$SIEVE23"
	echo "mail_location = maildir:~/Maildir"
	echo "!include $D23/auth-mailauthd.conf.ext"
} >"$D23/dovecot.conf"

# 2.4: the shipped snippet, and the shipped token file with the endpoint's port and secret.
install -m 0644 "$ADAPTER_DIR/mailauthd.lua" "$H24/mailauthd.lua"
sed -e "s#/etc/dovecot/mailauthd.lua#$D24/mailauthd.lua#g" \
	-e "s#/run/mailauthd/auth\b#$D24/sock/auth#g" \
	-e "s#/run/mailauthd/userdb\b#$D24/sock/userdb#g" \
	-e "s#^mail_uid = vmail\$#mail_uid = nobody#" \
	-e "s#^mail_gid = vmail\$#mail_gid = $(chroot "$ROOT24" id -gn nobody)#" \
	-e "s#/var/vmail/#$D24/vmail/#g" \
	"$ADAPTER_DIR/2.4/conf.d/auth-mailauthd.conf.ext" >"$H24/auth-mailauthd.conf.ext"
sed -e "s#http://dovecot:SECRET@127.0.0.1:8080/#http://dovecot:$DOVECOT_SECRET@127.0.0.1:$WEB_PORT/#" \
	"$ADAPTER_DIR/2.4/conf.d/auth-mailauthd-oauth2.conf.ext" >"$H24/auth-mailauthd-oauth2.conf.ext"
grep -qF "127.0.0.1:$WEB_PORT/oauth2/introspect?service=" "$H24/auth-mailauthd-oauth2.conf.ext" ||
	die "the shipped 2.4 token config changed shape: no introspection_url to substitute"
grep -qF "lua_file = $D24/mailauthd.lua" "$H24/auth-mailauthd.conf.ext" ||
	die "the shipped 2.4 config changed shape: no lua_file to substitute"
{
	echo "dovecot_config_version = 2.4.1"
	echo "dovecot_storage_version = 2.4.1"
	dovecot_common 24 "$D24" "$IMAP24" "$POP324"
	# ManageSieve too: Dovecot names the protocol to the introspection endpoint.
	sieve_listener "$SIEVE24"
	echo "mail_driver = maildir"
	echo "mail_path = ~/Maildir"
	echo "!include $D24/auth-mailauthd.conf.ext"
	echo "!include $D24/auth-mailauthd-oauth2.conf.ext"
} >"$H24/dovecot.conf"

dovecot -c "$D23/dovecot.conf" >"$T/dovecot-2.3.start" 2>&1 ||
	die "Dovecot 2.3 did not start" "$(cat "$T/dovecot-2.3.start" "$D23/dovecot.log" 2>/dev/null)"
chroot "$ROOT24" dovecot -c "$D24/dovecot.conf" >"$T/dovecot-2.4.start" 2>&1 ||
	die "Dovecot 2.4 did not start" "$(cat "$T/dovecot-2.4.start" "$H24/dovecot.log" 2>/dev/null)"
for p in "$IMAP23" "$POP323" "$SIEVE23" "$IMAP24" "$POP324" "$SIEVE24"; do
	wait_tcp "$p" 10 || die "Dovecot does not listen on 127.0.0.1:$p" "$(tail -n 20 "$D23/dovecot.log" "$H24/dovecot.log" 2>/dev/null)"
done
echo "# provider $ISSUER, web page $BASE, Dovecot 2.3 IMAP $IMAP23 POP3 $POP323 ManageSieve $SIEVE23, Dovecot 2.4 IMAP $IMAP24 POP3 $POP324 ManageSieve $SIEVE24, Postfix submissions $SUBS_PORT, state in $T"

# --- helpers ---------------------------------------------------------------------------

json() { # $1 = JavaScript expression over j; JSON on stdin
	node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{try{const j=JSON.parse(s);const v=eval(process.argv[1]);console.log(v===undefined||v===null?"":typeof v==="string"?v:JSON.stringify(v))}catch(e){console.log("")}})' "$1"
}
# jwt_claim TOKEN EXPR: EXPR over the JWT's payload (j).
jwt_claim() {
	node -e 'try{const j=JSON.parse(Buffer.from(process.argv[1].split(".")[1],"base64url"));const v=eval(process.argv[2]);console.log(typeof v==="string"?v:JSON.stringify(v))}catch(e){console.log("")}' "$1" "$2"
}

gettok() { # ARGS...: get-token.mjs with the webmail client's settings
	node "$HERE/get-token.mjs" "$@" --issuer "$ISSUER" --client webmail --secret "$WEBMAIL_SECRET" \
		--redirect "$WEBMAIL_REDIRECT"
}

log_mark() { wc -l <"$MD_LOG"; }
log_since() { tail -n "+$(($1 + 1))" "$MD_LOG"; }
# The daemon's decision lines since MARK.
decisions() { log_since "$MARK" | grep ' auth ' || true; }
MARK=0
# saw OUTCOME REASON [ADDRESS]: within 3 s, a decision line since MARK with that outcome
# and reason (and that user, when given). DETAIL: the decision lines seen.
saw() {
	local pattern="outcome=\"?$1\"? reason=\"?$2\"?([[:space:]]|$)"
	for _ in $(seq 1 30); do
		if decisions | grep -E -- "$pattern" | { [ -z "${3:-}" ] && cat || grep -F -- "$3"; } | grep -q .; then
			return 0
		fi
		sleep 0.1
	done
	DETAIL="decision lines since the attempt:
$(decisions | tail -n 5)"
	return 1
}

# dovecot_port VERSION PROTO
dovecot_port() {
	case $1/$2 in
	2.3/imap) echo "$IMAP23" ;; 2.3/pop3) echo "$POP323" ;; 2.3/sieve) echo "$SIEVE23" ;;
	2.4/imap) echo "$IMAP24" ;; 2.4/pop3) echo "$POP324" ;; 2.4/sieve) echo "$SIEVE24" ;;
	esac
}

# tok_login VERSION PROTO MECH USER TOKEN: a token login at that Dovecot; sets RC and OUT
# (the transcript, kept in the transcripts folder). OAUTHBEARER with curl; XOAUTH2 with
# sasl-login.py, since curl 7.88 takes OAUTHBEARER whenever the server offers it.
RC=0 OUT=''
tok_login() {
	local f
	f=$(transcript "dovecot-$1-$2-$3-${4%@*}")
	RC=0
	# curl speaks no ManageSieve.
	if [ "$3" = OAUTHBEARER ] && [ "$2" != sieve ]; then
		curl -v -sS --max-time 30 "$2://127.0.0.1:$(dovecot_port "$1" "$2")/" -u "$4:" --oauth2-bearer "$5" \
			--login-options "AUTH=$3" >"$f" 2>&1 || RC=$?
	else
		python3 "$HERE/sasl-login.py" "$2" 127.0.0.1 "$(dovecot_port "$1" "$2")" "$3" "$4" "$5" >"$f" 2>&1 || RC=$?
	fi
	redact "$f"
	OUT=$(cat "$f")
}
# redact FILE: the client's SASL message (it carries the token) shown as <token>.
redact() {
	sed -i -E -e 's/(AUTHENTICATE [A-Z0-9]+ |AUTH [A-Z0-9]+ )[A-Za-z0-9+\/=]{20,}/\1<token>/' \
		-e 's/^> [A-Za-z0-9+\/=]{20,}$/> <token>/' "$1"
}
pass_login() { # VERSION PROTO USER PASSWORD: PLAIN through the adapter
	local f
	f=$(transcript "dovecot-$1-$2-plain-${3%@*}")
	RC=0
	curl -v -sS --max-time 30 "$2://127.0.0.1:$(dovecot_port "$1" "$2")/" -u "$3:$4" \
		--login-options "AUTH=PLAIN" >"$f" 2>&1 || RC=$?
	OUT=$(cat "$f")
}

# What each Dovecot door says (its own words).
logged_in() { # PROTO: the transcript shows a successful login
	case $1 in
	imap) [ "$RC" = 0 ] && grep -Eq '^< A[0-9]+ OK .*Logged in' <<<"$OUT" ;;
	pop3) [ "$RC" = 0 ] && grep -Eq '^< \+OK Logged in' <<<"$OUT" ;;
	sieve) [ "$RC" = 0 ] && grep -Eq '^< OK "?Logged in' <<<"$OUT" ;;
	esac
}
refused() { # PROTO: "authentication failed", not a temporary failure
	case $1 in
	imap) grep -Eq '^< A[0-9]+ NO \[AUTHENTICATIONFAILED\]' <<<"$OUT" ;;
	pop3) grep -Eq '^< -ERR \[AUTH\] Authentication failed' <<<"$OUT" ;;
	sieve) grep -Eq '^< NO "?Authentication failed' <<<"$OUT" ;;
	esac
}
temp_failed() { # PROTO: the temporary failure
	case $1 in
	imap) grep -Eq '^< A[0-9]+ NO \[UNAVAILABLE\]' <<<"$OUT" ;;
	pop3) grep -Eq '^< -ERR \[SYS/TEMP\]' <<<"$OUT" ;;
	esac
}

# expect_tok_in NAME VERSION PROTO MECH USER TOKEN: logged in, decided ok/token.
expect_tok_in() {
	MARK=$(log_mark)
	tok_login "$2" "$3" "$4" "$5" "$6"
	if ! logged_in "$3"; then
		not_ok "$1 (curl exit $RC)" "$OUT
mailauthd: $(decisions | tail -n 3)"
	elif ! saw ok token "$5"; then
		not_ok "$1 (Dovecot logged in, but no ok/token decision for $5 in mailauthd's log)" "$DETAIL"
	else
		ok "$1"
	fi
	DETAIL=
}
# expect_tok_refused NAME VERSION PROTO MECH USER TOKEN REASON: the door's "authentication
# failed", and mailauthd's decision fail/REASON.
expect_tok_refused() {
	MARK=$(log_mark)
	tok_login "$2" "$3" "$4" "$5" "$6"
	if logged_in "$3" || ! refused "$3"; then
		not_ok "$1 (curl exit $RC; wanted the door's authentication failure)" "$OUT
mailauthd: $(decisions | tail -n 3)"
	elif ! saw fail "$7"; then
		not_ok "$1 (refused, but no fail/$7 decision in mailauthd's log)" "$DETAIL"
	else
		ok "$1"
	fi
	DETAIL=
}
# expect_tok_temp NAME VERSION PROTO MECH USER TOKEN: the door's temporary failure, and
# mailauthd's decision tempfail/identity_provider_unavailable.
expect_tok_temp() {
	MARK=$(log_mark)
	tok_login "$2" "$3" "$4" "$5" "$6"
	if logged_in "$3" || ! temp_failed "$3" || refused "$3"; then
		not_ok "$1 (curl exit $RC; wanted the door's temporary failure, not a refusal)" "$OUT
mailauthd: $(decisions | tail -n 3)"
	elif ! saw tempfail identity_provider_unavailable; then
		not_ok "$1 (temporary failure, but no tempfail/identity_provider_unavailable decision)" "$DETAIL"
	else
		ok "$1"
	fi
	DETAIL=
}

# smtp_tok MECH USER TOKEN: SMTP AUTH on Postfix's submissions port (TLS from the first
# byte), from its own loopback address (curl for OAUTHBEARER, sasl-login.py for
# XOAUTH2); sets SMTP_CODE (the final reply to AUTH) and OUT.
SMTP_CODE=''
smtp_tok() {
	local f n
	f=$(transcript "smtp-$1-${2%@*}")
	n=$(cat "$T/transcripts/.count")
	if [ "$1" = OAUTHBEARER ]; then
		curl -v -sS -k --max-time 30 --interface "127.0.1.$((n % 250 + 1))" "smtps://127.0.0.1:$SUBS_PORT/" \
			-u "$2:" --oauth2-bearer "$3" --login-options "AUTH=$1" >"$f" 2>&1 || true
	else
		python3 "$HERE/sasl-login.py" smtp 127.0.0.1 "$SUBS_PORT" "$1" "$2" "$3" --tls \
			--source "127.0.1.$((n % 250 + 1))" >"$f" 2>&1 || true
	fi
	redact "$f"
	OUT=$(cat "$f")
	SMTP_CODE=$(awk '/^> AUTH / { f = 1; next }
		f && /^< [0-9][0-9][0-9][ -]/ { c = substr($2, 1, 3); if (c != "334") { print c; exit } }' "$f")
}
# expect_smtp NAME MECH USER TOKEN CODE OUTCOME REASON
expect_smtp() {
	MARK=$(log_mark)
	smtp_tok "$2" "$3" "$4"
	if [ "$SMTP_CODE" != "$5" ]; then
		not_ok "$1 (want $5, got ${SMTP_CODE:-nothing})" "$OUT
mailauthd: $(decisions | tail -n 3)"
	elif ! saw "$6" "$7"; then
		not_ok "$1 (Postfix answered $5, but no $6/$7 decision in mailauthd's log)" "$DETAIL"
	else
		ok "$1"
	fi
	DETAIL=
}

# introspect TOKEN [CURL ARGS...]: POST to mailauthd's endpoint as Dovecot 2.4 does;
# sets HTTP_CODE, HTTP_BODY and HTTP_HEADERS. The service goes in the query unless the
# arguments carry their own URL.
introspect() {
	local token=$1 url="$BASE/oauth2/introspect?service=imap"
	shift
	# An URL as the second argument replaces the default one; what follows goes to curl.
	case ${1-} in http*) url=$1 && shift ;; esac
	HTTP_CODE=$(curl -sS -o "$T/introspect.body" -D "$T/introspect.headers" -w '%{http_code}' \
		--max-time 10 -u "dovecot:$DOVECOT_SECRET" --data-urlencode "token=$token" "$@" "$url" 2>&1 || true)
	HTTP_BODY=$(cat "$T/introspect.body" 2>/dev/null || true)
	HTTP_HEADERS=$(tr -d '\r' <"$T/introspect.headers" 2>/dev/null || true)
}

# ======================================================================================
echo "# 0. people sign in once at mailauthd's page; the webmail gets their tokens"

for who in alice bob carol; do
	out=$(gettok site-sign-in --site "$BASE" --login "$who" || true)
	if [ "$(json 'j.address' <<<"$out")" = "$who@example.org" ]; then
		ok "$who signs in at mailauthd's page through the provider; the account page shows $who@example.org"
	else
		not_ok "$who signs in at mailauthd's page through the provider and gets a mailbox" "$out"
	fi
done
mdctl mailbox set bob@example.org --protocols imap >/dev/null || not_ok "mailbox set bob --protocols imap"

declare -A JWT OPAQUE OTHER
for who in alice bob carol erin; do
	gettok sign-in --login "$who" --resource "$MAIL_RESOURCE" --resource "$OTHER_RESOURCE" >"$T/tokens-$who.json" || true
	JWT[$who]=$(json "j.resources['$MAIL_RESOURCE']" <"$T/tokens-$who.json")
	OTHER[$who]=$(json "j.resources['$OTHER_RESOURCE']" <"$T/tokens-$who.json")
	OPAQUE[$who]=$(json 'j.opaque' <"$T/tokens-$who.json")
	if [ -n "${JWT[$who]}" ] && [ -n "${OTHER[$who]}" ] && [ -n "${OPAQUE[$who]}" ]; then
		ok "the webmail signs $who in at the provider and gets a JWT for mail, a JWT for another service and an opaque token"
	else
		not_ok "the webmail signs $who in at the provider and gets its three tokens" "$(cat "$T/tokens-$who.json")"
		JWT[$who]=none OTHER[$who]=none OPAQUE[$who]=none
	fi
done
# The test's own premises: what the provider issued.
DETAIL="claims: $(jwt_claim "${JWT[alice]}" 'j')" check \
	"alice's mail JWT: aud webmail, client_id webmail, sub alice, iss the provider, scope with email" \
	eval '[ "$(jwt_claim "${JWT[alice]}" j.aud)" = webmail ] && [ "$(jwt_claim "${JWT[alice]}" j.sub)" = alice ] &&
		[ "$(jwt_claim "${JWT[alice]}" j.iss)" = "$ISSUER" ] && [ "$(jwt_claim "${JWT[alice]}" j.client_id)" = webmail ] &&
		grep -qw email <<<"$(jwt_claim "${JWT[alice]}" j.scope)"'
DETAIL="claims: $(jwt_claim "${OTHER[alice]}" 'j')" check \
	"alice's other JWT names the other service as its audience" \
	eval '[ "$(jwt_claim "${OTHER[alice]}" j.aud)" = "$OTHER_RESOURCE" ]'
check "alice's opaque token is not JWT-shaped" eval '[ "$(tr -cd . <<<"${OPAQUE[alice]}" | wc -c)" = 0 ]'

# A second opaque token of alice for the revocation (used once before it is revoked), and
# one the daemon never sees until the provider is down.
gettok sign-in --login alice >"$T/tokens-alice-2.json" || true
REVOKE_ME=$(json 'j.opaque' <"$T/tokens-alice-2.json")
gettok sign-in --login alice >"$T/tokens-alice-3.json" || true
UNSEEN=$(json 'j.opaque' <"$T/tokens-alice-3.json")
if [ -n "$REVOKE_ME" ] && [ -n "$UNSEEN" ]; then
	ok "the webmail signs alice in twice more and gets two further opaque tokens"
else
	not_ok "the webmail signs alice in twice more and gets two further opaque tokens" \
		"$(cat "$T/tokens-alice-2.json" "$T/tokens-alice-3.json")"
fi

# ======================================================================================
echo "# 1. tokens log in: Dovecot 2.3 (Lua adapter), Dovecot 2.4 (introspection endpoint), Postfix"

for v in 2.3 2.4; do
	expect_tok_in "Dovecot $v IMAP: OAUTHBEARER with alice's JWT logs in" "$v" imap OAUTHBEARER alice@example.org "${JWT[alice]}"
	expect_tok_in "Dovecot $v IMAP: XOAUTH2 with alice's JWT logs in" "$v" imap XOAUTH2 alice@example.org "${JWT[alice]}"
	expect_tok_in "Dovecot $v IMAP: OAUTHBEARER with alice's opaque token logs in" "$v" imap OAUTHBEARER alice@example.org "${OPAQUE[alice]}"
	expect_tok_in "Dovecot $v IMAP: XOAUTH2 with alice's opaque token logs in" "$v" imap XOAUTH2 alice@example.org "${OPAQUE[alice]}"
	expect_tok_in "Dovecot $v POP3: OAUTHBEARER with alice's JWT logs in" "$v" pop3 OAUTHBEARER alice@example.org "${JWT[alice]}"
	expect_tok_in "Dovecot $v POP3: XOAUTH2 with alice's opaque token logs in" "$v" pop3 XOAUTH2 alice@example.org "${OPAQUE[alice]}"
done
for v in 2.3 2.4; do
	expect_tok_in "Dovecot $v ManageSieve: XOAUTH2 with alice's JWT logs in" "$v" sieve XOAUTH2 alice@example.org "${JWT[alice]}"
	expect_tok_in "Dovecot $v ManageSieve: OAUTHBEARER with alice's opaque token logs in" "$v" sieve OAUTHBEARER alice@example.org "${OPAQUE[alice]}"
	expect_tok_refused "Dovecot $v ManageSieve: bob's token, his mailbox without sieve, is refused (protocol_not_allowed)" \
		"$v" sieve XOAUTH2 bob@example.org "${OPAQUE[bob]}" protocol_not_allowed
done
expect_tok_in "Dovecot 2.3 IMAP: OAUTHBEARER with the second opaque token (revoked later) logs in" 2.3 imap OAUTHBEARER alice@example.org "$REVOKE_ME"
MARK=$(log_mark)
pass_login 2.3 imap dave@example.org "$DAVE_PASSWORD"
DETAIL=$OUT check "Dovecot 2.3 IMAP: PLAIN of a local mailbox through the same adapter still logs in" logged_in imap
pass_login 2.4 imap dave@example.org "$DAVE_PASSWORD"
DETAIL=$OUT check "Dovecot 2.4 IMAP: PLAIN of a local mailbox still logs in (Lua passdb beside the token mechanisms)" logged_in imap
expect_smtp "Postfix: SMTP AUTH OAUTHBEARER with alice's JWT is accepted (235)" OAUTHBEARER alice@example.org "${JWT[alice]}" 235 ok token
expect_smtp "Postfix: SMTP AUTH XOAUTH2 with alice's opaque token is accepted (235)" XOAUTH2 alice@example.org "${OPAQUE[alice]}" 235 ok token

# ======================================================================================
echo "# 2. refusals, with their audit reasons"

# One character in the middle of the signature changed (the last one also carries
# padding bits, so changing it can make the encoding itself invalid).
sig=${JWT[alice]##*.}
mid=$((${#sig} / 2))
case ${sig:mid:1} in A) c=B ;; *) c=A ;; esac
BROKEN_SIG=${JWT[alice]%.*}.${sig:0:mid}$c${sig:mid+1}
for v in 2.3 2.4; do
	expect_tok_refused "Dovecot $v IMAP: a JWT for another service's audience is refused (token_audience)" \
		"$v" imap OAUTHBEARER alice@example.org "${OTHER[alice]}" token_audience
	expect_tok_refused "Dovecot $v IMAP: alice's JWT with a changed signature is refused (token_bad_signature)" \
		"$v" imap OAUTHBEARER alice@example.org "$BROKEN_SIG" token_bad_signature
	expect_tok_refused "Dovecot $v IMAP: three dots of nothing is refused (token_malformed)" \
		"$v" imap XOAUTH2 alice@example.org "e30.e30.e30" token_malformed
	expect_tok_refused "Dovecot $v IMAP: an opaque token the provider never issued is refused (token_inactive)" \
		"$v" imap OAUTHBEARER alice@example.org "never-issued-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')" token_inactive
	expect_tok_refused "Dovecot $v IMAP: erin's token, no mailbox bound to her, is refused (token_unbound)" \
		"$v" imap OAUTHBEARER erin@example.org "${JWT[erin]}" token_unbound
	expect_tok_refused "Dovecot $v POP3: bob's token on POP3, which his mailbox does not allow, is refused (protocol_not_allowed)" \
		"$v" pop3 XOAUTH2 bob@example.org "${OPAQUE[bob]}" protocol_not_allowed
	expect_tok_in "Dovecot $v IMAP: bob's token on IMAP, which his mailbox allows, logs in" "$v" imap XOAUTH2 bob@example.org "${OPAQUE[bob]}"
done
# Dovecot 2.4 compares the name the client gives with the endpoint's username itself; the
# Lua adapter hands both to mailauthd, which refuses the mismatch.
expect_tok_refused "Dovecot 2.3 IMAP: bob's token for alice's mailbox is refused (token_not_for_mailbox)" \
	2.3 imap OAUTHBEARER alice@example.org "${JWT[bob]}" token_not_for_mailbox
MARK=$(log_mark)
tok_login 2.4 imap OAUTHBEARER alice@example.org "${JWT[bob]}"
DETAIL=$OUT check "Dovecot 2.4 IMAP: bob's token for alice's mailbox is refused" eval '! logged_in imap && refused imap'
expect_smtp "Postfix: a JWT for another service's audience is refused (535, token_audience)" OAUTHBEARER alice@example.org "${OTHER[alice]}" 535 fail token_audience
expect_smtp "Postfix: bob's token for alice's mailbox is refused (535, token_not_for_mailbox)" XOAUTH2 alice@example.org "${OPAQUE[bob]}" 535 fail token_not_for_mailbox
expect_smtp "Postfix: bob's token, his mailbox without SMTP, is refused (535, protocol_not_allowed)" OAUTHBEARER bob@example.org "${JWT[bob]}" 535 fail protocol_not_allowed
expect_smtp "Postfix: erin's token is refused (535, token_unbound)" XOAUTH2 erin@example.org "${OPAQUE[erin]}" 535 fail token_unbound

# ======================================================================================
echo "# 3. the introspection endpoint, as Dovecot 2.4 asks it"

introspect "${JWT[alice]}"
DETAIL="$HTTP_CODE $HTTP_BODY" check "the endpoint answers alice's JWT: 200, active true, username alice@example.org" \
	eval '[ "$HTTP_CODE" = 200 ] && [ "$(json j.active <<<"$HTTP_BODY")" = true ] && [ "$(json j.username <<<"$HTTP_BODY")" = alice@example.org ]'
DETAIL=$HTTP_HEADERS check "the endpoint's answers are not to be stored (Cache-Control: no-store)" \
	eval 'grep -qi "^cache-control:.*no-store" <<<"$HTTP_HEADERS"'
introspect "${OTHER[alice]}"
DETAIL="$HTTP_CODE $HTTP_BODY" check "the endpoint answers a token for another audience: 200, active false" \
	eval '[ "$HTTP_CODE" = 200 ] && [ "$(json j.active <<<"$HTTP_BODY")" = false ] && [ -z "$(json j.username <<<"$HTTP_BODY")" ]'
introspect "${JWT[alice]}" -u "dovecot:not-the-secret"
DETAIL="$HTTP_CODE $HTTP_HEADERS" check "a wrong client secret gets 401 with WWW-Authenticate: Basic" \
	eval '[ "$HTTP_CODE" = 401 ] && grep -qi "^www-authenticate: *basic" <<<"$HTTP_HEADERS"'
HTTP_CODE=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 --data-urlencode "token=${JWT[alice]}" \
	"$BASE/oauth2/introspect?service=imap" 2>&1 || true)
expect_eq "no client authentication gets 401" 401 "$HTTP_CODE"
HTTP_CODE=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -u "dovecot:$DOVECOT_SECRET" \
	--data-urlencode "token=${JWT[alice]}" "$BASE/oauth2/introspect" 2>&1 || true)
expect_eq "no service in the query gets 400" 400 "$HTTP_CODE"
introspect "${JWT[alice]}" "$BASE/oauth2/introspect?protocol=pop3"
DETAIL="$HTTP_CODE $HTTP_BODY" check "protocol=pop3 instead of service= is understood (alice: active true)" \
	eval '[ "$HTTP_CODE" = 200 ] && [ "$(json j.active <<<"$HTTP_BODY")" = true ]'
introspect "${JWT[bob]}" "$BASE/oauth2/introspect?service=pop3"
DETAIL="$HTTP_CODE $HTTP_BODY" check "bob's token for POP3, which his mailbox does not allow: active false" \
	eval '[ "$HTTP_CODE" = 200 ] && [ "$(json j.active <<<"$HTTP_BODY")" = false ]'
HTTP_CODE=$(head -c 20000 /dev/zero | tr '\0' a | curl -sS -o /dev/null -w '%{http_code}' --max-time 10 \
	-u "dovecot:$DOVECOT_SECRET" --data-binary @- "$BASE/oauth2/introspect?service=imap" 2>&1 || true)
expect_eq "a body over 16 KiB gets 413" 413 "$HTTP_CODE"

# ======================================================================================
echo "# 4. carol's mailbox is disabled: her token is refused on the next login"

expect_tok_in "before: Dovecot 2.3 IMAP with carol's token logs in" 2.3 imap OAUTHBEARER carol@example.org "${JWT[carol]}"
expect_tok_in "before: Dovecot 2.4 IMAP with carol's token logs in" 2.4 imap OAUTHBEARER carol@example.org "${JWT[carol]}"
mdctl mailbox set carol@example.org --active 0 >/dev/null || not_ok "mailbox set carol --active 0"
expect_tok_refused "Dovecot 2.3 IMAP: carol's token, her mailbox disabled, is refused (mailbox_disabled)" \
	2.3 imap OAUTHBEARER carol@example.org "${JWT[carol]}" mailbox_disabled
expect_tok_refused "Dovecot 2.4 IMAP: carol's token, her mailbox disabled, is refused (mailbox_disabled)" \
	2.4 imap OAUTHBEARER carol@example.org "${JWT[carol]}" mailbox_disabled
expect_tok_refused "Dovecot 2.3 POP3: carol's opaque token is refused too (mailbox_disabled)" \
	2.3 pop3 XOAUTH2 carol@example.org "${OPAQUE[carol]}" mailbox_disabled
expect_smtp "Postfix: carol's token is refused (535, mailbox_disabled)" OAUTHBEARER carol@example.org "${JWT[carol]}" 535 fail mailbox_disabled

# ======================================================================================
echo "# 5. a token revoked at the provider is refused"

out=$(gettok revoke --token "$REVOKE_ME" || true)
DETAIL=$out check "the webmail revokes alice's second opaque token at the provider" eval '[ "$(json j.revoked <<<"$out")" = true ]'
# The daemon keeps a checked token for cache_seconds (2 s here).
sleep 3
expect_tok_refused "Dovecot 2.3 IMAP: the revoked token is refused (token_inactive)" \
	2.3 imap OAUTHBEARER alice@example.org "$REVOKE_ME" token_inactive
expect_tok_refused "Dovecot 2.4 IMAP: the revoked token is refused (token_inactive)" \
	2.4 imap XOAUTH2 alice@example.org "$REVOKE_ME" token_inactive
expect_smtp "Postfix: the revoked token is refused (535, token_inactive)" OAUTHBEARER alice@example.org "$REVOKE_ME" 535 fail token_inactive
expect_tok_in "alice's other opaque token still logs in (Dovecot 2.3 IMAP)" 2.3 imap XOAUTH2 alice@example.org "${OPAQUE[alice]}"

# ======================================================================================
echo "# 6. the provider is stopped: temporary failures, never \"authentication failed\""

provider_stop
expect_tok_temp "Dovecot 2.3 IMAP: a token not seen before gets [UNAVAILABLE]" 2.3 imap OAUTHBEARER alice@example.org "$UNSEEN"
expect_tok_temp "Dovecot 2.3 POP3: the same gets [SYS/TEMP]" 2.3 pop3 XOAUTH2 alice@example.org "$UNSEEN"
# Dovecot 2.4.1 answers every failed introspection request (a 503 too) with the
# client's "authentication failed"; what is checked is that it was not logged in and
# that Dovecot saw the endpoint's temporary failure.
MARK=$(log_mark)
dlog_mark=$(wc -l <"$H24/dovecot.log")
tok_login 2.4 imap OAUTHBEARER alice@example.org "$UNSEEN"
if logged_in imap; then
	not_ok "Dovecot 2.4 IMAP: a token not seen before does not log in" "$OUT"
elif ! tail -n "+$((dlog_mark + 1))" "$H24/dovecot.log" | grep -q 'Introspection failed: 503'; then
	not_ok "Dovecot 2.4 IMAP: not logged in, and Dovecot logs the endpoint's 503" "$(tail -n 10 "$H24/dovecot.log")"
elif ! saw tempfail identity_provider_unavailable; then
	not_ok "Dovecot 2.4 IMAP: not logged in, but no tempfail/identity_provider_unavailable decision" "$DETAIL"
else
	ok "Dovecot 2.4 IMAP: a token not seen before does not log in; the endpoint answered 503 (identity_provider_unavailable), which Dovecot logs"
fi
DETAIL=
expect_smtp "Postfix: the same gets 454 (temporary), not 535" XOAUTH2 alice@example.org "$UNSEEN" 454 tempfail identity_provider_unavailable
introspect "$UNSEEN"
DETAIL="$HTTP_CODE $HTTP_BODY" check "the endpoint answers 503 temporarily_unavailable, not active false" \
	eval '[ "$HTTP_CODE" = 503 ] && [ "$(json j.error <<<"$HTTP_BODY")" = temporarily_unavailable ]'
expect_tok_in "Dovecot 2.3 IMAP: alice's JWT still logs in with the provider's keys the daemon holds" \
	2.3 imap OAUTHBEARER alice@example.org "${JWT[alice]}"
MARK=$(log_mark)
pass_login 2.3 imap dave@example.org "$DAVE_PASSWORD"
DETAIL=$OUT check "Dovecot 2.3 IMAP: dave's password still logs in while the provider is down" logged_in imap
# The provider keeps its tokens in memory: once back, it issues new ones.
provider_start
gettok sign-in --login alice >"$T/tokens-alice-4.json" || true
expect_tok_in "the provider is back: Dovecot 2.3 IMAP with a token it issues now logs in" \
	2.3 imap OAUTHBEARER alice@example.org "$(json 'j.opaque' <"$T/tokens-alice-4.json")"

# ======================================================================================
echo "# 7. the daemon's log"

if grep -qiE 'panicked|stack backtrace' "$MD_LOG"; then
	not_ok "no panic in the daemon's log" "$(grep -iE 'panicked|backtrace' "$MD_LOG")"
else
	ok "no panic in the daemon's log"
fi
leaked=
for who in alice bob carol erin; do
	for t in "${JWT[$who]}" "${OPAQUE[$who]}" "${OTHER[$who]}"; do
		[ "$t" = none ] || ! grep -qF -- "$t" "$MD_LOG" || leaked+=" $who:${t:0:8}…"
	done
done
for s in "$CLIENT_SECRET" "$DOVECOT_SECRET" "$WEBMAIL_SECRET" "$UNSEEN" "$REVOKE_ME"; do
	! grep -qF -- "$s" "$MD_LOG" || leaked+=" ${s:0:8}…"
done
DETAIL="leaked:$leaked" check "no token or client secret in the daemon's log" eval '[ -z "$leaked" ]'

echo "# logs, configs and transcripts in $ART"
summary
