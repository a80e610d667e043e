-- mailauthd schema, MariaDB/MySQL dialect. Keep in step with ../sqlite and ../postgres:
-- same tables, same columns, same order. Times are unix seconds; flags are 0/1 integers.
-- MySQL ignores inline REFERENCES, so foreign keys are table constraints here; utf8mb4_bin
-- keeps comparisons exact as in the other dialects.

CREATE TABLE domains (
    name VARCHAR(253) NOT NULL PRIMARY KEY,
    active BIGINT NOT NULL DEFAULT 1,
    max_mailboxes BIGINT NULL,
    max_quota BIGINT NULL,
    total_quota BIGINT NULL,
    created_at BIGINT NOT NULL,
    lock_version BIGINT NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE alias_domains (
    name VARCHAR(253) NOT NULL PRIMARY KEY,
    target VARCHAR(253) NOT NULL,
    active BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    FOREIGN KEY (target) REFERENCES domains (name) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE templates (
    name VARCHAR(255) NOT NULL PRIMARY KEY,
    quota BIGINT NOT NULL,
    protocols VARCHAR(64) NOT NULL,
    active BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE template_mappings (
    claim_value VARCHAR(255) NOT NULL PRIMARY KEY,
    position BIGINT NOT NULL,
    template VARCHAR(255) NOT NULL,
    FOREIGN KEY (template) REFERENCES templates (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE settings (
    name VARCHAR(255) NOT NULL PRIMARY KEY,
    value VARCHAR(1024) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE mailboxes (
    address VARCHAR(320) NOT NULL PRIMARY KEY,
    domain VARCHAR(253) NOT NULL,
    password_hash VARCHAR(512) NULL,
    auth_source VARCHAR(16) NOT NULL,
    oidc_issuer VARCHAR(255) NULL,
    oidc_subject VARCHAR(255) NULL,
    display_name VARCHAR(255) NOT NULL,
    quota BIGINT NOT NULL,
    protocols VARCHAR(64) NOT NULL,
    active BIGINT NOT NULL,
    template VARCHAR(255) NULL,
    template_hash VARCHAR(64) NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_login_at BIGINT NULL,
    last_login_ip VARCHAR(64) NULL,
    last_login_service VARCHAR(32) NULL,
    FOREIGN KEY (domain) REFERENCES domains (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX mailboxes_domain ON mailboxes (domain);
CREATE UNIQUE INDEX mailboxes_oidc_identity ON mailboxes (oidc_issuer, oidc_subject);

CREATE TABLE app_passwords (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    mailbox VARCHAR(320) NOT NULL,
    name VARCHAR(255) NOT NULL,
    lookup_hash VARCHAR(64) NOT NULL,
    protocols VARCHAR(64) NOT NULL,
    networks VARCHAR(1024) NOT NULL,
    expires_at BIGINT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NULL,
    last_used_ip VARCHAR(64) NULL,
    last_used_service VARCHAR(32) NULL,
    FOREIGN KEY (mailbox) REFERENCES mailboxes (address) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE UNIQUE INDEX app_passwords_lookup ON app_passwords (lookup_hash);
CREATE INDEX app_passwords_mailbox ON app_passwords (mailbox);

CREATE TABLE aliases (
    address VARCHAR(320) NOT NULL,
    target VARCHAR(320) NOT NULL,
    domain VARCHAR(253) NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (address, target),
    FOREIGN KEY (domain) REFERENCES domains (name) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX aliases_target ON aliases (target);

CREATE TABLE send_as (
    mailbox VARCHAR(320) NOT NULL,
    pattern VARCHAR(320) NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (mailbox, pattern),
    FOREIGN KEY (mailbox) REFERENCES mailboxes (address) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
