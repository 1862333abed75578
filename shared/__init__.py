"""The provisioner domain package: every business rule lives here, functions stay thin.

One package per capability, and the plumbing they share:

- `core`: the ports (settings, PostgreSQL, Redis, errors, auth, health events, audit, tracing, breaker).
- `creation`: a user made from a request: queueing, the consumer, provisioning, the welcome email, the switch.
- `accounts`: staff accounts, passwords, sign-in and its throttle.
- `bulk`: the bulk upload and its drain.
- `operations`: what an operator sees and does: metrics, alerts, search, story, retry, maintenance.

Beside them: `bootstrap` (the composition root: `Deps`, made once per process), `http` (the functions' endpoint
glue), `openapi` and `panel_assets` (the served documents and pages). Imports point down this list only:
`tests/unit/test_layers.py` holds it.
"""
