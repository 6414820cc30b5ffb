"""End to end: the real ServerApp and ClientApp on Flower's simulation engine."""

from __future__ import annotations

import json
import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from client.client_app import build_client_app
from client.store import simulation_store
from client.trainer import parameters_of
from shared.model import build_model
from shared.privacy.accounting import default_delta, epsilon_of
from shared.privacy.ledger import Ledger
from simulation.simulate import simulate


def test_two_rounds_four_clients_with_local_dp(tiny_config) -> None:
    cfg = tiny_config.replace({"privacy.mode": "local", "privacy.noise-multiplier": 1.0})
    summary = simulate(cfg)
    run = cfg.run_dir
    for name in ("config.toml", "metrics.jsonl", "summary.json", "checkpoints/latest.pt", "model/weights.pt", "model/manifest.json"):
        assert (run / name).exists(), name
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [1, 2]
    for line in lines:
        assert line["train"]["clients"] == 4
        assert 0 < line["eval"]["ndcg@100"] <= 1 and math.isfinite(line["eval"]["rmse"])
        assert line["eval"]["ranked_users"] > 0
    # ε in metrics.jsonl after each round equals a fresh accountant replaying the client ledgers.
    ledgers = [Ledger.open(p) for p in sorted((run / "ledgers").glob("client-*.jsonl"))]
    assert len(ledgers) == 4
    delta = default_delta(cfg.data.synthetic_users)
    for line in lines:
        replay = max(epsilon_of([e for e in lg.entries if e.round <= line["round"]], delta) for lg in ledgers)
        assert line["epsilon"] == pytest.approx(replay, rel=1e-9)
    assert summary["epsilon"] == pytest.approx(lines[-1]["epsilon"])
    manifest = json.loads((run / "model" / "manifest.json").read_text())
    assert len(manifest["item_index"]) == cfg.data.synthetic_items
    assert manifest["weights_fingerprint"] == summary["weights_fingerprint"]


def test_reply_carries_only_weights_and_aggregate_metrics(tiny_config) -> None:
    cfg = tiny_config.replace({"privacy.mode": "local"})
    store = simulation_store(cfg, 0)
    weights = parameters_of(build_model(store.n_items, cfg.model, store.features, 0))
    app = build_client_app(cfg)
    ctx = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 4}, state=RecordDict(), run_config={})
    content = RecordDict({"arrays": ArrayRecord(weights), "config": ConfigRecord({"server-round": 1, "run-id": "t"})})
    for kind in (MessageType.TRAIN, MessageType.EVALUATE):
        msg = Message(content=content, dst_node_id=7, message_type=kind)
        msg.metadata.__dict__["_message_id"] = "m"  # as the SuperLink would set it
        reply = app(msg, ctx)
        assert not reply.has_error(), reply.error
        assert set(reply.content.keys()) <= {"arrays", "metrics"}
        metrics = dict(reply.content["metrics"])
        assert all(isinstance(v, int | float) for v in metrics.values())  # scalars only, no lists
        allowed = {"num-users", "num-examples", "train-loss", "epsilon", "refused", "ndcg_sum", "recall_sum",
                   "ranked_users", "sq_err_sum", "abs_err_sum", "rated"}
        assert set(metrics) <= allowed
        if "arrays" in reply.content:
            assert set(reply.content["arrays"].keys()) == set(weights)


def test_killed_run_resumes_to_the_same_model(tiny_config, tmp_path) -> None:
    """Rounds 1..2 in one go equal round 1, a stop, then resuming to round 2 (all clients train).

    Without DP: DP noise and sampling come from secret OS-seeded generators on purpose, so
    a DP run is never reproducible from its (public) seed.
    """
    base = tiny_config
    straight = simulate(base.replace({"run.out": str(tmp_path / "straight")}))
    interrupted = base.replace({"run.out": str(tmp_path / "resumed"), "federation.rounds": 1})
    simulate(interrupted)
    resumed = simulate(interrupted.replace({"federation.rounds": 2}))
    # Equal up to the order in which replies arrive (float summation order).
    a = torch.load(tmp_path / "straight" / "model" / "weights.pt")
    b = torch.load(tmp_path / "resumed" / "model" / "weights.pt")
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    assert resumed["run_id"] != straight["run_id"]
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [1, 2]


def test_resuming_a_different_experiment_is_refused(tiny_config, tmp_path) -> None:
    cfg = tiny_config.replace({"run.out": str(tmp_path / "r"), "federation.rounds": 1})
    simulate(cfg)
    with pytest.raises(Exception, match="different experiment"):
        simulate(cfg.replace({"model.hidden-dim": 32}))
