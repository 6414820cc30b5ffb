"""The one-run canary audit: the ε lower bound, the canaries, and a tiny end-to-end audit."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from shared.config import StrataConfig
from shared.data import RatingsData
from shared.data.types import Catalog
from shared.data.csv_loader import load_csv
from shared.data.synthetic import make_synthetic
from shared.data.validate import validate_path
from server.privacy_report import write_privacy_report
from shared.run_dir import RunDir
from simulation.audit import audit_p_value, bound_from_scores, epsilon_lower_bound, run_audit
from simulation.canaries import (
    CANARY_ITEM_PREFIX,
    CANARY_PREFIX,
    audit_catalog,
    draw_coins,
    make_canaries,
    write_audit_data,
)


def _small_data() -> RatingsData:
    data, _ = make_synthetic(n_users=30, n_items=40, n_categories=2, subs_per_category=2, seed=3)
    return data


# --- the bound ------------------------------------------------------------------------------


def test_all_correct_pure_dp_bound_matches_closed_form() -> None:
    # With δ = 0 and v = r, p(ε) = q^r with q = e^ε/(1+e^ε); the bound solves q^r = 0.05:
    # q = 0.05^(1/50) = 0.94184, ε = log(q / (1 - q)) = 2.7845.
    q = 0.05 ** (1 / 50)
    expected = math.log(q / (1 - q))
    got = epsilon_lower_bound(m=100, guesses=50, correct=50, delta=0.0, confidence=0.95)
    assert got == pytest.approx(expected, abs=1e-4)
    assert got == pytest.approx(2.7845, abs=1e-3)


def test_half_correct_gives_no_bound() -> None:
    assert epsilon_lower_bound(m=200, guesses=50, correct=25, delta=0.0, confidence=0.95) == 0.0
    # Just above chance is still not significant: P[Bin(50, ½) ≥ 30] = 0.101 > 0.05.
    assert stats.binom.sf(29, 50, 0.5) > 0.05
    assert epsilon_lower_bound(m=200, guesses=50, correct=30, delta=0.0, confidence=0.95) == 0.0


def test_bound_is_monotone_in_correct_and_shrinks_with_delta() -> None:
    bounds = [epsilon_lower_bound(m=200, guesses=50, correct=v, delta=1e-5, confidence=0.95) for v in range(25, 51)]
    assert all(a <= b for a, b in zip(bounds, bounds[1:], strict=False))
    assert bounds[-1] > 2.0
    big_delta = epsilon_lower_bound(m=200, guesses=50, correct=50, delta=1e-3, confidence=0.95)
    assert 0.0 <= big_delta < bounds[-1]


def test_p_value_at_the_bound_is_the_significance_level() -> None:
    eps = epsilon_lower_bound(m=200, guesses=80, correct=70, delta=1e-5, confidence=0.95)
    assert audit_p_value(m=200, guesses=80, correct=70, epsilon=eps, delta=1e-5) == pytest.approx(0.05, abs=1e-4)
    # δ adds 2mδ · max_i P[v-i <= Bin < v]/i; with v = 1 only i = 1: P[Bin = 0] = (1 - q)^r.
    p = audit_p_value(m=10, guesses=4, correct=1, epsilon=0.0, delta=0.01)
    assert p == pytest.approx(min(1.0, (1 - 0.5**4) + 2 * 10 * 0.01 * 0.5**4))


def test_bound_from_scores_guesses_top_and_bottom() -> None:
    included = np.array([True] * 50 + [False] * 50)
    scores = np.where(included, 1.0, 0.0) + np.linspace(0, 0.1, 100)
    perfect = bound_from_scores(scores, included, delta=0.0, confidence=0.95, guesses=25)
    assert (perfect["r"], perfect["correct"]) == (50, 50)
    assert perfect["epsilon_lower_bound"] == pytest.approx(
        epsilon_lower_bound(m=100, guesses=50, correct=50, delta=0.0, confidence=0.95)
    )
    inverted = bound_from_scores(np.where(included, 0.0, 1.0), included, delta=0.0, confidence=0.95, guesses=25)
    assert inverted["correct"] == 0 and inverted["epsilon_lower_bound"] == 0.0
    # The grid is Bonferroni-corrected: each point is tested at level 0.05 / 5.
    grid = bound_from_scores(np.where(included, 1.0, 0.0), included, delta=0.0, confidence=0.95)
    assert len(grid["grid"]) == 5 and grid["per_test_confidence"] == pytest.approx(0.99)
    assert grid["epsilon_lower_bound"] == max(row["epsilon_lower_bound"] for row in grid["grid"])
    with pytest.raises(ValueError, match="guesses per side"):
        bound_from_scores(np.zeros(10), np.zeros(10, dtype=bool), delta=0.0, confidence=0.95, guesses=6)


# --- canaries -------------------------------------------------------------------------------


def test_coins_are_fair_and_from_os_randomness_by_default() -> None:
    coins = draw_coins(4000, random.Random(7))
    assert abs(coins.mean() - 0.5) < 0.03  # 4 standard deviations of the mean
    a, b = draw_coins(256), draw_coins(256)
    assert not np.array_equal(a, b)  # OS randomness: two draws differ (fails with prob 2^-256)


def test_canaries_are_distinct_users_and_the_csv_validates(tmp_path: Path) -> None:
    data = _small_data()
    canaries = make_canaries(data, m=40, k=8, seed=1, coins=random.Random(0))
    assert canaries.m == 40 and len(set(canaries.user_ids)) == 40
    assert not set(canaries.user_ids) & set(data.user_ids)
    assert all(len(set(items)) == 8 for items in canaries.items)
    real_profiles = {
        tuple(sorted(data.catalog.item_ids[i] for i in data.items[data.users == u])) for u in range(data.n_users)
    }
    assert not set(canaries.items) & real_profiles
    assert canaries.rating == data.ratings.max()
    ratings_csv, catalog_csv = write_audit_data(data, canaries, tmp_path / "data")
    result = validate_path(ratings_csv)
    assert result.ok, result.summary()
    loaded = load_csv(ratings_csv, catalog_csv)
    assert loaded.n_users == data.n_users + int(canaries.included.sum())
    assert loaded.n_ratings == data.n_ratings + 8 * int(canaries.included.sum())
    assert loaded.catalog == data.catalog
    members = {u for u in loaded.user_ids if u.startswith(CANARY_PREFIX)}
    assert members == {u for u, keep in zip(canaries.user_ids, canaries.included, strict=True) if keep}
    # The same seed gives the same profiles (the coins are not seeded).
    assert make_canaries(data, m=40, k=8, seed=1).items == canaries.items


def test_canaries_refuse_bad_sizes_and_audited_data() -> None:
    data = _small_data()
    with pytest.raises(ValueError, match="at least 2 canaries"):
        make_canaries(data, m=1, k=5, seed=0)
    with pytest.raises(ValueError, match="canary items"):
        make_canaries(data, m=10, k=41, seed=0)
    audited = dataclasses.replace(data, user_ids=(f"{CANARY_PREFIX}0", *data.user_ids[1:]))
    with pytest.raises(ValueError, match="already has users or items named like canaries"):
        make_canaries(audited, m=10, k=5, seed=0)


def test_dirac_canaries_each_hold_an_item_no_one_else_holds(tmp_path: Path) -> None:
    data = _small_data()
    canaries = make_canaries(data, m=12, k=5, seed=0, kind="dirac", coins=random.Random(1))
    assert all(len(items) == 1 for items in canaries.items)
    own = [items[0] for items in canaries.items]
    assert len(set(own)) == 12 and own == list(canaries.new_items)
    assert all(item.startswith(CANARY_ITEM_PREFIX) and item not in data.catalog.item_ids for item in own)
    ratings_csv, catalog_csv = write_audit_data(data, canaries, tmp_path / "data")
    loaded = load_csv(ratings_csv, catalog_csv)
    # Every canary's item is in the public catalog, member or not: the catalog says nothing of the coins.
    def rows(cat: Catalog) -> dict[str, tuple[object, ...]]:
        return {i: (t, c, y) for i, t, c, y in zip(cat.item_ids, cat.titles, cat.categories, cat.years, strict=True)}

    assert rows(loaded.catalog) == rows(audit_catalog(data.catalog, canaries))
    assert set(rows(loaded.catalog)) == set(data.catalog.item_ids) | set(own)
    held = {loaded.catalog.item_ids[i] for i in loaded.items}
    assert held & set(own) == {item for item, keep in zip(own, canaries.included, strict=True) if keep}
    with pytest.raises(ValueError, match="'random' or 'dirac'"):
        make_canaries(data, m=4, k=1, seed=0, kind="gaussian")  # type: ignore[arg-type]


def test_dirac_canaries_are_found_without_dp(tiny_config: StrataConfig, tmp_path: Path) -> None:
    """Privacy off, the alignment score ranks members above non-members (AUC near 1) and shows ε > 0."""
    cfg = tiny_config.replace({"train.epochs": 10})
    result = run_audit(cfg, canaries=40, out=tmp_path / "audit", seed=2, pipeline="central", canary_kind="dirac")
    assert result["canary_kind"] == "dirac" and result["status"] == "NO CLAIM"
    members = [c["score"] for c in result["canaries"] if c["included"]]
    others = [c["score"] for c in result["canaries"] if not c["included"]]
    auc = np.mean([a > b for a in members for b in others])
    assert auc >= 0.9, auc
    assert result["epsilon_lower_bound"] > 0


# --- end to end -----------------------------------------------------------------------------


def test_tiny_central_audit_end_to_end(
    tiny_config: StrataConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Central pipeline (run_central): Flower's simulation takes minutes to start on a loaded machine.
    cfg = tiny_config.replace(
        {"train.epochs": 3, "privacy.mode": "local", "privacy.noise-multiplier": 1.0, "privacy.delta": 0.005}
    )
    out = tmp_path / "audit"
    with caplog.at_level(logging.WARNING, logger="strata"):
        result = run_audit(cfg, canaries=20, out=out, seed=5, canary_items=6, pipeline="central")
    # δ = 0.005 (below 1/N, N = 40 + 20 canaries) makes 2mδ = 0.2: the audit warns that it can hardly reject.
    assert "2·m·δ" in caplog.text
    run = RunDir.of(out / "run")  # the audit's run; its audit.json sits next to it
    saved = json.loads(run.audit_path.read_text())
    assert run.read_audit() == saved
    assert saved == json.loads(json.dumps(result))
    keys = ("m", "r", "correct", "epsilon_lower_bound", "confidence", "reported_epsilon", "passed", "verdict", "delta")
    for key in keys:
        assert key in saved, key
    assert saved["m"] == 20 and len(saved["canaries"]) == 20
    assert 0 <= saved["correct"] <= saved["r"] <= 20
    assert saved["epsilon_lower_bound"] >= 0.0
    summary = run.read_summary()
    assert summary is not None
    assert saved["reported_epsilon"] == pytest.approx(summary["epsilon"]) and summary["epsilon"] > 0
    bound, claim, ceiling = saved["epsilon_lower_bound"], saved["reported_epsilon"], saved["power_ceiling"]
    assert bound <= ceiling
    expected = "FAIL" if bound > claim else ("INCONCLUSIVE" if claim >= ceiling else "PASS")
    assert saved["status"] == expected and saved["passed"] == {"PASS": True, "FAIL": False}.get(expected)
    assert saved["canaries_included"] == sum(c["included"] for c in saved["canaries"])
    # The auditor's page shows the bound beside the claim and the ceiling.
    write_privacy_report(run, verify=False)
    html = run.privacy_report_html.read_text(encoding="utf-8")
    assert "power ceiling (all guesses right)" in html and f"{saved['power_ceiling']:.3f}" in html
    assert f"{saved['epsilon_lower_bound']:.3f}" in html and "planted bug" not in html
    with pytest.raises(ValueError, match="fresh --out"):
        run_audit(cfg, canaries=20, out=out, seed=5, canary_items=6, pipeline="central")


def test_the_power_ceiling_is_the_bound_of_all_guesses_right() -> None:
    """m = 200 canaries at δ = 1e-5, 95%: no outcome shows more than ε ≈ 3.75 (m = 1000: ≈ 5.32), so a claim
    of ε = 8 can never FAIL such an audit: it is INCONCLUSIVE, not PASS."""
    from simulation.audit import _status, power_ceiling

    assert power_ceiling(200, delta=1e-5, confidence=0.95) == pytest.approx(3.747, abs=0.01)
    assert power_ceiling(1000, delta=1e-5, confidence=0.95) == pytest.approx(5.316, abs=0.01)
    every_right = bound_from_scores(np.arange(200.0), np.arange(200) >= 100, delta=1e-5, confidence=0.95)
    assert every_right["epsilon_lower_bound"] == pytest.approx(power_ceiling(200, delta=1e-5, confidence=0.95))
    assert _status(0.2, 8.0, 3.75, True) == "INCONCLUSIVE"
    assert _status(0.2, 2.0, 3.75, True) == "PASS"
    assert _status(2.5, 2.0, 3.75, True) == "FAIL"
    assert _status(3.0, math.inf, 3.75, False) == "NO CLAIM"
