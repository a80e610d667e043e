#!/usr/bin/env bash
# End-to-end test of OIDC sign-in, provisioning and the app-password page, with a real
# OpenID provider (the npm package oidc-provider on loopback ports) and a real browser
# (Debian's chromium, driven by playwright-core; never a downloaded browser). Also reloads
# the daemon (SIGHUP) with a changed [oidc] section while an auth-socket connection stays
# open (held by held-auth-conn.py, python3), and with a broken config file. Sets up an
# Apple device (a signed profile, read back with openssl and python3's plistlib) and an
# Android one (its QR code decoded with zbarimg) on the device page.
#
#   MAILAUTHD_BIN   the binary to test (default: target/debug/mailauthd; build it first)
#   ARTIFACTS       screenshots go to $ARTIFACTS/screenshots (default: ci-artifacts)
#   KEEP=1          keep the temporary folder (configs, logs, database)
#
# Installs chromium, openssl, python3, zbar-tools (apt) and the npm packages from the committed lockfile
# when they are missing. Only loopback addresses are used. Ends with "N passed, N failed";
# exits non-zero on any failure.

set -euo pipefail
export LC_ALL=C.UTF-8

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
MAILAUTHD_BIN=${MAILAUTHD_BIN:-$REPO/target/debug/mailauthd}
case $MAILAUTHD_BIN in /*) ;; *) MAILAUTHD_BIN=$REPO/$MAILAUTHD_BIN ;; esac
ARTIFACTS=${ARTIFACTS:-$REPO/ci-artifacts}
case $ARTIFACTS in /*) ;; *) ARTIFACTS=$REPO/$ARTIFACTS ;; esac
SHOTS=$ARTIFACTS/screenshots
# shellcheck source=../lib.sh
. "$REPO/tests/e2e/lib.sh"

PIDS=()

SUMMARY_PRINTED=
finish() {
	SUMMARY_PRINTED=1
	summary
}

die() {
	echo "error: $*" >&2
	E2E_FAILED=$((E2E_FAILED + 1))
	finish || exit 1
}

cleanup() {
	local status=$? pid
	if [ -z "$SUMMARY_PRINTED" ]; then
		echo "error: stopped early (exit status $status); see the lines above" >&2
		echo "$E2E_PASSED passed, $((E2E_FAILED + 1)) failed"
	fi
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [ -n "${TMP:-}" ]; then
		if [ "${KEEP:-}" = 1 ]; then
			echo "# kept $TMP"
		else
			rm -rf "$TMP"
		fi
	fi
}
trap cleanup EXIT

# --- what the test needs -------------------------------------------------------------

need_apt=()
[ -x /usr/bin/chromium ] || need_apt+=(chromium fonts-dejavu-core)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v zbarimg >/dev/null 2>&1 || need_apt+=(zbar-tools)
if [ "${#need_apt[@]}" -gt 0 ]; then
	echo "# installing ${need_apt[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "Node.js 20 or newer is needed (found $(node --version))"
if [ ! -d "$HERE/node_modules/oidc-provider" ] || [ ! -d "$HERE/node_modules/playwright-core" ]; then
	echo "# installing npm packages from package-lock.json"
	(cd "$HERE" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi
[ -x "$MAILAUTHD_BIN" ] || die "$MAILAUTHD_BIN is missing: run cargo build first (or set MAILAUTHD_BIN)"

TMP=$(mktemp -d /tmp/mailauthd-e2e-oidc.XXXXXX)
# Test-only: Dovecot's auth-worker user must reach the sockets in $TMP/run.
chmod 0711 "$TMP"
mkdir -p "$TMP/state" "$SHOTS"
rm -f "$SHOTS"/*.png

pick_port PROVIDER_PORT || die "no free port"
pick_port TLS_PORT || die "no free port"
pick_port WEB_PORT || die "no free port"
BASE=http://127.0.0.1:$WEB_PORT
ISSUER=http://127.0.0.1:$PROVIDER_PORT
TLS_ISSUER=https://127.0.0.1:$TLS_PORT
CLIENT_SECRET=e2e-client-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
printf '%s\n' "$CLIENT_SECRET" >"$TMP/client-secret"
chmod 600 "$TMP/client-secret"

# --- the people at the provider ------------------------------------------------------

write_accounts() { # $1 = alice's template, [$2 = alice's display name]
	cat >"$TMP/accounts.json" <<EOF
{
  "alice": { "email": "Alice@Example.org", "email_verified": true, "name": "${2:-Alice Example}", "mailcow_template": "$1" },
  "bob":   { "email": "bob@nowhere.example", "email_verified": true, "name": "Bob", "mailcow_template": "staff" },
  "carol": { "email": "carol@example.org", "email_verified": true, "name": "Carol", "mailcow_template": ["guests", "visitors"] },
  "dave":  { "email": "dave@full.example", "email_verified": true, "name": "Dave", "mailcow_template": "staff" },
  "erin":  { "email": "erin@example.org", "email_verified": true, "name": "Erin", "mailcow_template": "staff" },
  "frank": { "email": "frank@example.org", "email_verified": false, "name": "Frank", "mailcow_template": "staff" },
  "gina":  { "email": "Gina@Bücher.example", "email_verified": "true", "name": "Gina", "mailcow_template": ["visitors", "staff"] },
  "hank":  { "email": "hank@example.org", "email_verified": true, "name": "Hank", "mailcow_template": "staff", "department": "lab" },
  "ivy":   { "email": "ivy@example.org", "email_verified": true, "name": "Ivy", "mailcow_template": "staff", "department": "lab" },
  "jack":  { "email": "jack@example.org", "name": "Jack", "mailcow_template": "staff" },
  "kim":   { "email": "\u212Aim@example.org", "email_verified": true, "name": "Kim", "mailcow_template": "staff" }
}
EOF
}
write_accounts staff

# --- mailauthd -----------------------------------------------------------------------

# Apple profiles are signed with this (test-only, self-signed) certificate, which is also
# the trust anchor the profile is verified against.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=mailauthd e2e profiles" \
	-keyout "$TMP/profile.key" -out "$TMP/profile.crt" >/dev/null 2>&1
chmod 600 "$TMP/profile.key"

write_config() { # $1 = file, $2 = issuer, $3 = ignore_tls_errors, [$4 = display_name], [$5 = more [oidc] lines]
	cat >"$1" <<EOF
state_directory = "$TMP/state"
runtime_directory = "$TMP/run"

[store]
url = "sqlite://$TMP/state/mailauthd.db"

[credentials]
argon2_memory_kib = 8192
argon2_iterations = 1

# Test-only: Dovecot's auth-worker user (dovecot) connects for the IMAP login hook.
[auth_socket]
mode = "0666"

[userdb_socket]
mode = "0666"

[log]
level = "info"

[oidc]
display_name = "${4:-Example SSO}"
issuer = "$2"
client_id = "mailauthd"
client_secret_file = "$TMP/client-secret"
redirect_url = "$BASE/callback"
ignore_tls_errors = $3
timeout_ms = 5000
${5:-}

[web]
listen = "127.0.0.1:$WEB_PORT"
title = "Example Mail"
mail_host = "mail.example.org"
# The test talks plain HTTP on loopback, without a TLS proxy in front.
secure_cookies = false

# Device setup: the servers default to web.mail_host on the standard ports.
[clients]
profile_certificate = "$TMP/profile.crt"
profile_key = "$TMP/profile.key"
EOF
}
write_config "$TMP/config.toml" "$ISSUER" false
export MAILAUTHD_CONFIG=$TMP/config.toml

m() { "$MAILAUTHD_BIN" "$@"; }

json() { # $1 = JavaScript expression over j; JSON on stdin
	node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{try{const j=JSON.parse(s);const v=eval(process.argv[1]);console.log(v===undefined||v===null?"":typeof v==="string"?v:JSON.stringify(v))}catch(e){console.log("")}})' "$1"
}

m config check >/dev/null || die "config check failed"
m domain add example.org --max-mailboxes 10 --max-quota 10G >/dev/null
m domain add full.example --max-mailboxes 1 >/dev/null
m domain add bücher.example >/dev/null
m template add staff --quota 2G --protocols imap,pop3,smtp >/dev/null
m template add students --quota 1G --protocols imap,pop3 >/dev/null
m mapping add staff staff >/dev/null
m mapping add students students >/dev/null
echo 'filler-password-1' | m mailbox add filler@full.example --password-stdin >/dev/null
echo 'erin-local-password-1' | m mailbox add erin@example.org --password-stdin >/dev/null

node "$HERE/provider.mjs" --port "$PROVIDER_PORT" --accounts "$TMP/accounts.json" \
	--redirect "$BASE/callback" --post-logout "$BASE/?signed-out" \
	--client-secret "$CLIENT_SECRET" >"$TMP/provider.log" 2>&1 &
PIDS+=($!)
"$MAILAUTHD_BIN" serve >"$TMP/mailauthd.log" 2>&1 &
DAEMON_PID=$!
PIDS+=("$DAEMON_PID")

wait_http() { # $1 = URL: up to 10 s
	wait_for 10 curl -fsk -o /dev/null "$1" 2>/dev/null
}
wait_http "$ISSUER/.well-known/openid-configuration" || die "provider did not start: $(cat "$TMP/provider.log")"
wait_http "$BASE/healthz" || die "mailauthd did not start: $(cat "$TMP/mailauthd.log")"

browser() { # $1 = action, $2 = screenshot prefix, rest = options
	local action=$1 prefix=$2
	shift 2
	node "$HERE/browser.mjs" "$action" --base "$BASE" --shots "$SHOTS" --prefix "$prefix" "$@" ||
		echo '{"error":"the browser driver failed"}'
}

mailbox_count() { m --json mailbox list 2>/dev/null | json 'j.length'; }

# --- health --------------------------------------------------------------------------

if [ "$(curl -fsS "$BASE/healthz")" = ok ] && [ "$(curl -fsS "$BASE/readyz")" = ready ]; then
	ok "/healthz and /readyz answer"
else
	not_ok "/healthz and /readyz answer"
fi

# --- idp test against the real provider ----------------------------------------------

if out=$(m idp test 2>&1) && grep -q '✓ token endpoint' <<<"$out" && grep -q 'invalid_grant' <<<"$out"; then
	ok "idp test passes against the provider (client credentials proven with invalid_grant)"
else
	not_ok "idp test passes against the provider" "$out"
fi
write_config "$TMP/wrong-secret.toml" "$ISSUER" false
sed -i "s|client_secret_file = .*|client_secret = \"not-the-secret\"|" "$TMP/wrong-secret.toml"
if out=$(m --config "$TMP/wrong-secret.toml" idp test 2>&1); then
	not_ok "idp test fails with a wrong client secret" "$out"
elif grep -q '✗ token endpoint' <<<"$out" && grep -q 'invalid_client' <<<"$out"; then
	ok "idp test names a wrong client secret (invalid_client)"
else
	not_ok "idp test names a wrong client secret (invalid_client)" "$out"
fi

# --- first sign-in creates the mailbox from the template -----------------------------

out=$(browser signin 01-alice-first --login alice)
show=$(m --json mailbox show alice@example.org 2>&1 || true)
if [ "$(json 'j.address' <<<"$out")" = alice@example.org ] &&
	[ "$(json 'j.mailbox.quota' <<<"$show")" = 2147483648 ] &&
	[ "$(json 'j.mailbox.template' <<<"$show")" = staff ] &&
	[ "$(json 'j.mailbox.auth_source' <<<"$show")" = oidc ] &&
	[ "$(json 'j.mailbox.oidc_subject' <<<"$show")" = alice ]; then
	ok "first sign-in creates alice@example.org with the staff template's quota (2G), bound to the subject"
else
	not_ok "first sign-in creates the mailbox from the template" "$out
$show"
fi

out=$(browser signin 01b-gina-idn --login gina --replay)
if [ "$(json 'j.address' <<<"$out")" = gina@xn--bcher-kva.example ] &&
	[ "$(m --json mailbox show gina@xn--bcher-kva.example | json 'j.mailbox.template')" = staff ]; then
	ok "an upper-case address in an IDN domain (and a template list) becomes gina@xn--bcher-kva.example"
else
	not_ok "an upper-case address in an IDN domain is canonicalised" "$out"
fi
if [ "$(json 'j.replay.reason' <<<"$out")" = "This sign-in has expired or was already used. Please start again." ]; then
	ok "a replayed callback (same code and state) gets a clear page"
else
	not_ok "a replayed callback gets a clear page" "$out"
fi

# --- an app password made on the page works for IMAP only ----------------------------

out=$(browser app-password 02-alice-app-password --login alice --name laptop --protocols imap)
secret=$(json 'j.secret || ""' <<<"$out")
if [[ $secret =~ ^[a-z]{4}(-[a-z]{4}){4}$ ]] && grep -q 'mail.example.org' <<<"$(json 'j.settings' <<<"$out")"; then
	ok "the page creates an app password and shows it once with client settings"
else
	not_ok "the page creates an app password" "$out"
fi
if [ "$(json 'j.copyButton' <<<"$out")" = true ]; then
	ok "the copy button's script runs under the page's CSP (allowed by its hash) and shows the button"
else
	not_ok "the copy button's script runs under the page's CSP" "$out"
fi
if [ -n "$secret" ] && printf '%s\n' "$secret" | m auth test alice@example.org --service imap --rip 192.0.2.7 >"$TMP/auth-imap.txt" 2>&1; then
	ok "auth test accepts the app password for imap"
else
	not_ok "auth test accepts the app password for imap" "$(cat "$TMP/auth-imap.txt")"
fi
if [ -z "$secret" ] || printf '%s\n' "$secret" | m auth test alice@example.org --service pop3 >"$TMP/auth-pop3.txt" 2>&1; then
	not_ok "auth test refuses the app password for pop3" "$(cat "$TMP/auth-pop3.txt" 2>/dev/null)"
elif grep -q app_password_protocol "$TMP/auth-pop3.txt"; then
	ok "auth test refuses the app password for pop3 (app_password_protocol)"
else
	not_ok "auth test refuses the app password for pop3 for the right reason" "$(cat "$TMP/auth-pop3.txt")"
fi

LAST_USE_IP=192.0.2.7 # from the auth test above
# >>> HOOK: real Dovecot IMAP login with curl (added with the Dovecot end-to-end suite).
# When MAILAUTHD_E2E_IMAP_LOGIN names an executable, it is run as
#   "$MAILAUTHD_E2E_IMAP_LOGIN" ADDRESS APP_PASSWORD
# and must exit 0 when Dovecot (through the mailauthd adapter) accepted the IMAP login.
# Defaults to tests/e2e/dovecot/imap-login.sh when Dovecot is installed.
export MAILAUTHD_RUNTIME_DIR="$TMP/run"
if [ -z "${MAILAUTHD_E2E_IMAP_LOGIN:-}" ] && command -v dovecot >/dev/null 2>&1; then
	MAILAUTHD_E2E_IMAP_LOGIN=$REPO/tests/e2e/dovecot/imap-login.sh
fi
if [ -n "${MAILAUTHD_E2E_IMAP_LOGIN:-}" ]; then
	if "$MAILAUTHD_E2E_IMAP_LOGIN" alice@example.org "$secret" >"$TMP/imap-login.txt" 2>&1; then
		ok "Dovecot accepts an IMAP login with the app password"
		# That login (from loopback) is now the app password's last use.
		LAST_USE_IP=127.0.0.1
	else
		not_ok "Dovecot accepts an IMAP login with the app password" "$(cat "$TMP/imap-login.txt")"
	fi
elif [ -n "${CI:-}" ]; then
	not_ok "Dovecot accepts an IMAP login with the app password" "Dovecot is not installed (required in CI)"
else
	echo "# skip: real IMAP login through Dovecot (Dovecot not installed; set MAILAUTHD_E2E_IMAP_LOGIN)"
fi
# <<< HOOK

out=$(browser revoke 03-alice-revoke --login alice --name laptop)
if grep -qF "from $LAST_USE_IP (IMAP)" <<<"$(json 'j.before' <<<"$out")" &&
	[ "$(json 'j.status' <<<"$out")" = "App password revoked. Programs using it can no longer log in." ]; then
	ok "the page lists the last use (time, IP, protocol) and revokes the app password"
else
	not_ok "the page lists the last use and revokes" "$out"
fi
if [ -z "$secret" ] || printf '%s\n' "$secret" | m auth test alice@example.org --service imap >/dev/null 2>&1; then
	not_ok "a revoked app password fails at the next login"
else
	ok "a revoked app password fails at the next login"
fi

# --- device setup: an Apple profile and a Thunderbird QR code, each with its own password -

app_count() { m --json app-password list alice@example.org 2>/dev/null | json 'j.length'; }
imap_login() { # $1 = address, $2 = password, $3 = output file: 0 accepted, 1 refused, 2 no Dovecot
	if [ -z "${MAILAUTHD_E2E_IMAP_LOGIN:-}" ]; then
		echo "Dovecot is not installed" >"$3"
		return 2
	fi
	"$MAILAUTHD_E2E_IMAP_LOGIN" "$1" "$2" >"$3" 2>&1 || return 1
}
dovecot_check() { # $1 = what, $2 = address, $3 = password
	local rc=0
	imap_login "$2" "$3" "$TMP/imap-device.txt" || rc=$?
	if [ "$rc" = 0 ]; then
		ok "$1"
	elif [ "$rc" = 2 ] && [ -z "${CI:-}" ]; then
		echo "# skip: $1 (Dovecot not installed)"
	else
		not_ok "$1" "$(cat "$TMP/imap-device.txt")"
	fi
}
DEVICE_SECRETS=()

apps_before=$(app_count)
out=$(browser device 03b-alice-apple --login alice --kind apple --protocols imap,smtp --out "$TMP")
apple_secret=$(json 'j.secret || ""' <<<"$out")
DEVICE_SECRETS+=("$apple_secret" "$(json 'j.done || ""' <<<"$out")")
profile=$(json 'j.profile || ""' <<<"$out")
plist_password=
if [ -s "$profile" ] &&
	openssl cms -verify -binary -inform DER -CAfile "$TMP/profile.crt" -purpose any -in "$profile" -out "$TMP/profile.plist" >"$TMP/cms-verify.txt" 2>&1 &&
	plist_password=$(python3 -c '
import plistlib, sys
p = plistlib.load(open(sys.argv[1], "rb"))
mail = [c for c in p["PayloadContent"] if c["PayloadType"] == "com.apple.mail.managed"][0]
assert mail["IncomingMailServerUsername"] == "alice@example.org", mail
assert mail["IncomingMailServerHostName"] == "mail.example.org", mail
print(mail["IncomingPassword"])
' "$TMP/profile.plist" 2>"$TMP/plist.txt") &&
	[ -n "$apple_secret" ] && [ "$plist_password" = "$apple_secret" ]; then
	ok "an Apple device's profile downloads, its CMS signature verifies against the signing certificate, and plistlib reads the account with the password shown once"
else
	not_ok "an Apple device's profile downloads, is signed and parses" "$out
$(cat "$TMP/cms-verify.txt" "$TMP/plist.txt" 2>/dev/null)"
fi
if [ "$(json 'j.signature' <<<"$out")" = "The profile is signed by mailauthd e2e profiles." ] &&
	[[ $(json 'j.filename' <<<"$out") == *.mobileconfig ]]; then
	ok "the result page names the profile's signer (its certificate's CN); the file is a .mobileconfig"
else
	not_ok "the result page names the profile's signer" "$out"
fi
if [ "$(json 'j.secondDownload' <<<"$out")" = 410 ] && grep -q 'Make a new one' <<<"$(json 'j.secondDownloadReason' <<<"$out")"; then
	ok "the profile link works once: the second use gets 410 Gone and a page saying to make a new one"
else
	not_ok "the profile link works once" "$out"
fi
if [ "$(json 'j.reloadShowsSecret' <<<"$out")" = false ] &&
	grep -q 'already shown' <<<"$(json 'j.reloadReason' <<<"$out")" &&
	[ "$(app_count)" = $((apps_before + 1)) ]; then
	ok "reloading the Apple result page shows no password again and makes no second app password ($((apps_before + 1)) in app-password list)"
else
	not_ok "reloading the result page creates nothing and hides the password" "$out
count before $apps_before, now $(app_count)"
fi
dovecot_check "Dovecot accepts an IMAP login with the profile's IncomingPassword" alice@example.org "${plist_password:-none}"

apps_before=$(app_count)
out=$(browser device 03c-alice-android --login alice --kind android --protocols imap,smtp)
android_secret=$(json 'j.secret || ""' <<<"$out")
DEVICE_SECRETS+=("$android_secret" "$(json 'j.done || ""' <<<"$out")")
qr=$(json 'j.qr || ""' <<<"$out")
qr_password=
if [ -s "$qr" ] && zbarimg --raw -q "$qr" >"$TMP/qr.txt" 2>"$TMP/zbarimg.err" &&
	qr_password=$(python3 -c '
import json, sys
secret = sys.argv[2]
def strings(v):
    if isinstance(v, str):
        yield v
    elif isinstance(v, list):
        for x in v:
            yield from strings(x)
    elif isinstance(v, dict):
        for x in v.values():
            yield from strings(x)
found = [s for s in strings(json.load(open(sys.argv[1]))) if s == secret]
assert found, "the password is not in the payload"
print(found[0])
' "$TMP/qr.txt" "$android_secret" 2>"$TMP/qr-json.txt") && [ -n "$android_secret" ]; then
	ok "an Android device's QR code (screenshot) decodes with zbarimg to JSON carrying the password shown once"
else
	not_ok "an Android device's QR code decodes to JSON with the password" "$out
$(cat "$TMP/qr.txt" "$TMP/zbarimg.err" "$TMP/qr-json.txt" 2>/dev/null)"
fi
if [ "$(json 'j.reloadShowsSecret' <<<"$out")" = false ] && [ "$(app_count)" = $((apps_before + 1)) ]; then
	ok "reloading the Android result page shows no password again and makes no second app password"
else
	not_ok "reloading the Android result page creates nothing" "$out"
fi
dovecot_check "Dovecot accepts an IMAP login with the password from the QR code" alice@example.org "${qr_password:-none}"

# --- a changed claim at the provider updates the mailbox at the next sign-in ----------

write_accounts students
out=$(browser signin 04-alice-new-group --login alice)
show=$(m --json mailbox show alice@example.org 2>&1 || true)
if [ "$(json 'j.mailbox.template' <<<"$show")" = students ] &&
	[ "$(json 'j.mailbox.quota' <<<"$show")" = 1073741824 ] &&
	[ "$(json 'j.mailbox.protocols.join(",")' <<<"$show")" = imap,pop3 ]; then
	ok "after the claim changed to students, the next sign-in re-applies the template (1G, imap,pop3)"
else
	not_ok "a changed claim updates the mailbox" "$out
$show"
fi

# --- the postmaster's settings outlive sign-ins ----------------------------------------

# Disabled by the postmaster, then the person changes their display name at the provider
# (which would re-apply the template) and signs in again: still disabled, and refused.
m mailbox set alice@example.org --active 0 >/dev/null
write_accounts students "Alice Renamed"
out=$(browser signin 04b-alice-disabled-renamed --login alice)
show=$(m --json mailbox show alice@example.org 2>&1 || true)
if [ "$(json 'j.reason || ""' <<<"$out")" = "Your mailbox is disabled." ] &&
	[ "$(json 'j.mailbox.state' <<<"$show")" = disabled ] &&
	[ "$(json 'j.mailbox.display_name' <<<"$show")" = "Alice Renamed" ] &&
	[ "$(json 'j.mailbox.overrides.join(",")' <<<"$show")" = state ]; then
	ok "a disabled mailbox stays disabled after a display-name change at the provider and a new sign-in"
else
	not_ok "a disabled mailbox stays disabled after a display-name change and a new sign-in" "$out
$show"
fi

# Receive-only, then the template changes (template set) and the name again.
m mailbox set alice@example.org --active 2 >/dev/null
m template set students --protocols imap,pop3,sieve >/dev/null
write_accounts students "Alice Renamed Again"
out=$(browser signin 04c-alice-receive-only --login alice)
show=$(m --json mailbox show alice@example.org 2>&1 || true)
if [ "$(json 'j.reason || ""' <<<"$out")" = "Your mailbox receives mail but may not sign in." ] &&
	[ "$(json 'j.mailbox.state' <<<"$show")" = no_login ] &&
	[ "$(json 'j.mailbox.protocols.join(",")' <<<"$show")" = imap,pop3,sieve ]; then
	ok "a receive-only mailbox stays receive-only after template set and a new sign-in (the template's protocols still apply)"
else
	not_ok "a receive-only mailbox stays receive-only after template set and a new sign-in" "$out
$show"
fi
m template set students --protocols imap,pop3 >/dev/null

# mailbox set --reset hands the state back to the template: the next sign-in gets in.
m mailbox set alice@example.org --reset >/dev/null
out=$(browser signin 04d-alice-reset --login alice)
show=$(m --json mailbox show alice@example.org 2>&1 || true)
if [ "$(json 'j.address' <<<"$out")" = alice@example.org ] &&
	[ "$(json 'j.mailbox.state' <<<"$show")" = active ] &&
	[ "$(json 'j.mailbox.overrides.length' <<<"$show")" = 0 ]; then
	ok "after mailbox set --reset the template's state applies again and the sign-in gets in"
else
	not_ok "after mailbox set --reset the sign-in gets in" "$out
$show"
fi

# --- refusals show their reason and create nothing ------------------------------------

before=$(mailbox_count)
expect_refusal() { # $1 = login, $2 = prefix, $3 = expected reason text, $4 = description
	local out reason
	out=$(browser signin "$2" --login "$1")
	reason=$(json 'j.reason || ""' <<<"$out")
	if [ "$reason" = "$3" ]; then
		ok "$4 shows: $3"
	else
		not_ok "$4 shows: $3" "$out"
	fi
}
expect_refusal carol 05-unknown-template "There is no mailbox template for your group. Ask the postmaster to add one." "unknown template"
expect_refusal bob 06-missing-domain "nowhere.example is not served here." "missing domain"
expect_refusal dave 07-full-domain "The mailbox limit for full.example is reached." "full domain"
expect_refusal erin 08-local-mailbox "This mailbox signs in with a password. Use the password form instead." "local mailbox"
expect_refusal frank 09-unverified "Your organisation has not verified the address frank@example.org. Verify it there, then sign in again." "unverified address"
expect_refusal jack 09b-no-email-verified "Your organisation's sign-in did not confirm that the address jack@example.org is verified. Ask the postmaster to check the provider's settings." "a sign-in without email_verified"
expect_refusal kim 09c-kelvin-sign "The address $(printf '\u212A')im@example.org cannot be used for a mailbox here: the part before @ may only use ASCII characters (no accented letters or look-alike symbols). Ask your administrator for an address in plain ASCII." "an address with U+212A KELVIN SIGN"
after=$(mailbox_count)
if [ "$before" = "$after" ] && ! m mailbox show carol@example.org >/dev/null 2>&1 &&
	! m mailbox show jack@example.org >/dev/null 2>&1 && ! m mailbox show kim@example.org >/dev/null 2>&1 &&
	[ "$(m --json mailbox show erin@example.org | json 'j.mailbox.auth_source')" = local ]; then
	ok "refused sign-ins created nothing and left the local mailbox local"
else
	not_ok "refused sign-ins created nothing" "before=$before after=$after"
fi

# --- the local mailbox signs in with its password --------------------------------------

out=$(browser local 10-erin-password --login erin@example.org --password erin-local-password-1)
if [ "$(json 'j.address' <<<"$out")" = erin@example.org ]; then
	ok "a local mailbox signs in on the page with its password"
else
	not_ok "a local mailbox signs in on the page with its password" "$out"
fi
out=$(browser local 11-erin-wrong-password --login erin@example.org --password wrong)
if grep -q 'address or password is wrong' <<<"$(json 'j.alert || ""' <<<"$out")"; then
	ok "a wrong password is refused with a clear message"
else
	not_ok "a wrong password is refused with a clear message" "$out"
fi

# --- switching the auth source keeps the stored password -------------------------------

m mailbox set-authsource erin@example.org oidc >/dev/null
if printf 'erin-local-password-1\n' | m auth test erin@example.org --service imap >"$TMP/auth-erin.txt" 2>&1; then
	not_ok "after switching to oidc the stored password fails at once" "$(cat "$TMP/auth-erin.txt")"
elif grep -q oidc_needs_app_password "$TMP/auth-erin.txt"; then
	ok "after switching to oidc the stored password fails at once (oidc_needs_app_password)"
else
	not_ok "after switching to oidc the stored password fails for the right reason" "$(cat "$TMP/auth-erin.txt")"
fi
out=$(browser local 11b-erin-now-oidc --login erin@example.org --password erin-local-password-1)
if grep -q 'address or password is wrong' <<<"$(json 'j.alert || ""' <<<"$out")"; then
	ok "the password form refuses an oidc mailbox's stored password with the words of a wrong password"
else
	not_ok "the password form refuses an oidc mailbox's stored password like a wrong password" "$out"
fi
m mailbox set-authsource erin@example.org local >/dev/null
if printf 'erin-local-password-1\n' | m auth test erin@example.org --service imap >/dev/null 2>&1; then
	ok "switching back to local restores the stored password"
else
	not_ok "switching back to local restores the stored password"
fi

# --- bad input: clear pages, never a stack trace ---------------------------------------

out=$(browser bad-input 12-bad-input --issuer "$ISSUER")
if grep -q 'expired' <<<"$(json 'j.noState.reason' <<<"$out")" &&
	grep -q 'expired' <<<"$(json 'j.forgedProviderError.reason' <<<"$out")" &&
	! grep -q '555' <<<"$(json 'j.forgedProviderError.reason' <<<"$out")" &&
	grep -q 'declined' <<<"$(json 'j.providerError.reason' <<<"$out")" &&
	[ "$(json 'j.noCsrf.status' <<<"$out")" = 403 ] && [ "$(json 'j.noCsrf.body' <<<"$out")" = true ] &&
	[ "$(json 'j.notFound.reason' <<<"$out")" = "There is no such page here." ]; then
	ok "forged callback, forged and real provider errors (text shown only for this browser's sign-in), form without CSRF token and unknown page each get a clear page"
else
	not_ok "bad input gets clear pages" "$out"
fi

# --- sign out, at the provider too -----------------------------------------------------

out=$(browser signout 13-alice-sign-out --login alice)
if [ "$(json 'j.status' <<<"$out")" = "You are signed out." ]; then
	ok "sign out ends the provider session too (RP-initiated logout) and comes back signed out"
else
	not_ok "sign out" "$out"
fi

# --- a reload (SIGHUP) applies a new claim mapping without dropping connections ---------

wait_line() { # $1 = file, $2 = extended regex: waits up to 20 s for a matching line
	wait_for 20 grep -sqE "$2" "$1"
}
log_since() { # $1 = number of daemon log lines seen before
	tail -n "+$(($1 + 1))" "$TMP/mailauthd.log"
}
wait_log() { # $1 = number of daemon log lines seen before, $2 = extended regex
	local i
	for i in $(seq 200); do
		grep -qE "$2" <(log_since "$1") && return 0
		sleep 0.1
	done
	return 1
}
replace_config() { # stdin = the new config.toml, put in place in one rename
	cat >"$TMP/config.next.toml"
	mv "$TMP/config.next.toml" "$TMP/config.toml"
}
auth_spid() { # the SPID a new auth-socket connection is greeted with: the serving process
	python3 "$HERE/held-auth-conn.py" "$TMP/run/auth" </dev/null 2>&1 | sed -n 's/^ready spid=\([0-9]*\) .*/\1/p' || true
}

