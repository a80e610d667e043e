#!/bin/sh
# How long one identity-liveness pass takes over many linked mailboxes (default 10,000),
# against the fake provider of tests/liveness.rs on loopback, on SQLite. Prints one line;
# asserts no timing. BENCH_MAILBOXES and BENCH_CONCURRENCY change the size and the
# requests in flight. Add --release to the cargo line for an optimised build.
set -eu
cd "$(dirname "$0")/.."
BENCH_MAILBOXES="${BENCH_MAILBOXES:-10000}" BENCH_CONCURRENCY="${BENCH_CONCURRENCY:-4}" \
    cargo test --test liveness bench_one_pass_over_many_linked_mailboxes -- \
    --ignored --nocapture 2>&1 | grep 'liveness pass:'
