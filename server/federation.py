"""The server's round loop: train, aggregate, evaluate, checkpoint, log — then export.

Evaluation is the clients' DP release (`federation.eval-release`): noisy means with their noise
std, in the ledgers. In simulation the runner may also hand in an `Oracle`: its own evaluation
on the held-out data, logged under "oracle" and labelled "simulation oracle — not a release".
A deployed server has no held-out data and no oracle.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from shared.config import StrataConfig
from shared.data.source import load_catalog
from shared.features import model_features
from shared.metrics import ORACLE_LABEL
from shared.model import build_model
from shared.privacy.ledger import SERVER
from shared.privacy.signing import SigningKey
from shared.privacy.release import EVALUATION, evaluation_rounds, noise_holder, release_bound, release_noise_multiplier
from shared.protocol import RUN_ID
from shared.run_dir import JsonDict, RunDir
from shared.seeds import SAMPLING, make_rng

from .central_dp import CentralDP, build_central_dp
from .cohorts import cohort_devices
from .checkpoint import Checkpoint, CheckpointWriter, load_checkpoint
from .dp_strategy import CentralDPStrategy
from .instruction_log import InstructionLog
from .release import interest_census, popularity_prior
from .server_optimizer import ServerOptimizer
from .strategy import FedAvgStrategy

log = logging.getLogger(__name__)

Oracle = Callable[[dict[str, torch.Tensor]], dict[str, float]]
"""The simulation runner's own evaluation of global weights on the held-out data (never a device reply)."""


@dataclass(frozen=True)
class Federation:
    """The strategy of a run, and the central mechanism when there is one."""

    strategy: FedAvgStrategy | CentralDPStrategy
    central: CentralDP | None
    instructions: InstructionLog

    @property
    def client_epsilon(self) -> dict[int, float]:
        """The latest ε each client reported."""
        return self.strategy.client_epsilon


def build_federation(config: StrataConfig, *, run: RunDir, run_id: str) -> Federation:
    """FedAvg/FedAdam from the config, wrapped in DP-FedAvg under central privacy."""
    fed, p = config.federation, config.privacy
    holder = noise_holder(p.mode)
    server_key = SigningKey.load_or_create(run.signing_key_path(SERVER))
    instructions = InstructionLog(run.instruction_log_path, server_key)
    eval_noise = release_noise_multiplier(EVALUATION, p) * release_bound(EVALUATION)
    inner = FedAvgStrategy(
        optimizer=ServerOptimizer(fed.server_optimizer, fed.server_lr),
        rng=make_rng(config.run.seed, SAMPLING),
        fraction_train=fed.fraction_train,
        fraction_evaluate=fed.fraction_evaluate,
        min_train_clients=fed.min_train_clients,
        rating_range=(config.data.rating_min, config.data.rating_max),
        client_eval_noise_std=eval_noise if holder == "client" else 0.0,
        instructions=instructions,
        max_update_norm=fed.max_update_norm,
        cohorts=fed.cohorts,
        devices=cohort_devices(config),
    )
    if not p.central_dp:
        return Federation(inner, None, instructions)
    central = build_central_dp(config, run_id=run_id, ledger_path=run.central_ledger_path, signer=server_key)
    strategy = CentralDPStrategy(
        inner,
        central,
        eval_noise_multiplier=release_noise_multiplier(EVALUATION, p) if holder == "server" else None,
        central_max_epsilon=p.central_max_epsilon,
    )
    return Federation(strategy, central, instructions)


def _clean(record: object) -> dict[str, Any]:
    items = dict(record).items()  # type: ignore[call-overload]
    return {k: (float(v) if isinstance(v, float | int | np.floating) else v) for k, v in items}


