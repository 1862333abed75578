-- Core schema: users, creation requests, the kill switch, health events, the email outbox.

CREATE TABLE users (
    id               uuid PRIMARY KEY,
    email            text NOT NULL,
    -- NFKC + casefold of the address: "Ａlice@Example.com" and "alice@example.com" are one user.
    email_normalized text NOT NULL,
    full_name        text NOT NULL,
    phone            text,
    product          text,
    request_id       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_normalized_key UNIQUE (email_normalized)
);

CREATE TABLE creation_requests (
    id               text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]+$' AND id !~ '^[0-9]+$'),
    actor            text NOT NULL,
    idempotency_key  text,
    body_hash        text NOT NULL,
    email            text NOT NULL,
    email_normalized text NOT NULL,
    full_name        text NOT NULL,
    phone            text,
    product          text,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'processing', 'created', 'failed')),
    mode             text NOT NULL CHECK (mode IN ('async_queue', 'sync_direct')),
    fallback         boolean NOT NULL DEFAULT false,
    fallback_reason  text,
    attempts         integer NOT NULL DEFAULT 0,
    error_code       text,
    error            text,
    user_id          uuid REFERENCES users (id),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- An Idempotency-Key is scoped to the caller that sent it.
CREATE UNIQUE INDEX creation_requests_idempotency_key
    ON creation_requests (actor, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- At most one unfinished request per address: a second one is refused with 409 while the first runs.
CREATE UNIQUE INDEX creation_requests_one_pending_per_email
    ON creation_requests (email_normalized) WHERE status IN ('queued', 'processing');
CREATE INDEX creation_requests_status_created_at ON creation_requests (status, created_at);

CREATE TABLE system_config (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    version    integer NOT NULL DEFAULT 1,
    reason     text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text NOT NULL DEFAULT 'migration'
);
ALTER TABLE system_config ADD CONSTRAINT system_config_traffic_mode_value
    CHECK (key <> 'traffic_mode' OR value IN ('async_queue', 'sync_direct'));
INSERT INTO system_config (key, value, reason) VALUES ('traffic_mode', 'async_queue', 'initial default')
    ON CONFLICT (key) DO NOTHING;

CREATE TABLE system_health_logs (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    level      text NOT NULL CHECK (level IN ('INFO', 'WARNING', 'ERROR', 'SWITCH')),
    event      text NOT NULL,
    message    text NOT NULL,
    metadata   jsonb NOT NULL DEFAULT '{}'::jsonb,
    source     text NOT NULL DEFAULT 'unknown'
);
CREATE INDEX system_health_logs_created_at ON system_health_logs (created_at);
CREATE INDEX system_health_logs_level_id ON system_health_logs (level, id);

-- One-time set-password tokens: only the SHA-256 of the token is stored; the token itself is in the email.
CREATE TABLE password_setup_tokens (
    token_hash text PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX password_setup_tokens_user ON password_setup_tokens (user_id);

-- Transactional outbox for the welcome email: written in the same transaction as the user.
CREATE TABLE email_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id),
    request_id      text NOT NULL,
    kind            text NOT NULL DEFAULT 'welcome',
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    provider_id     text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    CONSTRAINT email_outbox_one_per_user UNIQUE (user_id, kind)
);
CREATE INDEX email_outbox_pending ON email_outbox (next_attempt_at) WHERE status = 'pending';

-- The original's auto-cleanup, as a function: deletes health logs older than the retention.
CREATE FUNCTION cleanup_health_logs(retention interval DEFAULT interval '7 days')
RETURNS bigint LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM system_health_logs WHERE created_at < now() - retention RETURNING 1
    )
    SELECT count(*) FROM gone;
$$;
