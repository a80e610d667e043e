#!/usr/bin/env bash
# End-to-end: device setup from the command line, read the way a device reads it, and the
# app password inside used against the real peers.
#
#   `mailauthd device profile --kind apple`    the signed .mobileconfig: `openssl cms -verify`
#                                              against a test CA, the property list read by
#                                              Python's plistlib, its IncomingPassword logs
#                                              in to a private Dovecot 2.3 (imap-login.sh)
#                                              and to a private Postfix (swaks, SMTP AUTH
#                                              over TLS on the shipped submissions entry);
#                                              POP3 is refused; one byte changed breaks the
#                                              signature; a second profile replaces the
#                                              first (same PayloadIdentifier)
#   `--kind android`                           the PNG decoded by zbarimg, its JSON read,
#                                              the password logs in to Dovecot
#   `--kind settings --json`                   the servers as configured
#
# mailauthd runs as nobody with SQLite; its auth socket is in Postfix's queue folder (as
# SASL.md sets it up) and in its runtime folder, beside the userdb socket, for Dovecot.
# Reuses tests/e2e/postfix/common.sh (packages, the private Postfix instance, swaks) and
# tests/e2e/dovecot/imap-login.sh (one IMAP login through a private Dovecot).
#
# Needs root. Installs Dovecot 2.3 (as tests/e2e/dovecot/run.sh does), postfix, swaks,
# openssl, zbar-tools, python3 and curl when missing.
# Environment:
#   MAILAUTHD_BIN   the daemon (default target/debug/mailauthd); never built here
#   ARTIFACTS       logs and configs go to $ARTIFACTS/devices-e2e (default ci-artifacts)
#   KEEP=1          keep the temporary folder
# Prints one "ok - …" / "not ok - …" line per check, then "N passed, N failed".

set -euo pipefail
export LC_ALL=C.UTF-8

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
cd "$REPO"
# shellcheck source=lib.sh
. "$REPO/tests/e2e/lib.sh"
# shellcheck source=postfix/common.sh
. "$REPO/tests/e2e/postfix/common.sh"

BIN=${MAILAUTHD_BIN:-target/debug/mailauthd}
ART=${ARTIFACTS:-ci-artifacts}/devices-e2e
IMAP_LOGIN=$REPO/tests/e2e/dovecot/imap-login.sh

[ "$(id -u)" = 0 ] || die "run as root (Dovecot and Postfix need it)"
pf_bin

# ---------------------------------------------------------------------------
# Packages: Postfix and swaks through common.sh, the rest here.
pf_packages
missing=()
[ -x /usr/sbin/dovecot ] || missing+=(dovecot-core)
[ -e /usr/lib/dovecot/imap ] || missing+=(dovecot-imapd)
[ -e /usr/lib/dovecot/pop3 ] || missing+=(dovecot-pop3d)
[ -e /usr/lib/dovecot/modules/auth/libauthdb_lua.so ] || missing+=(dovecot-auth-lua)
ls /usr/lib/*/lua/*/socket/unix.so >/dev/null 2>&1 || missing+=(lua-socket)
command -v zbarimg >/dev/null 2>&1 || missing+=(zbar-tools)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v curl >/dev/null 2>&1 || missing+=(curl)
pf_install_missing "${missing[@]}"
pf_dovecot_23
echo "# Postfix $POSTFIX_VERSION, Dovecot $(dovecot --version | awk '{print $1}'), $(zbarimg --version 2>&1 | head -n1 | sed 's/^/zbarimg /'), $(openssl version), daemon $BIN"

# ---------------------------------------------------------------------------
# Everything this run starts, and the way back.
pf_init devices-e2e
OUT=$T/out
PKI=$T/pki