# One auth-socket connection, as Dovecot keeps them, opened now and held through the
# reloads below; held_auth sends a login on it and prints the helper's answer line.
mkfifo "$TMP/held-auth.in"
python3 "$HERE/held-auth-conn.py" "$TMP/run/auth" <"$TMP/held-auth.in" >"$TMP/held-auth.out" 2>&1 &
HELD_PID=$!
PIDS+=("$HELD_PID")
exec {HELD_IN}>"$TMP/held-auth.in"
held_auth() { # $1 = request id, $2 = address, $3 = password
	# In a subshell: if the helper is gone, the broken pipe ends only that.
	(printf 'auth %s %s %s\n' "$1" "$2" "$3" >&"$HELD_IN") 2>/dev/null || true
	wait_line "$TMP/held-auth.out" "^(reply $1 |closed|error)" || true
	grep -E "^(reply $1 |closed|error)" "$TMP/held-auth.out" | tail -n 1 || true
}
wait_line "$TMP/held-auth.out" '^(ready|error)' || true
reply=$(held_auth 1 erin@example.org erin-local-password-1)
if grep -q "^ready spid=$DAEMON_PID " "$TMP/held-auth.out" && [ "$reply" = "reply 1 OK|1|user=erin@example.org" ]; then
	ok "an auth-socket connection opened before the reload answers a login (OK for erin)"
