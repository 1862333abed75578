"""The development admin account of `invoke dev`: signs in to the panel with an email address and a password.

Only for a database that `invoke dev` itself runs (its embedded PostgreSQL in .local/dev) and only with
APP_ENV=development: never against a configured DATABASE_URL, never in production. The account is made like
every staff account (same provisioning path, same welcome email, an audit row); its password is a new random one
at every start, printed once and stored only as its Argon2id hash.
"""

from __future__ import annotations

import asyncio
import secrets

from shared.accounts.passwords import hash_password
from shared.accounts.staff import CreateAccountCommand, create_account
from shared.bootstrap import open_deps
from shared.core import db
from shared.core.errors import UserExists
from shared.core.identity import normalize_email
from shared.core.settings import Settings

DEV_ADMIN_EMAIL = "dev-admin@example.com"


async def _ensure(settings: Settings) -> str:
    deps = await open_deps(settings, role="invoke-dev")
    try:
        try:
            await create_account(deps, CreateAccountCommand(email=DEV_ADMIN_EMAIL, full_name="Dev Admin",
                                                            role="admin"), actor="invoke-dev")
        except UserExists:
            pass  # made by an earlier run: only its password changes
        password = secrets.token_urlsafe(15)
        password_hash = await hash_password(password)
        async with db.connection(deps.pool) as conn:
            await conn.execute("UPDATE users SET password_hash = %s, password_set_at = now()"
                               " WHERE email_normalized = %s AND role = 'admin'",
                               (password_hash, normalize_email(DEV_ADMIN_EMAIL)))
        return password
    finally:
        await deps.aclose()


def ensure_dev_admin(env: dict[str, str]) -> str:
    """Make (or keep) the dev admin and give it a fresh random password; returns that password."""
    settings = Settings(**{k: v for k, v in env.items() if k.isupper()})
    if not settings.is_development:
        raise RuntimeError("the dev admin account exists only with APP_ENV=development")
    return asyncio.run(_ensure(settings))
