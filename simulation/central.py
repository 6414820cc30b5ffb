"""The central reference: the same model on the same split, trained on one machine.

Optionally with DP-SGD (user-level, over all users), accounted in a ledger like a client's.
"""

from __future__ import annotations

import logging
import time

import torch
from tqdm import tqdm

from shared.config import StrataConfig
from shared.data.matrices import UserTensors, train_tensors
from shared.data.source import load_source
from shared.data.split import UserRatings, split_configured
from shared.features import model_features
from shared.metrics import ORACLE_LABEL, evaluate_model
from shared.model import StrataModel, build_model
from shared.privacy.accounting import (
    calibrate_noise_multiplier,
    epsilon_of,
)
from shared.privacy.ledger import Ledger, LedgerEntry
from shared.privacy.signing import SigningKey
from shared.privacy.release import (
    bias_from_popularity,
    gaussian_noise,
    popularity_rows,
    release_entry,
)
from shared.run_dir import JsonDict, RunDir
from shared.privacy.plan import central_plan
from shared.training import DPSettings, cosine_lr, kl_weight, make_optimizer, train_users

from .population import with_public_population

log = logging.getLogger(__name__)


def run_central(config: StrataConfig, *, eval_every: int = 5) -> JsonDict:
    """Train centrally for `train.epochs`; write the run directory; return the summary."""
    config = with_public_population(config)
    run = RunDir.of(config.run_dir)
    run.write_config(config)
    data = load_source(config.data, config.run.seed)
    users = split_configured(data, config.data, config.run.seed)
    threshold = config.data.positive_threshold
    tensors = train_tensors(users, data.n_items, threshold)
    model = build_model(data.n_items, config.model, model_features(data.catalog, config), config.run.seed)
    optimizer = make_optimizer(model, "adam", config.train.lr, config.train.weight_decay)
    gen = torch.Generator().manual_seed(config.run.seed)
    p, t = config.privacy, config.train
    delta = p.resolved_delta
    q, steps_per_epoch = central_plan(config)
    dp = None
    ledger, run_id = _open_ledger(run)
    if config.model.popularity_prior:
        _popularity_prior(model, tensors, config, ledger, run_id)
    if p.local_dp:  # DP-SGD over all users: the central twin of the clients' local DP
        sigma = p.noise_multiplier
        if p.target_epsilon > 0:
            sigma = calibrate_noise_multiplier(
                target_epsilon=p.target_epsilon, delta=delta, population=p.population, sample_rate=q,
                steps=t.epochs * steps_per_epoch,
                prior=ledger.entries,
            )
        dp = DPSettings(
            noise_multiplier=sigma, max_grad_norm=p.max_grad_norm, sample_rate=q, ghost_clipping=p.ghost_clipping
        )
        log.info("central DP-SGD: σ=%.4f, q=%.4f, %d steps, δ=%.3g", sigma, q, t.epochs * steps_per_epoch, delta)
    run.clear_metrics()
    started = time.perf_counter()
    with torch.random.fork_rng():
        # Dropout and the VAE's sampling draw from torch's global generator: seed a private
        # fork so a non-DP central run is reproducible (DP noise and sampling stay secret).
        torch.manual_seed(config.run.seed)
        epsilon, last = _train_epochs(
            model, tensors, users, data.n_items, config, optimizer, gen, dp, ledger, run_id, delta,
            steps_per_epoch, run, eval_every,
        )
    elapsed = time.perf_counter() - started
    weights = {k: v.detach().clone() for k, v in model.named_parameters()}
    manifest = run.write_model(weights, config, data.catalog, rounds=t.epochs)
    summary: JsonDict = {
        "run_dir": str(run),
        "mode": "central",
        "run_id": run_id,
        "epochs": t.epochs,
        "wall_s": round(elapsed, 2),
        "epsilon": epsilon,
        "delta": delta,
        "final_oracle": last,
        "weights_fingerprint": manifest["weights_fingerprint"],
    }
    run.write_summary(summary)
    return summary


