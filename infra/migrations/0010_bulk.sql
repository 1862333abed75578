-- Bulk uploads: one batch per upload; each accepted row is an ordinary creation request carrying batch_id.
-- Rejected rows and duplicates are never requests: the batch keeps them (row, field/reason, the email cell as
-- sent) for results.csv.

CREATE TABLE bulk_batches (
    id              text PRIMARY KEY CHECK (id ~ '^bat_[0-9a-f]{32}$'),
    actor           text NOT NULL,
    idempotency_key text,
    body_hash       text NOT NULL,
    rows_in_file    integer NOT NULL,
    accepted        integer NOT NULL,
    rejected        jsonb NOT NULL DEFAULT '[]'::jsonb,
    duplicates      jsonb NOT NULL DEFAULT '[]'::jsonb,
    -- queue: every row went to BullMQ; drain: some or all rows wait for the drain (queue off or Redis lost)
    path            text NOT NULL CHECK (path IN ('queue', 'drain')),
    enqueued        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
-- The whole upload is idempotent under the caller's Idempotency-Key.
CREATE UNIQUE INDEX bulk_batches_idempotency_key
    ON bulk_batches (actor, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX bulk_batches_actor_created_at ON bulk_batches (actor, created_at DESC);
CREATE INDEX bulk_batches_unfinished ON bulk_batches (created_at) WHERE finished_at IS NULL;

ALTER TABLE creation_requests ADD COLUMN batch_id text REFERENCES bulk_batches (id),
                              ADD COLUMN batch_row integer;
CREATE INDEX creation_requests_batch ON creation_requests (batch_id, batch_row) WHERE batch_id IS NOT NULL;
-- The drain's work list: batch rows recorded while the queue was off (mode sync_direct), not finished yet.
CREATE INDEX creation_requests_drain ON creation_requests (created_at, batch_row)
    WHERE batch_id IS NOT NULL AND mode = 'sync_direct' AND status IN ('queued', 'processing');
-- A caller's own recent requests (the sales desk).
CREATE INDEX creation_requests_actor_created_at ON creation_requests (actor, created_at DESC);