else
	not_ok "an auth-socket connection opened before the reload answers a login" "$(cat "$TMP/held-auth.out")"
fi

# A second claim, department, maps to its own template; the running config still reads
# mailcow_template, so ivy (department lab, mailcow_template staff) still gets staff.
m template add researchers --quota 3G --protocols imap >/dev/null
m mapping add lab researchers >/dev/null
out=$(browser signin 14-ivy-before-reload --login ivy)
show=$(m --json mailbox show ivy@example.org 2>&1 || true)
if [ "$(json 'j.address' <<<"$out")" = ivy@example.org ] &&
	[ "$(json 'j.mailbox.template' <<<"$show")" = staff ]; then
	ok "before the reload, the template still comes from mailcow_template (ivy gets staff)"
else
	not_ok "before the reload, the template still comes from mailcow_template" "$out
$show"
fi

# The new [oidc] section: the template from department, and a new name on the page.
log_mark=$(wc -l <"$TMP/mailauthd.log")
write_config "$TMP/config.reloaded.toml" "$ISSUER" false "Example Research SSO" 'template_claim = "department"
scopes = ["openid", "profile", "email", "department"]'
replace_config <"$TMP/config.reloaded.toml"
kill -HUP "$DAEMON_PID" || true
if wait_log "$log_mark" 'configuration reloaded|reload refused'; then
	line=$(grep -m 1 -E 'configuration reloaded|reload refused' <(log_since "$log_mark") || true)
