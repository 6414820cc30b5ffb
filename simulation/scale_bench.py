"""`strata bench --only scale`: the simulator's speed and memory, measured side by side in one run.

On the device topology of ML-100K (`configs/ml100k-device.toml`: 943 one-user clients, 10% per
round, the 600/200 model, no DP), in one process on one machine:

- **Flower**: `strata simulate` (Flower's simulation engine, Ray) for a few rounds; clients trained
  per second over the steady rounds (round 1 starts the actors), and the peak memory of the whole
  process tree (this process, Ray and its workers; PSS, so shared pages count once).
- **Floor**: the same `train_locally` over the same number of clients in one plain loop, in this
  process, with the model built once and reused: what the simulator would cost without Flower.
- **Oracle**: one evaluation of the global model on every user's held-out ratings.
- **Profile**: the top entries of a cProfile of the floor loop (where a client's time goes).

The section between its markers in the output file is replaced; the rest is left alone.
"""

from __future__ import annotations

import cProfile
import io
import logging
import os
import platform
import pstats
import statistics
import threading
import time
from pathlib import Path

import numpy as np

from client.store import num_clients, simulation_store
from client.trainer import train_locally
from deploy.bench import Footprint
from shared.config import StrataConfig, load_config
from shared.model import build_model
from shared.run_dir import JsonDict, RunDir
from shared.features import model_features
from shared.data.source import load_catalog

from .oracle import OracleEvaluation
from .simulate import simulate

log = logging.getLogger(__name__)

START, END = "<!-- scale-bench:start -->", "<!-- scale-bench:end -->"
PRESET = "configs/ml100k-device.toml"


def scale_config(runs_dir: Path, rounds: int, overrides: list[str] | None = None) -> StrataConfig:
    """Return the device preset for `rounds` rounds, evaluated only by the oracle at the end."""
    return load_config(
        PRESET,
        [
            f"federation.rounds={rounds}",
            "federation.eval-release=none",
            f"federation.eval-every={rounds}",
            f"run.out={runs_dir / 'flower'}",
            *(overrides or []),
        ],
    )


def _flower(config: StrataConfig) -> JsonDict:
    footprint = Footprint({"tree": os.getpid()})
    sampler = threading.Thread(target=footprint.run, daemon=True)
    sampler.start()
    try:
        summary = simulate(config)
    finally:
        footprint.stop()
        sampler.join()
    metrics = RunDir.of(config.run_dir).read_metrics()
    rounds = [float(m["round_s"]) for m in metrics]
    steady = rounds[1:] or rounds
    if config.privacy.central_dp:  # the sample's size is secret: the public expected count q · N
        per_round = config.federation.fraction_train * num_clients(config)
    else:
        clients = [int(m["train"].get("clients", 0)) for m in metrics]
        per_round = statistics.median(clients[1:] or clients)
    return {
        "round_s": rounds,
        "clients_per_round": per_round,
        "clients_per_s": per_round / statistics.median(steady),
        "peak_pss": footprint.total_pss_peak,
        "peak_rss": footprint.peaks.get("tree", 0),
        "wall_s": summary.get("wall_s", 0.0),
        # the server's work after each round (checkpoint, metrics, the last round's oracle): outside round_s
        "between_rounds_s": max(0.0, float(summary.get("wall_s", 0.0)) - sum(rounds)) / max(1, len(rounds)),
    }


def _floor(config: StrataConfig, clients_per_round: int, rounds: int) -> tuple[JsonDict, str]:
    """Time `train_locally` over `clients_per_round` sampled clients, `rounds` times, in one loop."""
    catalog = load_catalog(config.data, config.run.seed)
    model = build_model(catalog.n_items, config.model, model_features(catalog, config), seed=config.run.seed)
    weights = {k: v.detach().clone() for k, v in model.named_parameters()}
    n = num_clients(config)
    rng = np.random.default_rng(0)
    times = []
    profile = cProfile.Profile()
    for r in range(rounds + 1):  # round 0 warms the stores up (each client's split), as Flower's round 1 does
        picked = rng.choice(n, size=clients_per_round, replace=False)
        if r == rounds:
            profile.enable()
        t0 = time.perf_counter()
        for pid in picked:
            train_locally(simulation_store(config, int(pid)), config, weights, server_round=1, dp=None)
        if r == rounds:
            profile.disable()
        elif r:
            times.append(time.perf_counter() - t0)
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(8)
    median = statistics.median(times)
    return {"round_s": times, "clients_per_s": clients_per_round / median}, _profile_rows(out.getvalue())


