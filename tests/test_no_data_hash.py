"""No published artefact holds a hash of the ratings (issue 9, defect 2).

The membership attack: whoever knows every other user's data hashes D and D − u and compares
with the published fingerprint. Here the real central reference trains, privacy off and the same
seed, on D and on D − u (one user's ratings removed); the published artefacts must then agree
on everything except the model weights and their fingerprint, and the SHA-256 of the ratings
must appear in none of them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, make_config

from server.privacy_report import write_privacy_report
from shared.config import PrivacyConfig, StrataConfig
from shared.data.csv_loader import load_csv
from shared.data.source import clear_caches
from shared.data.synthetic import make_synthetic
from shared.data.types import RatingsData
from shared.run_dir import RunDir
from simulation.central import run_central

SEED = 0
USERS = 40
REMOVED_USER = 0
"""Index of the user whose ratings D − u lacks."""
PUBLIC_POPULATION = {"population": USERS} if "population" in {f.name for f in fields(PrivacyConfig)} else {}
"""N is public and fixed before any data is seen, the same for D and D − u (where the config has it)."""


@dataclass(frozen=True)
class Published:
    """A snapshot of one run's published artefacts, and hashes of the ratings it trained on."""

    run_dir: Path
    manifest: dict[str, Any]
    report: dict[str, Any]
    ratings_hashes: tuple[str, ...]


def _ratings_sha256(data: RatingsData) -> str:
    """SHA-256 over the ratings and the item index, as the manifest's former `data_fingerprint`."""
    h = hashlib.sha256()
    for arr in (data.users, data.items, data.ratings):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update("\x1f".join(data.catalog.item_ids).encode())
    return h.hexdigest()


def _write_catalog(path: Path, data: RatingsData) -> None:
    c = data.catalog
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["item", "title", "categories", "year"])
        for row in zip(c.item_ids, c.titles, c.categories, c.years, strict=True):
            item, title, cats, year = row
            w.writerow([item, title or f"item {item}", "|".join(cats), "" if year is None else year])


def _write_ratings(path: Path, data: RatingsData, *, without_user: int | None) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["user", "item", "rating"])
        for u, i, r in zip(data.users.tolist(), data.items.tolist(), data.ratings.tolist(), strict=True):
            if u != without_user:
                w.writerow([data.user_ids[u], data.catalog.item_ids[i], f"{r:g}"])


def _config(ratings: Path, catalog: Path, out: Path) -> StrataConfig:
    return make_config(
        out=out,
        data={"source": str(ratings), "catalog": str(catalog)},
        model=TINY_MODEL,
        train={"epochs": 2, "batch_size": 8},
        run={"seed": SEED},
        privacy=PUBLIC_POPULATION,
    )


def _train_and_publish(config: StrataConfig) -> tuple[RunDir, dict[str, Any]]:
    """Train the central reference on the config's data and write its privacy report (not verified)."""
    clear_caches()  # the same CSV path held the other data set a moment ago
    torch.set_num_threads(1)
    run_central(config, eval_every=2)
    run = RunDir.of(config.run_dir)
    report, _ = write_privacy_report(run, verify=False)
    return run, report


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Published]:
    """Train on D, then on D − u, at the same paths (identical configs); snapshot each run directory."""
    root = tmp_path_factory.mktemp("membership")
    base, _ = make_synthetic(n_users=USERS, n_items=48, n_categories=3, subs_per_category=2, seed=SEED)
    assert np.count_nonzero(base.users == REMOVED_USER) > 0
    ratings, catalog = root / "ratings.csv", root / "catalog.csv"
    _write_catalog(catalog, base)
    config = _config(ratings, catalog, root / "run")
    out: dict[str, Published] = {}
    for name, without in (("D", None), ("D-u", REMOVED_USER)):
        _write_ratings(ratings, base, without_user=without)
        data = load_csv(ratings, catalog)
        assert data.n_users == (USERS if without is None else USERS - 1)
        hashes = (_ratings_sha256(data), hashlib.sha256(ratings.read_bytes()).hexdigest())
        run, report = _train_and_publish(config)
        manifest = run.read_manifest()
        assert manifest is not None
        snapshot = root / name
        shutil.copytree(run.path, snapshot)
        shutil.rmtree(run.path)
        out[name] = Published(snapshot, manifest, report, hashes)
    return out


def test_manifests_of_d_and_d_minus_u_differ_only_in_the_weights(published: dict[str, Published]) -> None:
    d, du = published["D"].manifest, published["D-u"].manifest
    assert d["weights_fingerprint"] != du["weights_fingerprint"], "the two runs trained on the same data"
    strip = ("weights_fingerprint",)
    assert {k: v for k, v in d.items() if k not in strip} == {k: v for k, v in du.items() if k not in strip}


def test_privacy_reports_of_d_and_d_minus_u_have_the_same_fingerprints(published: dict[str, Published]) -> None:
    def public(report: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in report["fingerprints"].items() if k not in ("weights", "ledgers_sha256")}

    d, du = published["D"], published["D-u"]
    assert public(d.report), "the report's fingerprints hold nothing but the weights and ledgers"
    assert public(d.report) == public(du.report)
    for p in (d, du):
        on_disk = json.loads((p.run_dir / "privacy_report.json").read_text(encoding="utf-8"))
        assert public(on_disk) == public(p.report)
        assert p.report["fingerprints"]["weights"] == p.manifest["weights_fingerprint"]


def test_no_artefact_holds_a_hash_of_the_ratings(published: dict[str, Published]) -> None:
    for name, p in published.items():
        files = [f for f in sorted(p.run_dir.rglob("*")) if f.is_file()]
        assert {"model/manifest.json", "privacy_report.json", "privacy_report.html"} <= {
            f.relative_to(p.run_dir).as_posix() for f in files
        }
        for digest in p.ratings_hashes:
            holders = [str(f.relative_to(p.run_dir)) for f in files if digest.encode() in f.read_bytes()]
            assert not holders, f"{name}: the SHA-256 of the ratings {digest[:16]}… is published in {holders}"


def test_the_catalog_check_fails_when_the_catalog_does_not_match(tmp_path: Path) -> None:
    base, _ = make_synthetic(n_users=20, n_items=48, n_categories=3, subs_per_category=2, seed=SEED)
    ratings, catalog = tmp_path / "ratings.csv", tmp_path / "catalog.csv"
    _write_ratings(ratings, base, without_user=None)
    _write_catalog(catalog, base)
    config = _config(ratings, catalog, tmp_path / "run")
    run, _ = _train_and_publish(config)

    def catalog_check() -> dict[str, Any]:
        clear_caches()
        report, _ = write_privacy_report(run, verify=True)
        checks = [c for c in report["verification"]["checks"] if c["name"] == "catalog fingerprint"]
        assert len(checks) == 1, [c["name"] for c in report["verification"]["checks"]]
        return dict(checks[0])

    assert catalog_check()["passed"]
    with catalog.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows[1][1] = "a renamed title"  # public metadata changed after training
    with catalog.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    failed = catalog_check()
    assert not failed["passed"], failed["message"]
