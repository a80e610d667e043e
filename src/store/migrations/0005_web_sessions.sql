-- Web page sessions in the store.
-- A session is keyed by the SHA-256 digest (hex) of the random id in the browser's cookie;
-- the id itself is never stored, so a copy of this table opens no session. Every daemon on
-- the database reads the same rows, and they outlive a restart. Anonymous rows (no mailbox)
-- hold a form's CSRF token or a pending sign-in; signed-in rows also hold the provider's
-- issuer, subject and session id (`sid`), by which a back-channel logout finds them.

CREATE TABLE web_sessions (
    id_digest {text 64} NOT NULL PRIMARY KEY,
    csrf {text 128} NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    mailbox {text 320} NULL,
    via {text 16} NULL,
    credential_generation BIGINT NULL,
    id_token {text 8192} NULL,
    oidc_issuer {text 255} NULL,
    oidc_subject {text 255} NULL,
    oidc_sid {text 255} NULL,
    pending_state {text 128} NULL,
    pending_nonce {text 128} NULL,
    pending_verifier {text 128} NULL,
    notice {text 1024} NULL
){table};

CREATE INDEX web_sessions_expiry ON web_sessions (expires_at);
CREATE INDEX web_sessions_mailbox ON web_sessions (mailbox, expires_at);
CREATE INDEX web_sessions_sid ON web_sessions (oidc_issuer, oidc_sid);
CREATE INDEX web_sessions_subject ON web_sessions (oidc_issuer, oidc_subject);

-- The `jti` of every back-channel logout token accepted, until it expires: a token
-- presented again, to this daemon or another, is a replay.
CREATE TABLE logout_tokens_seen (
    issuer {text 255} NOT NULL,
    jti {text 255} NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, jti)
){table};

CREATE INDEX logout_tokens_seen_expiry ON logout_tokens_seen (expires_at);
