-- mailauthd schema. One text for SQLite, MariaDB/MySQL and PostgreSQL: `migrate.rs` renders
-- what stands in braces for each dialect. Times are unix seconds; flags are 0/1 integers.
-- MySQL ignores inline REFERENCES, so there foreign keys are table constraints, written in
-- a `mysql:` brace; its tables are utf8mb4_bin, which keeps comparisons exact as in the
-- other dialects.

CREATE TABLE domains (
    name {text 253} NOT NULL PRIMARY KEY,
    active BIGINT NOT NULL DEFAULT 1,
    max_mailboxes BIGINT NULL,
    max_quota BIGINT NULL,
    total_quota BIGINT NULL,
    created_at BIGINT NOT NULL,
    lock_version BIGINT NOT NULL DEFAULT 0
){table};

CREATE TABLE alias_domains (
    name {text 253} NOT NULL PRIMARY KEY,
    target {text 253} NOT NULL{ref domains (name) ON DELETE CASCADE},
    active BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL{mysql:,
    FOREIGN KEY (target) REFERENCES domains (name) ON DELETE CASCADE}
){table};

CREATE TABLE templates (
    name {text 255} NOT NULL PRIMARY KEY,
    quota BIGINT NOT NULL,
    protocols {text 64} NOT NULL,
    active BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
){table};

CREATE TABLE template_mappings (
    claim_value {text 255} NOT NULL PRIMARY KEY,
    position BIGINT NOT NULL,
    template {text 255} NOT NULL{ref templates (name)}{mysql:,
    FOREIGN KEY (template) REFERENCES templates (name)}
){table};

CREATE TABLE settings (
    name {text 255} NOT NULL PRIMARY KEY,
    value {text 1024} NOT NULL
){table};

CREATE TABLE mailboxes (
    address {text 320} NOT NULL PRIMARY KEY,
    domain {text 253} NOT NULL{ref domains (name)},
    password_hash {text 512} NULL,
    auth_source {text 16} NOT NULL,
    oidc_issuer {text 255} NULL,
    oidc_subject {text 255} NULL,
    display_name {text 255} NOT NULL,
    quota BIGINT NOT NULL,
    protocols {text 64} NOT NULL,
    active BIGINT NOT NULL,
    template {text 255} NULL,
    template_hash {text 64} NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_login_at BIGINT NULL,
    last_login_ip {text 64} NULL,
    last_login_service {text 32} NULL{mysql:,
    FOREIGN KEY (domain) REFERENCES domains (name)}
){table};
CREATE INDEX mailboxes_domain ON mailboxes (domain);
CREATE UNIQUE INDEX mailboxes_oidc_identity ON mailboxes (oidc_issuer, oidc_subject);

CREATE TABLE app_passwords (
    id {serial},
    mailbox {text 320} NOT NULL{ref mailboxes (address) ON DELETE CASCADE},
    name {text 255} NOT NULL,
    lookup_hash {text 64} NOT NULL,
    protocols {text 64} NOT NULL,
    networks {text 1024} NOT NULL,
    expires_at BIGINT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NULL,
    last_used_ip {text 64} NULL,
    last_used_service {text 32} NULL{mysql:,
    FOREIGN KEY (mailbox) REFERENCES mailboxes (address) ON DELETE CASCADE}
){table};
CREATE UNIQUE INDEX app_passwords_lookup ON app_passwords (lookup_hash);
CREATE INDEX app_passwords_mailbox ON app_passwords (mailbox);

CREATE TABLE aliases (
    address {text 320} NOT NULL,
    target {text 320} NOT NULL,
    domain {text 253} NOT NULL{ref domains (name) ON DELETE CASCADE},
    created_at BIGINT NOT NULL,
    PRIMARY KEY (address, target){mysql:,
    FOREIGN KEY (domain) REFERENCES domains (name) ON DELETE CASCADE}
){table};
CREATE INDEX aliases_target ON aliases (target);

CREATE TABLE send_as (
    mailbox {text 320} NOT NULL{ref mailboxes (address) ON DELETE CASCADE},
    pattern {text 320} NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (mailbox, pattern){mysql:,
    FOREIGN KEY (mailbox) REFERENCES mailboxes (address) ON DELETE CASCADE}
){table};
