"""Email identity: one address, one user, whatever its case or Unicode width."""

from __future__ import annotations

import unicodedata


def normalize_email(address: str) -> str:
    """The key that decides uniqueness: NFKC, then casefold, surrounding spaces removed.

    NFKC folds full-width and compatibility forms (U+FF41 "full-width a" -> "a"); casefold is the Unicode
    lower-casing meant for caseless matching. Applying NFKC again after casefold keeps the result stable.
    """
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", address).casefold()).strip()

