"""Reading a bulk upload: a JSON array or a CSV file into numbered rows, or one clear file-level error.

The file-level rules (the sales desk's preview applies the same ones in the browser, `shared/sales/csv.js`):
- UTF-8, with or without a BOM. UTF-16/32, NUL bytes or other control bytes (a binary file) and bytes that are
  not UTF-8 (a file saved in two encodings) are refused as a whole: 422 `invalid_file`, nothing written.
- CSV: the first record is the header, `email,full_name[,phone,product]` in any order and case; the delimiter
  is `,` or `;`, decided by which one makes that header name the required columns. Quoted fields (with `""`
  and line breaks inside) follow RFC 4180 through Python's `csv` module. Blank records are skipped.
- JSON: an array of objects with the fields of `POST /api/users`. Keys other than those are not kept while the
  JSON is read: the row is rejected naming at most `SHOWN_UNKNOWN_KEYS` of them and how many more (a row with
  200,000 made-up keys costs a list of pairs for a moment, never a dict or a validation error per key).
- Rows are numbered from 1 (the first data record; in a CSV that is the line after the header when no field
  spans lines). More than the configured maximum (5,000): 422 `too_many_rows`.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from typing import Any

from shared.core.errors import InvalidFile, TooManyRows, UnsupportedMediaType

COLUMNS = ("email", "full_name", "phone", "product")
REQUIRED = ("email", "full_name")
DELIMITERS = (",", ";")
CSV_TYPES = {"text/csv", "application/csv", "text/comma-separated-values", "application/vnd.ms-excel"}
SNIFFED_TYPES = {"", "text/plain", "application/octet-stream"}
_BINARY = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
SHOWN_UNKNOWN_KEYS = 3  # a row error names at most this many unknown keys


class _Object(dict[str, Any]):
    """A JSON object as read: only the known fields kept; `unknown` = (first few unknown keys, how many)."""

    unknown: tuple[tuple[str, ...], int] = ((), 0)


def _known_fields_only(pairs: list[tuple[str, Any]]) -> _Object:
    """json.loads' object_pairs_hook: keep the known fields (the last of a repeated key, as json does), count the
    rest and remember the first few of their names (each cut to 40 characters)."""
    kept = _Object()
    shown: list[str] = []
    extra = 0
    for key, value in pairs:
        if key in COLUMNS:
            kept[key] = value
            continue
        extra += 1
        if len(shown) < SHOWN_UNKNOWN_KEYS:
            shown.append(key[:40])
    if extra:
        kept.unknown = (tuple(shown), extra)
    return kept


def _json_row(number: int, item: _Object) -> UploadRow:
    """One JSON row; with unknown keys, one fault against the first of them, naming a few more and the count."""
    shown, count = item.unknown
    if not count:
        return UploadRow(number, item)
    others = f"; {count - 1:,} more: {', '.join(repr(k) for k in shown[1:])}" if count > 1 else ""
    if count > len(shown):
        others += ", ..."
    return UploadRow(number, item, f"unknown field (the fields are {', '.join(COLUMNS)}){others}", shown[0])


@dataclass(frozen=True, slots=True)
class UploadRow:
    """One data record: its number and its fields as sent (None when a JSON element is not an object)."""

    row: int
    fields: dict[str, Any] | None
    problem: str | None = None  # a record-level fault (too many cells, value in an unnamed column, unknown keys)
    problem_field: str = "row"  # what the fault is reported against (an unknown key's name)

    @property
    def email_cell(self) -> str:
        """The email as sent (for results.csv), whatever its type."""
        value = (self.fields or {}).get("email")
        return value[:320] if isinstance(value, str) else ""


def _invalid(message: str) -> InvalidFile:
    return InvalidFile(message, details=[{"field": "file", "message": message}])


def media_type(content_type: str | None) -> str:
    """`text/csv; charset=utf-8` -> `text/csv`."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode(body: bytes) -> str:
    """The upload as text: UTF-8 (BOM dropped), or a clear 422 saying why not."""
    if not body.strip():
        raise _invalid("the file is empty")
    if body.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _invalid("the file is UTF-16; save it as CSV UTF-8")
    if b"\x00" in body:
        raise _invalid("the file is binary (it holds NUL bytes), not a CSV or JSON text file")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _invalid(f"the file is not valid UTF-8 (byte {exc.start}): save it as CSV UTF-8; "
                       "a file mixing encodings is refused") from None
    if _BINARY.search(text):
        raise _invalid("the file is binary (it holds control characters), not a CSV or JSON text file")
    return text


