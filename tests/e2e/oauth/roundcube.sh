#!/usr/bin/env bash
# End-to-end: a real Roundcube signs in by token. Debian's roundcube-core, served by PHP's
# built-in web server on loopback with a private config (its own SQLite database, its
# generic OAuth provider set to the test provider), reads the INBOX through a private
# Dovecot 2.3 (tests/e2e/dovecot/private-23.sh: the shipped Lua adapter and config) and
# sends through a private Postfix (tests/e2e/postfix/common.sh: the shipped sasl.cf and
# master.cf.sasl), both asking mailauthd about the access token Roundcube got from the
# provider (tests/e2e/oidc/provider.mjs, its `webmail` client). Chromium
# (tests/e2e/oidc/browser.mjs, action `roundcube`) does what a person does:
#   1. bob, who has an account at the provider but no mailbox here, follows Roundcube's
#      OAuth login: Dovecot refuses his token (token_unbound) and Roundcube says so;
#   2. alice signs in once on mailauthd's own page, which makes her mailbox and binds it to
#      her account at the provider; a message is put into her INBOX;
#   3. alice follows Roundcube's OAuth login and lands on her INBOX listing, the message
#      listed (IMAP AUTHENTICATE XOAUTH2 through Dovecot, reason token);
#   4. she sends a message to herself: Postfix takes it with SMTP AUTH XOAUTH2 (reason
#      token), delivers it over LMTP into Dovecot, and it is listed in her INBOX.
# Screenshots go to $ARTIFACTS/roundcube/screenshots; the logs of Roundcube, mailauthd,
# Postfix, Dovecot and the provider to $ARTIFACTS/roundcube.
#
#   MAILAUTHD_BIN   the binary to test (default: target/debug/mailauthd; build it first)
#   ARTIFACTS       default: ci-artifacts
#   KEEP=1          keep the temporary folder (configs, logs, databases)
#
# Installs nothing: .ci/run's package step installs roundcube-core, roundcube-sqlite3 and
# php-cli; the suites before this one in .ci/run install Dovecot 2.3 (with LMTP and the Lua
# adapter's packages), Postfix, swaks, chromium and the npm packages of tests/e2e/oidc.
# Anything missing is a failure, never a skip. Needs root. Only loopback
# addresses are used. Prints one "ok - …" / "not ok - …" line per check, then
# "N passed, N failed"; exits non-zero on any failure.

