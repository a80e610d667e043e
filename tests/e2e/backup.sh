#!/usr/bin/env bash
# Backups done the way docs/operations.md ("Backups") says, restored the way it says,
# and proven with `mailauthd auth test`:
#
#   SQLite      sqlite3 .backup while the daemon runs; restore into a fresh state folder
#   MariaDB     mariadb-dump --single-transaction; restore into a dropped and re-created
#               database, used by a database user whose grant came before the restore
#   PostgreSQL  pg_dump -Fc; dropdb, createdb -O ROLE, pg_restore --no-owner --role=ROLE,
#               used by that role
#
# Each time: an app password works from the restored copy with the key restored and is
# refused without it, while a stored password works either way; SQLite also shows that a
# key restored with mode 0644 keeps mailauthd from starting, and that an app password made
# after the backup is not in it.
#
# The commands are the documented ones with paths and names replaced (/var/backups/mailauthd,
# /var/lib/mailauthd, the database "mailauthd" and the role "mailauthd" become scratch
# ones), the servers reached through the environment below instead of local root and
# `runuser -u postgres`, and without `-o mailauthd -g mailauthd` (no such user here).
#
# Environment:
#   MAILAUTHD_BIN                the binary (default target/debug/mailauthd); never built here
#   MAILAUTHD_TEST_MYSQL_URL     mysql://USER[:PASSWORD]@HOST[:PORT]/DB: a MariaDB server on
#                                which that user may create databases and users
#                                (default mysql://root@127.0.0.1:3306/test)
#   MAILAUTHD_TEST_POSTGRES_URL  postgres://USER[:PASSWORD]@HOST[:PORT]/DB: a PostgreSQL server
#                                on which that user may create databases and roles
#                                (default postgres://postgres@127.0.0.1:5432/test)
#   CI                           when set, a missing client tool or server fails the run;
#                                otherwise that database is skipped
# Prints one "ok - …" / "not ok - …" line per check, then "N passed, N failed".

set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=lib.sh
. "$ROOT/tests/e2e/lib.sh"

BIN=${MAILAUTHD_BIN:-$ROOT/target/debug/mailauthd}
if [ ! -x "$BIN" ]; then
	not_ok "setup: no mailauthd at $BIN (build it first or set MAILAUTHD_BIN)"
	summary || exit 1
fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
# The documented commands say `mailauthd`.
export PATH="$(dirname "$BIN"):$PATH"
unset MAILAUTHD_CONFIG

WORK=$(mktemp -d)
DAEMON_PID=
PG_DROP_DBS=()
PG_DROP_ROLE=
MY_DROP_DBS=()
MY_DROP_USER=

note() { echo "# $*"; }

# Skipped outside CI, a failure in CI.
unavailable() { # WHAT WHY
	if [ -n "${CI:-}" ]; then
		not_ok "$1: $2 (required in CI)"
	else
		note "skipped $1: $2"
	fi
}

