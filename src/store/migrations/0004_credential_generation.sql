-- Web page sessions.
-- A counter every change of how a mailbox proves who it is bumps: a new password, a switched
-- auth source, an identity-provider account unlinked. A page session remembers the value it
-- began with and ends when the mailbox's differs. Touches no other migration's columns.

ALTER TABLE mailboxes ADD COLUMN credential_generation BIGINT NOT NULL DEFAULT 0;
