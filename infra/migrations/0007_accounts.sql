-- Accounts: every user has a role (members from POST /api/users; staff: admin, sales_manager, viewer), and a
-- password once the welcome link was used (Argon2id PHC string; never the password).
-- A creation request carries the role of the account it makes, so staff accounts go through the same
-- provisioning path (and the same welcome email) as every other user.

ALTER TABLE users
    ADD COLUMN role            text NOT NULL DEFAULT 'member'
                               CHECK (role IN ('member', 'admin', 'sales_manager', 'viewer')),
    ADD COLUMN password_hash   text,
    ADD COLUMN password_set_at timestamptz,
    ADD COLUMN last_sign_in_at timestamptz;
CREATE INDEX users_staff ON users (created_at) WHERE role <> 'member';

ALTER TABLE creation_requests
    ADD COLUMN role text NOT NULL DEFAULT 'member'
                    CHECK (role IN ('member', 'admin', 'sales_manager', 'viewer'));
