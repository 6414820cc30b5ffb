"""`strata bench --only dp-step`: the cost of one DP-SGD step against a plain step, side by side.

The 600/200 Mult-VAE on ML-100K's 1,682 items, synthetic users of ML-100K's density (6%
rated). Per batch size, alternating in one process and one thread: a plain SGD step, Strata's
DP step (Poisson sampling, book-keeping clipping of `shared.bookkeeping`, Opacus noise and
step) and, for reference, Opacus' own ghost clipping (`make_private(grad_sample_mode="ghost")`,
which runs a second backward pass). Each figure is the median over repeats of one epoch's
seconds per step; a fresh model and optimizer per repeat.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
import warnings

import torch
from torch.utils.data import TensorDataset

from shared.config import ModelConfig
from shared.data.matrices import UserTensors
from shared.model import StrataLoss, build_model
from shared.run_dir import JsonDict
from shared.training import DPSettings, make_optimizer, train_users

log = logging.getLogger(__name__)

START, END = "<!-- dpstep-bench:start -->", "<!-- dpstep-bench:end -->"
ITEMS, USERS, DENSITY = 1682, 2048, 0.06
MODES = ("plain", "strata", "opacus-ghost")


def _users(seed: int = 0) -> UserTensors:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(USERS, ITEMS, generator=g) < DENSITY).float()
    ratings = mask * torch.randint(1, 6, (USERS, ITEMS), generator=g).float()
    return UserTensors((ratings >= 4).float(), ratings, mask)


def _opacus_ghost_epoch(data: UserTensors, batch: int, model_config: ModelConfig) -> tuple[float, int]:
    """One epoch of Opacus' ghost clipping (noise 1, clip 1, Poisson rate batch/USERS)."""
    from opacus import PrivacyEngine
    from opacus.data_loader import DPDataLoader

    model = build_model(ITEMS, model_config, None, 0)
    optimizer = make_optimizer(model, "sgd", 0.1)
    criterion = StrataLoss(beta=0.1, reduction="mean")
    loader = DPDataLoader(TensorDataset(*data.as_tuple()), sample_rate=batch / USERS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private, dp_opt, dp_crit, dp_loader = PrivacyEngine().make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            poisson_sampling=False,
            criterion=criterion,
            grad_sample_mode="ghost",
            loss_reduction="mean",
        )
        dp_opt.expected_batch_size = batch
        start, steps = time.perf_counter(), 0
        for x, r, m in dp_loader:
            dp_opt.zero_grad(set_to_none=True)
            if len(x):
                dp_crit(private(x, r, m), x, r, m).backward()
                dp_opt.step()
            steps += 1
        seconds = time.perf_counter() - start
    private._close()
    return seconds, steps


def _epoch(data: UserTensors, batch: int, mode: str, model_config: ModelConfig) -> float:
    """Seconds per step of one epoch in `mode`."""
    if mode == "opacus-ghost":
        seconds, steps = _opacus_ghost_epoch(data, batch, model_config)
        return seconds / steps
    model = build_model(ITEMS, model_config, None, 0)
    dp = DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=batch / USERS) if mode == "strata" else None
    start = time.perf_counter()
    stats = train_users(
        model,
        data,
        epochs=1,
        batch_size=batch,
        optimizer=make_optimizer(model, "sgd", 0.1),
        beta=0.1,
        rating_weight=1.0,
        generator=torch.Generator().manual_seed(1),
        dp=dp,
    )
    return (time.perf_counter() - start) / stats.steps


def run_dp_step_bench(batches: tuple[int, ...] = (32, 64, 256), repeats: int = 5) -> JsonDict:
    """Median seconds per step of every mode at every batch size, measured alternately."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data, model_config = _users(), ModelConfig()
        rows = []
        for batch in batches:
            times: dict[str, list[float]] = {mode: [] for mode in MODES}
            for rep in range(repeats):
                for mode in MODES:
                    times[mode].append(_epoch(data, batch, mode, model_config))
                log.info("dp-step bench: batch %d, repeat %d of %d", batch, rep + 1, repeats)
            medians = {mode: statistics.median(v) for mode, v in times.items()}
            ratio = {mode: medians[mode] / medians["plain"] for mode in MODES}
            rows.append({"batch": batch, "seconds": medians, "ratio": ratio})
    finally:
        torch.set_num_threads(threads)
    return {"items": ITEMS, "users": USERS, "density": DENSITY, "repeats": repeats, "rows": rows}


def render_dp_step(result: JsonDict, *, command: str) -> str:
    """Return the markdown section of a DP-step benchmark."""
    lines = [
        START,
        "## DP-SGD step cost (`strata bench --only dp-step`)",
        "",
        (
            f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}, "
            f"machine: {platform.machine()} {platform.system()}, "
            f"{os.cpu_count()} cores (one torch thread), the shared development machine. 600/200 Mult-VAE with the "
            f"rating head, {result['items']} items, {result['users']} synthetic users at "
            f"{result['density']:.0%} density; milliseconds per step, median of {result['repeats']} epochs per "
            "mode, modes alternated. Strata's DP step: "
            "Poisson sampling, book-keeping clipping (one backward pass, `shared/bookkeeping.py`), Opacus noise and "
            'step. Opacus ghost: `make_private(grad_sample_mode="ghost")`, a second backward pass.'
        ),
        "",
        "| batch | plain ms | Strata DP ms | Strata / plain | Opacus ghost ms | Opacus ghost / plain |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        s, r = row["seconds"], row["ratio"]
        lines.append(
            f"| {row['batch']} | {s['plain'] * 1e3:.1f} | {s['strata'] * 1e3:.1f} | {r['strata']:.2f} | "
            f"{s['opacus-ghost'] * 1e3:.1f} | {r['opacus-ghost']:.2f} |"
        )
    return "\n".join([*lines, "", END]) + "\n"
