"""The System Health panel's static files (plain HTML/CSS/JS shipped in the package: no CDN, no build step).

Every file is read once, on the first request, into a fixed map: a request for anything else is a lookup that
misses and stores nothing, so however many distinct names callers try, memory does not grow.
"""

from __future__ import annotations

import functools
from pathlib import Path

PANEL_DIR = Path(__file__).with_name("panel")
# Every page of ours (the panel, the set-password page) and its files: only our own scripts and styles, only our
# own API, never framed, never leaking the URL (the set-password link carries its token) in a Referer.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".ico": "image/x-icon"}


@functools.cache
def assets() -> dict[str, tuple[bytes, str]]:
    """Every servable panel file by name: (content, content type). Built once per process."""
    return {path.name: (path.read_bytes(), CONTENT_TYPES[path.suffix.lower()])
            for path in sorted(PANEL_DIR.iterdir())
            if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in CONTENT_TYPES}


def asset(name: str) -> tuple[bytes, str] | None:
    """(content, content type) of a panel file, or None; only plain file names inside the panel folder."""
    return assets().get(name)