else
	line="no reload line in the log within 20 s"
fi
if grep -q 'INFO configuration reloaded ' <<<"$line" && grep -qE 'applied=([^=]*, )?oidc( |,|$)' <<<"$line"; then
	ok "SIGHUP logs \"configuration reloaded\" with oidc applied (and nothing left for a restart)"
else
	not_ok "SIGHUP logs \"configuration reloaded\" with oidc applied" "$line"
fi
page=$(curl -fsS "$BASE/" 2>&1 || true)
if grep -qF 'Sign in with Example Research SSO' <<<"$page" && ! grep -qF 'Sign in with Example SSO' <<<"$page"; then
	ok "after the reload the sign-in page shows the new display name (Example Research SSO)"
else
	not_ok "after the reload the sign-in page shows the new display name" "$page"
fi

out=$(browser signin 15-hank-after-reload --login hank)
show=$(m --json mailbox show hank@example.org 2>&1 || true)
if [ "$(json 'j.address' <<<"$out")" = hank@example.org ] &&
	[ "$(json 'j.mailbox.template' <<<"$show")" = researchers ] &&
	[ "$(json 'j.mailbox.quota' <<<"$show")" = 3221225472 ] &&
	[ "$(json 'j.mailbox.protocols.join(",")' <<<"$show")" = imap ]; then
	ok "after the reload, a new user's first sign-in takes the template from department (hank: lab -> researchers, 3G, imap)"
