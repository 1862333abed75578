-- The consumer's trail: one row per try of a creation request (when it started, how it ended).

CREATE TABLE creation_attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id  text NOT NULL REFERENCES creation_requests (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    consumer    text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    outcome     text CHECK (outcome IN ('created', 'already_done', 'failed', 'retry')),
    error       text
);
CREATE INDEX creation_attempts_request ON creation_attempts (request_id, id);
CREATE INDEX creation_attempts_started_at ON creation_attempts (started_at);
