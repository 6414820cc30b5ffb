"""Loader for a generic interactions CSV (user,item,rating[,timestamp]) with an optional catalog CSV.

Line numbers in errors are 1-based physical lines of the file (line 1 is the header). Fields are
stripped of surrounding whitespace; blank lines are ignored but counted in LoadReport.skipped.
With on_bad_rows="skip" every skipped row is counted under its reason, never dropped silently.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import DataError
from .types import Catalog, LoadReport, RatingsData

log = logging.getLogger(__name__)

OnBadRows = Literal["error", "skip"]

RATINGS_REQUIRED: tuple[str, ...] = ("user", "item", "rating")
RATINGS_OPTIONAL: tuple[str, ...] = ("timestamp",)
CATALOG_REQUIRED: tuple[str, ...] = ("item", "title", "categories")
CATALOG_OPTIONAL: tuple[str, ...] = ("year",)

_INT = re.compile(r"[+-]?\d+")


class _BadRow(Exception):
    """A row-level problem: reason is the key counted in LoadReport.skipped."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def load_csv(
    ratings_path: str | Path,
    catalog_path: str | Path | None = None,
    *,
    on_bad_rows: OnBadRows = "error",
    rating_range: tuple[float, float] | None = None,
) -> RatingsData:
    """Load a ratings CSV (and optional catalog CSV) into RatingsData.

    With a catalog, the item index is every catalog item (rated or not) and a rated item missing
    from it is a bad row; without one, it is the rated items with empty titles/categories.
    """
    if on_bad_rows not in ("error", "skip"):
        raise ValueError(f"on_bad_rows must be 'error' or 'skip', not {on_bad_rows!r}.")
    ratings_path = Path(ratings_path)
    skipped: dict[str, int] = {}
    catalog_rows = _read_catalog(Path(catalog_path), on_bad_rows, skipped) if catalog_path is not None else None

    users: list[str] = []
    items: list[str] = []
    values: list[float] = []
    stamps: list[int] = []
    seen: set[tuple[str, str]] = set()
    rows_read = 0
    columns, has_ts = None, False
    for line_no, fields in _records(ratings_path, RATINGS_REQUIRED, RATINGS_OPTIONAL, skipped):
        if columns is None:
            columns, has_ts = fields, "timestamp" in fields
            continue
        rows_read += 1
        try:
            user, item, rating, ts = _parse_rating_row(fields, columns, has_ts, rating_range)
            if catalog_rows is not None and item not in catalog_rows:
                raise _BadRow("item not in catalog", f"item {item!r} is not in the catalog {catalog_path}")
            if (user, item) in seen:
                raise _BadRow("duplicate (user, item)", f"duplicate rating for user {user!r}, item {item!r}")
        except _BadRow as bad:
            _handle(bad, ratings_path, line_no, on_bad_rows, skipped)
            continue
        seen.add((user, item))
        users.append(user)
        items.append(item)
        values.append(rating)
        if ts is not None:
            stamps.append(ts)

    item_ids = _sort_ids(catalog_rows.keys() if catalog_rows is not None else set(items))
    user_ids = _sort_ids(set(users))
    item_pos = {k: i for i, k in enumerate(item_ids)}
    user_pos = {k: i for i, k in enumerate(user_ids)}
    rows = catalog_rows or {}
    catalog = Catalog(
        item_ids=tuple(item_ids),
        titles=tuple(rows.get(k, ("", (), None))[0] for k in item_ids),
        categories=tuple(rows.get(k, ("", (), None))[1] for k in item_ids),
        years=tuple(rows.get(k, ("", (), None))[2] for k in item_ids),
    )
    report = LoadReport(source=str(ratings_path), rows_read=rows_read, skipped=skipped)
    if skipped:
        log.warning("%s", report.summary())
    log.info("Loaded %s: %d users, %d items, %d ratings", ratings_path, len(user_ids), len(item_ids), len(values))
    return RatingsData(
        name=ratings_path.stem,
        users=np.fromiter((user_pos[u] for u in users), dtype=np.int64, count=len(users)),
        items=np.fromiter((item_pos[i] for i in items), dtype=np.int64, count=len(items)),
        ratings=np.asarray(values, dtype=np.float32),
        user_ids=tuple(user_ids),
        catalog=catalog,
        report=report,
        timestamps=np.asarray(stamps, dtype=np.int64) if has_ts else None,
    )


def load_catalog_csv(catalog_path: str | Path) -> Catalog:
    """Load only a catalog CSV (item,title,categories[,year]), in the item index `load_csv` gives it."""
    rows = _read_catalog(Path(catalog_path), "error", {})
    item_ids = _sort_ids(rows.keys())
    return Catalog(
        item_ids=tuple(item_ids),
        titles=tuple(rows[k][0] for k in item_ids),
        categories=tuple(rows[k][1] for k in item_ids),
        years=tuple(rows[k][2] for k in item_ids),
    )


