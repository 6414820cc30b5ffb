"""The rows of `strata bench`: the main table's presets and the privacy–utility frontier's schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One benchmark row: a preset run by `strata central`/`strata simulate` (or a baseline), over seeds."""

    key: str
    label: str
    preset: str
    kind: str  # "baseline", "central" or "simulate"
    overrides: tuple[str, ...] = ()
    epsilon: float = 0.0
    """Target ε of a frontier row (inf: DP off); 0 for the main table."""
    layers: bool = False
    """Also measure the run's interest layers (simulation/layer_eval.py)."""
    schedule: tuple[str, ...] = ()
    """Overrides of the preset's training schedule (sampling, rounds), dropped in quick mode."""


ROWS = (
    Row("popularity", "Popularity (train positives)", "configs/ml100k-central.toml", "baseline"),
    Row("central", "Central Mult-VAE 600/200 (no DP)", "configs/ml100k-central.toml", "central", layers=True),
    Row(
        "fed-device", "Federated, `device`: 943 clients, 10%/round (no DP)", "configs/ml100k-device.toml", "simulate",
        layers=True,
    ),
    Row("fed-hub", "Federated, `hub`: 10 IID hubs (no DP)", "configs/ml100k-hub.toml", "simulate", layers=True),
    Row(
        "fed-hub-dp",
        "Federated, `hub`: 4 hubs + central DP-FedAvg, per-user q = 0.3, ε = 8 (the demo)",
        "configs/demo.toml",
        "simulate",
    ),
    Row(
        "fed-hub-local-dp",
        "Federated, `hub`: 4 hubs + local DP-SGD, ε = 8 (the earlier demo)",
        "configs/hub-local-dp.toml",
        "simulate",
    ),
    Row(
        "planted",
        "Central Mult-VAE on planted synthetic data (interest layers only)",
        "configs/planted-synthetic.toml",
        "central",
        layers=True,
    ),
    Row(
        "fed-device-central-dp",
        "Federated, `device` + central DP-FedAvg, ε = 8 (compact model)",
        "configs/ml100k-central-dp.toml",
        "simulate",
    ),
)
FRONTIER_EPSILONS = (1.0, 2.0, 4.0, 8.0, math.inf)
LOCAL_RELEASE_Z = {1.0: 8.0, 2.0: 6.0, 4.0: 4.0, 8.0: 3.0}
"""Noise multiplier of the local frontier's popularity release at each target ε: a cheaper release
(larger z) leaves more of a small budget to training."""


@dataclass(frozen=True)
class Schedule:
    """How the central frontier spends one target ε."""

    rate: float
    """Per-user sample rate q of each round (`privacy.user-sample-rate`)."""
    rounds: int
    release_z: float | None
    """Noise multiplier of the popularity release (None: privacy off, the exact prior)."""
    content_weight: float = 1.5
    """`model.content-weight`: the free content score's weight."""


CENTRAL_SCHEDULE = {
    1.0: Schedule(1.0, 2, 3.8),
    2.0: Schedule(1.0, 5, 2.2),
    4.0: Schedule(1.0, 20, 2.0),
    8.0: Schedule(1.0, 100, 2.0),
    math.inf: Schedule(1.0, 100, None, content_weight=0.0),
}
"""The central frontier's schedule at each target ε, chosen on the validation split (docs/benchmarks.md,
"Choosing the central configuration"): with the content score, the popularity release and that score
carry most of the ranking, so the budget buys a precise release and few rounds; per-user sampling no
longer paid at ε = 8; without privacy the content score lowered NDCG, so the ∞ row trains without it."""
FRONTIER_MODES = {
    "local": ("configs/frontier-local.toml", "privacy.target-epsilon", "local DP-SGD in 4 hubs"),
    "central": ("configs/frontier-central.toml", "privacy.central-target-epsilon", "central DP-FedAvg, 4 hubs"),
}


def _frontier_rows() -> tuple[Row, ...]:
    rows = []
    for mode, (preset, key, label) in FRONTIER_MODES.items():
        for eps in FRONTIER_EPSILONS:
            name = "inf" if math.isinf(eps) else f"{eps:g}"
            schedule: tuple[str, ...] = ()
            release_z = None if math.isinf(eps) else LOCAL_RELEASE_Z[eps]
            if mode == "central":
                plan = CENTRAL_SCHEDULE[eps]
                release_z = plan.release_z
                schedule = (
                    f"privacy.user-sample-rate={plan.rate}",
                    f"federation.rounds={plan.rounds}",
                    f"model.content-weight={plan.content_weight}",
                )
            overrides: tuple[str, ...] = (
                ('privacy.mode="off"',)
                if release_z is None
                else (f"{key}={eps}", f"privacy.release-noise-multiplier={release_z}")
            )
            rows.append(
                Row(
                    f"frontier-{mode}-eps{name}",
                    f"{label}, ε = {'∞' if math.isinf(eps) else name}",
                    preset,
                    "simulate",
                    overrides,
                    eps,
                    schedule=schedule,
                )
            )
    return tuple(rows)


FRONTIER = _frontier_rows()
ALL_ROWS = ROWS + FRONTIER
