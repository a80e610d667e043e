#!/usr/bin/env bash
# The shipped fail2ban filter matches the refusals the real daemon logs, and only those.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=lib.sh
. "$ROOT/tests/e2e/lib.sh"
BIN=${MAILAUTHD_BIN:-$ROOT/target/debug/mailauthd}
command -v fail2ban-regex >/dev/null || apt-get install -y -qq --no-install-recommends fail2ban >/dev/null
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export MAILAUTHD_CONFIG=$WORK/mailauthd.toml
printf 'state_directory = "%s"\n' "$WORK/state" > "$MAILAUTHD_CONFIG"
"$BIN" domain add example.org >/dev/null
printf 'right\n' | "$BIN" mailbox add alice@example.org --password-stdin >/dev/null
: > "$WORK/log"
for pw in wrong also-wrong; do
    printf '%s\n' "$pw" | "$BIN" auth test alice@example.org --service imap --rip 192.0.2.66 2>>"$WORK/log" >/dev/null || true
done
printf 'x\n' | "$BIN" auth test nobody@example.org --service pop3 --rip 2001:db8::66 2>>"$WORK/log" >/dev/null || true
printf 'right\n' | "$BIN" auth test alice@example.org --service imap --rip 198.51.100.1 2>>"$WORK/log" >/dev/null
cat "$WORK/log"
out=$(fail2ban-regex -v "$WORK/log" "$ROOT/conf-examples/fail2ban/filter.d/mailauthd.conf")
check "three refusals matched" eval 'grep -Eq "^Failregex: 3 total" <<<"$out"'
check "the IPv4 source is found" eval 'grep -q "192.0.2.66" <<<"$out"'
check "the IPv6 source is found" eval 'grep -q "2001:db8::66" <<<"$out"'
check "the success is not matched" eval '! grep -A3 "Matched line" <<<"$out" | grep -q "198.51.100.1"'
summary