collect_artifacts() {
	mkdir -p "$ART" 2>/dev/null || return 0
	cp -f "$PLOG" "$ART/postfix.log" 2>/dev/null || true
	cp -f "$MD_LOG" "$ART/mailauthd.log" 2>/dev/null || true
	cp -f "$MD_CONF" "$ART/mailauthd.toml" 2>/dev/null || true
	cp -f "$OUT"/*.plist "$ART/" 2>/dev/null || true
	pf_copy_transcripts
}

cleanup() {
	local rc=$?
	set +e
	pf_wind_up "$rc"
}
pf_traps

pick_port SMTP_PORT
pick_port SUB_PORT
pick_port SUBS_PORT

# ---------------------------------------------------------------------------
# A test CA and a signer certificate from it, made like a web server's: the docs tell the
# postmaster to sign with the certificate (and chain) a device already trusts.
mkdir -p "$PKI"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=mailauthd test CA" \
	-keyout "$PKI/ca.key" -out "$PKI/ca.pem" >/dev/null 2>&1 || die "openssl: test CA"
openssl req -newkey rsa:2048 -nodes -subj "/CN=mail.test" \
	-keyout "$PKI/signer.key" -out "$PKI/signer.csr" >/dev/null 2>&1 || die "openssl: signer key"
printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=digitalSignature,keyEncipherment" \
	"extendedKeyUsage=serverAuth" "subjectAltName=DNS:mail.test" >"$PKI/signer.ext"
openssl x509 -req -in "$PKI/signer.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" \
	-CAcreateserial -days 2 -extfile "$PKI/signer.ext" -out "$PKI/signer.pem" >/dev/null 2>&1 ||
	die "openssl: signer certificate"
# The signer's certificate first, then its chain, as [clients] asks.
cat "$PKI/signer.pem" "$PKI/ca.pem" >"$PKI/chain.pem"
chown "$DAEMON_USER:$DAEMON_GROUP" "$PKI/signer.key"
chmod 0600 "$PKI/signer.key"
chmod 0644 "$PKI/chain.pem"

# ---------------------------------------------------------------------------
# mailauthd, running as nobody: the auth socket for Postfix (queue folder) and for
# Dovecot (runtime folder, with userdb). Test-only: mode 0666 for Dovecot's auth worker.
md_install "$BIN"
pf_socket_dir
mkdir -p "$OUT"
chown "$DAEMON_USER:$DAEMON_GROUP" "$OUT"

cat >"$MD_CONF" <<EOF
state_directory = "$MD/state"
runtime_directory = "$MD/run"

[credentials]
argon2_memory_kib = 8192
argon2_iterations = 1

$(md_sockets_toml)

[clients]
host = "mail.test"
profile_identifier = "test.mail"
profile_certificate = "$PKI/chain.pem"
profile_key = "$PKI/signer.key"

[clients.smtp]
port = 587
security = "starttls"
EOF
md_start
md_wait_sockets
md_is_daemon || die "the pid of mailauthd serve is not the daemon's ($MD_PID)"

mdctl domain add example.org >/dev/null || die "domain add"
printf '%s\n' 'alice-Own-Pass-2024' | mdctl mailbox add alice@example.org --password-stdin \
	--name "Alice Example" >/dev/null || die "mailbox add"

# ---------------------------------------------------------------------------
# Postfix: the private instance of the Postfix suite, Debian's master.cf and the shipped
# master.cf.sasl, only the ports changed; submissions (TLS from the first byte) as shipped.
pf_sasl_conf
pf_start "$SMTP_PORT" "$SUB_PORT" "$SUBS_PORT"
echo "# Postfix master $MASTER_PID: submissions on 127.0.0.1:$SUBS_PORT"

# ---------------------------------------------------------------------------
# Helpers.

# profile KIND FILE [ARGS...]: `device profile` as the daemon user; stderr in FILE.err.
profile() {
	local kind=$1 file=$2
	shift 2
	mdctl device profile alice@example.org --kind "$kind" --output "$file" "$@" 2>"$file.err"
}

# py CODE [ARGS...]: a Python check; prints what it finds, exits non-zero when it fails.
py() {
	local code=$1
	shift
	python3 -c "$code" "$@"
}

# imap_login PASSWORD: one IMAP login of alice through the private Dovecot.
imap_login() {
	MAILAUTHD_RUNTIME_DIR=$MD/run bash "$IMAP_LOGIN" alice@example.org "$1"
}

# pop3_refused PASSWORD: real Dovecot refuses alice's POP3 login with PASSWORD, and
# mailauthd's decision line says why: the app password does not cover POP3.
pop3_refused() {
	local out rc=0 mark
	mark=$(stat -c %s "$MD_LOG")
	out=$(MAIL_PROTOCOL=pop3 MAILAUTHD_RUNTIME_DIR=$MD/run bash "$IMAP_LOGIN" alice@example.org "$1" 2>&1) || rc=$?
	DETAIL=$out
	[ "$rc" = 1 ] && grep -q "did not accept the POP3 login" <<<"$out" || return 1
	for _ in $(seq 1 30); do
		tail -c +"$((mark + 1))" "$MD_LOG" | grep -E ' auth ' | grep -E 'service="?pop3' |
			grep -q 'reason="app_password_protocol"' && return 0
		sleep 0.1
	done
	DETAIL="$out
no decision line with service pop3 and reason app_password_protocol in $MD_LOG"
	return 1
}

# smtp_auth PASSWORD: the reply code to AUTH PLAIN of alice on Postfix's submissions port.
smtp_auth() {
	local f
	f=$(swaks_run "$2" --server "127.0.0.1:$SUBS_PORT" --tls-on-connect --auth PLAIN \
		--auth-user alice@example.org --auth-password "$1" --quit-after AUTH)
	SMTP_TRANSCRIPT=$f
	auth_reply "$f"
}

# ---------------------------------------------------------------------------
echo "# Apple configuration profile, signed"
P=$OUT/p.mobileconfig
if profile apple "$P" --protocols imap,smtp; then
	ok "device profile --kind apple --protocols imap,smtp writes $(basename "$P")"
else
	not_ok "device profile --kind apple writes the profile" "$(cat "$P.err")"
fi
expect_eq "the profile file is mode 600, owned by the user who asked" \
	"600 $DAEMON_USER" "$(stat -c '%a %U' "$P" 2>/dev/null)"
DETAIL=$(cat "$P.err") check "device profile says on stderr that the profile is signed, and names the app password" \
	eval 'grep -q "profile is signed with" "$P.err" && grep -q "(iPhone / iPad / Mac)" "$P.err"'
if out=$(openssl cms -verify -inform DER -in "$P" -CAfile "$PKI/ca.pem" -purpose any \
	-out "$OUT/p.plist" 2>&1); then
	ok "openssl cms -verify accepts the signature against the test CA"
else
	not_ok "openssl cms -verify accepts the signature against the test CA" "$out"
fi

# The mail payload, as Python's plistlib reads it; prints the IMAP password.
read_plist='
import plistlib, sys
p = plistlib.load(open(sys.argv[1], "rb"))
assert p["PayloadType"] == "Configuration", p["PayloadType"]
mail = [c for c in p["PayloadContent"] if c["PayloadType"] == "com.apple.mail.managed"]
assert len(mail) == 1, p["PayloadContent"]
m = mail[0]
want = {
    "EmailAccountType": "EmailTypeIMAP",
    "EmailAddress": "alice@example.org",
    "IncomingMailServerHostName": "mail.test",
    "IncomingMailServerPortNumber": 993,
    "IncomingMailServerUseSSL": True,
    "IncomingMailServerUsername": "alice@example.org",
    "OutgoingMailServerHostName": "mail.test",
    "OutgoingMailServerPortNumber": 587,
    "OutgoingMailServerUseSSL": False,
    "OutgoingMailServerUsername": "alice@example.org",
}
for k, v in want.items():
    assert m.get(k) == v, (k, m.get(k), v)
assert m["IncomingPassword"] == m["OutgoingPassword"], "one app password for both"
print(p["PayloadIdentifier"], m["IncomingPassword"])
'
APPLE_ID= APPLE_PW=
if out=$(py "$read_plist" "$OUT/p.plist" 2>&1); then
	read -r APPLE_ID APPLE_PW <<<"$out"
	ok "plistlib reads a Configuration profile with one com.apple.mail.managed payload: mail.test 993 SSL, 587 STARTTLS, user alice@example.org"
else
	not_ok "plistlib reads the profile and its mail payload as configured" "$out"
fi

if [ -n "$APPLE_PW" ] && out=$(imap_login "$APPLE_PW" 2>&1); then
	ok "the profile's IncomingPassword logs in to IMAP through real Dovecot 2.3"
else
	not_ok "the profile's IncomingPassword logs in to IMAP through real Dovecot 2.3" "$out"
fi
SMTP_TRANSCRIPT=
got=$(smtp_auth "$APPLE_PW" apple-smtp-auth)
expect_eq "the profile's OutgoingPassword passes SMTP AUTH on real Postfix (submissions, TLS)" \
	235 "$got" "$(cat "$SMTP_TRANSCRIPT" 2>/dev/null)"
check "the profile's password is refused for POP3 (not chosen) by real Dovecot, reason app_password_protocol" \
	pop3_refused "$APPLE_PW"

# One byte changed inside the signed content: the signature no longer holds.
cp "$P" "$OUT/tampered.mobileconfig" 2>/dev/null || : >"$OUT/tampered.mobileconfig"
py '
import sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
i = data.find(b"mail.test")
assert i > 0
data[i] ^= 0x01
open(path, "wb").write(data)
' "$OUT/tampered.mobileconfig" || true
if out=$(openssl cms -verify -inform DER -in "$OUT/tampered.mobileconfig" -CAfile "$PKI/ca.pem" \
	-purpose any -out /dev/null 2>&1); then
	not_ok "openssl cms -verify refuses the profile with one byte changed" "$out"
else
	ok "openssl cms -verify refuses the profile with one byte changed"
fi

P2=$OUT/p2.mobileconfig
SECOND_ID= SECOND_PW=
if profile apple "$P2" --protocols imap,smtp &&
	openssl cms -verify -inform DER -in "$P2" -CAfile "$PKI/ca.pem" -purpose any \
		-out "$OUT/p2.plist" >/dev/null 2>&1 &&
	out=$(py "$read_plist" "$OUT/p2.plist" 2>&1); then
	read -r SECOND_ID SECOND_PW <<<"$out"
fi
if [ -n "$APPLE_ID" ] && [ "$SECOND_ID" = "$APPLE_ID" ] && [ -n "$SECOND_PW" ] &&
	[ "$SECOND_PW" != "$APPLE_PW" ]; then
	ok "a second profile has the same PayloadIdentifier ($APPLE_ID) and a new password"
else
	not_ok "a second profile has the same PayloadIdentifier and a new password" \
		"first $APPLE_ID, second ${SECOND_ID:-none}; $(cat "$P2.err" 2>/dev/null)"
fi
DETAIL=$(cat "$P2.err" 2>/dev/null) check "the second app password is named \"iPhone / iPad / Mac (2)\"" \
	grep -q "(iPhone / iPad / Mac (2))" "$P2.err"

before=$(sha256sum <"$P" 2>/dev/null || true)
profile apple "$P" --protocols imap,smtp && rc=0 || rc=$?
DETAIL="exit $rc: $(cat "$P.err")" check "an existing --output file is refused (exit 1), not overwritten" \
	eval '[ "$rc" = 1 ] && grep -q "already exists" "$P.err" && [ "$(sha256sum <"$P")" = "$before" ]'

# ---------------------------------------------------------------------------
echo "# Thunderbird for Android QR code"
Q=$OUT/q.png
if profile android "$Q" --protocols imap,smtp; then
	ok "device profile --kind android writes $(basename "$Q")"
else
	not_ok "device profile --kind android writes the PNG" "$(cat "$Q.err")"
fi
expect_eq "the PNG is mode 600 and not empty" "600 yes" \
	"$(stat -c '%a' "$Q" 2>/dev/null) $([ -s "$Q" ] && echo yes)"
QR=
# zbarimg may complain on stderr about a missing D-Bus; only its stdout is the code.
if QR=$(zbarimg --raw -q "$Q" 2>"$OUT/zbarimg.err") && [ -n "$QR" ]; then
	ok "zbarimg reads a QR code from the PNG"
else
	not_ok "zbarimg reads a QR code from the PNG" "$(cat "$OUT/zbarimg.err")"
	QR=
fi
# The payload field by field, as Thunderbird for Android's account-setup QR code (format
# version 1) lays it out: [version, [part, parts], incoming, [[outgoing, identity]]], a
# server being [protocol, host, port, security (2 STARTTLS, 3 TLS), auth (1 cleartext
# password), user name, ...]. Prints the password.
read_qr='
import json, sys
v = json.loads(sys.argv[1])
assert v[0] == 1 and v[1] == [1, 1], v[:2]
incoming, ((outgoing, identity),) = v[2], v[3]
pw = incoming[7]
assert incoming == [0, "mail.test", 993, 3, 1, "alice@example.org", "", pw], incoming
assert outgoing == [0, "mail.test", 587, 2, 1, "alice@example.org", pw], outgoing
assert identity == ["alice@example.org", "Alice Example"], identity
assert len(pw) >= 20 and pw != sys.argv[2], "a fresh app password, not the Apple one"
print(pw)
'
ANDROID_PW=
if [ -n "$QR" ] && out=$(py "$read_qr" "$QR" "${APPLE_PW:-none}" 2>&1); then
	ANDROID_PW=$out
	ok "the QR code is format 1: IMAP mail.test 993 TLS, SMTP mail.test 587 STARTTLS, user alice@example.org, one password for both"
else
	not_ok "the QR code is JSON with the servers, the user and one password" "$out
$QR"
fi
out="no password read from the QR code"
if [ -n "$ANDROID_PW" ] && out=$(imap_login "$ANDROID_PW" 2>&1); then
	ok "the QR code's password logs in to IMAP through real Dovecot 2.3"
else
	not_ok "the QR code's password logs in to IMAP through real Dovecot 2.3" "$out"
fi

# ---------------------------------------------------------------------------
echo "# settings for any other program"
S=$OUT/settings.json
out=$(mdctl --json device profile alice@example.org --kind settings --protocols imap 2>"$S.err" >"$S") && rc=0 || rc=$?
read_settings='
import json, sys
v = json.load(open(sys.argv[1]))
text = json.dumps(v)
assert "mail.test" in text and "993" in text, text
assert "587" not in text and "995" not in text, "only IMAP was chosen: " + text
def find(x, key):
    if isinstance(x, dict):
        for k, y in x.items():
            if k == key and isinstance(y, str): yield y
            else: yield from find(y, key)
    elif isinstance(x, list):
        for y in x: yield from find(y, key)
pw = list(find(v, "password"))
assert len(pw) == 1, pw
print(pw[0])
'
SETTINGS_PW=
if [ "$rc" = 0 ] && SETTINGS_PW=$(py "$read_settings" "$S" 2>&1); then
	ok "device profile --kind settings --json prints the IMAP server (mail.test 993) and a password"
else
	not_ok "device profile --kind settings --json prints the servers and a password" \
		"exit $rc: $(cat "$S.err") $(cat "$S") $SETTINGS_PW"
	SETTINGS_PW=
fi
if [ -n "$SETTINGS_PW" ] && out=$(printf '%s\n' "$SETTINGS_PW" | mdctl auth test alice@example.org --service imap 2>&1); then
	ok "mailauthd auth test accepts the settings' password for IMAP"
else
	not_ok "mailauthd auth test accepts the settings' password for IMAP" "$out"
fi
got=$(smtp_auth "${SETTINGS_PW:-none}" settings-smtp-auth)
expect_eq "the settings' IMAP-only password is refused by SMTP AUTH on real Postfix" \
	535 "$got" "$(cat "$SMTP_TRANSCRIPT" 2>/dev/null)"

out=$(mdctl --json app-password list alice@example.org 2>&1) || true
DETAIL=$out check "app-password list shows the four app passwords device profile issued" \
	py 'import json, sys; names = sorted(a["name"] for a in json.loads(sys.argv[1])); assert names == ["Android", "Mail program", "iPhone / iPad / Mac", "iPhone / iPad / Mac (2)"], names' "$out"

summary