else
	not_ok "after the reload, a new user's first sign-in takes the template from department" "$out
$show"
fi
out=$(browser signin 16-ivy-after-reload --login ivy)
show=$(m --json mailbox show ivy@example.org 2>&1 || true)
if [ "$(json 'j.address' <<<"$out")" = ivy@example.org ] &&
	[ "$(json 'j.mailbox.template' <<<"$show")" = researchers ] &&
	[ "$(json 'j.mailbox.quota' <<<"$show")" = 3221225472 ]; then
	ok "after the reload, an existing mailbox's next sign-in re-applies the template from department (ivy: staff -> researchers)"
else
	not_ok "after the reload, an existing mailbox's next sign-in re-applies the template from department" "$out
$show"
fi

spid=$(auth_spid)
if [ "$spid" = "$DAEMON_PID" ] && [ "$(grep -c 'mailauthd ready' "$TMP/mailauthd.log")" = 1 ] &&
	[ "$(curl -fsS "$BASE/readyz" 2>&1)" = ready ]; then
	ok "the reload happened in place: the same PID serves the auth socket and the daemon started once"
else
	not_ok "the reload happened in place (same PID, started once)" "started as $DAEMON_PID, auth socket served by ${spid:-nobody}
$(grep 'mailauthd ready' "$TMP/mailauthd.log")"
fi
reply=$(held_auth 2 erin@example.org erin-local-password-1)
if [ "$reply" = "reply 2 OK|2|user=erin@example.org" ]; then
	ok "the auth connection opened before the reload is still open and answers a login on it"
