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


def test_scale_bench_profile_rows_and_section() -> None:
    """The cProfile table becomes markdown rows (its summary and header lines are not rows), and
    the section carries its markers, so `write_section` can replace it in docs/benchmarks.md."""
    import cProfile
    import io
    import pstats

    from simulation.scale_bench import END, START, _profile_rows, render_scale

    profile = cProfile.Profile()
    profile.enable()
    sorted(range(10_000), key=lambda x: -x)
    profile.disable()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(3)
    rows = _profile_rows(out.getvalue()).splitlines()
    assert 1 <= len(rows) <= 3 and all(r.startswith("| ") and r.count("|") == 5 for r in rows)
    result = {
        "preset": "configs/ml100k-device.toml", "overrides": ["federation.cohorts=2"], "setting": "s", "clients": 943,
        "rounds": 3, "floor_share": 0.5, "oracle_s": 0.1, "profile": "\n".join(rows),
        "flower": {"clients_per_s": 50.0, "round_s": [9.0, 2.0, 2.0], "clients_per_round": 94, "peak_pss": 2**31,
                   "peak_rss": 2**32, "between_rounds_s": 0.04},
        "floor": {"clients_per_s": 100.0, "round_s": [0.9, 1.0]},
    }
    section = render_scale(result, command="strata bench --only scale")
    assert section.startswith(START) and section.rstrip().endswith(END)
    assert "| Flower / floor | 0.50 |" in section and "2.00 GiB (4.00 GiB)" in section
    assert "outside the seconds above (mean) | 0.040 s |" in section


def test_n_scaling_bench_runs_dp_against_non_private_at_each_n(tmp_path: Path) -> None:
    from shared.privacy.ledger import Ledger
    from shared.run_dir import RunDir
    from simulation.n_scaling_bench import END, START, render_n_scaling, run_n_scaling_bench

    tiny = [
        "data.synthetic-items=48", "data.synthetic-categories=4", "data.synthetic-subs-per-category=3",
        "model.hidden-dim=16", "model.latent-dim=8", "federation.rounds=2", "federation.eval-every=2",
    ]
    result = run_n_scaling_bench(tmp_path, sizes=(600,), epsilon=2.0, overrides=tiny)
    (row,) = result["rows"]
    assert row["users"] == 600 and row["sample_rate"] == 0.5  # 300 expected users per round
    assert 0 < row["dp"]["central_epsilon"] <= 2.0 * 1.001 and row["dp"]["z"] > 0
    assert row["off"]["z"] is None  # the central reference: no privacy, no DP-FedAvg entry
    entries = Ledger.open(RunDir.of(tmp_path / "n600-s0-dp").central_ledger_path).entries
    assert {e.sample_rate for e in entries if e.mechanism == "dp-fedavg"} == {0.5}  # the hubs' per-user coins
    section, svg = render_n_scaling(result, command="strata bench --only n-scaling")
    assert section.startswith(START) and section.endswith(END) and "| 600 | 0.5 |" in section
    ratio = row["dp"]["ndcg@100"] / row["off"]["ndcg@100"]
    assert f"**{ratio:.4f}**" in section and svg.startswith("<svg xmlns=")