def _open_ledger(run: RunDir) -> tuple[Ledger, str]:
    """Open the run directory's central ledger, keeping earlier runs' entries, and name this run.

    Re-using a run directory trains on the same users again, so their budget is already partly
    spent: the ledger is appended to, never reset (as the clients' ledgers of `strata simulate`),
    and this run's ε and its calibration compose with the earlier entries. Each run gets its own
    run id (`central-1`, `central-2`, ...; also in `summary.json`), so the privacy report tells
    the runs apart.
    """
    ledger = Ledger.open(run.central_ledger_path, SigningKey.load_or_create(run.signing_key_path("central")))
    earlier = {e.run_id for e in ledger.entries}
    k = len(earlier) + 1
    while f"central-{k}" in earlier:
        k += 1
    if earlier:
        log.warning(
            "%s already holds %d entries from %d earlier run(s): this run's ε composes with them "
            "(the same users' data is used again). Use a new --out for an untouched budget.",
            run.central_ledger_path,
            len(ledger),
            len(earlier),
        )
    return ledger, f"central-{k}"


def _popularity_prior(
    model: StrataModel, tensors: UserTensors, config: StrataConfig, ledger: Ledger, run_id: str
) -> None:
    """Set the decoder item bias from a popularity release over all users: Gaussian noise
    (z = privacy.release-noise-multiplier, bound 1 per user) and a ledger entry under DP."""
    total = popularity_rows(tensors.positives.numpy()).sum(axis=0)
    if config.privacy.mode != "off":
        z = config.privacy.release_noise_multiplier
        ledger.append(release_entry(noise_multiplier=z, bound=1.0, run_id=run_id, server_round=0, holder="central"))
        total = total + gaussian_noise(total.shape[0], z)
    model.start_from_popularity(torch.from_numpy(bias_from_popularity(total)))


def _train_epochs(
    model: StrataModel, tensors: UserTensors, users: list[UserRatings], n_items: int, config: StrataConfig,
    optimizer: torch.optim.Optimizer, gen: torch.Generator, dp: DPSettings | None, ledger: Ledger, run_id: str,
    delta: float,
    steps_per_epoch: int, run: RunDir, eval_every: int,
) -> tuple[float, JsonDict]:
    """Run the epoch loop of `run_central`: train, account, evaluate, log one line per epoch."""
    m, t, p = config.model, config.train, config.privacy
    threshold = config.data.positive_threshold
    step, epsilon = 0, 0.0
    last: JsonDict = {}
    with tqdm(range(1, t.epochs + 1), desc="central", unit="epoch", disable=None) as epochs:
        for epoch in epochs:
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(t.lr, t.lr_final, epoch, t.epochs)
            betas = [kl_weight(step + i, m) for i in range(steps_per_epoch)]
            stats = train_users(
                model, tensors, epochs=1, batch_size=t.batch_size, optimizer=optimizer, beta=betas,
                rating_weight=m.rating_weight, generator=gen, dp=dp,
            )
            step += stats.steps
            if dp is not None:
                ledger.append(
                    LedgerEntry.dp_sgd(
                        noise_multiplier=dp.noise_multiplier, sample_rate=stats.sample_rate, steps=stats.steps,
                        max_grad_norm=dp.max_grad_norm, run_id=run_id, round=epoch, client="central",
                    )
                )
                epsilon = epsilon_of(ledger.entries, delta, p.accountant)
            epochs.set_postfix({"loss": f"{stats.mean_loss:.2f}", "ε": f"{epsilon:.3f}"})
            # The loss of a DP-SGD epoch is a statistic of the secret samples: the console only.
            line: JsonDict = {"round": epoch, "train": {}, "eval": {}, "epsilon": epsilon}
            if epoch % eval_every == 0 or epoch == t.epochs:
                scale = (config.data.rating_min, config.data.rating_max)
                sums = evaluate_model(model, users, n_items, threshold, rating_range=scale)
                line["oracle"] = {**sums.means(), "label": ORACLE_LABEL}
                last = line["oracle"]
                log.info(
                    "epoch %d/%d · loss %.2f · ε %.3f · NDCG@100 %.4f Recall@20 %.4f RMSE %.4f",
                    epoch, t.epochs, stats.mean_loss, epsilon, last["ndcg@100"], last["recall@20"], last["rmse"],
                )
            run.append_metrics(line)
    return epsilon, last
