"""redis-py, imported without its OpenTelemetry metrics hook (40 ms of every instance's cold start).

redis-py >= 7 imports `opentelemetry.sdk.metrics` at import time when the OpenTelemetry SDK is installed (an
optional `try: import`, for its own metrics, which this project never turns on: `redis.observability` is not
initialised anywhere). That import alone is about 40 ms of a 2-core machine's cold start, on every function.
Importing redis through this module makes that one optional import fail while redis is imported, so redis records
`OTEL_AVAILABLE = False`; the SDK stays importable for everything else (our traces do not use its metrics).
When redis or the metrics SDK is imported already, nothing changes.
"""

from __future__ import annotations

import sys

_METRICS = "opentelemetry.sdk.metrics"

if "redis" not in sys.modules and _METRICS not in sys.modules:
    sys.modules[_METRICS] = None  # type: ignore[assignment]  # Python's marker for "import fails"
    try:
        import redis.asyncio  # noqa: F401  # the import is the point
    finally:
        del sys.modules[_METRICS]

import redis.asyncio as aioredis  # noqa: E402  # after the guarded first import
from redis.asyncio.retry import Retry  # noqa: E402
from redis.backoff import NoBackoff  # noqa: E402

__all__ = ["NoBackoff", "Retry", "aioredis"]
