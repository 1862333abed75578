"""schemathesis against the OpenAPI document, over every route of the running system, as each staff role on the
routes that role may use (admin: every staff route and the public ones; sales_manager and viewer: theirs, read
from each function's `@endpoint` roles): no 5xx, bad data rejected, only documented status codes and response
shapes. A role a route refuses would only ever see the 403, so that pairing is left out."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from shared.core.auth import Role, issue_token
from shared.core.settings import Settings
from shared.openapi import SPEC_PATH
from tests.e2e.test_dev_system import invoke_dev
from tests.support.routes import ROUTES, admits
from tests.support.stack import TEST_JWT_SECRET

pytestmark = pytest.mark.slow
schema = schemathesis.openapi.from_path(str(SPEC_PATH))


@pytest.fixture(scope="module")
def api(stack, tmp_path_factory) -> Iterator[dict[str, str]]:
    with invoke_dev(stack, tmp_path_factory.mktemp("schemathesis") / "dev.log") as system:
        settings_ = Settings(APP_ENV="development", DATABASE_URL=stack.database_url, REDIS_URL=stack.redis_url,
                             AUTH_JWT_SECRET=TEST_JWT_SECRET)
        yield {"url": system["url"], **{role: issue_token(settings_, role=Role(role), subject=f"schemathesis-{role}")
                                        for role in ("admin", "sales_manager", "viewer")}}


def routes_of(role: str) -> schemathesis.BaseSchema:
    """The operations `role` may call (the public ones only for the admin: a token changes nothing there)."""
    allowed = {(r.method, r.path) for r in ROUTES
               if role in r.roles or (role == "admin" and admits(r, role))}
    return schema.include(lambda ctx: (ctx.operation.method.upper(), ctx.operation.path) in allowed)


EXAMPLES = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@routes_of("admin").parametrize()
@EXAMPLES
def test_every_route_honours_its_contract_as_admin(case, api):
    honours_its_contract(case, api, "admin")


@routes_of("sales_manager").parametrize()
@EXAMPLES
def test_every_route_honours_its_contract_as_sales_manager(case, api):
    honours_its_contract(case, api, "sales_manager")


@routes_of("viewer").parametrize()
@EXAMPLES
def test_every_route_honours_its_contract_as_viewer(case, api):
    honours_its_contract(case, api, "viewer")


def honours_its_contract(case, api, role: str) -> None:
    # A case made to lack its Authorization header is sent without it (else the token would make it valid).
    data = case.meta.phase.data if case.meta else None
    about = {str(getattr(m, "parameter", None)).lower() for m in getattr(data, "mutations", ())}
    about.add(str(getattr(data, "parameter", None)).lower())
    headers = {} if "authorization" in about else {"Authorization": f"Bearer {api[role]}"}
    response = case.call(base_url=api["url"], headers=headers)
    if response.status_code == 413 and len(response.request.body or b"") > SMALLEST_BODY_CAP:
        # The contract's 413 for a body over the byte cap: a refusal, which schemathesis only counts as one for
        # the status codes it knows (the schema's maxLength/maxItems cannot say "16 KiB").
        return
    if response.status_code == 422 and _refused_for_a_rule_the_schema_cannot_state(response.json()["error"]):
        return
    if case.media_type == "text/csv" and response.status_code == 202:
        # A CSV upload is answered row by row: rows that break the rules come back in `rejected` (the contract),
        # so a file outside the schema's example pattern is a 202 with refusals, never a refused file. The answer
        # is still checked against its schema.
        case.validate_response(response, excluded_checks=[schemathesis.checks.negative_data_rejection])
        return
    case.validate_response(response)


SMALLEST_BODY_CAP = 16 * 1024


def _refused_for_a_rule_the_schema_cannot_state(error: dict) -> bool:
    """The generator reuses keys like "0" across different bodies, makes up search cursors, draws addresses at
    reserved domains (`.test`, `.invalid`: refused by the address rules) and time ranges whose `from` is after
    `to`: the contract's answer for those is a 422 that a stateless "valid data must pass" check cannot know."""
    if error["code"] in ("idempotency_key_reused", "invalid_cursor"):
        return True
    text = f"{error['message']} {error.get('details')}"
    return "special-use or reserved name" in text or "must not be after" in text
