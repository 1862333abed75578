"""Pure rules: email identity, settings safety, tokens, request ids."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.core.auth import Role, authenticate, issue_token
from shared.core.errors import Forbidden, Unauthorized
from shared.core.identity import normalize_email
from shared.core.settings import DEV_JWT_SECRET, Settings
from shared.creation.creation import new_request_id
from shared.creation.models import CreateUserCommand

URLS = {"DATABASE_URL": "postgresql://u@127.0.0.1:1/db", "REDIS_URL": "redis://127.0.0.1:2/0"}


@given(st.text(min_size=1, max_size=60))
def test_normalisation_is_idempotent(address):
    once = normalize_email(address)
    assert normalize_email(once) == once


@given(st.from_regex(r"[a-z][a-z0-9.]{0,20}@[a-z]{1,10}\.(com|org)", fullmatch=True))
def test_case_and_full_width_variants_share_one_key(address):
    wide = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in address.upper())
    assert unicodedata.normalize("NFKC", wide) != address
    assert normalize_email(wide) == normalize_email(address.upper()) == normalize_email(address)


# (as typed, the uniqueness key): concrete values, so a change of the rule (no NFKC, no casefold, no strip, a
# lower() instead of casefold()) shows here, not only in a comparison of the rule with itself.
SAME_PERSON = [
    ("alice@example.com", "alice@example.com"),
    ("ALICE@EXAMPLE.COM", "alice@example.com"),
    ("\uff21lice@Example.com", "alice@example.com"),        # full-width A
    ("  Alice@example.com ", "alice@example.com"),
    ("Stra\u00dfe@example.com", "strasse@example.com"),     # casefold, not lower(): ß is ss
    ("STRASSE@example.com", "strasse@example.com"),
    ("\u01c5@example.com", "d\u017e@example.com"),           # the one-letter digraph Dž: two letters
    ("\u01f0AN@example.com", "\u01f0an@example.com"),         # casefold splits ǰ into j + caron; NFKC rejoins
]
OTHER_PEOPLE = ["alice@example.com", "alice2@example.com", "alice@example.org", "al.ice@example.com",
                "alice@ex\u00e4mple.com", "bob@example.com", "alice+x@example.com"]


@pytest.mark.parametrize(("typed", "key"), SAME_PERSON)
def test_accepted_addresses_keep_their_identity(typed, key):
    assert normalize_email(typed) == key
    assert CreateUserCommand(email=typed, full_name="X").email_normalized == key


def test_distinct_addresses_stay_distinct():
    keys = [CreateUserCommand(email=a, full_name="X").email_normalized for a in OTHER_PEOPLE]
    assert keys == OTHER_PEOPLE  # already normal: each keeps its own key, none merged with another


@given(st.emails())
def test_an_ascii_address_is_keyed_by_its_lower_case(address):
    try:
        command = CreateUserCommand(email=address, full_name="X")
    except ValidationError:
        return
    # For ASCII, NFKC changes nothing and casefold is lower(): an oracle independent of normalize_email.
    assert command.email_normalized == command.email.lower()


def test_body_hash_ignores_address_case_but_not_other_fields():
    a = CreateUserCommand(email="A@example.com", full_name="Ann")
    assert a.body_hash() == CreateUserCommand(email="a@EXAMPLE.com", full_name="Ann").body_hash()
    assert a.body_hash() != CreateUserCommand(email="a@example.com", full_name="Anne").body_hash()


def test_dev_secret_is_refused_outside_development():
    with pytest.raises(ValidationError, match="AUTH_JWT_SECRET"):
        Settings(**URLS, APP_ENV="production", AUTH_JWT_SECRET=DEV_JWT_SECRET)
    with pytest.raises(ValidationError, match="AUTH_JWT_SECRET"):
        Settings(**URLS, APP_ENV="production", AUTH_JWT_SECRET="short")
    assert Settings(**URLS, APP_ENV="development").auth_jwt_secret.get_secret_value() == DEV_JWT_SECRET
    assert Settings(**URLS, APP_ENV="production", AUTH_JWT_SECRET="Zq8-vR2mXw5tLk9PbN3cYh7Gf1Ds4Aj6Ue0Io",
                    SET_PASSWORD_URL="https://app.example.com/set-password").app_env == "production"


def test_secret_is_not_printed():
    settings = Settings(**URLS, APP_ENV="development")
    assert DEV_JWT_SECRET not in repr(settings) and DEV_JWT_SECRET not in str(settings.model_dump())


def test_issued_tokens_round_trip_and_roles_are_checked():
    settings = Settings(**URLS, APP_ENV="development")
    principal = authenticate("Bearer " + issue_token(settings, role=Role.ADMIN, subject="a"), settings)
    assert principal.role is Role.ADMIN and principal.subject == "a"
    expired = issue_token(settings, role=Role.ADMIN, subject="a", ttl_s=-5)
    with pytest.raises(Unauthorized, match="expired"):
        authenticate(f"Bearer {expired}", settings)
    viewer = authenticate("Bearer " + issue_token(settings, role=Role.VIEWER, subject="v"), settings)
    assert viewer.role is Role.VIEWER
    stranger = issue_token(settings, role=Role.ADMIN, subject="a", extra={"app_metadata": {"role": "owner"}})
    with pytest.raises(Forbidden):
        authenticate(f"Bearer {stranger}", settings)
    scheduler = issue_token(settings, role=Role.ADMIN, subject="a", extra={"app_metadata": {"role": "scheduler"}})
    with pytest.raises(Forbidden):
        authenticate(f"Bearer {scheduler}", settings)


def test_request_ids_are_valid_bullmq_job_ids():
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(":" not in i and not i.isdigit() and re.fullmatch(r"[A-Za-z0-9_]+", i) for i in ids)


def test_a_remembered_token_still_expires_and_another_secret_does_not_reuse_it():
    import time as _time

    settings = Settings(**URLS, APP_ENV="development")
    token = issue_token(settings, role=Role.ADMIN, subject="short", ttl_s=1)
    assert authenticate(f"Bearer {token}", settings).subject == "short"
    assert authenticate(f"Bearer {token}", settings).subject == "short"  # now from the per-instance memory
    rotated = Settings(**URLS, APP_ENV="development", AUTH_JWT_SECRET="rotated-" + "r" * 40)
    with pytest.raises(Unauthorized):
        authenticate(f"Bearer {token}", rotated)
    _time.sleep(1.1)
    with pytest.raises(Unauthorized, match="expired"):
        authenticate(f"Bearer {token}", settings)


def test_the_cached_domain_check_answers_exactly_like_the_library():
    import sys

    from email_validator import EmailNotValidError, validate_email

    from shared.creation.email_syntax import enable_domain_cache

    samples = ["Ann@Example.COM", "bob@bücher.example", "c@xn--bcher-kva.example", "d@localhost", "e@example",
               "f@exa_mple.com", "g@-example.com", "h@example.test", "i@sub.Example.com"]

    def answers() -> list[str]:
        out = []
        for address in samples:
            try:
                checked = validate_email(address, check_deliverability=False, allow_smtputf8=True, strict=True)
                out.append(f"ok {checked.normalized} {checked.ascii_domain}")
            except EmailNotValidError as exc:
                out.append(f"refused {exc}")
        return out

    module = sys.modules["email_validator.validate_email"]
    assert enable_domain_cache()
    cached = module.validate_email_domain_name
    assert hasattr(cached, "cache_info")
    module.validate_email_domain_name = cached.__wrapped__  # the library's own function, for the reference
    try:
        reference = answers()
    finally:
        module.validate_email_domain_name = cached
    assert answers() == answers() == reference  # the second pass answers from the cache
    assert cached.cache_info().hits > 0
    assert sum(a.startswith("refused") for a in reference) >= 4  # invalid domains stay refused
