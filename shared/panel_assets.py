"""The static pages' files: the System Health panel and the set-password page (shared/panel/), the sales desk
(shared/sales/). Plain HTML/CSS/JS shipped in the package: no CDN, no build step.

Every folder is read once, on its first request, into a fixed map: a request for anything else is a lookup that
misses and stores nothing, so however many distinct names callers try, memory does not grow.
"""

from __future__ import annotations

import functools
from pathlib import Path

PANEL_DIR = Path(__file__).with_name("panel")
SALES_DIR = Path(__file__).with_name("sales")
# Every page of ours (the panel, the set-password page, the sales desk) and its files: only our own scripts and
# styles, only our own API, never framed, never leaking the URL (the set-password link carries its token) in a
# Referer.
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
def assets(folder: Path = PANEL_DIR) -> dict[str, tuple[bytes, str]]:
    """Every servable file of one page folder by name: (content, content type). Built once per process."""
    return {path.name: (path.read_bytes(), CONTENT_TYPES[path.suffix.lower()])
            for path in sorted(folder.iterdir())
            if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in CONTENT_TYPES}


def asset(name: str, folder: Path = PANEL_DIR) -> tuple[bytes, str] | None:
    """(content, content type) of a page file, or None; only plain file names inside the page's folder."""
    return assets(folder).get(name)
