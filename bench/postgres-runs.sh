# shellcheck shell=bash
# Sourced by bench/run.sh (its variables and functions: write_config, measure, stop, …).
#
# The app-password runs again with the store on PostgreSQL: the very rows of the SQLite
# database, copied over, first at BENCH_MAILBOXES mailboxes, then (after the SQLite
# database was grown) at BENCH_BIG. The daemon is restarted for each, so its connection
# pool starts empty both times.
#   BENCH_POSTGRES_URL  a server and database this run may create a database from
#                       (default: MAILAUTHD_TEST_POSTGRES_URL, else the local server);
#                       "" skips these runs.
PG_ADMIN=${BENCH_POSTGRES_URL-${MAILAUTHD_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}}
PG_DB=""
PG_URL=""

# Copies TABLE from the SQLite database into PostgreSQL, same columns, NULLs as NULLs.
pg_copy_table() { # TABLE
    local columns
    columns=$(sqlite3 "$DB" "SELECT group_concat(name, ', ') FROM pragma_table_info('$1')")
    sqlite3 -csv -nullvalue '\N' "$DB" "SELECT $columns FROM $1" |
        psql "$PG_URL" -v ON_ERROR_STOP=1 -qc "\\copy $1 ($columns) FROM STDIN WITH (FORMAT csv, NULL '\\N')"
}

# Replaces PostgreSQL's rows with SQLite's; prints how many mailboxes it holds then.
pg_copy_rows() {
    PGOPTIONS="-c client_min_messages=warning" psql "$PG_URL" -v ON_ERROR_STOP=1 -qc \
        "TRUNCATE app_passwords, mailboxes, domains CASCADE"
    local table
    for table in domains mailboxes app_passwords; do pg_copy_table "$table"; done
    # Vacuumed, analysed and checkpointed now, so that neither autovacuum nor a checkpoint
    # of the bulk load runs during the measured logins.
    psql "$PG_URL" -v ON_ERROR_STOP=1 -qc "VACUUM ANALYZE"
    psql "$PG_URL" -v ON_ERROR_STOP=1 -qc "CHECKPOINT" 2>/dev/null ||
        log "   (CHECKPOINT needs a superuser or pg_checkpoint: skipped)"
    psql "$PG_URL" -Atc "SELECT count(*) FROM mailboxes"
}

# The app-password runs against a daemon on PostgreSQL, labelled with SUFFIX.
pg_measure() { # SUFFIX
    write_config "[store]
url = \"$PG_URL\""
    app_password_runs ", PostgreSQL$1" "$MA/serve-pg.log"
    write_config "$POLICY_TOML"
}

pg_drop() {
    [[ -n $PG_DB ]] || return 0
    psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
}

# The database for these runs: created, migrated by mailauthd, filled from SQLite.
pg_start() {
    if [[ -z $PG_ADMIN ]]; then
        log "6. PostgreSQL runs skipped (BENCH_POSTGRES_URL is empty)"
        return 1
    fi
    command -v psql >/dev/null || die "psql is needed for the PostgreSQL runs (or BENCH_POSTGRES_URL=\"\")"
    PG_DB=mailauthd_bench_$$
    psql "$PG_ADMIN" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE $PG_DB" ||
        die "cannot create a database at $PG_ADMIN (BENCH_POSTGRES_URL=\"\" skips these runs)"
    PG_URL="${PG_ADMIN%/*}/$PG_DB"
    write_config "[store]
url = \"$PG_URL\""
    "$BIN" --config "$MA/mailauthd.toml" migrate >/dev/null
    write_config "$POLICY_TOML"
    log "6. PostgreSQL $(psql "$PG_URL" -Atc 'SHOW server_version'): $(pg_copy_rows) mailboxes copied from SQLite"
}
