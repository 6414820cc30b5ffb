"""Check a data path (MovieLens directory or generic CSV) and summarise it without raising.

For a CSV file `x.csv` the catalog is taken from `x_catalog.csv` next to it, else from `items.csv`
in the same directory, else none. Bad rows are problems; users with few ratings and items with no
ratings are warnings (MovieLens 1M/latest catalogs legitimately list unrated movies).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .csv_loader import load_csv
from .errors import DataError
from .movielens import load_movielens
from .types import LoadReport, RatingsData

log = logging.getLogger(__name__)

MIN_USER_RATINGS = 5


@dataclass
class ValidationResult:
    """Outcome of validate_path: ok is False exactly when problems is non-empty."""

    path: str
    ok: bool
    n_users: int = 0
    n_items: int = 0
    n_ratings: int = 0
    rating_min: float | None = None
    rating_max: float | None = None
    density: float = 0.0
    report: LoadReport | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    users_below_min: int = 0
    """Users with fewer than min_user_ratings ratings."""
    items_without_ratings: int = 0

    def summary(self) -> str:
        """Return a readable report: one headline, then the load report, problems and warnings."""
        head = f"{self.path}: {'OK' if self.ok else 'PROBLEMS'} - {self.n_users} users, {self.n_items} items, "
        head += f"{self.n_ratings} ratings, density {self.density:.4%}"
        if self.rating_min is not None:
            head += f", ratings {self.rating_min:g}..{self.rating_max:g}"
        lines = [head]
        if self.report is not None:
            lines.append("  " + self.report.summary())
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def find_catalog(ratings_csv: Path) -> Path | None:
    """Return the catalog CSV that belongs next to a ratings CSV: `<stem>_catalog.csv`, else `items.csv`."""
    for candidate in (
        ratings_csv.with_name(f"{ratings_csv.stem}_catalog.csv"),
        ratings_csv.with_name("items.csv"),
    ):
        if candidate.is_file() and candidate != ratings_csv:
            return candidate
    return None


def validate_path(path: str | Path, *, min_user_ratings: int = MIN_USER_RATINGS) -> ValidationResult:
    """Load `path` strictly, collecting any DataError as a problem, and summarise what loaded."""
    p = Path(path)
    result = ValidationResult(path=str(p), ok=False)
    data: RatingsData | None = None
    try:
        if p.is_dir():
            data = load_movielens(p)
        elif p.is_file():
            data = _load_csv_collecting(p, result)
        else:
            result.problems.append(f"{p}: no such file or directory.")
    except DataError as exc:
        result.problems.append(str(exc))
    if data is not None:
        _summarise(data, result, min_user_ratings)
    result.ok = not result.problems
    log.info("%s", result.summary())
    return result


def _load_csv_collecting(p: Path, result: ValidationResult) -> RatingsData | None:
    """Strict load; on a bad row record it, then reload skipping to count every bad row by reason."""
    catalog = find_catalog(p)
    try:
        return load_csv(p, catalog)
    except DataError as exc:
        result.problems.append(str(exc))
    try:
        data = load_csv(p, catalog, on_bad_rows="skip")
    except DataError:
        return None  # a file-level problem (header, encoding), already recorded
    for reason, n in sorted(data.report.skipped.items()):
        if reason != "blank line":
            result.problems.append(f"{n} bad row(s): {reason}")
    return data


def _summarise(data: RatingsData, result: ValidationResult, min_user_ratings: int) -> None:
    result.n_users, result.n_items, result.n_ratings = data.n_users, data.n_items, data.n_ratings
    result.report = data.report
    if data.n_ratings == 0:
        result.problems.append("no ratings.")
        return
    result.rating_min = float(data.ratings.min())
    result.rating_max = float(data.ratings.max())
    result.density = data.n_ratings / (data.n_users * data.n_items)
    per_user = np.bincount(data.users, minlength=data.n_users)
    per_item = np.bincount(data.items, minlength=data.n_items)
    result.users_below_min = int((per_user < min_user_ratings).sum())
    result.items_without_ratings = int((per_item == 0).sum())
    if result.users_below_min:
        result.warnings.append(f"{result.users_below_min} user(s) with fewer than {min_user_ratings} ratings.")
    if result.items_without_ratings:
        result.warnings.append(f"{result.items_without_ratings} catalog item(s) with no ratings.")
