"""The System Health panel's static files (plain HTML/CSS/JS shipped in the package: no CDN, no build step)."""

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
def asset(name: str) -> tuple[bytes, str] | None:
    """(content, content type) of a panel file, or None; only plain file names inside the panel folder."""
    if "/" in name or "\\" in name or name.startswith(".") or not name:
        return None
    path = PANEL_DIR / name
    suffix = path.suffix.lower()
    if suffix not in CONTENT_TYPES or not path.is_file():
        return None
    return path.read_bytes(), CONTENT_TYPES[suffix]
