-- The operator's cockpit: request search, retries on the timeline, runtime limits, a switch that returns by itself.

-- Search: a substring of the address or the name, case and Unicode width ignored. The key is computed by
-- PostgreSQL itself on every write (whoever inserts), and a trigram GIN index answers `LIKE '%...%'`.
-- `search_fold` is the one folding rule (used for the stored key and for the query): NFKC, then Unicode case
-- folding: PostgreSQL 18's casefold(), else lower() under a Unicode-aware collation (lower() under the "C"
-- collation would fold ASCII only).
CREATE EXTENSION IF NOT EXISTS pg_trgm;
DO $$
DECLARE
    fold text;
BEGIN
    IF current_setting('server_version_num')::int >= 180000 THEN
        fold := 'casefold(normalize(value, NFKC) COLLATE pg_unicode_fast)';
    ELSIF EXISTS (SELECT 1 FROM pg_collation WHERE collname = 'pg_c_utf8') THEN
        fold := 'lower(normalize(value, NFKC) COLLATE pg_c_utf8)';
    ELSIF EXISTS (SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu') THEN
        fold := 'lower(normalize(value, NFKC) COLLATE "und-x-icu")';
    ELSE
        fold := 'lower(normalize(value, NFKC))';
    END IF;
    EXECUTE format('CREATE FUNCTION search_fold(value text) RETURNS text LANGUAGE sql IMMUTABLE STRICT'
                   ' PARALLEL SAFE RETURN %s', fold);
END
$$;
ALTER TABLE creation_requests ADD COLUMN search_key text GENERATED ALWAYS AS
    (search_fold(email) || ' ' || search_fold(full_name)) STORED;
CREATE INDEX creation_requests_search_key_trgm ON creation_requests USING gin (search_key gin_trgm_ops);
-- Keyset pagination, newest first.
CREATE INDEX creation_requests_created_at_id ON creation_requests (created_at DESC, id DESC);

-- Every retry of a request (one by one or in bulk): who, when, why. Shown on the request's timeline.
CREATE TABLE creation_retries (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id text NOT NULL REFERENCES creation_requests (id) ON DELETE CASCADE,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,
    reason     text NOT NULL,
    bulk       boolean NOT NULL DEFAULT false
);
CREATE INDEX creation_retries_request ON creation_retries (request_id, id);

-- The kill switch may return by itself: when, and to which mode.
ALTER TABLE system_config ADD COLUMN revert_at timestamptz, ADD COLUMN revert_to text
    CHECK (revert_to IS NULL OR revert_to IN ('async_queue', 'sync_direct'));

-- Runtime limits of the consumers. No row: the configured defaults (RATE_LIMIT_MAX, ...) apply.
CREATE TABLE runtime_limits (
    id                     smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    rate_limit_max         integer NOT NULL CHECK (rate_limit_max BETWEEN 1 AND 10000),
    rate_limit_duration_ms integer NOT NULL CHECK (rate_limit_duration_ms BETWEEN 100 AND 60000),
    concurrency            integer NOT NULL CHECK (concurrency BETWEEN 1 AND 100),
    version                integer NOT NULL,
    reason                 text NOT NULL,
    updated_at             timestamptz NOT NULL DEFAULT now(),
    updated_by             text NOT NULL
);