def parse_upload(body: bytes, content_type: str | None, *, max_rows: int) -> list[UploadRow]:
    """Every data record of the upload, numbered; raises `InvalidFile`, `TooManyRows`, `UnsupportedMediaType`."""
    kind = media_type(content_type)
    if kind.startswith("multipart/"):
        raise UnsupportedMediaType("send the file itself as the body with Content-Type: text/csv "
                                   "(e.g. curl --data-binary @buyers.csv), not as a form")
    is_json = kind == "application/json" or kind.endswith("+json")
    if not is_json and kind not in CSV_TYPES and kind not in SNIFFED_TYPES:
        raise UnsupportedMediaType("send a CSV (text/csv) or a JSON array (application/json)")
    text = decode(body)
    if not is_json and kind in SNIFFED_TYPES and text.lstrip()[:1] == "[":
        is_json = True
    return _json_rows(text, max_rows) if is_json else _csv_rows(text, max_rows)


def _json_rows(text: str, max_rows: int) -> list[UploadRow]:
    try:
        data = json.loads(text, object_pairs_hook=_known_fields_only)
    except (ValueError, RecursionError):  # ValueError: bad JSON, or an integer past Python's 4,300-digit limit
        raise _invalid("the body is not valid JSON") from None
    if not isinstance(data, list):
        raise _invalid("a JSON upload is an array of user objects")
    if not data:
        raise _invalid("the array has no rows")
    if len(data) > max_rows:
        raise TooManyRows(f"{len(data)} rows: at most {max_rows} per upload",
                          details=[{"field": "file", "message": f"at most {max_rows} rows"}])
    return [_json_row(i, item) if isinstance(item, _Object)
            else UploadRow(i, None, "each row must be a JSON object") for i, item in enumerate(data, start=1)]


def _header(text: str) -> tuple[str, list[str]]:
    """(delimiter, lower-cased column names) of the first record."""
    tried: list[str] = []
    for delimiter in DELIMITERS:
        try:
            first = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True), [])
        except csv.Error:
            continue
        names = [cell.strip().lstrip("\ufeff").lower() for cell in first]
        if all(name in names for name in REQUIRED):
            return delimiter, names
        tried = tried or first
    shown = ", ".join(cell.strip()[:40] for cell in tried[:6])
    raise _invalid("no header: the first line must name the columns email,full_name[,phone,product] "
                   f"(comma or semicolon separated); it reads: {shown or '(nothing)'}")


def _csv_rows(text: str, max_rows: int) -> list[UploadRow]:
    delimiter, names = _header(text)
    unknown = sorted({n for n in names if n and n not in COLUMNS})
    if unknown:
        raise _invalid(f"unknown column(s): {', '.join(unknown)}; the columns are {', '.join(COLUMNS)}")
    repeated = sorted({n for n in names if n and names.count(n) > 1})
    if repeated:
        raise _invalid(f"column(s) named twice: {', '.join(repeated)}")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[UploadRow] = []
    try:
        next(reader)
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue  # blank line, or a spreadsheet's empty row of delimiters
            if len(rows) >= max_rows:
                raise TooManyRows(f"more than {max_rows} rows: at most {max_rows} per upload",
                                  details=[{"field": "file", "message": f"at most {max_rows} rows"}])
            rows.append(_record(len(rows) + 1, names, record))
    except csv.Error as exc:
        raise _invalid(f"the CSV cannot be read at line {reader.line_num}: {exc}") from None
    if not rows:
        raise _invalid("the file has a header but no rows")
    return rows


def _record(number: int, names: list[str], record: list[str]) -> UploadRow:
    fields: dict[str, Any] = {}
    problem = None
    if len(record) > len(names) and any(cell.strip() for cell in record[len(names):]):
        problem = f"{len(record)} cells, but the header names {len(names)} columns"
    for name, cell in zip(names, record, strict=False):
        value = cell.strip()
        if not name:
            if value:
                problem = problem or "a value in a column without a name"
            continue
        if value or name in REQUIRED:
            fields[name] = value
    for name in REQUIRED:  # a short record: the missing required cells are empty
        fields.setdefault(name, "")
    return UploadRow(number, fields, problem)