else
	not_ok "the auth connection opened before the reload is still open and answers a login on it" "$(cat "$TMP/held-auth.out")"
fi

# A broken file on reload changes nothing.
log_mark=$(wc -l <"$TMP/mailauthd.log")
printf '[oidc\ndisplay_name = "Broken SSO"\n' | replace_config
kill -HUP "$DAEMON_PID" || true
if wait_log "$log_mark" 'configuration reloaded|reload refused'; then
	line=$(grep -m 1 -E 'configuration reloaded|reload refused' <(log_since "$log_mark") || true)
else
	line="no reload line in the log within 20 s"
fi
if grep -q 'ERROR reload refused, keeping the running configuration' <<<"$line"; then
	ok "a config that is not valid TOML is refused at reload (\"reload refused\", running config kept)"
else
	not_ok "a config that is not valid TOML is refused at reload" "$line"
fi
page=$(curl -fsS "$BASE/" 2>&1 || true)
if [ "$(curl -fsS "$BASE/readyz" 2>&1)" = ready ] && grep -qF 'Sign in with Example Research SSO' <<<"$page"; then
	ok "after the refused reload the daemon is ready and the page still shows Example Research SSO"
else
	not_ok "after the refused reload the daemon is ready and keeps the running [oidc] settings" "$page"
