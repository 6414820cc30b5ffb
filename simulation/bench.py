"""`strata bench`: the ML-100K benchmark table, written to docs/benchmarks.md.

Every row is a real run of the same code a user runs (`strata central`, `strata
simulate`), repeated over seeds on the same per-user split; figures are mean ± std.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm import tqdm

from server.html_parts import line_chart
from shared.baselines import bias_only, global_mean, popularity
from shared.config import load_config
from shared.data.source import load_source
from shared.data.split import split_configured
from shared.run_dir import JsonDict, RunDir

from .bench_rows import ALL_ROWS, CENTRAL_SCHEDULE, FRONTIER, FRONTIER_EPSILONS, FRONTIER_MODES, ROWS, Row
from .central import run_central
from .layer_eval import evaluate_layers, planted_ami
from .simulate import simulate

log = logging.getLogger(__name__)


QUICK_PRESET = "configs/smoke.toml"


def _run_one(row: Row, seed: int, runs_dir: Path, quick: bool) -> JsonDict:
    preset = QUICK_PRESET if quick and row.kind != "baseline" else row.preset
    schedule = () if quick else row.schedule
    overrides = [*row.overrides, *schedule, f"run.seed={seed}", f'run.out="{runs_dir / f"{row.key}-s{seed}"}"']
    if quick:
        overrides.append('data.source="synthetic"')
        if row.epsilon:  # the smoke preset with the row's privacy mode, no text encoder needed
            mode = "off" if math.isinf(row.epsilon) else ("central" if "central" in row.key else "local")
            overrides += [f'privacy.mode="{mode}"', "model.popularity-prior=true", "model.item-side=\"both\""]
    cfg = load_config(preset, overrides)
    if cfg.run_dir.exists():
        shutil.rmtree(cfg.run_dir)  # a fresh experiment: no ledgers or checkpoints carried over
    started = time.perf_counter()
    if row.kind == "baseline":
        data = load_source(cfg.data, seed)
        users = split_configured(data, cfg.data, seed)
        rank = popularity(users, data.n_items, cfg.data.positive_threshold).means()
        rate = bias_only(users, data.n_items, rating_range=(cfg.data.rating_min, cfg.data.rating_max)).means()
        mean = global_mean(users).means()
        return {
            "ndcg@100": rank["ndcg@100"], "recall@20": rank["recall@20"], "rmse": rate["rmse"],
            "global_mean_rmse": mean["rmse"], "wall_s": time.perf_counter() - started, "epsilon": 0.0,
        }
    if row.kind == "central":
        summary = run_central(cfg)
        clients_per_s = None
    else:
        summary = simulate(cfg)
        lines = RunDir.of(cfg.run_dir).read_metrics()
        # Under central DP the sampled count is secret and not logged: count the expected q · clients.
        expected = cfg.federation.fraction_train * float(summary["clients"])
        trained = sum(float(x["train"].get("clients", expected)) for x in lines)
        clients_per_s = trained / summary["wall_s"]
    ev = summary["final_oracle"]  # the simulation oracle (not a release): the same users for every row
    out: JsonDict = {
        "ndcg@100": ev["ndcg@100"], "recall@20": ev["recall@20"], "rmse": ev["rmse"],
        "wall_s": summary["wall_s"], "clients_per_s": clients_per_s,
        "epsilon": max(summary["epsilon"], summary.get("central_epsilon", 0.0)),
    }
    if row.layers:
        out["layers"] = _layer_metrics(RunDir.of(cfg.run_dir))
    return out


def _layer_metrics(run: RunDir) -> JsonDict:
    metrics = evaluate_layers(run)
    if run.read_config().data.source == "synthetic":
        metrics.update(planted_ami(run))
    metrics["code"] = _code_version()  # may differ from the commit that trained the run
    return metrics


def _remeasure_layers(results: dict[str, list[JsonDict]], runs_dir: Path) -> None:
    """Layer metrics of the runs already in `runs_dir` (no retraining), into `results`."""
    for row in ROWS:
        for seed, result in enumerate(results.get(row.key, [])):
            run = RunDir.of(runs_dir / f"{row.key}-s{seed}")
            if row.layers and run.model_dir.is_dir():
                log.info("bench: layers of %s", run)
                result["layers"] = _layer_metrics(run)


def _fmt(values: list[float | None], digits: int = 4) -> str:
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def _median(values: list[float | None], digits: int = 1) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.median(vals):.{digits}f} ({min(vals):.{digits}f}–{max(vals):.{digits}f})"


def _machine() -> str:
    mem = ""
    try:
        kb = int(
            next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1]
        )
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("torch", "flwr", "opacus", "dp-accounting"))
    return (
        f"{platform.machine()} Linux, {os.cpu_count()} cores{mem}, no GPU; "
        f"Python {platform.python_version()}, {versions}"
    )


def _code_version() -> str:
    """Return the git commit the benchmark ran on (and whether the tree had local changes)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        # The benchmark's own outputs (docs/) do not make the code dirty.
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", ".", ":(exclude)docs"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" with uncommitted changes" if dirty else "")