def _parse_rating_row(
    fields: list[str], columns: list[str], has_ts: bool, rating_range: tuple[float, float] | None
) -> tuple[str, str, float, int | None]:
    if len(fields) != len(columns):
        raise _BadRow("wrong field count", f"expected {len(columns)} fields, found {len(fields)}")
    row = dict(zip(columns, fields, strict=True))
    user, item = row["user"], row["item"]
    if not user or not item:
        raise _BadRow("empty user or item", "empty user or item id")
    try:
        rating = float(row["rating"])
    except ValueError:
        rating = math.nan
    if not math.isfinite(rating):
        raise _BadRow("non-numeric rating", f"rating {row['rating']!r} is not a number")
    if rating_range is not None and not rating_range[0] <= rating <= rating_range[1]:
        raise _BadRow("rating out of range", f"rating {rating:g} is outside {rating_range[0]:g}..{rating_range[1]:g}")
    ts = None
    if has_ts:
        if not _INT.fullmatch(row["timestamp"]):
            raise _BadRow("bad timestamp", f"timestamp {row['timestamp']!r} is not an integer")
        ts = int(row["timestamp"])
    return user, item, rating, ts


_CatalogRows = dict[str, tuple[str, tuple[str, ...], int | None]]


def _read_catalog(path: Path, on_bad_rows: OnBadRows, skipped: dict[str, int]) -> _CatalogRows:
    """Read item,title,categories[,year]; catalog row problems are counted as "catalog: <reason>"."""
    rows: _CatalogRows = {}
    columns: list[str] | None = None
    for line_no, fields in _records(path, CATALOG_REQUIRED, CATALOG_OPTIONAL, skipped):
        if columns is None:
            columns = fields
            continue
        try:
            if len(fields) != len(columns):
                raise _BadRow("catalog: wrong field count", f"expected {len(columns)} fields, found {len(fields)}")
            row = dict(zip(columns, fields, strict=True))
            if not row["item"]:
                raise _BadRow("catalog: empty item", "empty item id")
            if row["item"] in rows:
                raise _BadRow("catalog: duplicate item", f"duplicate item id {row['item']!r}")
            year_text = row.get("year", "")
            if year_text and not _INT.fullmatch(year_text):
                raise _BadRow("catalog: bad year", f"year {year_text!r} is not an integer")
        except _BadRow as bad:
            _handle(bad, path, line_no, on_bad_rows, skipped)
            continue
        cats = tuple(c.strip() for c in row["categories"].split("|") if c.strip())
        rows[row["item"]] = (row["title"], cats, int(year_text) if year_text else None)
    return rows


def _records(
    path: Path, required: tuple[str, ...], optional: tuple[str, ...], skipped: dict[str, int]
) -> Iterator[tuple[int, list[str]]]:
    """Yield (start line, stripped fields), the header first (validated); blank lines are counted."""
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    end_line = 0
    header_done = False
    try:
        for fields in reader:
            start, end_line = end_line + 1, reader.line_num
            if not header_done:
                header = [f.strip().lower() for f in fields]
                _check_header(path, header, required, optional)
                header_done = True
                yield start, header
                continue
            if len(fields) <= 1 and not "".join(fields).strip():
                skipped["blank line"] = skipped.get("blank line", 0) + 1
                continue
            yield start, [f.strip() for f in fields]
    except csv.Error as exc:
        raise DataError(str(path), f"malformed CSV: {exc}", end_line + 1) from exc
    if not header_done:
        raise DataError(str(path), f"empty file; expected a header with columns {','.join(required)}.", 1)


def _check_header(path: Path, header: list[str], required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in header]
    unknown = [c for c in header if c not in required + optional]
    dupes = sorted({c for c in header if header.count(c) > 1})
    if missing or unknown or dupes:
        problems = []
        if missing:
            problems.append(f"missing {missing}")
        if unknown:
            problems.append(f"unknown {unknown}")
        if dupes:
            problems.append(f"repeated {dupes}")
        expected = ",".join(required) + "".join(f"[,{c}]" for c in optional)
        raise DataError(
            str(path),
            f"bad header ({'; '.join(problems)}): expected {expected}, found {','.join(header)}.",
            1,
        )


def _handle(bad: _BadRow, path: Path, line: int, on_bad_rows: OnBadRows, skipped: dict[str, int]) -> None:
    if on_bad_rows == "error":
        raise DataError(str(path), bad.detail + ".", line)
    skipped[bad.reason] = skipped.get(bad.reason, 0) + 1
    log.debug("%s, line %d: skipped (%s)", path, line, bad.detail)


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(str(path), "file not found.") from exc
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(str(path), f"not valid UTF-8: {exc.reason}.", raw.count(b"\n", 0, exc.start) + 1) from exc


def _sort_ids(ids: Iterable[str]) -> list[str]:
    """Numeric order when every id is an integer, else lexicographic."""
    ids = list(ids)
    if all(_INT.fullmatch(i) for i in ids):
        return sorted(ids, key=lambda i: (int(i), i))
    return sorted(ids)
