-- Sender policy.
-- A template's own sending limits, in the text form `mailauthd template set --send-limits`
-- takes (e.g. "1h:100:1000,1d:500:5000", or "none" for no limits). A template without a
-- row here sends under the [policy] default from the config file.

CREATE TABLE template_send_limits (
    template {text 255} NOT NULL PRIMARY KEY{ref templates (name) ON DELETE CASCADE},
    limits {text 1000} NOT NULL,
    updated_at BIGINT NOT NULL{mysql:,
    FOREIGN KEY (template) REFERENCES templates (name) ON DELETE CASCADE}
){table};
