-- A bound on every query the runtime runs (issue 21): no statement of the functions or consumers may hold a
-- connection, locks or a CPU of the database for long, whatever the input.
--
-- The runtime role's own defaults in this database (they apply to every new session of provisioner_runtime,
-- also connections made outside the pool such as the kill-switch LISTEN connection):
--   statement_timeout = 30s                     a statement still running after 30 s is cancelled
--   idle_in_transaction_session_timeout = 60s   a session idle inside an open transaction is ended
-- The pool sets a tighter statement_timeout on each connection it opens (DB_STATEMENT_TIMEOUT_MS, 15 s by default,
-- shared/core/db.py), whichever role it connects as. The owner (the migrate job) gets no limit: a migration may
-- legitimately run for minutes.
DO $$
BEGIN
    EXECUTE format('ALTER ROLE provisioner_runtime IN DATABASE %I SET statement_timeout = %L',
                   current_database(), '30s');
    EXECUTE format('ALTER ROLE provisioner_runtime IN DATABASE %I SET idle_in_transaction_session_timeout = %L',
                   current_database(), '60s');
END
$$;
