-- The audit trail cannot be rewritten at run time: the runtime role (migration 0006) may read and add audit
-- rows, never change or remove one. The 400-day prune is the one way rows leave, and it runs with the rights of
-- the function's owner (whoever runs the migrations), not the caller's:
--   * SECURITY DEFINER with a pinned search_path (a caller's own schema cannot stand in for public.audit_log);
--   * no argument: the 400 days are fixed here, so a caller cannot ask for "older than 0 seconds";
--   * EXECUTE is granted to the runtime role explicitly and taken from PUBLIC.
-- Row changes of the owner (a superuser by hand) are not prevented: that is a database administrator's act, done
-- outside the application's credentials.

REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM provisioner_runtime;

DROP FUNCTION cleanup_audit_log(interval);
CREATE FUNCTION cleanup_audit_log()
RETURNS bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH gone AS (
        DELETE FROM public.audit_log WHERE at < now() - interval '400 days' RETURNING 1
    )
    SELECT count(*) FROM gone;
$$;
REVOKE ALL ON FUNCTION cleanup_audit_log() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cleanup_audit_log() TO provisioner_runtime;
