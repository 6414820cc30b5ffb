"""The server's round loop: train, aggregate, evaluate, checkpoint, log — then export."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import numpy as np
import tomli_w
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from client.profiles import InterestIndex
from shared.config import StrataConfig
from shared.data.source import fingerprint, load_source
from shared.data.types import Catalog
from shared.features import model_features
from shared.model import StrataModel, build_model
from shared.privacy.accounting import default_delta
from shared.privacy.release import CENSUS, POPULARITY, bias_from_popularity

from .central_dp import CentralDP, build_central_dp
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .export import export_model
from .release import collect_release, write_census
from .strategy import StrataStrategy
from .taxonomy import taxonomy_from_model, write_taxonomy

log = logging.getLogger("strata")


def _clean(record: object) -> dict:
    return {k: (float(v) if isinstance(v, float | int | np.floating) else v) for k, v in dict(record).items()}  # type: ignore[call-overload]


def run_federation(grid: Grid, config: StrataConfig, *, timeout: float = 3600.0) -> dict:
    """Run the configured rounds on `grid`; write the run directory; return the final summary."""
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoints" / "latest.pt"
    if ckpt_path.exists():
        _check_resumable(run_dir, config)
    (run_dir / "config.toml").write_text(tomli_w.dumps(config.to_nested()))
    # The server uses only the public catalog (item index and features), never ratings.
    data = load_source(config.data, config.run.seed)
    features = model_features(data.catalog, config)
    model = build_model(data.n_items, config.model, features, seed=config.run.seed)
    weights = {k: v.detach().clone() for k, v in model.named_parameters()}
    start_round = 1
    run_id = uuid.uuid4().hex[:12]
    metrics_path = run_dir / "metrics.jsonl"
    ckpt = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if ckpt is not None:
        run_id = ckpt.run_id
    central: CentralDP | None = None
    if config.privacy.central_dp:
        central = build_central_dp(
            config, data_users=data.n_users, run_id=run_id, ledger_path=run_dir / "ledgers" / "central.jsonl"
        )
    strategy = StrataStrategy(config, np.random.default_rng([config.run.seed, 1]), central=central)
    if ckpt is not None:
        weights, start_round = ckpt.weights, ckpt.round + 1
        strategy.optimizer.load_state_dict(ckpt.optimizer)
        strategy.rng.bit_generator.state = ckpt.rng_state
        strategy.client_epsilon = dict(ckpt.client_epsilon)
        log.info("resuming from %s after round %d", ckpt_path, ckpt.round)
        _truncate_metrics(metrics_path, ckpt.round)
    elif metrics_path.exists():
        metrics_path.unlink()
    n_nodes = _wait_for_clients(grid, config.federation.min_available_clients, config.federation.wait_for_clients_s)
    fed = config.federation
    log.info(
        "run %s: %d clients (%s topology), %d rounds, privacy %s; writing %s",
        run_id, n_nodes, fed.topology, fed.rounds, config.privacy.mode, run_dir,
    )
    strategy.summary()
    if ckpt is None and config.model.popularity_prior:
        weights = _with_popularity_prior(grid, config, model, strategy, central, run_id, timeout)
    arrays = ArrayRecord(weights)
    started = time.perf_counter()
    last_eval: dict = {}
    last_round = start_round - 1
    stopped = ""
    for rnd in range(start_round, fed.rounds + 1):
        if central is not None and config.privacy.central_max_epsilon > 0:
            after = central.epsilon_after_next(server_round=rnd, run_id=run_id)
            if after > config.privacy.central_max_epsilon:
                stopped = (
                    f"central budget: round {rnd} would bring the central ε to {after:.3f} > "
                    f"privacy.central-max-epsilon {config.privacy.central_max_epsilon}"
                )
                log.warning("stopping before round %d: %s; exporting the model of round %d", rnd, stopped, rnd - 1)
                break
        t0 = time.perf_counter()
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord({"run-id": run_id}), grid))
        replies = grid.send_and_receive(messages, timeout=timeout) if messages else []
        new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
        if new_arrays is not None:
            arrays = new_arrays
        train = _clean(train_metrics) if train_metrics is not None else {}
        evaluation: dict = {}
        if rnd % fed.eval_every == 0 or rnd == fed.rounds:
            replies = grid.send_and_receive(
                strategy.configure_evaluate(rnd, arrays, ConfigRecord({"run-id": run_id}), grid), timeout=timeout
            )
            agg = strategy.aggregate_evaluate(rnd, replies)
            evaluation = _clean(agg) if agg is not None else {}
            last_eval = evaluation or last_eval
        line = {
            "round": rnd,
            "skipped": new_arrays is None,
            "train": train,
            "eval": evaluation,
            "epsilon": train.get("epsilon", 0.0),
            "round_s": round(time.perf_counter() - t0, 3),
        }
        if central is not None:
            line["central_epsilon"] = train.get("central-epsilon", central.epsilon())
            line["sampled"] = len(messages)
        with open(metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
        save_checkpoint(
            ckpt_path,
            Checkpoint(
                round=rnd,
                weights=arrays.to_torch_state_dict(),
                optimizer=strategy.optimizer.state_dict(),
                rng_state=strategy.rng.bit_generator.state,
                client_epsilon=dict(strategy.client_epsilon),
                run_id=run_id,
            ),
        )
        _progress(rnd, fed.rounds, train, evaluation, time.perf_counter() - started)
        last_round = rnd
    elapsed = time.perf_counter() - started
    final = arrays.to_torch_state_dict()
    manifest = export_model(
        run_dir / "model", final, config, data.catalog, data_fingerprint=fingerprint(data), rounds=last_round
    )
    if fed.census:
        delta = config.privacy.delta or default_delta(data.n_users)
        _census(grid, config, model, final, data.catalog, manifest, strategy, central, run_id, delta, timeout)
    summary = {
        "run_id": run_id,
        "run_dir": str(run_dir),
        "rounds": last_round,
        "clients": n_nodes,
        "wall_s": round(elapsed, 2),
        "epsilon": max(strategy.client_epsilon.values(), default=0.0),
        "final_eval": last_eval,
        "rejected_updates": strategy.rejected,
        "weights_fingerprint": manifest["weights_fingerprint"],
    }
    if central is not None:
        summary["central_epsilon"] = central.epsilon()
        summary["central_noise_multiplier"] = central.noise_multiplier
    if stopped:
        summary["stopped_early"] = stopped
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _with_popularity_prior(
    grid: Grid, config: StrataConfig, model: StrataModel, strategy: StrataStrategy, central: CentralDP | None,
    run_id: str, timeout: float,
) -> dict[str, torch.Tensor]:
    """Weights whose decoder item bias comes from a (DP) popularity release (round 0)."""
    release = collect_release(
        grid, config, POPULARITY, run_id=run_id, dim=model.n_items,
        server_ledger=central.ledger if central is not None else None, timeout=timeout,
    )
    strategy.client_epsilon.update(release.client_epsilon)
    model.start_from_popularity(torch.from_numpy(bias_from_popularity(release.total)))
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _census(
    grid: Grid, config: StrataConfig, model: StrataModel, final: dict[str, torch.Tensor], catalog: Catalog,
    manifest: dict, strategy: StrataStrategy, central: CentralDP | None, run_id: str, delta: float, timeout: float,
) -> None:
    """Build the taxonomy of the final model and release the DP interest census (`census.json`)."""
    model.load_state_dict(final, strict=False)
    taxonomy = taxonomy_from_model(
        model, catalog, seed=config.run.seed, model_fingerprint=manifest["weights_fingerprint"], run_name=config.run.name
    )
    write_taxonomy(config.run_dir, taxonomy)
    index = InterestIndex.from_taxonomy(taxonomy, catalog.categories)
    release = collect_release(
        grid, config, CENSUS, run_id=run_id, dim=len(index.interests),
        server_ledger=central.ledger if central is not None else None, timeout=timeout,
        arrays=ArrayRecord(final), interests=index.l2,
    )
    strategy.client_epsilon.update(release.client_epsilon)
    census = write_census(config.run_dir, taxonomy, release, config, delta)
    eps = "no DP" if census["epsilon"] is None else f"census ε {census['epsilon']:.3f}"
    log.info("census of %d interests from %d clients -> %s (%s)", len(census["interests"]), release.clients, config.run_dir / "census.json", eps)


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


def _check_resumable(run_dir: Path, config: StrataConfig) -> None:
    """A checkpoint may only be resumed by the same experiment (more rounds allowed)."""
    import tomllib

    from shared.config import from_flat

    saved_path = run_dir / "config.toml"
    if not saved_path.exists():
        return
    nested = tomllib.loads(saved_path.read_text())
    saved = from_flat({f"{sec}.{k}": v for sec, table in nested.items() for k, v in table.items()})
    mine = {k: v for k, v in config.to_flat().items() if k != "federation.rounds"}
    theirs = {k: v for k, v in saved.to_flat().items() if k != "federation.rounds"}
    differing = sorted(k for k in mine if mine[k] != theirs.get(k))
    if differing:
        raise ValueError(
            f"{run_dir} holds a checkpoint of a different experiment (differs in {', '.join(differing)}); "
            "use a new --out, or delete the directory to start over."
        )


def _truncate_metrics(path: Path, last_round: int) -> None:
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["round"] <= last_round]
    path.write_text("".join(k + "\n" for k in keep))


def _progress(rnd: int, rounds: int, train: dict, evaluation: dict, elapsed: float) -> None:
    parts = [f"round {rnd}/{rounds}", f"{int(train.get('clients', 0))} clients"]
    if train.get("refused"):
        parts.append(f"{int(train['refused'])} refused")
    if train.get("failed"):
        parts.append(f"{int(train['failed'])} failed")
    loss = train.get("train-loss", float("nan"))
    parts.append(f"loss {loss:.2f}")
    parts.append(f"ε {train.get('epsilon', 0.0):.3f}")
    if "central-epsilon" in train:
        parts.append(f"central ε {train['central-epsilon']:.3f}")
    if evaluation:
        parts.append(f"NDCG@100 {evaluation['ndcg@100']:.4f} Recall@20 {evaluation['recall@20']:.4f} RMSE {evaluation['rmse']:.4f}")
    parts.append(f"{elapsed:.0f}s")
    log.info(" · ".join(parts))