fi
reply=$(held_auth 3 erin@example.org erin-local-password-1)
if [ "$reply" = "reply 3 OK|3|user=erin@example.org" ] && [ "$(auth_spid)" = "$DAEMON_PID" ]; then
	ok "the held auth connection also outlives the refused reload, in the same process"
else
	not_ok "the held auth connection also outlives the refused reload, in the same process" "$(cat "$TMP/held-auth.out")"
fi
# The good file back, for the mailauthd commands below.
replace_config <"$TMP/config.reloaded.toml"
(printf 'quit\n' >&"$HELD_IN") 2>/dev/null || true
exec {HELD_IN}>&-
wait "$HELD_PID" || true

# --- a client secret rotated in client_secret_file is re-read by SIGHUP ----------------
# The config file itself does not change; only the file it names. The secret's Debug text
# is redacted, so a reload that compared settings by their Debug text would keep the old one.

reload_and_wait() { # prints the reload's log line
	local mark
	mark=$(wc -l <"$TMP/mailauthd.log")
	kill -HUP "$DAEMON_PID" || true
	if wait_log "$mark" 'configuration reloaded|reload refused'; then
		grep -m 1 -E 'configuration reloaded|reload refused' <(log_since "$mark") || true
	else
		echo "no reload line in the log within 20 s"
	fi
}
WRONG_SECRET=e2e-wrong-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
printf '%s\n' "$WRONG_SECRET" >"$TMP/client-secret.next"
chmod 600 "$TMP/client-secret.next"
mv "$TMP/client-secret.next" "$TMP/client-secret"
line=$(reload_and_wait)
if grep -q 'INFO configuration reloaded ' <<<"$line" && grep -qE 'applied=([^=]*, )?oidc( |,|$)' <<<"$line"; then
	ok "SIGHUP after a wrong secret is written to client_secret_file applies oidc"
