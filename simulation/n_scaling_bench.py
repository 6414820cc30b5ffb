"""`strata bench --only n-scaling`: privacy is cheaper with more users.

The same federation (`configs/n-scaling.toml`, planted synthetic data) at N users, with central
DP-FedAvg at a fixed ε (δ = 1/(100·N), about `USERS_PER_ROUND` users sampled per round by the
hubs' per-user coins), against the same model trained centrally without privacy on the same split
(`PLAIN`); NDCG@100 of the DP run relative to the non-private one at each N. Replaces only its
marked section of `--out`.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

from shared.config import load_config
from shared.privacy.ledger import Ledger
from shared.run_dir import JsonDict, RunDir

from .central import run_central
from .simulate import simulate

log = logging.getLogger(__name__)

START, END = "<!-- nscaling-bench:start -->", "<!-- nscaling-bench:end -->"
PRESET = "configs/n-scaling.toml"
SIZES = (1_000, 10_000, 100_000)
USERS_PER_ROUND = 300
"""Expected users per round at every N: q = USERS_PER_ROUND / N (the batch stays, amplification grows)."""
PLAIN = (
    'privacy.mode="off"', "privacy.user-sample-rate=1.0", "train.epochs=20", "train.lr=0.003", "train.batch-size=100"
)
"""The non-private reference: `strata central` on the same model and split (Adam, the planted preset's
schedule). Federated FedAvg without clipping at the DP preset's local learning rate diverged on this
data (update norms past federation.max-update-norm from round 89 at N = 1k, every hub from 10k)."""


def _run(overrides: list[str], out: Path, *, central: bool = False) -> JsonDict:
    config = load_config(PRESET, [*overrides, f'run.out="{out}"'])
    if config.run_dir.exists():
        shutil.rmtree(config.run_dir)  # a fresh experiment: no ledger carried over
    started = time.perf_counter()
    summary = run_central(config) if central else simulate(config)
    oracle = summary["final_oracle"]  # the simulation oracle (not a release): every user's held-out ratings
    run = RunDir.of(config.run_dir)
    entries = Ledger.open(run.central_ledger_path).entries if run.central_ledger_path.exists() else []
    z = next((e.noise_multiplier for e in entries if e.mechanism == "dp-fedavg"), None)
    return {
        "ndcg@100": oracle["ndcg@100"],
        "recall@20": oracle["recall@20"],
        "central_epsilon": summary.get("central_epsilon"),
        "z": z,
        "wall_s": time.perf_counter() - started,
    }


def run_n_scaling_bench(
    root: Path,
    *,
    sizes: tuple[int, ...] = SIZES,
    epsilon: float = 2.0,
    seeds: int = 1,
    overrides: list[str] | None = None,
) -> JsonDict:
    """Run the DP and the non-private configuration at every N and seed; return every figure."""
    rows = []
    for n in sizes:
        q = min(1.0, USERS_PER_ROUND / n)
        for seed in range(seeds):
            base = [f"data.synthetic-users={n}", f"run.seed={seed}", *(overrides or [])]
            log.info("n-scaling: N = %d, seed %d, central DP at ε = %g (q = %.4g)", n, seed, epsilon, q)
            dp = _run(
                [*base, f"privacy.central-target-epsilon={epsilon}", f"privacy.user-sample-rate={q}"],
                root / f"n{n}-s{seed}-dp",
            )
            log.info("n-scaling: N = %d, seed %d, central training without privacy", n, seed)
            plain = _run([*base, *PLAIN], root / f"n{n}-s{seed}-off", central=True)
            rows.append({"users": n, "seed": seed, "sample_rate": q, "dp": dp, "off": plain})
    return {"epsilon": epsilon, "users_per_round": USERS_PER_ROUND, "preset": PRESET, "rows": rows}


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.4f} ± {std:.4f}"


def _svg(points: list[tuple[int, float]]) -> str:
    """Draw DP / non-private NDCG@100 against N (log scale) as a small SVG."""
    w, h, pad = 360, 200, 40
    xs = [math.log10(n) for n, _ in points]
    x0, x1 = min(xs) - 0.2, max(xs) + 0.2

    def px(n: int) -> float:
        return pad + (math.log10(n) - x0) / (x1 - x0) * (w - 2 * pad)

    def py(r: float) -> float:
        return h - pad - r * (h - 2 * pad)

    path = " ".join(f"{'M' if k == 0 else 'L'}{px(n):.1f},{py(r):.1f}" for k, (n, r) in enumerate(points))
    dots = "".join(f"<circle cx='{px(n):.1f}' cy='{py(r):.1f}' r='3'/>" for n, r in points)
    labels = "".join(
        f"<text x='{px(n):.1f}' y='{h - pad + 16}' text-anchor='middle' font-size='11'>{n:,}</text>" for n, _ in points
    )
    ticks = "".join(
        f"<text x='{pad - 6}' y='{py(r) + 4:.1f}' text-anchor='end' font-size='11'>{r:.1f}</text>"
        f"<line x1='{pad}' x2='{w - pad}' y1='{py(r):.1f}' y2='{py(r):.1f}' stroke='#ddd'/>"
        for r in (0.0, 0.5, 1.0)
    )
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif'>{ticks}"
        f"<path d='{path}' fill='none' stroke='#1f77b4' stroke-width='2'/>{dots}{labels}"
        f"<text x='{w / 2}' y='{h - 6}' text-anchor='middle' font-size='11'>users N (log scale)</text>"
        f"<text x='12' y='{pad - 14}' font-size='11'>NDCG@100, DP / non-private</text></svg>"
    )


def render_n_scaling(result: JsonDict, *, command: str, svg_name: str = "n-scaling.svg") -> tuple[str, str]:
    """Return the markdown section and its SVG plot."""
    by_n: dict[int, list[JsonDict]] = {}
    for row in result["rows"]:
        by_n.setdefault(int(row["users"]), []).append(row)
    eps = result["epsilon"]
    lines = [
        START,
        "## Privacy is cheaper with more users (`strata bench --only n-scaling`)",
        "",
        f"`{command}`: `{result['preset']}` (planted synthetic data, 600 items, 4 hubs, 200 rounds) at N users;",
        (
            f"central DP-FedAvg at ε = {eps:g}, δ = 1/(100·N), each hub sampling each user with q = "
            f"{result['users_per_round']}/N per round; against the same model trained centrally without privacy on "
            "the same split (`strata central`, Adam 3e-3, 20 epochs). NDCG@100 is the simulation oracle over every "
            "user's held-out ratings (not a release)."
        ),
        "",
        (
            "| N users | q per user | z | ε spent | NDCG@100 DP | NDCG@100 central, no DP | DP / non-private "
            "| wall s (DP, central) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    points = []
    for n, rows in sorted(by_n.items()):
        dp = [float(r["dp"]["ndcg@100"]) for r in rows]
        off = [float(r["off"]["ndcg@100"]) for r in rows]
        ratio = [a / b for a, b in zip(dp, off, strict=True)]
        points.append((n, sum(ratio) / len(ratio)))
        z = rows[0]["dp"]["z"]
        first = rows[0]
        lines.append(
            f"| {n:,} | {first['sample_rate']:.4g} | {z:.3f} | {first['dp']['central_epsilon']:.3f} | {_mean_std(dp)} "
            f"| {_mean_std(off)} | **{_mean_std(ratio)}** | {first['dp']['wall_s']:.0f}, {first['off']['wall_s']:.0f} |"
        )
    lines += ["", f"![DP / non-private NDCG@100 against N]({svg_name})", "", END]
    return "\n".join(lines), _svg(points)