cleanup() {
	stop_pid "$DAEMON_PID"
	local db
	for db in "${PG_DROP_DBS[@]}"; do
		dropdb --if-exists --force "$db" >/dev/null 2>&1 || true
	done
	[ -z "$PG_DROP_ROLE" ] || dropuser --if-exists "$PG_DROP_ROLE" >/dev/null 2>&1 || true
	for db in "${MY_DROP_DBS[@]}"; do
		mariadb -e "DROP DATABASE IF EXISTS \`$db\`" >/dev/null 2>&1 || true
	done
	[ -z "$MY_DROP_USER" ] || mariadb -e "DROP USER IF EXISTS '$MY_DROP_USER'@'%'" >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT

# write_config FILE STATE_DIR [STORE_URL]
write_config() {
	{
		printf 'state_directory = "%s"\nruntime_directory = "%s"\n' "$2" "$2.run"
		printf '[store]\nconnect_timeout_ms = 3000\n'
		[ -z "${3:-}" ] || printf 'url = "%s"\n' "$3"
		printf '[credentials]\nargon2_memory_kib = 8192\nargon2_iterations = 1\n'
	} >"$1"
}

# m CONFIG ARGS...: mailauthd with that config
m() {
	local config=$1
	shift
	MAILAUTHD_CONFIG=$config mailauthd "$@"
}

# app_password CONFIG ADDRESS NAME PROTOCOLS: sets AP
app_password() {
	AP=$(m "$1" --json app-password create "$2" --name "$3" --protocols "$4" |
		sed -n 's/^ *"password": *"\([a-z-]*\)".*/\1/p')
	[ -n "$AP" ]
}

# The mailboxes every backup holds: alice (local, own password, one app password),
# olga (oidc, one app password). Sets ALICE_AP and OLGA_AP.
ALICE_PW='Alice-Stored-Pw-2024'
populate() { # CONFIG
	m "$1" domain add example.org || return 1
	printf '%s\n' "$ALICE_PW" | m "$1" mailbox add alice@example.org --password-stdin || return 1
	m "$1" mailbox add olga@example.org --authsource oidc --no-password || return 1
	app_password "$1" alice@example.org laptop imap || return 1
	ALICE_AP=$AP
	app_password "$1" olga@example.org phone imap,smtp || return 1
	OLGA_AP=$AP
}

# expect_auth NAME CONFIG ADDRESS SECRET WANT_EXIT WANT_REASON
expect_auth() {
	local out rc=0
	out=$(printf '%s\n' "$4" | m "$2" auth test "$3" --service imap 2>&1) || rc=$?
	if [ "$rc" = "$5" ] && grep -q "^reason  *$6\$" <<<"$out"; then
		ok "$1"
	else
		not_ok "$1 (want exit $5 and reason $6, got exit $rc)" "$out"
	fi
}

# The checks every restored copy gets. RESTORED: with the key; NOKEY: without it.
restored_checks() { # LABEL RESTORED_CONFIG NOKEY_CONFIG
	expect_auth "$1: olga's app password (oidc mailbox) is accepted with the key restored" \
		"$2" olga@example.org "$OLGA_AP" 0 app_password
	expect_auth "$1: alice's app password (local mailbox) is accepted with the key restored" \
		"$2" alice@example.org "$ALICE_AP" 0 app_password
	expect_auth "$1: alice's stored password is accepted" \
		"$2" alice@example.org "$ALICE_PW" 0 password
	expect_auth "$1, no key: olga's app password is refused (oidc_needs_app_password)" \
		"$3" olga@example.org "$OLGA_AP" 1 oidc_needs_app_password
	expect_auth "$1, no key: alice's app password is refused (bad_credentials)" \
		"$3" alice@example.org "$ALICE_AP" 1 bad_credentials
	expect_auth "$1, no key: alice's stored password still works" \
		"$3" alice@example.org "$ALICE_PW" 0 password
}

###########################################################################
# SQLite, backed up while the daemon runs

sqlite_phase() {
	if ! command -v sqlite3 >/dev/null 2>&1; then
		unavailable "SQLite backup" "the sqlite3 command is not installed"
		return 0
	fi
	local live=$WORK/sqlite/live backups=$WORK/sqlite/backups
	local config=$WORK/sqlite/live.toml out rc
	mkdir -p "$WORK/sqlite"
	write_config "$config" "$live"
	m "$config" migrate >/dev/null

	MAILAUTHD_CONFIG=$config mailauthd serve 2>"$WORK/sqlite/daemon.log" &
	DAEMON_PID=$!
	if ! wait_for 20 grep -q "mailauthd ready" "$WORK/sqlite/daemon.log"; then
		not_ok "SQLite: the daemon starts" "$(cat "$WORK/sqlite/daemon.log")"
		return 0
	fi
	if ! populate "$config" >"$WORK/sqlite/populate.log" 2>&1; then
		not_ok "SQLite: mailboxes made" "$(cat "$WORK/sqlite/populate.log")"
		return 0
	fi
	expect_auth "SQLite, live: olga's app password works" "$config" olga@example.org "$OLGA_AP" 0 app_password
	if [ -s "$live/mailauthd.db-wal" ]; then
		note "the running daemon's WAL holds $(stat -c %s "$live/mailauthd.db-wal") bytes not yet in mailauthd.db"
	fi

	# docs/operations.md, SQLite, "While the daemon runs":
	install -d -m 0700 "$backups"
	sqlite3 "$live/mailauthd.db" ".backup '$backups/mailauthd.db'"
	install -m 0600 "$live/app-password.key" "$backups/app-password.key"

	# The config folder, twice (the backup runs every night).
	local etc=$WORK/sqlite/etc
	install -d -m 0755 "$etc"
	cp "$config" "$etc/mailauthd.toml"
	install -m 0640 /dev/null "$etc/oidc-client-secret"
	cp -aT "$etc" "$backups/etc"
	cp -aT "$etc" "$backups/etc"
	if [ "$(stat -c %a "$backups/etc/oidc-client-secret")" = 640 ] && [ ! -e "$backups/etc/etc" ] &&
		cmp -s "$config" "$backups/etc/mailauthd.toml"; then
		ok "SQLite: cp -aT copies the config folder with its modes, the same way every run"
	else
		not_ok "SQLite: cp -aT copies the config folder" "$(ls -lR "$backups/etc")"
	fi

	expect_eq "SQLite: PRAGMA integrity_check of the copy says ok" ok \
		"$(sqlite3 "$backups/mailauthd.db" 'PRAGMA integrity_check')"
	app_password "$config" olga@example.org after-backup imap
	local after_ap=$AP
	stop_pid "$DAEMON_PID" 15
	DAEMON_PID=
	check "SQLite: a cleanly stopped daemon leaves no mailauthd.db-wal" test ! -e "$live/mailauthd.db-wal"

	# docs/operations.md, SQLite, "To restore" (systemctl stop: the daemon is stopped):
	local state=$WORK/sqlite/restored restored=$WORK/sqlite/restored.toml
	install -d -m 0750 "$state"
	rm -f "$state/mailauthd.db-wal" "$state/mailauthd.db-shm"
	install -m 0640 "$backups/mailauthd.db" "$state/mailauthd.db"
	install -m 0600 "$backups/app-password.key" "$state/app-password.key"
	write_config "$restored" "$state"
	rc=0
	out=$(m "$restored" migrate 2>&1) || rc=$?
	if [ "$rc" = 0 ] && grep -q "is up to date" <<<"$out"; then
		ok "SQLite: mailauthd migrate on the restored copy"
	else
		not_ok "SQLite: mailauthd migrate on the restored copy (exit $rc)" "$out"
	fi
	MAILAUTHD_CONFIG=$restored mailauthd serve 2>"$WORK/sqlite/restored.log" &
	DAEMON_PID=$!
	if wait_for 20 grep -q "mailauthd ready" "$WORK/sqlite/restored.log"; then
		ok "SQLite: the daemon starts on the restored copy"
	else
		not_ok "SQLite: the daemon starts on the restored copy" "$(cat "$WORK/sqlite/restored.log")"
	fi
	stop_pid "$DAEMON_PID" 15
	DAEMON_PID=
	expect_auth "SQLite: an app password made after the backup is not in the restored copy" \
		"$restored" olga@example.org "$after_ap" 1 oidc_needs_app_password

	# The same backup restored without its key: the next command makes a new one.
	local nokey_state=$WORK/sqlite/nokey nokey=$WORK/sqlite/nokey.toml
	install -d -m 0750 "$nokey_state"
	install -m 0640 "$backups/mailauthd.db" "$nokey_state/mailauthd.db"
	write_config "$nokey" "$nokey_state"
	restored_checks "SQLite" "$restored" "$nokey"
	if [ -e "$nokey_state/app-password.key" ] &&
		! cmp -s "$nokey_state/app-password.key" "$backups/app-password.key"; then
		ok "SQLite, no key: mailauthd made a new key of its own"
	else
		not_ok "SQLite, no key: mailauthd made a new key of its own"
	fi

	# A key restored by something that does not keep modes stops mailauthd, with the fix
	# named.
	local open_state=$WORK/sqlite/open open=$WORK/sqlite/open.toml
	install -d -m 0750 "$open_state"
	install -m 0640 "$backups/mailauthd.db" "$open_state/mailauthd.db"
	install -m 0644 "$backups/app-password.key" "$open_state/app-password.key"
	write_config "$open" "$open_state"
	rc=0
	out=$(printf '%s\n' "$OLGA_AP" | m "$open" auth test olga@example.org 2>&1) || rc=$?
	if [ "$rc" = 1 ] && grep -q "readable by group or others (mode 644); run: chmod 600" <<<"$out"; then
		ok "SQLite: a key restored with mode 0644 is refused, naming chmod 600"
	else
		not_ok "SQLite: a key restored with mode 0644 is refused (exit $rc)" "$out"
	fi
}

###########################################################################
# MariaDB

mariadb_phase() {
	local tool
	for tool in mariadb mariadb-dump; do
		if ! command -v "$tool" >/dev/null 2>&1; then
			unavailable "MariaDB backup" "$tool is not installed"
			return 0
		fi
	done
	local url=${MAILAUTHD_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
	local re='^mysql://([^:@/]+)(:([^@/]*))?@([^:/?]+)(:([0-9]+))?/'
	if ! [[ $url =~ $re ]]; then
		not_ok "MariaDB: cannot read MAILAUTHD_TEST_MYSQL_URL ($url)"
		return 0
	fi
	local host=${BASH_REMATCH[4]} port=${BASH_REMATCH[6]:-3306}
	# The documented commands run as local root; here the client options come from a file.
	MYCNF=$WORK/my.cnf
	printf '[client]\nhost=%s\nport=%s\nuser=%s\npassword=%s\n' \
		"$host" "$port" "${BASH_REMATCH[1]}" "${BASH_REMATCH[3]}" >"$MYCNF"
	chmod 600 "$MYCNF"
	mariadb() { command mariadb --defaults-extra-file="$MYCNF" "$@"; }
	mariadb-dump() { command mariadb-dump --defaults-extra-file="$MYCNF" "$@"; }
	if ! mariadb -e 'SELECT 1' >/dev/null 2>"$WORK/mariadb.err"; then
		unavailable "MariaDB backup" "no server at $host:$port: $(cat "$WORK/mariadb.err")"
		return 0
	fi

	local live=mailauthd_bk_$$_live db=mailauthd_bk_$$ user=mailauthd_bk_$$
	local pw
	pw=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
	MY_DROP_DBS=("$live" "$db")
	MY_DROP_USER=$user
	# The site's database and its user, as they were before anything went wrong.
	mariadb -e "CREATE DATABASE \`$live\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
		CREATE DATABASE \`$db\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
		CREATE USER '$user'@'%' IDENTIFIED BY '$pw';
		GRANT ALL ON \`$live\`.* TO '$user'@'%';
		GRANT ALL ON \`$db\`.* TO '$user'@'%';"
	local config=$WORK/mariadb/live.toml
	mkdir -p "$WORK/mariadb"
	write_config "$config" "$WORK/mariadb/live" "mysql://$user:$pw@$host:$port/$live"
	if ! populate "$config" >"$WORK/mariadb/populate.log" 2>&1; then
		not_ok "MariaDB: mailboxes made" "$(cat "$WORK/mariadb/populate.log")"
		return 0
	fi

	# docs/operations.md, MariaDB or MySQL:
	local backups=$WORK/mariadb/backups
	install -d -m 0700 "$backups"
	mariadb-dump --single-transaction "$live" >"$backups/mailauthd.sql"
	install -m 0600 "$WORK/mariadb/live/app-password.key" "$backups/app-password.key"

	# "To restore", into the database the grant was made for before:
	local state=$WORK/mariadb/restored
	mariadb -e "DROP DATABASE IF EXISTS \`$db\`; CREATE DATABASE \`$db\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
	mariadb "$db" <"$backups/mailauthd.sql"
	install -d -m 0750 "$state"
	install -m 0600 "$backups/app-password.key" "$state/app-password.key"
	local restored=$WORK/mariadb/restored.toml nokey=$WORK/mariadb/nokey.toml out rc=0
	write_config "$restored" "$state" "mysql://$user:$pw@$host:$port/$db"
	write_config "$nokey" "$WORK/mariadb/nokey" "mysql://$user:$pw@$host:$port/$db"
	out=$(m "$restored" migrate 2>&1) || rc=$?
	if [ "$rc" = 0 ] && grep -q "is up to date" <<<"$out"; then
		ok "MariaDB: mailauthd migrate on the restored database, as the user whose grant survived the drop"
	else
		not_ok "MariaDB: mailauthd migrate on the restored database (exit $rc)" "$out"
	fi
	restored_checks "MariaDB" "$restored" "$nokey"
}

###########################################################################
# PostgreSQL

postgres_phase() {
	local tool
	for tool in psql pg_dump pg_restore createdb dropdb createuser dropuser; do
		if ! command -v "$tool" >/dev/null 2>&1; then
			unavailable "PostgreSQL backup" "$tool is not installed"
			return 0
		fi
	done
	local url=${MAILAUTHD_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
	local re='^postgres(ql)?://([^:@/]+)(:([^@/]*))?@([^:/?]+)(:([0-9]+))?/([^?]*)'
	if ! [[ $url =~ $re ]]; then
		not_ok "PostgreSQL: cannot read MAILAUTHD_TEST_POSTGRES_URL ($url)"
		return 0
	fi
	# The documented commands run as `runuser -u postgres --`; here libpq's variables say
	# where and as whom.
	export PGUSER=${BASH_REMATCH[2]} PGPASSWORD=${BASH_REMATCH[4]} PGHOST=${BASH_REMATCH[5]}
	export PGPORT=${BASH_REMATCH[7]:-5432} PGOPTIONS='-c client_min_messages=warning'
	local admin_db=${BASH_REMATCH[8]:-postgres}
	if ! psql -X -d "$admin_db" -Atc 'SELECT 1' >/dev/null 2>"$WORK/psql.err"; then
		unavailable "PostgreSQL backup" "no server at $PGHOST:$PGPORT: $(cat "$WORK/psql.err")"
		return 0
	fi

	local role=mailauthd_bk_$$ live=mailauthd_bk_$$_live db=mailauthd_bk_$$
	PG_DROP_ROLE=$role
	PG_DROP_DBS=("$live" "$db")
	createuser "$role"
	createdb -O "$role" "$live"
	local config=$WORK/postgres/live.toml
	mkdir -p "$WORK/postgres"
	write_config "$config" "$WORK/postgres/live" "postgres://$role@$PGHOST:$PGPORT/$live"
	if ! populate "$config" >"$WORK/postgres/populate.log" 2>&1; then
		not_ok "PostgreSQL: mailboxes made" "$(cat "$WORK/postgres/populate.log")"
		return 0
	fi

	# docs/operations.md, PostgreSQL:
	local backups=$WORK/postgres/backups
	install -d -m 0700 "$backups"
	pg_dump -Fc "$live" >"$backups/mailauthd.pgdump"
	install -m 0600 "$WORK/postgres/live/app-password.key" "$backups/app-password.key"

	# "To restore":
	local state=$WORK/postgres/restored
	dropdb --if-exists "$db"
	createdb -O "$role" "$db"
	pg_restore --no-owner --role="$role" -d "$db" <"$backups/mailauthd.pgdump"
	install -d -m 0750 "$state"
	install -m 0600 "$backups/app-password.key" "$state/app-password.key"
	expect_eq "PostgreSQL: every restored table belongs to the role" 0 \
		"$(psql -X -d "$db" -Atc "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner <> '$role'")"
	local restored=$WORK/postgres/restored.toml nokey=$WORK/postgres/nokey.toml out rc=0
	write_config "$restored" "$state" "postgres://$role@$PGHOST:$PGPORT/$db"
	write_config "$nokey" "$WORK/postgres/nokey" "postgres://$role@$PGHOST:$PGPORT/$db"
	out=$(m "$restored" migrate 2>&1) || rc=$?
	if [ "$rc" = 0 ] && grep -q "is up to date" <<<"$out"; then
		ok "PostgreSQL: mailauthd migrate on the restored database, as the role"
	else
		not_ok "PostgreSQL: mailauthd migrate on the restored database (exit $rc)" "$out"
	fi
	restored_checks "PostgreSQL" "$restored" "$nokey"
}

sqlite_phase
mariadb_phase
postgres_phase
summary
