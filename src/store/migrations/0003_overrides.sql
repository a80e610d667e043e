-- The postmaster's word on a mailbox.
-- overrides lists which of quota, protocols and state the postmaster set on the mailbox
-- (mailbox add / mailbox set with --quota, --protocols, --active), comma-separated in that
-- order, empty for none. Re-applying a template at sign-in leaves those settings alone;
-- mailbox set --template or --reset clears the list.

ALTER TABLE mailboxes ADD COLUMN overrides {text 64} NOT NULL DEFAULT '';

-- Mailboxes from before this migration: keep what the postmaster evidently set.
-- Quota: different from the template's, and the template unchanged since the mailbox was
-- last written (so the difference is not a template change still to be applied).
UPDATE mailboxes SET overrides = 'quota'
WHERE quota <> (SELECT t.quota FROM templates t WHERE t.name = mailboxes.template)
  AND updated_at >= (SELECT t.updated_at FROM templates t WHERE t.name = mailboxes.template);

-- Protocols: the mailbox lacks one its template allows (never the other way round, which a
-- template restricted since then would explain).
UPDATE mailboxes SET overrides = CASE WHEN overrides = '' THEN 'protocols' ELSE {concat overrides, ',protocols'} END
WHERE EXISTS (
    SELECT 1 FROM templates t WHERE t.name = mailboxes.template AND (
        (t.protocols LIKE '%imap%' AND mailboxes.protocols NOT LIKE '%imap%')
        OR (t.protocols LIKE '%pop3%' AND mailboxes.protocols NOT LIKE '%pop3%')
        OR (t.protocols LIKE '%sieve%' AND mailboxes.protocols NOT LIKE '%sieve%')
        OR (t.protocols LIKE '%smtp%' AND mailboxes.protocols NOT LIKE '%smtp%')
    )
);

-- State: disabled (0) or receive-only (2) where the template (if any) says otherwise, so a
-- mailbox the postmaster shut stays shut.
UPDATE mailboxes SET overrides = CASE WHEN overrides = '' THEN 'state' ELSE {concat overrides, ',state'} END
WHERE active <> 1 AND NOT EXISTS (
    SELECT 1 FROM templates t WHERE t.name = mailboxes.template AND t.active = mailboxes.active
);
