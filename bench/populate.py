#!/usr/bin/env python3
"""Bulk rows for the benchmark database, written straight into mailauthd's SQLite file.

`mailauthd mailbox add` and `mailauthd mailbox import` write one mailbox per transaction,
which is right for people and far too slow for ten thousand (let alone a million)
mailboxes. This script writes the same rows the CLI writes (see
src/store/migrations/0001_init.sql) in one transaction per command. The database
must already exist (`mailauthd migrate`) and the domain must have been added through the
CLI.

App-password lookup hashes are computed exactly as src/auth/app_password.rs does:
HMAC-SHA256 under the 32-byte key file, over b"mailauthd app password v1\\0" followed by
the 20 lower-case letters of the password (dashes removed).

Commands:
  mailboxes DB DOMAIN FIRST COUNT HASH
      u<7 digits>@DOMAIN for FIRST..FIRST+COUNT-1, all with stored password HASH
  app-passwords DB KEYFILE DOMAIN FIRST COUNT OUT
      one app password for each of those mailboxes; writes `address<TAB>app password`
      lines to OUT
  fill DB DOMAIN FIRST COUNT HASH
      like mailboxes, plus one app password each with a random (never used) lookup hash:
      the million-mailbox database
  bind-identities DB DOMAIN FIRST COUNT ISSUER OUT
      those mailboxes made OpenID ones, each bound to subject s<7 digits> at ISSUER (as
      a first sign-in leaves them); writes `address<TAB>subject` lines to OUT
  plain-passwd DOMAIN FIRST COUNT OUT CREDS N
      Dovecot passwd-file `{PLAIN}` lines for the same mailboxes, and the first N as
      loadgen credentials (`address<TAB>password`)
"""

import hashlib
import hmac
import os
import secrets
import sqlite3
import string
import sys
import time

PROTOCOLS = "imap,pop3,sieve,smtp"


def address(i, domain):
    return f"u{i:07d}@{domain}"


def plain_password(i):
    return f"bench-pw-{i:07d}"


def connect(db):
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-200000")
    return con


def insert_mailboxes(con, rows):
    now = int(time.time())
    con.executemany(
        "INSERT INTO mailboxes (address, domain, password_hash, auth_source, oidc_issuer,"
        " oidc_subject, display_name, quota, protocols, active, template, template_hash,"
        " created_at, updated_at) VALUES (?, ?, ?, 'local', NULL, NULL, '', 0, ?, 1, NULL,"
        " NULL, ?, ?)",
        ((addr, dom, h, PROTOCOLS, now, now) for addr, dom, h in rows),
    )


def insert_app_passwords(con, rows):
    now = int(time.time())
    con.executemany(
        "INSERT INTO app_passwords (mailbox, name, lookup_hash, protocols, networks,"
        " expires_at, created_at) VALUES (?, 'bench', ?, ?, '', NULL, ?)",
        ((mbox, lookup, PROTOCOLS, now) for mbox, lookup in rows),
    )


def cmd_mailboxes(db, domain, first, count, stored_hash):
    first, count = int(first), int(count)
    con = connect(db)
    con.execute("BEGIN")
    insert_mailboxes(
        con, ((address(i, domain), domain, stored_hash) for i in range(first, first + count))
    )
    con.execute("COMMIT")


def new_app_password():
    letters = "".join(secrets.choice(string.ascii_lowercase) for _ in range(20))
    return "-".join(letters[i : i + 4] for i in range(0, 20, 4))


def lookup_hash(key, app_password):
    letters = app_password.replace("-", "").replace(" ", "").lower().encode()
    return hmac.new(key, b"mailauthd app password v1\0" + letters, hashlib.sha256).hexdigest()


def cmd_app_passwords(db, keyfile, domain, first, count, out):
    first, count = int(first), int(count)
    with open(keyfile, "rb") as f:
        key = f.read()
    if len(key) != 32:
        sys.exit(f"{keyfile}: expected 32 bytes, found {len(key)}")
    rows, creds = [], []
    for i in range(first, first + count):
        addr, pw = address(i, domain), new_app_password()
        rows.append((addr, lookup_hash(key, pw)))
        creds.append(f"{addr}\t{pw}\n")
    con = connect(db)
    con.execute("BEGIN")
    insert_app_passwords(con, rows)
    con.execute("COMMIT")
    with open(out, "w") as f:
        f.writelines(creds)


def cmd_fill(db, domain, first, count, stored_hash):
    first, count = int(first), int(count)
    con = connect(db)
    con.execute("BEGIN")
    batch = 50_000
    for start in range(first, first + count, batch):
        end = min(start + batch, first + count)
        addrs = [address(i, domain) for i in range(start, end)]
        insert_mailboxes(con, ((a, domain, stored_hash) for a in addrs))
        insert_app_passwords(con, ((a, os.urandom(32).hex()) for a in addrs))
    con.execute("COMMIT")
    # Into the database file, the log emptied: the runs after this measure a large
    # database, not the checkpoint of its bulk load.
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def cmd_bind_identities(db, domain, first, count, issuer, out):
    first, count = int(first), int(count)
    rows = [(address(i, domain), f"s{i:07d}") for i in range(first, first + count)]
    con = connect(db)
    con.execute("BEGIN")
    now = int(time.time())
    con.executemany(
        "UPDATE mailboxes SET auth_source = 'oidc', oidc_issuer = ?, oidc_subject = ?,"
        " last_sign_in_at = ? WHERE address = ?",
        ((issuer, sub, now, addr) for addr, sub in rows),
    )
    con.execute("COMMIT")
    with open(out, "w") as f:
        f.writelines(f"{addr}\t{sub}\n" for addr, sub in rows)


def cmd_plain_passwd(domain, first, count, out, creds, ncreds):
    first, count, ncreds = int(first), int(count), int(ncreds)
    with open(out, "w") as f:
        for i in range(first, first + count):
            f.write(f"{address(i, domain)}:{{PLAIN}}{plain_password(i)}\n")
    with open(creds, "w") as f:
        for i in range(first, first + min(count, ncreds)):
            f.write(f"{address(i, domain)}\t{plain_password(i)}\n")


COMMANDS = {
    "mailboxes": cmd_mailboxes,
    "app-passwords": cmd_app_passwords,
    "fill": cmd_fill,
    "bind-identities": cmd_bind_identities,
    "plain-passwd": cmd_plain_passwd,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
