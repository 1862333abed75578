-- The audit trail: every admin change (who, what, why, before and after). Kept 400 days by its own
-- retention; the 7-day health-log cleanup never touches this table.

CREATE TABLE audit_log (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    action  text NOT NULL,
    target  text,
    reason  text,
    before  jsonb,
    after   jsonb
);
CREATE INDEX audit_log_at ON audit_log (at);

CREATE FUNCTION cleanup_audit_log(retention interval DEFAULT interval '400 days')
RETURNS bigint LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM audit_log WHERE at < now() - retention RETURNING 1
    )
    SELECT count(*) FROM gone;
$$;

-- W3C trace context of the request that created a creation request (not PII): its timeline shows the trace id,
-- the consumer continues the trace from it.
ALTER TABLE creation_requests ADD COLUMN trace_id text, ADD COLUMN traceparent text;
