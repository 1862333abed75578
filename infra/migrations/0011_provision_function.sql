-- One statement per creation: `provision_request()` does in one round trip what `provision()` did in seven or
-- more (BEGIN, lock, insert, outbox, update, event, audit, COMMIT), with the same rules:
--   * the request row is locked first, so two callers for one request serialise and the second finds it done;
--   * already created / already failed: nothing is written, the state is returned (already_done);
--   * the address is taken (the unique normalised email): the request fails for good (`user_exists`) with its
--     ERROR `creation_failed` event;
--   * created: the user (its id chosen by the caller), the welcome-email outbox row, the request -> created, the
--     INFO `user_created` event, and for a staff role the `account_created` audit row, all in this transaction.
-- The events' texts and metadata come from the caller (`shared.core.health.prepared`: scrubbed, with the trace id);
-- the function adds the request's own facts (mode, fallback); the ERROR event's metadata is the INFO one's
-- without the user id and with the error code. `p_email_lease` creates the outbox row already
-- claimed by the caller for that long (it sends the email right after; the periodic pass leaves the row alone
-- until the lease ends; a redelivery of the same job takes an unrecorded claim over). `p_attempt_id` finishes the consumer's `creation_attempts` row in the same transaction.
-- SECURITY INVOKER (the default): the runtime role calls it with its own row rights (migration 0006 grants
-- EXECUTE on new functions).

-- The consumer attempt (creation_attempts.id) holding the claim it took when it created the row; NULL once any
-- other sender claimed it. A later attempt of the same job may take such a claim over (see below).
ALTER TABLE email_outbox ADD COLUMN claimed_by bigint;

CREATE FUNCTION provision_request(
    p_request_id text, p_user_id uuid, p_source text,
    p_created_message text, p_created_meta jsonb,
    p_exists_message text, p_exists_error text,
    p_email_lease interval DEFAULT NULL, p_attempt_id bigint DEFAULT NULL)
RETURNS TABLE (status text, already_done boolean, error_code text, error text, user_id uuid, email text,
               full_name text, created_at timestamptz, outbox_id bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    req creation_requests%ROWTYPE;
    made users%ROWTYPE;
    box bigint;
BEGIN
    SELECT * INTO req FROM creation_requests r WHERE r.id = p_request_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;  -- no row at all: the caller raises NotFound
    END IF;

    IF req.status IN ('created', 'failed') THEN
        IF p_attempt_id IS NOT NULL THEN
            UPDATE creation_attempts a SET finished_at = clock_timestamp(), outcome = 'already_done',
                   error = CASE WHEN req.status = 'failed' THEN req.error_code END
             WHERE a.id = p_attempt_id;
        END IF;
        IF req.status = 'created' THEN
            -- A job delivered again (its consumer died or stalled after this statement committed) takes over
            -- the welcome email its earlier attempt claimed and never recorded; any other claim is left alone.
            IF p_email_lease IS NOT NULL AND p_attempt_id IS NOT NULL THEN
                UPDATE email_outbox o SET next_attempt_at = now() + p_email_lease, claimed_by = p_attempt_id
                 WHERE o.user_id = req.user_id AND o.request_id = req.id AND o.status = 'pending'
                   AND o.attempts = 0 AND o.claimed_by IS NOT NULL AND o.claimed_by <> p_attempt_id
                RETURNING o.id INTO box;
            END IF;
            RETURN QUERY SELECT 'created'::text, true, NULL::text, NULL::text, u.id, u.email, u.full_name,
                                u.created_at, box
                           FROM users u WHERE u.id = req.user_id;
        ELSE
            RETURN QUERY SELECT 'failed'::text, true, req.error_code, req.error, NULL::uuid, NULL::text, NULL::text,
                                NULL::timestamptz, NULL::bigint;
        END IF;
        RETURN;
    END IF;

    INSERT INTO users AS u (id, email, email_normalized, full_name, phone, product, request_id, role)
    VALUES (p_user_id, req.email, req.email_normalized, req.full_name, req.phone, req.product, req.id, req.role)
    ON CONFLICT (email_normalized) DO NOTHING
    RETURNING u.* INTO made;

    IF made.id IS NULL THEN  -- the address is taken: failed for good
        UPDATE creation_requests r SET status = 'failed', error_code = 'user_exists', error = p_exists_error,
               attempts = r.attempts + 1, updated_at = now()
         WHERE r.id = p_request_id;
        INSERT INTO system_health_logs (level, event, message, metadata, source)
        VALUES ('ERROR', 'creation_failed', p_exists_message,
                (p_created_meta - 'user_id') || jsonb_build_object('mode', req.mode, 'error_code', 'user_exists'),
                p_source);
        IF p_attempt_id IS NOT NULL THEN
            UPDATE creation_attempts a SET finished_at = clock_timestamp(), outcome = 'failed', error = 'user_exists'
             WHERE a.id = p_attempt_id;
        END IF;
        RETURN QUERY SELECT 'failed'::text, false, 'user_exists'::text, p_exists_error, NULL::uuid, NULL::text,
                            NULL::text, NULL::timestamptz, NULL::bigint;
        RETURN;
    END IF;

    INSERT INTO email_outbox AS o (user_id, request_id, next_attempt_at, claimed_by)
    VALUES (made.id, req.id, now() + COALESCE(p_email_lease, interval '0'),
            CASE WHEN p_email_lease IS NOT NULL THEN p_attempt_id END)
    RETURNING o.id INTO box;
    UPDATE creation_requests r SET status = 'created', user_id = made.id, attempts = r.attempts + 1,
           error_code = NULL, error = NULL, updated_at = now()
     WHERE r.id = p_request_id;
    INSERT INTO system_health_logs (level, event, message, metadata, source)
    VALUES ('INFO', 'user_created', p_created_message,
            p_created_meta || jsonb_build_object('mode', req.mode, 'fallback', req.fallback), p_source);
    IF req.role <> 'member' THEN  -- a staff account is an admin change: audited with the user it makes
        INSERT INTO audit_log (actor, action, target, reason, before, after)
        VALUES (req.actor, 'account_created', made.id::text, NULL, NULL,
                jsonb_build_object('user_id', made.id::text, 'role', req.role, 'request_id', req.id));
    END IF;
    IF p_attempt_id IS NOT NULL THEN
        UPDATE creation_attempts a SET finished_at = clock_timestamp(), outcome = 'created', error = NULL
         WHERE a.id = p_attempt_id;
    END IF;
    RETURN QUERY SELECT 'created'::text, false, NULL::text, NULL::text, made.id, made.email, made.full_name,
                        made.created_at, box;
END
$$;
