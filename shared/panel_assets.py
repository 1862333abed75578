"""The static pages' files: the System Health panel (shared/panel/) and the sales desk (shared/sales/).

Plain HTML/CSS/JS shipped in the package: no CDN, no build step."""

from __future__ import annotations

import functools
from pathlib import Path

PANEL_DIR = Path(__file__).with_name("panel")
SALES_DIR = Path(__file__).with_name("sales")
# One CSP for every static page: no inline script or style, nothing from another origin.
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
def asset(name: str, folder: Path = PANEL_DIR) -> tuple[bytes, str] | None:
    """(content, content type) of a page file, or None; only plain file names inside the page's folder."""
    if "/" in name or "\\" in name or name.startswith(".") or not name:
        return None
    path = folder / name
    suffix = path.suffix.lower()
    if suffix not in CONTENT_TYPES or not path.is_file():
        return None
    return path.read_bytes(), CONTENT_TYPES[suffix]