def run_federation(
    grid: Grid, config: StrataConfig, *, timeout: float = 3600.0, oracle: Oracle | None = None
) -> JsonDict:
    """Run the configured rounds on `grid`; write the run directory; return the final summary.

    `oracle` (simulation only) is required when `federation.oracle-eval` is on.
    """
    if config.federation.oracle_eval and oracle is None:
        raise ValueError(
            "federation.oracle-eval is the simulation runner's own evaluation on the held-out data; a deployed "
            "server has none. Set federation.oracle-eval = false (the clients' DP evaluation release remains)."
        )
    run = RunDir.of(config.run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(run.checkpoint_path) if run.checkpoint_path.exists() else None
    if ckpt is not None:
        _check_resumable(run, config)
        if ckpt.round >= config.federation.rounds and run.read_summary() is not None:
            raise ValueError(
                f"{run} holds a finished run ({ckpt.round} of {config.federation.rounds} rounds): resuming it would "
                "release its census again and spend budget twice. Use a new --out, or more rounds to continue it."
            )
    run.write_config(config)
    # The server reads only the public catalog (item index and features), never a rating.
    catalog = load_catalog(config.data, config.run.seed)
    model = build_model(catalog.n_items, config.model, model_features(catalog, config), seed=config.run.seed)
    weights = {k: v.detach().clone() for k, v in model.named_parameters()}
    run_id = ckpt.run_id if ckpt is not None else uuid.uuid4().hex[:12]
    federation = build_federation(config, run=run, run_id=run_id)
    strategy, central = federation.strategy, federation.central
    server_ledger = central.ledger if central is not None else None
    start_round = 1
    if ckpt is not None:
        weights, start_round = ckpt.weights, ckpt.round + 1
        strategy.load_state_dict(ckpt.strategy)
        log.info("resuming from %s after round %d", run.checkpoint_path, ckpt.round)
        run.truncate_metrics(ckpt.round)
    else:
        run.clear_metrics()
    fed = config.federation
    n_nodes = _wait_for_clients(grid, fed.min_available_clients, fed.wait_for_clients_s)
    log.info(
        "run %s: %d clients (%s topology%s), %d rounds, privacy %s; writing %s",
        run_id,
        cohort_devices(config) or n_nodes,
        fed.topology,
        f", run by {n_nodes} cohort nodes" if fed.cohorts else "",
        fed.rounds,
        config.privacy.mode,
        run,
    )
    strategy.summary()
    if ckpt is None and config.model.popularity_prior:
        weights, epsilons = popularity_prior(
            grid,
            config,
            model,
            run_id=run_id,
            server_ledger=server_ledger,
            timeout=timeout,
            instructions=federation.instructions,
        )
        federation.client_epsilon.update(epsilons)
    arrays = ArrayRecord(weights)
    started = time.perf_counter()
    last_eval: dict[str, Any] = {}
    last_oracle: dict[str, Any] = {}
    last_round = start_round - 1
    stopped = ""
    with CheckpointWriter() as checkpoints:
        for rnd in range(start_round, fed.rounds + 1):
            stopped = _central_budget_exhausted(config, central, rnd, run_id)
            if stopped:
                log.warning("stopping before round %d: %s; exporting the model of round %d", rnd, stopped, rnd - 1)
                break
            arrays, line = _round(grid, strategy, central, arrays, rnd, run_id, config, timeout, oracle)
            last_eval = line["eval"] or last_eval
            last_oracle = line.get("oracle") or last_oracle
            run.append_metrics(line)
            weights_now, state = arrays.to_torch_state_dict(), strategy.state_dict()
            checkpoints.save(
                run.checkpoint_path, Checkpoint(round=rnd, weights=weights_now, strategy=state, run_id=run_id)
            )
            _progress(rnd, fed.rounds, line, time.perf_counter() - started)
            last_round = rnd
    elapsed = time.perf_counter() - started
    final = arrays.to_torch_state_dict()
    manifest = run.write_model(final, config, catalog, rounds=last_round)
    if fed.census:
        _, epsilons = interest_census(
            grid,
            config,
            model,
            final,
            catalog,
            model_fingerprint=manifest["weights_fingerprint"],
            run_id=run_id,
            server_ledger=server_ledger,
            timeout=timeout,
            delta=config.privacy.resolved_delta if config.privacy.mode != "off" else 0.0,
            instructions=federation.instructions,
        )
        federation.client_epsilon.update(epsilons)
    summary: JsonDict = {
        "run_id": run_id,
        "run_dir": str(run),
        "rounds": last_round,
        "clients": cohort_devices(config) or n_nodes,
        "wall_s": round(elapsed, 2),
        "epsilon": max(federation.client_epsilon.values(), default=0.0),
        "final_eval": last_eval,
        "final_oracle": last_oracle,
        "rejected_updates": strategy.rejected,
        "weights_fingerprint": manifest["weights_fingerprint"],
    }
    if central is not None:
        summary["central_epsilon"] = central.epsilon()
        summary["central_noise_multiplier"] = central.noise_multiplier
    if stopped:
        summary["stopped_early"] = stopped
    run.write_summary(summary)
    return summary


def _round(
    grid: Grid,
    strategy: FedAvgStrategy | CentralDPStrategy,
    central: CentralDP | None,
    arrays: ArrayRecord,
    rnd: int,
    run_id: str,
    config: StrataConfig,
    timeout: float,
    oracle: Oracle | None = None,
) -> tuple[ArrayRecord, JsonDict]:
    """One round: train and aggregate, then the evaluation release and the oracle when due; the new
    weights and the metrics line."""
    t0 = time.perf_counter()
    messages = list(strategy.configure_train(rnd, arrays, ConfigRecord({RUN_ID: run_id}), grid))
    replies = grid.send_and_receive(messages, timeout=timeout) if messages else []
    new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
    train = _clean(train_metrics) if train_metrics is not None else {}
    if new_arrays is not None:
        arrays = new_arrays
    evaluation: dict[str, Any] = {}
    fed = config.federation
    if rnd in evaluation_rounds(config):
        asks = list(strategy.configure_evaluate(rnd, arrays, ConfigRecord({RUN_ID: run_id}), grid))
        agg = strategy.aggregate_evaluate(rnd, grid.send_and_receive(asks, timeout=timeout)) if asks else None
        evaluation = _clean(agg) if agg is not None else {}
        if evaluation:
            evaluation["epsilon"] = max(strategy.client_epsilon.values(), default=0.0)
    line: JsonDict = {
        "round": rnd,
        "skipped": new_arrays is None,
        "train": train,
        "eval": evaluation,
        "epsilon": max(strategy.client_epsilon.values(), default=0.0),
        "round_s": round(time.perf_counter() - t0, 3),
    }
    if oracle is not None and (rnd % fed.eval_every == 0 or rnd == fed.rounds):
        line["oracle"] = {**oracle(arrays.to_torch_state_dict()), "label": ORACLE_LABEL}
    if central is not None and _epsilon_due(rnd, config):
        line["central_epsilon"] = central.epsilon()
    return arrays, line


EPSILON_POINTS = 20
"""How many rounds of a run log the central ε (evenly spaced, plus every evaluation and the last round)."""


def _epsilon_due(rnd: int, config: StrataConfig) -> bool:
    """Whether round `rnd`'s metrics line carries the central ε so far.

    One PLD composition costs 0.2-0.3 s on this machine; composing after every one of a few hundred
    rounds was a third of the demo's time. The ledger holds every round: the privacy report and the
    verifier recompute the series from it, so the metrics only sample it for progress. Under a central
    budget every round: the budget check has composed the same ledger already (a cache hit), and a run
    it stops early still ends on a line with the ε it reached."""
    fed = config.federation
    if config.privacy.central_max_epsilon > 0:
        return True
    every = max(1, fed.rounds // EPSILON_POINTS)
    return rnd % every == 0 or rnd % fed.eval_every == 0 or rnd == fed.rounds


def _central_budget_exhausted(config: StrataConfig, central: CentralDP | None, rnd: int, run_id: str) -> str:
    """Why round `rnd` may not run under `privacy.central-max-epsilon` ("" when it may)."""
    limit = config.privacy.central_max_epsilon
    if central is None or limit <= 0:
        return ""
    after = central.epsilon_after_next(server_round=rnd, run_id=run_id)
    if after <= limit:
        return ""
    return f"central budget: round {rnd} would bring the central ε to {after:.3f} > privacy.central-max-epsilon {limit}"


def _wait_for_clients(grid: Grid, minimum: int, timeout_s: float) -> int:
    """Block until at least `minimum` clients are connected; return how many are.

    Flower starts the ServerApp while SuperNodes are still registering: sampling before
    they are all there would train on a subset (or on nobody) without saying so.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        n = len(list(grid.get_node_ids()))
        if n >= max(minimum, 1):
            return n
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {n} of the {minimum} clients (federation.min-available-clients) connected within "
                f"{timeout_s:.0f} s (federation.wait-for-clients-s)."
            )
        time.sleep(0.2)


def _check_resumable(run: RunDir, config: StrataConfig) -> None:
    """Refuse to resume a checkpoint of a different experiment (more rounds are allowed)."""
    if not run.config_path.exists():
        return
    saved = run.read_config()
    mine = {k: v for k, v in config.to_flat().items() if k != "federation.rounds"}
    theirs = {k: v for k, v in saved.to_flat().items() if k != "federation.rounds"}
    differing = sorted(k for k in mine if mine[k] != theirs.get(k))
    if differing:
        raise ValueError(
            f"{run} holds a checkpoint of a different experiment (differs in {', '.join(differing)}); "
            "use a new --out, or delete the directory to start over."
        )


def _progress(rnd: int, rounds: int, line: JsonDict, elapsed: float) -> None:
    train, evaluation, oracle = line["train"], line["eval"], line.get("oracle")
    parts = [f"round {rnd}/{rounds}"]
    if "clients" in train:
        parts.append(f"{int(train['clients'])} clients")
    if train.get("refused"):
        parts.append(f"{int(train['refused'])} refused")
    if train.get("failed"):
        parts.append(f"{int(train['failed'])} failed")
    parts.append(f"ε {line['epsilon']:.3f}")
    if "central_epsilon" in line:
        parts.append(f"central ε {line['central_epsilon']:.3f}")
    if evaluation:
        parts.append(
            f"DP eval NDCG@100 {evaluation['ndcg@100']:.4f} ± {evaluation['ndcg@100-std']:.4f}, "
            f"RMSE {evaluation['rmse']:.4f} ± {evaluation['rmse-std']:.4f}"
        )
    if oracle:
        parts.append(f"oracle NDCG@100 {oracle['ndcg@100']:.4f} Recall@20 {oracle['recall@20']:.4f} "
                     f"RMSE {oracle['rmse']:.4f}")
    parts.append(f"{elapsed:.0f}s")
    log.info(" · ".join(parts))
