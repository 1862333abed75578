-- Personal data kept only as long as needed (docs/personal-data.md).
-- pii_redacted_at: when the row's address, name and phone were removed, by the retention pass
--   (PII_RETENTION_DAYS after it finished) or by an erase. The row keeps its ids, times and outcome.
-- A request whose data is gone can never run again: it is finished, and stays finished.

ALTER TABLE creation_requests ADD COLUMN pii_redacted_at timestamptz;
ALTER TABLE creation_requests ADD CONSTRAINT creation_requests_redacted_is_finished
    CHECK (pii_redacted_at IS NULL OR status IN ('created', 'failed'));
-- The retention pass's work list: finished requests not redacted yet, oldest first.
CREATE INDEX creation_requests_pii_due ON creation_requests (updated_at)
    WHERE pii_redacted_at IS NULL AND status IN ('created', 'failed');

ALTER TABLE bulk_batches ADD COLUMN pii_redacted_at timestamptz;
ALTER TABLE email_outbox ADD COLUMN pii_redacted_at timestamptz;
