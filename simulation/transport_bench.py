"""`strata bench --only transport`: what compact transport costs in accuracy and saves in bytes.

The device preset of ML-100K (`configs/ml100k-device.toml`: 943 one-user devices, 94 per round, the
600/200 model) trained with each `federation.transport` in turn (float32, float16, int8), the same
seed and split, in cohort mode; for each the oracle's NDCG@100 and Recall@20 after the last round,
the bytes of one device's reply (its arrays as Flower serialises them) and the seconds per round.
Overrides (`-s`) apply to every run (e.g. a privacy mode; rounds with `--rounds`).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord

from shared.config import StrataConfig, load_config
from shared.data.source import load_catalog
from shared.features import model_features
from shared.model import build_model
from shared.protocol import TrainRes
from shared.run_dir import JsonDict, RunDir
from shared.transport import encode

from .simulate import simulate

START, END = "<!-- transport-bench:start -->", "<!-- transport-bench:end -->"
PRESET = "configs/ml100k-device.toml"
TRANSPORTS = ("float32", "float16", "int8")


def _config(runs_dir: Path, transport: str, rounds: int, overrides: list[str]) -> StrataConfig:
    return load_config(
        PRESET,
        [
            f"federation.rounds={rounds}",
            "federation.cohorts=2",
            "federation.num-cpus-per-client=1",
            "federation.eval-release=none",
            f"run.out={runs_dir / transport}",
            *overrides,
            f"federation.transport={transport}",
        ],
    )


def reply_bytes(config: StrataConfig) -> int:
    """Bytes of the arrays of one device's training reply under `config`'s transport (a stand-in
    change of the model's shapes; the size does not depend on the values)."""
    catalog = load_catalog(config.data, config.run.seed)
    model = build_model(catalog.n_items, config.model, model_features(catalog, config), seed=config.run.seed)
    change = {k: torch.full_like(v, 1e-3) for k, v in model.named_parameters()}
    transport = config.federation.transport
    if transport == "float32":
        reply = TrainRes(weights=change, epsilon=0.0)
    else:
        reply = TrainRes(weights=None, epsilon=0.0, compact=encode(change, transport, torch.Generator()))
    content = reply.to_record()
    records = [content[name] for name in ("arrays", "scales") if name in content]
    return sum(len(a.data) for r in records if isinstance(r, ArrayRecord) for a in r.values())


def run_transport_bench(runs_dir: Path, *, rounds: int, overrides: list[str] | None = None) -> JsonDict:
    """Train the preset once per transport; return the figures."""
    rows = []
    for transport in TRANSPORTS:
        config = _config(runs_dir, transport, rounds, list(overrides or []))
        summary = simulate(config)
        metrics = RunDir.of(config.run_dir).read_metrics()
        oracle = [m["oracle"] for m in metrics if "oracle" in m][-1]
        round_s = [float(m["round_s"]) for m in metrics]
        rows.append(
            {
                "transport": transport,
                "ndcg@100": float(oracle["ndcg@100"]),
                "recall@20": float(oracle["recall@20"]),
                "reply_bytes": reply_bytes(config),
                "round_s": statistics.median(round_s[1:] or round_s),
                "wall_s": float(summary.get("wall_s", 0.0)),
                "epsilon": float(summary.get("epsilon", 0.0)),
            }
        )
    return {"preset": PRESET, "rounds": rounds, "overrides": list(overrides or []), "rows": rows}


def render_transport(result: JsonDict, *, command: str) -> str:
    """Return the markdown section of the transport benchmark."""
    base = result["rows"][0]
    intro = (
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}, machine: {platform.machine()} {platform.system()}, "
        f"{os.cpu_count()} cores. `{result['preset']}`, {result['rounds']} rounds, cohort mode (2 nodes), overrides: "
        f"{' '.join(result['overrides']) or 'none'}; one seed, the same split for every row."
    )
    lines = [
        START,
        "## Compact transport (`strata bench --only transport`)",
        "",
        intro,
        "",
        "| transport | NDCG@100 | Recall@20 | NDCG vs float32 | bytes per reply | bytes vs float32 | s per round |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['transport']} | {r['ndcg@100']:.4f} | {r['recall@20']:.4f} | "
            f"{r['ndcg@100'] - base['ndcg@100']:+.4f} | {r['reply_bytes']:,} | "
            f"{r['reply_bytes'] / base['reply_bytes']:.3f} | {r['round_s']:.2f} |"
        )
    lines += ["", END]
    return "\n".join(lines) + "\n"