def run_bench(
    *, seeds: int, out: Path, runs_dir: Path, only: list[str] | None = None, quick: bool = False
) -> dict[str, list[JsonDict]]:
    """Run every row × seed, write the markdown table to `out` and the raw results beside the runs."""
    only = _expand(only)
    remeasure = only is not None and "layers" in only
    only = [k for k in only or [] if k != "layers"] or (None if not remeasure else [])
    rows = [r for r in ALL_ROWS if only is None or r.key in only]
    unknown = set(only or []) - {r.key for r in ALL_ROWS}
    if unknown:
        raise ValueError(
            f"unknown bench rows {sorted(unknown)}; rows: {', '.join(r.key for r in ALL_ROWS)}, "
            "or 'frontier' for all frontier rows"
        )
    results: dict[str, list[JsonDict]] = {}
    raw_path = runs_dir / "results.json"
    if raw_path.exists() and only is not None:
        results = json.loads(raw_path.read_text())  # keep rows measured earlier
    version = _code_version()
    with tqdm(total=len(rows) * seeds, desc="bench", unit="run", disable=None) as progress:
        for row in rows:
            results[row.key] = []
            for seed in range(seeds):
                progress.set_postfix({"row": row.key, "seed": seed})
                log.info("bench: %s, seed %d", row.key, seed)
                results[row.key].append({**_run_one(row, seed, runs_dir, quick), "code": version})
                runs_dir.mkdir(parents=True, exist_ok=True)
                raw_path.write_text(json.dumps(results, indent=1))
                progress.update()
    if remeasure:
        _remeasure_layers(results, runs_dir)
        raw_path.write_text(json.dumps(results, indent=1))
    command = "strata " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("strata") else "strata bench"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(results, seeds=seeds, command=command, quick=quick))
    if any(r.key in results for r in FRONTIER):
        (out.parent / FRONTIER_SVG).write_text(frontier_svg(results))
    log.info("wrote %s", out)
    return results


def _expand(only: list[str] | None) -> list[str] | None:
    """`frontier` stands for every frontier row."""
    if not only:
        return only
    return [k for name in only for k in ([r.key for r in FRONTIER] if name == "frontier" else [name])]


FRONTIER_SVG = "frontier.svg"


def _frontier_points(results: dict[str, list[JsonDict]], mode: str, metric: str) -> list[tuple[float, float]]:
    return [
        (r.epsilon, statistics.mean(x[metric] for x in results[r.key]))
        for r in FRONTIER
        if r.key in results and r.key.startswith(f"frontier-{mode}-") and not math.isinf(r.epsilon)
    ]


def frontier_svg(results: dict[str, list[JsonDict]]) -> str:
    """NDCG@100 against user-level ε for both modes, with popularity and central non-private."""
    series = [
        (FRONTIER_MODES[mode][2], _frontier_points(results, mode, "ndcg@100"), False) for mode in FRONTIER_MODES
    ]
    series = [s for s in series if s[1]]
    xs = [x for _, pts, _ in series for x, _ in pts] or [1.0, 8.0]
    for key, label in (("popularity", "popularity"), ("central", "central Mult-VAE, no DP")):
        if key in results:
            v = statistics.mean(x["ndcg@100"] for x in results[key])
            series.append((label, [(min(xs), v), (max(xs), v)], key == "popularity"))
    # ε = ∞ (privacy off) has no place on the axis: the no-DP rows are the reference lines.
    svg = line_chart(series, x_label="user-level ε (δ = 1/(100·N))", y_label="NDCG@100 (mean of seeds)")
    return svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" ', 1)


