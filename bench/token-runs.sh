# shellcheck shell=bash
# Sourced by bench/run.sh (its variables and functions: write_config, measure, stop, …).
#
# Webmail sign-on: RS256 access tokens over XOAUTH2, verified against the key set of a
# provider that is only a static file server here (a JWT needs no call to the provider but
# the one key-set fetch). Cache warm: a few hundred tokens, each seen before. Cache cold:
# a fresh daemon and tens of thousands of tokens, each one sent once.
if ((COLD_TOKENS <= 0)); then
    log "4c. access-token runs skipped (BENCH_COLD_TOKENS=0)"
    return 0
fi
log "4c. access-token logins (XOAUTH2, RS256 JWTs): cache warm, then cold"
((APP_PASSWORDS + TOKEN_USERS <= BULK)) || die "BENCH_MAILBOXES too small for BENCH_TOKEN_USERS"
ISSUER_DIR=$T/issuer
mkdir -p "$ISSUER_DIR"
python3 - "$ISSUER_DIR" <<'PY' &
import functools, http.server, os, sys
root = sys.argv[1]
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=root))
with open(root + "/port.tmp", "w") as f:
    f.write(str(server.server_port))
os.rename(root + "/port.tmp", root + "/port")
server.serve_forever()
PY
PIDS+=("$!")
for _ in $(seq 50); do
    [[ -s $ISSUER_DIR/port ]] && break
    sleep 0.1
done
[[ -s $ISSUER_DIR/port ]] || die "the key-set server did not start"
ISSUER=http://127.0.0.1:$(cat "$ISSUER_DIR/port")
printf 'bench-client-secret\n' >"$MA/client-secret"
TOKEN_TOML="
[oidc]
issuer = \"$ISSUER\"
client_id = \"mailauthd\"
client_secret_file = \"$MA/client-secret\"
redirect_url = \"http://127.0.0.1:9/callback\"
authorization_endpoint = \"$ISSUER/auth\"
token_endpoint = \"$ISSUER/token\"
jwks_uri = \"$ISSUER/jwks.json\"
userinfo_endpoint = \"$ISSUER/me\"

[oauth]
audiences = [\"webmail\"]
introspection = \"never\"
"
# The token users: bulk mailboxes after the app-password ones, made OpenID mailboxes.
python3 bench/populate.py bind-identities "$DB" "$DOMAIN" "$((APP_PASSWORDS + 1))" "$TOKEN_USERS" \
    "$ISSUER" "$T/subjects.tsv"
"$LOADGEN" tokens --subjects "$T/subjects.tsv" --count "$TOKEN_USERS" --issuer "$ISSUER" \
    --jwks "$ISSUER_DIR/warm.json" --out "$T/tokens-warm.tsv"
log "   minting $COLD_TOKENS distinct tokens for the cold run"
start=$SECONDS
"$LOADGEN" tokens --subjects "$T/subjects.tsv" --count "$COLD_TOKENS" --issuer "$ISSUER" \
    --jwks "$ISSUER_DIR/cold.json" --out "$T/tokens-cold.tsv"
log "   minted in $((SECONDS - start)) s"
# Each file signed by a key of its own; the key set publishes both.
jq -s '{keys: (.[0].keys + .[1].keys)}' "$ISSUER_DIR/warm.json" "$ISSUER_DIR/cold.json" \
    >"$ISSUER_DIR/jwks.json"
write_config "$POLICY_TOML$TOKEN_TOML"
"${MCTL[@]}" config check >/dev/null 2>&1 ||
    die "config check refuses the token config: $("${MCTL[@]}" config check 2>&1 | tail -n 5)"
start_token_daemon() {
    start_mailauthd "$MA/serve.log"
}
start_token_daemon
# The warm-up fills the cache with every warm token (each connection goes round them).
measure "access tokens (JWT), warm cache" mailauthd "$MA_PID" auth --target "$MA_AUTH" \
    --creds "$T/tokens-warm.tsv" --mech xoauth2 "${AUTH_CHEAP[@]}"
stop "$MA_PID"
# Cold: a fresh daemon, every request a token it has not seen. Half the minted tokens are
# sent, so no connection runs on into the share of the next one, which it started at.
start_token_daemon
RUN_WARMUP=0 RUN_DURATION=120 measure "access tokens (JWT), cold cache" mailauthd "$MA_PID" \
    --requests "$((COLD_TOKENS / 2))" auth --target "$MA_AUTH" --creds "$T/tokens-cold.tsv" \
    --mech xoauth2 "${AUTH_CHEAP[@]}"
stop "$MA_PID"
# The same, one login at a time per connection, as a webmail's logins come: what one
# login waits when nothing queues behind it (with 8 in flight per connection, latency is
# mostly the queue: in flight divided by the rate).
start_token_daemon
RUN_WARMUP=0 RUN_DURATION=120 measure "access tokens (JWT), cold cache, 1 in flight" mailauthd "$MA_PID" \
    --requests "$((COLD_TOKENS / 2))" auth --target "$MA_AUTH" --creds "$T/tokens-cold.tsv" \
    --mech xoauth2 "${AUTH_HASHED[@]}"
stop "$MA_PID"