set -euo pipefail
export LC_ALL=C.UTF-8

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
cd "$REPO"
OIDC=$REPO/tests/e2e/oidc
MAILAUTHD_BIN=${MAILAUTHD_BIN:-$REPO/target/debug/mailauthd}
case $MAILAUTHD_BIN in /*) ;; *) MAILAUTHD_BIN=$REPO/$MAILAUTHD_BIN ;; esac
ARTIFACTS=${ARTIFACTS:-$REPO/ci-artifacts}
case $ARTIFACTS in /*) ;; *) ARTIFACTS=$REPO/$ARTIFACTS ;; esac
ART=$ARTIFACTS/roundcube
SHOTS=$ART/screenshots
# Debian's Roundcube: the code, and the folder its web server serves.
RC_SHARE=/usr/share/roundcube
RC_DOCROOT=/var/lib/roundcube/public_html
# shellcheck source=../lib.sh
. "$REPO/tests/e2e/lib.sh"
# shellcheck source=../postfix/common.sh
. "$REPO/tests/e2e/postfix/common.sh"
# shellcheck source=../dovecot/private-23.sh
. "$REPO/tests/e2e/dovecot/private-23.sh"

[ "$(id -u)" = 0 ] || die "run as root (Dovecot and Postfix need it)"

# --- what the test needs (installed by .ci/run) ----------------------------------------

missing=()
{ [ -f "$RC_SHARE/index.php" ] && [ -f "$RC_DOCROOT/index.php" ]; } || missing+=(roundcube-core)
[ -f "$RC_SHARE/SQL/sqlite.initial.sql" ] || missing+=(roundcube-sqlite3)
command -v php >/dev/null 2>&1 || missing+=(php-cli)
php -r 'exit(extension_loaded("pdo_sqlite") ? 0 : 1);' 2>/dev/null || missing+=(php-sqlite3)
[ -x /usr/sbin/dovecot ] || missing+=(dovecot-core)
[ -e /usr/lib/dovecot/imap ] || missing+=(dovecot-imapd)
[ -e /usr/lib/dovecot/lmtp ] || missing+=(dovecot-lmtpd)
[ -e /usr/lib/dovecot/modules/auth/libauthdb_lua.so ] || missing+=(dovecot-auth-lua)
ls /usr/lib/*/lua/*/socket/unix.so >/dev/null 2>&1 || missing+=(lua-socket)
[ -x /usr/sbin/postfix ] || missing+=(postfix)
command -v swaks >/dev/null 2>&1 || missing+=(swaks)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v sqlite3 >/dev/null 2>&1 || missing+=(sqlite3)
[ ${#missing[@]} -eq 0 ] || die "missing packages: ${missing[*]} (.ci/run's package step installs them)"
if [ ! -d "$OIDC/node_modules/oidc-provider" ] || [ ! -d "$OIDC/node_modules/playwright-core" ]; then
	die "no npm packages in $OIDC (run: cd $OIDC && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci)"
fi
[ -x "$MAILAUTHD_BIN" ] || die "$MAILAUTHD_BIN is missing: run cargo build first (or set MAILAUTHD_BIN)"
pf_packages # installs nothing when Postfix and swaks are there; finds master.cf's template
pf_dovecot_23
RC_VERSION=$(dpkg-query -W -f '${Version}' roundcube-core 2>/dev/null || echo unknown)
echo "# Roundcube $RC_VERSION, $(php -r 'echo "PHP ", PHP_VERSION;'), Postfix $POSTFIX_VERSION, Dovecot $(dovecot --version | awk '{print $1}'), node $(node --version), $(/usr/bin/chromium --version 2>/dev/null | head -n 1)"

# --- everything this run starts, and the way back ---------------------------------------

pf_init roundcube
DV=$T/dovecot
RCD=$T/roundcube
PROVIDER_PID=
RC_PID=

collect_artifacts() {
	mkdir -p "$ART" 2>/dev/null || return 0
	cp -f "$PLOG" "$ART/postfix.log" 2>/dev/null || true
	cp -f "$MD_LOG" "$MD_CONF" "$ART/" 2>/dev/null || true
	cp -f "$DV/dovecot.log" "$ART/dovecot.log" 2>/dev/null || true
	cp -f "$T/provider.log" "$T"/browser-*.json "$ART/" 2>/dev/null || true
	cp -f "$RCD/php-server.log" "$ART/roundcube-php-server.log" 2>/dev/null || true
	cp -f "$RCD/config/config.inc.php" "$ART/roundcube-config.inc.php" 2>/dev/null || true
	if [ -d "$RCD/logs" ]; then
		rm -rf "$ART/roundcube-logs"
		cp -r "$RCD/logs" "$ART/roundcube-logs" 2>/dev/null || true
	fi
	pf_copy_transcripts
}

cleanup() {
	local rc=$?
	set +e
	stop_pid "$RC_PID"
	dv23_stop "$DV"
	stop_pid "$PROVIDER_PID"
	pf_wind_up "$rc"
}
pf_traps

rm -rf "$ART"
mkdir -p "$SHOTS"
for v in PROVIDER_PORT WEB_PORT RC_PORT IMAP_PORT LMTP_PORT SMTP_PORT SUB_PORT SUBS_PORT; do
	pick_port "$v" || die "no free port"
done
BASE=http://127.0.0.1:$WEB_PORT
ISSUER=http://127.0.0.1:$PROVIDER_PORT
RC_BASE=http://127.0.0.1:$RC_PORT
# Roundcube sends this as its redirect URI (rcmail_oauth::get_redirect_uri).
RC_REDIRECT=$RC_BASE/index.php/login/oauth
random() { od -An -N12 -tx1 /dev/urandom | tr -d ' \n'; }
CLIENT_SECRET=e2e-client-secret-$(random)
WEBMAIL_SECRET=e2e-webmail-secret-$(random)

json() { # $1 = JavaScript expression over j; JSON on stdin
	node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{try{const j=JSON.parse(s);const v=eval(process.argv[1]);console.log(v===undefined||v===null?"":typeof v==="string"?v:JSON.stringify(v))}catch(e){console.log("")}})' "$1"
}

# --- the provider: mailauthd's client and Roundcube's (webmail) ------------------------

cat >"$T/accounts.json" <<'EOF'
{
  "alice": { "email": "alice@example.org", "email_verified": true, "name": "Alice Example", "mailcow_template": "staff" },
  "bob":   { "email": "bob@example.org", "email_verified": true, "name": "Bob Example", "mailcow_template": "staff" }
}
EOF
node "$OIDC/provider.mjs" --port "$PROVIDER_PORT" --accounts "$T/accounts.json" \
	--redirect "$BASE/callback" --post-logout "$BASE/?signed-out" --client-secret "$CLIENT_SECRET" \
	--webmail-client webmail --webmail-secret "$WEBMAIL_SECRET" --webmail-redirect "$RC_REDIRECT" \
	>"$T/provider.log" 2>&1 &
PROVIDER_PID=$!
wait_for 15 curl -fs -o "$T/discovery.json" "$ISSUER/.well-known/openid-configuration" ||
	die "the provider did not start" "$(cat "$T/provider.log")"
for endpoint in authorization_endpoint token_endpoint userinfo_endpoint; do
	[ -n "$(json "j.$endpoint" <"$T/discovery.json")" ] || die "the provider's discovery names no $endpoint" "$(cat "$T/discovery.json")"
done

# --- mailauthd, as nobody: auth socket for Postfix (queue folder) and Dovecot (run/) -----

md_install "$MAILAUTHD_BIN"
pf_socket_dir
printf '%s\n' "$CLIENT_SECRET" >"$MD/client-secret"
chown "$DAEMON_USER:$DAEMON_GROUP" "$MD/client-secret"
chmod 0600 "$MD/client-secret"
cat >"$MD_CONF" <<EOF
state_directory = "$MD/state"
runtime_directory = "$MD/run"

[store]
url = "sqlite://$MD/state/mailauthd.db"

[credentials]
argon2_memory_kib = 8192
argon2_iterations = 1

$(md_sockets_toml)

[log]
level = "info"

[oidc]
display_name = "Example SSO"
issuer = "$ISSUER"
client_id = "mailauthd"
client_secret_file = "$MD/client-secret"
redirect_url = "$BASE/callback"
timeout_ms = 5000

# Roundcube's access tokens: issued to its client (webmail) at the same provider. The
# provider hands Roundcube opaque tokens, which mailauthd introspects with its own client.
[oauth]
audiences = ["webmail"]
# Roundcube asks for "openid email profile".
required_scope = "email"
introspection = "auto"

[web]
listen = "127.0.0.1:$WEB_PORT"
title = "Example Mail"
mail_host = "mail.example.org"
# The test talks plain HTTP on loopback, without a TLS proxy in front.
secure_cookies = false
EOF
mdctl config check >/dev/null || die "config check failed" "$(mdctl config check 2>&1)"
mdctl domain add example.org >/dev/null || die "domain add"
mdctl template add staff --quota 1G --protocols imap,smtp >/dev/null || die "template add"
mdctl mapping add staff staff >/dev/null || die "mapping add"
md_start
md_wait_sockets
wait_for 10 curl -fs -o /dev/null "$BASE/healthz" || die "mailauthd's web page does not answer" "$(tail -n 20 "$MD_LOG")"

# --- Dovecot 2.3 (IMAP for Roundcube, LMTP for Postfix) through the shipped adapter -----

mkdir -p "$DV"
chmod 0755 "$DV"
dv23_conf "$DV" "$MD/run" "$IMAP_PORT" "$LMTP_PORT" 2>"$T/dv23.err" || die "the Dovecot config" "$(cat "$T/dv23.err")"
dv23_start "$DV" 2>"$T/dv23.err" || die "Dovecot did not start" "$(cat "$T/dv23.err"; dv23_log "$DV")"
imap_caps=$(curl -sS --max-time 10 -v "imap://127.0.0.1:$IMAP_PORT/" 2>&1 | grep -m 1 -E '^< \* OK' || true)
echo "# Dovecot greets: ${imap_caps#< }"

# --- Postfix: the shipped SASL services; mail for example.org goes to Dovecot's LMTP -----

pf_sasl_conf
cat >>"$CONF/main.cf" <<EOF

# ---- this test: mail for example.org is delivered into Dovecot ----
virtual_mailbox_domains = example.org
virtual_transport = lmtp:inet:127.0.0.1:$LMTP_PORT
EOF
pf_start "$SMTP_PORT" "$SUB_PORT" "$SUBS_PORT"

# --- Roundcube: a private config and SQLite database, PHP's built-in web server ---------

mkdir -p "$RCD/config" "$RCD/db" "$RCD/logs" "$RCD/temp"
# Debian's defaults, as shipped; only config.inc.php is this test's.
ln -s /etc/roundcube/defaults.inc.php /etc/roundcube/mimetypes.php "$RCD/config/"
php_str() { # $1 as a PHP single-quoted string
	printf "'%s'" "$(printf '%s' "$1" | sed -e "s/\\\\/\\\\\\\\/g" -e "s/'/\\\\'/g")"
}
cat >"$RCD/config/config.inc.php" <<EOF
<?php
// Written by tests/e2e/oauth/roundcube.sh for one run.
\$config = [];
\$config['db_dsnw'] = $(php_str "sqlite:///$RCD/db/roundcube.db?mode=0600");
\$config['log_driver'] = 'file';
\$config['log_dir'] = $(php_str "$RCD/logs/");
\$config['temp_dir'] = $(php_str "$RCD/temp/");
\$config['des_key'] = $(php_str "$(random)");
\$config['product_name'] = 'Example Webmail';
\$config['skin'] = 'elastic';
\$config['plugins'] = [];
\$config['enable_spellcheck'] = false;
\$config['create_default_folders'] = true;
// Protocol traces (credentials masked) in logs/imap and logs/smtp.
\$config['imap_debug'] = true;
\$config['smtp_debug'] = true;

// Dovecot without TLS on loopback; Postfix's submissions port with its test certificate.
\$config['imap_host'] = $(php_str "127.0.0.1:$IMAP_PORT");
\$config['smtp_host'] = $(php_str "ssl://127.0.0.1:$SUBS_PORT");
\$config['smtp_conn_options'] = ['ssl' => ['verify_peer' => false, 'verify_peer_name' => false]];

// The generic OAuth provider: the endpoints from the provider's discovery document.
\$config['oauth_provider'] = 'generic';
\$config['oauth_provider_name'] = 'Example SSO';
\$config['oauth_client_id'] = 'webmail';
\$config['oauth_client_secret'] = $(php_str "$WEBMAIL_SECRET");
\$config['oauth_auth_uri'] = $(php_str "$(json j.authorization_endpoint <"$T/discovery.json")");
\$config['oauth_token_uri'] = $(php_str "$(json j.token_endpoint <"$T/discovery.json")");
\$config['oauth_identity_uri'] = $(php_str "$(json j.userinfo_endpoint <"$T/discovery.json")");
\$config['oauth_scope'] = 'openid email profile';
\$config['oauth_identity_fields'] = ['email'];
EOF
chown -R "$DAEMON_USER:$DAEMON_GROUP" "$RCD/db" "$RCD/logs" "$RCD/temp"
chmod 0644 "$RCD/config/config.inc.php"
as_daemon sqlite3 "$RCD/db/roundcube.db" <"$RC_SHARE/SQL/sqlite.initial.sql" ||
	die "Roundcube's SQLite schema did not load"
# PHP's built-in server as the daemon user, the Debian document root, the private config.
env "ROUNDCUBE_CONFIG_DIR=$RCD/config" setpriv --reuid="$DAEMON_USER" --regid="$DAEMON_GROUP" --clear-groups -- \
	php -S "127.0.0.1:$RC_PORT" -t "$RC_DOCROOT" >"$RCD/php-server.log" 2>&1 &
RC_PID=$!
wait_for 15 curl -fs -o /dev/null "$RC_BASE/" || die "Roundcube does not answer on $RC_BASE" "$(tail -n 20 "$RCD/php-server.log")"
echo "# provider $ISSUER, mailauthd $BASE, Roundcube $RC_BASE, Dovecot IMAP 127.0.0.1:$IMAP_PORT, Postfix submissions 127.0.0.1:$SUBS_PORT, state in $T"

# --- helpers ---------------------------------------------------------------------------

browser() { # $1 = action, $2 = screenshot prefix, rest = options; the JSON kept as browser-$2.json
	local action=$1 prefix=$2 base=$BASE
	shift 2
	[ "$action" != roundcube ] || base=$RC_BASE
	node "$OIDC/browser.mjs" "$action" --base "$base" --shots "$SHOTS" --prefix "$prefix" "$@" \
		>"$T/browser-$prefix.json" 2>"$T/browser-$prefix.err" ||
		echo '{"error":"the browser driver failed"}' >"$T/browser-$prefix.json"
	cat "$T/browser-$prefix.json"
}

# audit SERVICE USER OUTCOME REASON: waits (5 s) for that decision line in mailauthd's log.
audit() {
	local pattern="service=\"?$1\"? user=\"?$2\"? .*outcome=\"?$3\"? reason=\"?$4\"?( |$)"
	# shellcheck disable=SC2034 # shown by check when the line does not come
	DETAIL=$(grep 'outcome=' "$MD_LOG" | tail -n 8)
	wait_for 5 grep -qE -- "$pattern" "$MD_LOG"
}

# --- 1. no mailbox bound to bob's account: his token is refused -------------------------

page=$(curl -fsS "$RC_BASE/" 2>&1 || true)
DETAIL=$page check "Roundcube's login page offers \"Login with Example SSO\" (oauth_provider generic)" \
	grep -qF 'Login with Example SSO' <<<"$page"

out=$(browser roundcube 1-bob-unbound --login bob)
DETAIL=$out check "bob signs in at the provider from Roundcube and is sent back to its login page, not into a mailbox" \
	eval '[ "$(json "j.inbox.loggedIn" <<<"$out")" = false ] && [ "$(json "j.inbox.loginButton" <<<"$out")" = true ]'
check "Dovecot asked mailauthd about bob's token: refused, token_unbound (no mailbox is bound to his account)" \
	audit imap bob@example.org fail token_unbound

# --- 2. alice's first sign-in at mailauthd's page makes and binds her mailbox ----------

out=$(browser signin 2-alice-first-sign-in --login alice)
show=$(mdctl --json mailbox show alice@example.org 2>&1 || true)
DETAIL="$out
$show" check "alice's first sign-in on mailauthd's page makes alice@example.org, bound to her account at the provider" \
	eval '[ "$(json j.address <<<"$out")" = alice@example.org ] && [ "$(json j.mailbox.oidc_subject <<<"$show")" = alice ]'

# A message waiting in her INBOX, put straight into the Maildir (as any delivery would).
SEEDED="Welcome aboard $(random)"
inbox=$DV/vmail/example.org/alice/Maildir
mkdir -p "$inbox/new" "$inbox/cur" "$inbox/tmp"
cat >"$inbox/new/$(date +%s).seed.mail.test" <<EOF
From: Postmaster <postmaster@example.org>
To: alice@example.org
Subject: $SEEDED
Date: $(date -R)
Message-ID: <seed-$(random)@example.org>

Your mailbox is ready.
EOF
chown -R "$DAEMON_USER:$DAEMON_GROUP" "$DV/vmail/example.org"

# --- 3 and 4. Roundcube by token: the INBOX through Dovecot, a message through Postfix --

SENT="Sent by token $(random)"
pf_log_mark=$(wc -l <"$PLOG" 2>/dev/null || echo 0)
out=$(browser roundcube 3-alice-roundcube --login alice --to alice@example.org --subject "$SENT")
DETAIL=$out check "alice follows Roundcube's OAuth login, signs in at the provider and lands on her INBOX listing" \
	eval '[ "$(json j.inbox.loggedIn <<<"$out")" = true ]'
DETAIL=$out check "the INBOX listing (read through Dovecot with her token) shows the message put there" \
	eval 'grep -qF "$SEEDED" <<<"$(json j.inbox.messages <<<"$out")"'
check "Dovecot's IMAP login of alice went through mailauthd by token (imap, XOAUTH2, ok, reason token)" \
	audit imap alice@example.org ok token
DETAIL=$(tail -n 5 "$DV/dovecot.log") check \
	"Dovecot logged alice in with method=XOAUTH2 (Roundcube's own trace masks the command)" \
	grep -qE 'imap-login: Info: Login: user=<alice@example\.org>, method=XOAUTH2' "$DV/dovecot.log"

DETAIL=$out check "Roundcube says the message was sent" \
	eval 'grep -qi "sent successfully" <<<"$(json j.sendNotice <<<"$out")"'
check "Postfix's SMTP AUTH of alice went through mailauthd by token (smtp, ok, reason token)" \
	audit smtp alice@example.org ok token
pf_new=$(tail -n "+$((pf_log_mark + 1))" "$PLOG" 2>/dev/null || true)
DETAIL=$pf_new check "Postfix logged the submission as sasl_method=XOAUTH2, sasl_username=alice@example.org" \
	grep -qE 'sasl_method=XOAUTH2, sasl_username=alice@example\.org' <<<"$pf_new"
queue_id=$(grep -E 'sasl_username=alice@example\.org' <<<"$pf_new" | head -n 1 |
	sed -nE 's/.*: ([0-9A-Za-z]+): client=.*/\1/p' || true)
