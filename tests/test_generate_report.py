"""`strata generate` (synthetic profiles from the model) and `strata report` (report.html of a run)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from shared.run_dir import RunDir

# `trained_run` (tests/conftest.py): a tiny central run on planted synthetic data (3 categories
# × 2 sub-interests, 60 items, 200 users), privacy off.


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_generate_writes_valid_csv_with_n_users_and_no_duplicates(trained_run: RunDir, tmp_path: Path) -> None:
    from shared.data.validate import validate_path
    from simulation.generate import generate_profiles

    out = tmp_path / "syn.csv"
    summary = generate_profiles(trained_run.path, n=25, out=out, seed=3, compare_with_real=True)

    result = validate_path(out)
    assert result.ok, result.problems
    assert result.n_users == 25
    assert (tmp_path / "syn_catalog.csv").is_file()
    rows = _rows(out)
    pairs = [(r["user"], r["item"]) for r in rows]
    assert len(pairs) == len(set(pairs)) == summary["n_ratings"]
    assert all(1 <= float(r["rating"]) <= 5 and float(r["rating"]).is_integer() for r in rows)
    assert summary["privacy"]["private"] is False  # the tiny run had privacy off: said plainly
    report = json.loads((tmp_path / "syn_comparison_NOT_PRIVATE.json").read_text())
    assert report["private"] is False and "not part of the private release" in report["warning"]
    assert report["stats"]["synthetic"]["n_users"] == 25
    assert 0.0 <= report["tv"]["categories_vs_real"] <= 1.0
    # same seed, same output
    generate_profiles(trained_run.path, n=25, out=tmp_path / "again.csv", seed=3)
    assert (tmp_path / "again.csv").read_text() == out.read_text()


def test_gini_and_shares_by_hand() -> None:
    import numpy as np

    from simulation.generate import _gini, profile_statistics

    assert _gini(np.array([1, 1, 1, 1])) == pytest.approx(0.0)
    # counts (0, 0, 0, 4): G = Σ(2i − n − 1)x_i / (n Σx) = (2·4 − 5)·4 / (4·4) = 0.75
    assert _gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)
    users = np.array([0, 0, 0, 1])
    items = np.array([0, 1, 2, 0])
    stats = profile_statistics(users, items, np.array([1.0, 2.0, 3.0, 4.0]), n_users=2, n_items=10)
    assert stats["length_mean"] == 2.0 and stats["length_median"] == 2.0
    assert stats["top_1pct_share"] == pytest.approx(0.5)  # top 1 of 10 items holds 2 of 4 ratings
    assert stats["top_10pct_share"] == pytest.approx(0.5)


def test_conditioning_on_an_interest_raises_its_share(trained_run: RunDir, tmp_path: Path) -> None:
    from server.taxonomy import load_taxonomy
    from simulation.generate import generate_profiles

    ids = [i["id"] for c in load_taxonomy(trained_run)["categories"] for i in c["interests"]]
    # 60 items: default-length profiles would hold most of them
    short: dict[str, Any] = {"length_median": 8.0, "length_sigma": 0.3}
    generate_profiles(trained_run.path, n=800, out=tmp_path / "plain.csv", seed=1, compare_with_real=True, **short)
    plain = json.loads((tmp_path / "plain_comparison_NOT_PRIVATE.json").read_text())["interests"]
    lifts = []
    for k, target in enumerate(ids):
        generate_profiles(
            trained_run.path, n=800, out=tmp_path / f"cond{k}.csv", interest=target, seed=1, compare_with_real=True,
            **short,
        )
        cond = json.loads((tmp_path / f"cond{k}_comparison_NOT_PRIVATE.json").read_text())["interest"]
        assert cond["id"] == target
        lifts.append(cond["synthetic"] / plain[target]["synthetic"])
    # every interest rises; typically about 2x (ML-100K: 1.9-5.3x, see README). Training is not
    # bit-identical across processes, so the bounds leave room (measured min 1.22, mean 1.7-2.3 over 6 runs)
    assert min(lifts) > 1.05, lifts
    assert sum(lifts) / len(lifts) > 1.4, lifts
    with pytest.raises(ValueError, match="not in the taxonomy"):
        generate_profiles(trained_run.path, n=5, out=tmp_path / "x.csv", interest="NoSuch/9")


def test_report_html_has_metrics_taxonomy_and_no_script(trained_run: RunDir) -> None:
    from server.run_report import write_run_report
    from server.taxonomy import load_taxonomy

    from simulation.cli import _example_user

    example, why = _example_user(trained_run)  # the CLI's choice: a synthetic user sampled from the model
    assert example is not None, why
    path = write_run_report(trained_run, example=example)
    page = path.read_text(encoding="utf-8")
    assert path == trained_run.run_report_path
    assert "<script" not in page.lower()
    summary = trained_run.read_summary()
    assert summary is not None
    final = summary["final_oracle"]["ndcg@100"]
    assert f"{final:.4f}" in page and "simulation oracle — not a release" in page
    for cat in load_taxonomy(trained_run)["categories"]:
        assert f">{cat['id']}<" in page
    assert "DP interest census not run" in page
    assert "Privacy off" in page
    assert "exactly as a device does" in page


def test_report_shows_census_when_present(trained_run: RunDir) -> None:
    from server.run_report import write_run_report

    census = {
        "interests": [{"id": "c0/0", "label": "<b>odd & label</b>", "count": 12.5}],
        "epsilon": 1.0,
        "delta": 1e-5,
    }
    trained_run.write_census(census)
    try:
        page = write_run_report(trained_run).read_text(encoding="utf-8")
    finally:
        trained_run.census_path.unlink()  # the session's run is shared: leave it as it was
    assert "DP interest census not run" not in page
    assert "&lt;b&gt;odd &amp; label&lt;/b&gt;" in page and "<b>odd" not in page
    assert "12.5" in page
