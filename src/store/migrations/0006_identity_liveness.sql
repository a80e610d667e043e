-- Whether the identity provider still knows a person. Touches no other migration's columns.
--
-- refresh_token: the provider's refresh token, sealed (AEAD, a key derived from the key
-- file, bound to the row's address, issuer and subject); never stored in the clear.
-- identity_suspended_at/_reason: set when the provider said invalid_grant; app passwords
-- are refused while set; the next web sign-in clears them. Nothing else is changed.
-- identity_checked_at/_answer: the last liveness check and what the provider said.
-- last_sign_in_at: the last web sign-in through the provider, for max_days_without_sign_in.

ALTER TABLE mailboxes ADD COLUMN refresh_token {ascii 8192} NULL;
ALTER TABLE mailboxes ADD COLUMN identity_suspended_at BIGINT NULL;
ALTER TABLE mailboxes ADD COLUMN identity_suspended_reason {text 64} NULL;
ALTER TABLE mailboxes ADD COLUMN identity_checked_at BIGINT NULL;
ALTER TABLE mailboxes ADD COLUMN identity_answer {text 64} NULL;
ALTER TABLE mailboxes ADD COLUMN last_sign_in_at BIGINT NULL;

-- Mailboxes linked before this migration have no recorded sign-in: their count starts
-- now, so turning max_days_without_sign_in on never locks out people who signed in
-- yesterday but before the upgrade.
UPDATE mailboxes SET last_sign_in_at = {now} WHERE oidc_subject IS NOT NULL;

-- One row per kind of pass; a pass holds it until expires_at, so the daemons and the
-- command line never run two at once.
CREATE TABLE identity_check_lease (
    name {text 64} NOT NULL PRIMARY KEY,
    holder {text 64} NULL,
    expires_at BIGINT NOT NULL
){table};

INSERT INTO identity_check_lease (name, holder, expires_at) VALUES ('liveness', NULL, 0);