def _profile_rows(text: str) -> str:
    """Return the cProfile table's rows as markdown, paths shortened to the package they are in."""
    rows = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[0].replace("/", "").isdigit() and parts[1].replace(".", "").isdigit():
            where = parts[5].replace(str(Path.cwd()) + "/", "")
            where = where.split("site-packages/")[-1]
            rows.append(f"| {parts[0]} | {float(parts[1]):.3f} | {float(parts[3]):.3f} | `{where}` |")
    return "\n".join(rows)


def _oracle(config: StrataConfig, repeats: int = 3) -> float:
    oracle = OracleEvaluation(config)
    catalog = load_catalog(config.data, config.run.seed)
    model = build_model(catalog.n_items, config.model, model_features(catalog, config), seed=config.run.seed)
    weights = {k: v.detach().clone() for k, v in model.named_parameters()}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        oracle(weights)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_scale_bench(runs_dir: Path, *, rounds: int = 6, overrides: list[str] | None = None) -> JsonDict:
    """Measure Flower, the floor and the oracle on the device preset; return the figures."""
    config = scale_config(runs_dir, rounds, overrides)
    log.info("scale bench: %s, %d rounds on Flower's engine", PRESET, rounds)
    flower = _flower(config)
    log.info("scale bench: the in-process floor")
    floor, profile = _floor(config, int(flower["clients_per_round"]), 3)
    oracle_s = 0.0
    if config.federation.oracle_eval:
        log.info("scale bench: the oracle evaluation")
        oracle_s = _oracle(config)
    m, fed = config.model, config.federation
    return {
        "preset": PRESET,
        "overrides": list(overrides or []),
        "setting": (
            f"{config.data.source} data, {m.hidden_dim}/{m.latent_dim} model, privacy {config.privacy.mode}, "
            + (f"{fed.cohorts} cohort nodes" if fed.cohorts else "one Flower node per device")
        ),
        "clients": num_clients(config),
        "rounds": rounds,
        "flower": flower,
        "floor": floor,
        "floor_share": flower["clients_per_s"] / floor["clients_per_s"],
        "oracle_s": oracle_s,
        "profile": profile,
    }


def render_scale(result: JsonDict, *, command: str) -> str:
    """Return the markdown section of a scale benchmark."""
    gib = 2**30
    flower, floor = result["flower"], result["floor"]
    intro = (
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}, machine: {platform.machine()} {platform.system()}, "
        f"{os.cpu_count()} cores, the shared development machine. `{result['preset']}` with "
        f"{' '.join(result.get('overrides', [])) or 'no overrides'}: {result['clients']} one-user clients, "
        f"{flower['clients_per_round']:.0f} per round, {result.get('setting', '')}; {result['rounds']} rounds."
    )
    floor_row = (
        f"| Floor: the same clients in one loop, clients per second | {floor['clients_per_s']:.1f} "
        f"(rounds {[round(r, 2) for r in floor['round_s']]} s) |"
    )
    memory = f"{flower['peak_pss'] / gib:.2f} GiB ({flower['peak_rss'] / gib:.2f} GiB)"
    lines = [
        START,
        "## Simulation speed and memory (`strata bench --only scale`)",
        "",
        intro,
        "",
        "| Figure | Value |",
        "|---|---|",
        f"| Flower: clients trained per second (steady rounds) | {flower['clients_per_s']:.1f} |",
        f"| Flower: seconds per round | {[round(r, 2) for r in flower['round_s']]} |",
        (
            "| Flower: the server's checkpoint and metrics after each round, outside the seconds above (mean) "
            f"| {flower.get('between_rounds_s', 0.0):.3f} s |"
        ),
        floor_row,
        f"| Flower / floor | {result['floor_share']:.2f} |",
        f"| Peak memory of the process tree (PSS; RSS summed) | {memory} |",
        f"| Oracle evaluation of every user (median of 3) | {result['oracle_s']:.2f} s |"
        if result["oracle_s"]
        else "| Oracle evaluation | off |",
        "",
        "Where a client's time goes in the floor loop (cProfile, one round, top entries by own time):",
        "",
        "| calls | own s | cumulative s | function |",
        "|---|---|---|---|",
        result["profile"],
        "",
        END,
    ]
    return "\n".join(lines) + "\n"
