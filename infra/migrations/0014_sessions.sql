-- Sessions end when they should, on every instance (docs/sign-in-and-sessions.md).
--
-- revoked_tokens: one row per signed-out token (its jti) until the token's own expiry; sign-out prunes the
--   rows whose token has expired anyway.
-- A role change, a disable and an erase end every older token of the account: a trigger moves
--   users.tokens_valid_after to the moment of the change (clock_timestamp(), taken after the row lock, so a
--   sign-in committed just before is older and a sign-in just after is newer), whoever makes the change (the
--   admin routes, the erase, an operator's UPDATE by hand). A password set and POST .../sessions/revoke set it
--   themselves.
-- Every instance keeps the revocations in memory (shared/core/sessions.py) and LISTENs on
--   `provisioner_sessions`: both triggers announce a change when its transaction commits. The payload says
--   nothing (no id, no jti): an instance told of a change reads the revocations again.

CREATE TABLE revoked_tokens (
    jti        text PRIMARY KEY CHECK (length(jti) BETWEEN 1 AND 100),
    user_id    uuid NOT NULL REFERENCES users (id),
    revoked_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX revoked_tokens_expires_at ON revoked_tokens (expires_at);

-- The instances read the accounts whose tokens were ended lately (within the longest token lifetime).
CREATE INDEX users_tokens_valid_after ON users (tokens_valid_after) WHERE tokens_valid_after IS NOT NULL;

CREATE FUNCTION end_older_tokens() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.role IS DISTINCT FROM OLD.role
       OR (NEW.disabled_at IS NOT NULL AND OLD.disabled_at IS NULL)
       OR (NEW.erased_at IS NOT NULL AND OLD.erased_at IS NULL) THEN
        NEW.tokens_valid_after := greatest(NEW.tokens_valid_after, clock_timestamp());
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER users_end_older_tokens
    BEFORE UPDATE OF role, disabled_at, erased_at ON users
    FOR EACH ROW EXECUTE FUNCTION end_older_tokens();

CREATE FUNCTION notify_sessions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('provisioner_sessions', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER users_sessions_notify
    AFTER UPDATE ON users  -- no column list: a change made by the BEFORE trigger above counts too
    FOR EACH ROW WHEN (NEW.tokens_valid_after IS DISTINCT FROM OLD.tokens_valid_after
                       OR NEW.disabled_at IS DISTINCT FROM OLD.disabled_at
                       OR NEW.erased_at IS DISTINCT FROM OLD.erased_at)
    EXECUTE FUNCTION notify_sessions();

CREATE TRIGGER revoked_tokens_notify
    AFTER INSERT ON revoked_tokens
    FOR EACH ROW EXECUTE FUNCTION notify_sessions();
