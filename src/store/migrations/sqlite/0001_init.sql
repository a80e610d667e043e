-- mailauthd schema, SQLite dialect. Keep in step with ../mysql and ../postgres:
-- same tables, same columns, same order. Times are unix seconds; flags are 0/1 integers.

CREATE TABLE domains (
    name TEXT NOT NULL PRIMARY KEY,
    active BIGINT NOT NULL DEFAULT 1,
    max_mailboxes BIGINT NULL,
    max_quota BIGINT NULL,
    total_quota BIGINT NULL,
    created_at BIGINT NOT NULL,
    lock_version BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE alias_domains (
    name TEXT NOT NULL PRIMARY KEY,
    target TEXT NOT NULL REFERENCES domains (name) ON DELETE CASCADE,
    active BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL
);

CREATE TABLE templates (
    name TEXT NOT NULL PRIMARY KEY,
    quota BIGINT NOT NULL,
    protocols TEXT NOT NULL,
    active BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE template_mappings (
    claim_value TEXT NOT NULL PRIMARY KEY,
    position BIGINT NOT NULL,
    template TEXT NOT NULL REFERENCES templates (name)
);

CREATE TABLE settings (
    name TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE mailboxes (
    address TEXT NOT NULL PRIMARY KEY,
    domain TEXT NOT NULL REFERENCES domains (name),
    password_hash TEXT NULL,
    auth_source TEXT NOT NULL,
    oidc_issuer TEXT NULL,
    oidc_subject TEXT NULL,
    display_name TEXT NOT NULL,
    quota BIGINT NOT NULL,
    protocols TEXT NOT NULL,
    active BIGINT NOT NULL,
    template TEXT NULL,
    template_hash TEXT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_login_at BIGINT NULL,
    last_login_ip TEXT NULL,
    last_login_service TEXT NULL
);
CREATE INDEX mailboxes_domain ON mailboxes (domain);
CREATE UNIQUE INDEX mailboxes_oidc_identity ON mailboxes (oidc_issuer, oidc_subject);

CREATE TABLE app_passwords (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mailbox TEXT NOT NULL REFERENCES mailboxes (address) ON DELETE CASCADE,
    name TEXT NOT NULL,
    lookup_hash TEXT NOT NULL,
    protocols TEXT NOT NULL,
    networks TEXT NOT NULL,
    expires_at BIGINT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NULL,
    last_used_ip TEXT NULL,
    last_used_service TEXT NULL
);
CREATE UNIQUE INDEX app_passwords_lookup ON app_passwords (lookup_hash);
CREATE INDEX app_passwords_mailbox ON app_passwords (mailbox);

CREATE TABLE aliases (
    address TEXT NOT NULL,
    target TEXT NOT NULL,
    domain TEXT NOT NULL REFERENCES domains (name) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (address, target)
);
CREATE INDEX aliases_target ON aliases (target);

CREATE TABLE send_as (
    mailbox TEXT NOT NULL REFERENCES mailboxes (address) ON DELETE CASCADE,
    pattern TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (mailbox, pattern)
);