else
	not_ok "SIGHUP after a wrong secret is written to client_secret_file applies oidc" "$line"
fi
log_mark=$(wc -l <"$TMP/mailauthd.log")
out=$(browser signin 17-hank-wrong-secret --login hank)
sleep 0.5
if [ "$(json 'j.address' <<<"$out")" != hank@example.org ] &&
	grep -q 'invalid_client' <(log_since "$log_mark"); then
	ok "with the wrong secret in force, sign-in fails at the token endpoint (invalid_client)"
else
	not_ok "with the wrong secret in force, sign-in fails at the token endpoint (invalid_client)" "$out
$(log_since "$log_mark")"
fi
printf '%s\n' "$CLIENT_SECRET" >"$TMP/client-secret.next"
chmod 600 "$TMP/client-secret.next"
mv "$TMP/client-secret.next" "$TMP/client-secret"
line=$(reload_and_wait)
out=$(browser signin 18-hank-secret-restored --login hank)
if grep -qE 'applied=([^=]*, )?oidc( |,|$)' <<<"$line" && [ "$(json 'j.address' <<<"$out")" = hank@example.org ]; then
	ok "the correct secret written and SIGHUP: the next sign-in works (same process)"
else
	not_ok "the correct secret written and SIGHUP: the next sign-in works" "$line
$out"
fi
if grep -qF "$WRONG_SECRET" "$TMP/mailauthd.log"; then
	not_ok "the rotated secrets stay out of the daemon log"
else
	ok "the rotated secrets stay out of the daemon log"
fi

# --- the daemon's log, after everything above (reloads included) ---------------------

if grep -qiE 'panicked|stack backtrace' "$TMP/mailauthd.log"; then
	not_ok "no panic in the daemon log" "$(grep -iE 'panicked|backtrace' "$TMP/mailauthd.log")"
else
	ok "no panic in the daemon log"
fi
if grep -qF "$CLIENT_SECRET" "$TMP/mailauthd.log" || { [ -n "$secret" ] && grep -qF "$secret" "$TMP/mailauthd.log"; }; then
	not_ok "no secrets in the daemon log"
else
	ok "no secrets in the daemon log (client secret, app password)"
fi
leaked=
for s in "${DEVICE_SECRETS[@]}"; do
	if [ -n "$s" ] && grep -qF "${s##*/}" "$TMP/mailauthd.log"; then
		leaked+=" ${s:0:4}…"
	fi
done
if [ -z "$leaked" ] && grep -q 'device set up' "$TMP/mailauthd.log"; then
	ok "the daemon logs \"device set up\" but no device password or result token"
else
	not_ok "no device password or result token in the daemon log" "leaked:$leaked"
fi

# --- an HTTPS provider with a self-signed certificate ----------------------------------

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=127.0.0.1" \
	-addext "subjectAltName=IP:127.0.0.1" -addext "basicConstraints=critical,CA:FALSE" \
	-keyout "$TMP/tls.key" -out "$TMP/tls.crt" >/dev/null 2>&1
node "$HERE/provider.mjs" --port "$TLS_PORT" --accounts "$TMP/accounts.json" \
	--redirect "$BASE/callback" --post-logout "$BASE/?signed-out" \
	--client-secret "$CLIENT_SECRET" --tls-cert "$TMP/tls.crt" --tls-key "$TMP/tls.key" \
	>"$TMP/provider-tls.log" 2>&1 &
PIDS+=($!)
wait_http "$TLS_ISSUER/.well-known/openid-configuration" || die "TLS provider did not start: $(cat "$TMP/provider-tls.log")"
write_config "$TMP/tls-strict.toml" "$TLS_ISSUER" false
write_config "$TMP/tls-ignore.toml" "$TLS_ISSUER" true
if out=$(m --config "$TMP/tls-strict.toml" idp test 2>&1); then
	not_ok "idp test fails on a self-signed certificate with ignore_tls_errors off" "$out"
elif grep -q '✗ TLS' <<<"$out" && grep -qi 'does not trust' <<<"$out"; then
	ok "idp test fails clearly on a self-signed certificate with ignore_tls_errors off"
else
	not_ok "idp test fails clearly on a self-signed certificate" "$out"
fi
if out=$(m --config "$TMP/tls-ignore.toml" idp test 2>&1) && grep -q 'NOT checked' <<<"$out"; then
	ok "idp test works with ignore_tls_errors on, with a loud warning"
else
	not_ok "idp test works with ignore_tls_errors on" "$out"
fi
printf '%s\n' "$out" >"$ARTIFACTS/idp-test-tls-ignored.txt"

echo "# screenshots in $SHOTS"
finish
