-- The runtime database role: what the functions and the consumers connect as. It may read and write rows
-- (SELECT, INSERT, UPDATE, DELETE) and use sequences, nothing else: no DDL, no TRUNCATE, no role or database
-- creation. The schema stays owned by whoever runs the migrations (on Cloud SQL the owner user of the migrate
-- job; locally and in the tests the superuser).
--
-- Idempotent and safe on a plain PostgreSQL: roles are cluster-wide, so it may exist already (another database
-- of the same cluster, an earlier run); then only the grants are (re)applied. It is created LOGIN without a
-- password, so nobody can sign in as it until the operator sets one (infra/README.md, "Database roles").

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'provisioner_runtime') THEN
        CREATE ROLE provisioner_runtime LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    END IF;
END
$$;

-- On PostgreSQL < 15 every role may create objects in public; take that right away (15+ does not give it).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO provisioner_runtime', current_database());
END
$$;
GRANT USAGE ON SCHEMA public TO provisioner_runtime;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO provisioner_runtime;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO provisioner_runtime;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO provisioner_runtime;
-- Which migrations ran is the owner's business: readable, never writable, at run time.
REVOKE INSERT, UPDATE, DELETE ON schema_migrations FROM provisioner_runtime;

-- Tables, sequences and functions the next migrations create (as the same owner) get the same rights.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO provisioner_runtime;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO provisioner_runtime;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT EXECUTE ON FUNCTIONS TO provisioner_runtime;