def render(results: dict[str, list[JsonDict]], *, seeds: int, command: str, quick: bool) -> str:
    """Render the markdown page of the benchmark results (main table, layers, frontier)."""
    seeds = max((len(rs) for rs in results.values()), default=seeds)  # rows kept from earlier runs count too
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{command}` on {dt.date.today().isoformat()}, machine: {_machine()}.",
        (
            "Data: MovieLens 100K, per-user 80/20 split (DESIGN.md §7), mean ± std over "
            f"{seeds} seed(s) unless a row says otherwise (the seed changes the split, initialisation and sampling)."
        ),
        (
            f"Code: commit(s) {', '.join(sorted({r.get('code', 'unknown') for rs in results.values() for r in rs}))}. "
            "Wall time and clients/s are the median (min–max) over seeds, measured on a shared 2-core machine: "
            "compare rows of one table, not tables of different days."
        ),
        "" if not quick else "**Quick mode: synthetic data, pipeline check only — not comparable figures.**",
        "",
        "| Method | NDCG@100 | Recall@20 | RMSE | ε (user-level) | Wall time (s) | Clients trained / s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        if row.key not in results or row.key == "planted":
            continue
        rs = results[row.key]
        label = row.label if len(rs) == seeds else f"{row.label} ({len(rs)} seed{'s' if len(rs) != 1 else ''})"
        eps = [r["epsilon"] for r in rs]
        eps_text = "∞ (no DP)" if not any(eps) else _fmt(eps, 2)
        rmse = _fmt([r["rmse"] for r in rs])
        if row.kind == "baseline":
            rmse = f"{rmse} (bias-only); {_fmt([r['global_mean_rmse'] for r in rs])} (global mean)"
        lines.append(
            f"| {label} | {_fmt([r['ndcg@100'] for r in rs])} | {_fmt([r['recall@20'] for r in rs])} | {rmse} | "
            f"{eps_text} | {_median([r['wall_s'] for r in rs])} | {_median([r.get('clients_per_s') for r in rs])} |"
        )
    if "central" in results and "fed-device" in results:
        c = statistics.mean(r["ndcg@100"] for r in results["central"])
        f = statistics.mean(r["ndcg@100"] for r in results["fed-device"])
        lines += ["", f"Federated `device` / central NDCG@100: **{f / c:.3f}** (target ≥ 0.95)."]
    lines += _layers_section(results)
    lines += _frontier_section(results)
    lines += [
        "",
        "Presets: `configs/ml100k-central.toml`, `configs/ml100k-device.toml`, `configs/ml100k-hub.toml`,",
        "`configs/demo.toml`. Epochs and rounds were chosen on a validation split carved from the",
        "training ratings (`--set data.holdout=\"validation\"`), never on the test ratings.",
        "Reference figures (DESIGN.md §7): popularity 0.259 / 0.193, central Mult-VAE 0.430 / 0.37,",
        "bias-only RMSE 0.957, global-mean RMSE 1.126.",
        "",
    ]
    return "\n".join(lines)


