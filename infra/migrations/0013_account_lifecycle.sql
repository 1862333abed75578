-- Account lifecycle: the columns every lifecycle feature shares (disable, revoke, erase).
-- disabled_at: the account may not sign in, set a password or use a token while set.
-- tokens_valid_after: every token of the account issued (iat) before this time is refused; a sign-out of one
--   token is recorded by its jti instead (later migrations).
-- erased_at: the person's data was erased (POST /api/admin/users/{id}/erase); the row keeps its id and times.

ALTER TABLE users
    ADD COLUMN disabled_at        timestamptz,
    ADD COLUMN tokens_valid_after timestamptz,
    ADD COLUMN erased_at          timestamptz;
