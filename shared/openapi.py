"""The checked-in OpenAPI document."""

import functools
from pathlib import Path

SPEC_PATH = Path(__file__).with_name("openapi.json")


@functools.cache
def spec_bytes() -> bytes:
    """The document's bytes, read once."""
    return SPEC_PATH.read_bytes()