def _frontier_section(results: dict[str, list[JsonDict]]) -> list[str]:
    """Build the privacy–utility frontier table (ε × mode) and its plot."""
    if not any(r.key in results for r in FRONTIER):
        return []
    lines = [
        "",
        "## Privacy–utility frontier",
        "",
        "User-level (ε, δ = 1/(100·N)) after the popularity release and all rounds, both modes on 4 hubs",
        "(`configs/frontier-local.toml`, `configs/frontier-central.toml`; compact model over public genre, decade and",
        "MiniLM title features, DP popularity prior). Local: 100 rounds. Central: per-user sample rate and rounds",
        "per ε (" + ", ".join(
            f"ε = {'∞' if math.isinf(e) else f'{e:g}'}: q = {p.rate:g}, {p.rounds} rounds"
            + (f", release z = {p.release_z:g}" if p.release_z else "")
            + f", content weight {p.content_weight:g}"
            for e, p in CENTRAL_SCHEDULE.items()
        ) + "), chosen on the validation split. ε is the PLD accountant's over the ledgers; ∞ is the same",
        "configuration with privacy off (exact popularity prior, no content score).",
        "",
        "| Target ε | " + " | ".join(f"{m}: NDCG@100 | {m}: RMSE | {m}: ε spent" for m in FRONTIER_MODES) + " |",
        "|---|" + "---|---|---|" * len(FRONTIER_MODES),
    ]
    for eps in FRONTIER_EPSILONS:
        name = "inf" if math.isinf(eps) else f"{eps:g}"
        cells = []
        for mode in FRONTIER_MODES:
            rs = results.get(f"frontier-{mode}-eps{name}")
            if not rs:
                cells += ["—", "—", "—"]
                continue
            spent = [r["epsilon"] for r in rs]
            cells += [
                _fmt([r["ndcg@100"] for r in rs]),
                _fmt([r["rmse"] for r in rs]),
                "∞" if not any(spent) else _fmt(spent, 2),
            ]
        lines.append(f"| {'∞' if math.isinf(eps) else name} | " + " | ".join(cells) + " |")
    if "popularity" in results:
        pop = statistics.mean(r["ndcg@100"] for r in results["popularity"])
        lines += ["", f"Popularity NDCG@100 on the same splits: {pop:.4f}."]
    lines += ["", f"![NDCG@100 against ε]({FRONTIER_SVG})"]
    return lines


def _layers_section(results: dict[str, list[JsonDict]]) -> list[str]:
    """Interest-layer quality of the rows that measured it (simulation/layer_eval.py)."""
    measured = [r for r in ROWS if r.layers and any("layers" in x for x in results.get(r.key, []))]
    if not measured:
        return []
    lines = [
        "",
        "## Interest layers",
        "",
        "Measured on each run's exported model, taxonomy and held-out ratings (`simulation/layer_eval.py`).",
        "L3 lift: share of held-out positives inside the user's L3 latent interests over the share the population",
        "prior gives them. L2 coherence: within-interest co-consumption cosine over random interests of the same",
        "sizes in the same category. Lists exclude every item the user rated in train (as `strata recommend` does),",
        "so their NDCG@100 is higher than the protocol figure above, which only excludes train positives.",
        "Planted synthetic users draw held-out items from the sub-interests they already show, so L3 lift there is",
        "below 1 by construction; that row checks L2 recovery (AMI) and the lists.",
        (
            f"Layered lists: Steck calibration with λ = {_first_layer(results, measured)['lambda']:g} "
            "and 20% L3 discovery slots."
        ),
        "Layer metrics computed by the code of commit(s) "
        + ", ".join(
            sorted({x["layers"].get("code", "unknown") for r in measured for x in results[r.key] if "layers" in x})
        )
        + " on the runs of the table above.",
        "",
        (
            "| Run | L3 lift | L2 coherence ratio | AMI (planted) | Miscalibration@10 plain → layered (cut) "
            "| Diversity@10 plain → layered | Coverage@10 plain → layered | NDCG@100 plain → layered (change) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in measured:
        ms = [x["layers"] for x in results[row.key] if "layers" in x]

        def f(path: str, digits: int = 3, ms: list[JsonDict] = ms) -> str:
            vals: list[Any] = []
            for m in ms:
                v: Any = m  # a JSON value: a nested dict until the path's leaf
                for part in path.split("."):
                    v = v.get(part) if isinstance(v, dict) else None
                vals.append(v)
            return _fmt([float(v) for v in vals if v is not None], digits) if any(v is not None for v in vals) else "—"

        lines.append(
            f"| {row.label} ({len(ms)} seed(s)) | {f('l3_lift', 2)} | {f('coherence_ratio', 2)} | {f('ami', 3)} | "
            f"{f('plain.miscalibration@10')} → {f('layered.miscalibration@10')} ({f('miscalibration_cut@10', 2)}) | "
            f"{f('plain.diversity@10')} → {f('layered.diversity@10')} | "
            f"{f('plain.coverage@10')} → {f('layered.coverage@10')} | "
            f"{f('plain.ndcg@100')} → {f('layered.ndcg@100')} ({f('ndcg_change', 3)}) |"
        )
    return lines


def _first_layer(results: dict[str, list[JsonDict]], rows: list[Row]) -> JsonDict:
    return next(x["layers"] for r in rows for x in results[r.key] if "layers" in x)
