-- Sender policy. Keep in step with the other dialects' 0002_policy.sql.
-- A template's own sending limits, in the text form `mailauthd template set --send-limits`
-- takes (e.g. "1h:100:1000,1d:500:5000", or "none" for no limits). A template without a
-- row here sends under the [policy] default from the config file.

CREATE TABLE template_send_limits (
    template TEXT NOT NULL PRIMARY KEY REFERENCES templates (name) ON DELETE CASCADE,
    limits TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