delivered() { # the queue id's delivery over LMTP to Dovecot, in Postfix's log
	grep -qE "$queue_id: to=<alice@example\.org>.*relay=127\.0\.0\.1\[127\.0\.0\.1\]:$LMTP_PORT.*status=sent" "$PLOG"
}
DETAIL=$pf_new check "Postfix delivered that message (queue id ${queue_id:-none}) over LMTP into Dovecot (status=sent)" \
	eval '[ -n "$queue_id" ] && wait_for 10 delivered'
DETAIL=$out check "the sent message is listed in alice's INBOX in Roundcube" \
	eval 'grep -qF "$SENT" <<<"$(json j.inboxAfterSend.messages <<<"$out")"'
DETAIL=$out check "Roundcube saved its copy in the Sent folder (IMAP APPEND by token)" \
	eval 'grep -qF "$SENT" <<<"$(json j.sentFolder.messages <<<"$out")"'
# Taken only once Roundcube listed the INBOX after sending.
check "the screenshot of the INBOX with the sent message is in \$ARTIFACTS/roundcube/screenshots" \
	eval 'ls "$SHOTS"/3-alice-roundcube-*-rc-inbox-after-send.png >/dev/null 2>&1'

# --- the daemon's log -------------------------------------------------------------------

if grep -qiE 'panicked|stack backtrace' "$MD_LOG"; then
	not_ok "no panic in the daemon log" "$(grep -iE 'panicked|backtrace' "$MD_LOG")"
else
	ok "no panic in the daemon log"
fi
# Roundcube's XOAUTH2 message carries "auth=Bearer <token>"; none of it belongs in a log.
if grep -qiE 'bearer|auth=' "$MD_LOG" || grep -qF "$WEBMAIL_SECRET" "$MD_LOG"; then
	not_ok "no token or client secret in the daemon log" "$(grep -iE 'bearer|auth=' "$MD_LOG" | head -n 5)"
else
	ok "no token or client secret in the daemon log"
fi

echo "# screenshots in $SHOTS"
summary
