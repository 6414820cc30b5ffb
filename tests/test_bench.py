"""The benchmark command writes its table (quick mode: synthetic data, no Flower)."""

from __future__ import annotations

from pathlib import Path

from shared.config import StrataConfig
from simulation.bench import run_bench


def test_quick_bench_writes_a_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    results = run_bench(seeds=2, out=out, runs_dir=tmp_path / "runs", only=["popularity", "central"], quick=True)
    text = out.read_text()
    assert "| Popularity" in text and "| Central Mult-VAE" in text
    assert "Quick mode" in text and "2 seed(s)" in text
    for row in ("popularity", "central"):
        assert len(results[row]) == 2
        assert all(0 < r["ndcg@100"] <= 1 for r in results[row])
    assert " ± " in text  # mean ± std over the seeds
    assert "## Interest layers" in text and all("layers" in r for r in results["central"])


def test_quick_frontier_rows_write_a_table_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    rows = ["frontier-local-eps8", "frontier-central-eps8", "frontier-local-epsinf"]
    results = run_bench(seeds=1, out=out, runs_dir=tmp_path / "runs", only=rows, quick=True)
    text = out.read_text()
    assert "## Privacy–utility frontier" in text and "![NDCG@100 against ε](frontier.svg)" in text
    svg = (tmp_path / "frontier.svg").read_text()
    assert svg.startswith("<svg xmlns=") and "polyline" in svg
    assert 0 < results["frontier-local-eps8"][0]["epsilon"] <= 8.0 * 1.001
    assert 0 < results["frontier-central-eps8"][0]["epsilon"] <= 8.0 * 1.001
    assert results["frontier-local-epsinf"][0]["epsilon"] == 0.0  # privacy off: nothing accounted


def test_central_run_is_reproducible(tiny_config: StrataConfig, tmp_path: Path) -> None:
    """Same config and seed, same model: dropout and sampling come from a seeded fork."""
    from simulation.central import run_central

    cfg = tiny_config.replace({"train.epochs": 2})
    a = run_central(cfg.replace({"run.out": str(tmp_path / "a")}))
    b = run_central(cfg.replace({"run.out": str(tmp_path / "b")}))
    assert a["weights_fingerprint"] == b["weights_fingerprint"]
