"""Hostile updates: a malicious ClientApp cannot poison the model.

The real round loop (`run_federation`) over the real honest ClientApp on node 0 and a test-only
malicious ClientApp on every other node, each sending one kind of hostile reply every round:
NaN, ±Inf, a wrong shape, wrong dtypes, a missing or an extra key, a huge norm, and malformed
metadata. Every hostile reply must be rejected (100%), logged with its node and reason, and the
final model must be exactly the one a run whose hostile nodes send nothing at all produces.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fakes import DirectGrid, deliver
from server.federation import run_federation
from shared.config import StrataConfig
from shared.protocol import ARRAYS, CONFIG, EPSILON, KEY, METRICS, REASON, REFUSED, TrainIns, TrainRes
from shared.run_dir import RunDir

Weights = dict[str, torch.Tensor]


def _first(w: Weights) -> str:
    return sorted(w)[0]


def _with(w: Weights, **changes: torch.Tensor) -> Weights:
    out = {k: v.clone() for k, v in w.items()}
    out.update(changes)
    return out


def _poisoned(value: float) -> Callable[[Weights], Weights]:
    def make(w: Weights) -> Weights:
        k = _first(w)
        bad = w[k].clone()
        bad.view(-1)[0] = value
        return _with(w, **{k: bad})

    return make


HOSTILE: dict[str, Callable[[Weights], Weights | RecordDict]] = {
    "nan": _poisoned(float("nan")),
    "+inf": _poisoned(float("inf")),
    "-inf": _poisoned(float("-inf")),
    "shape": lambda w: _with(w, **{_first(w): torch.zeros(*w[_first(w)].shape, 2)}),
    "float64": lambda w: {k: v.double() for k, v in w.items()},
    "int": lambda w: _with(w, **{_first(w): w[_first(w)].to(torch.int64)}),
    "missing-key": lambda w: {k: v for k, v in w.items() if k != _first(w)},
    "extra-key": lambda w: _with(w, backdoor=torch.ones(3)),
    "huge-norm": lambda w: {k: v + 1e6 for k, v in w.items()},
    "metadata-types": lambda w: RecordDict(
        {
            ARRAYS: ArrayRecord(w),
            METRICS: MetricRecord({EPSILON: 0.0, REFUSED: 0}),
            CONFIG: ConfigRecord({REASON: 7, KEY: ""}),  # the reason must be a string
        }
    ),
    "metadata-missing": lambda w: RecordDict({ARRAYS: ArrayRecord(w)}),
}
"""What each malicious node sends in reply to every training instruction."""

EXPECTED_REASON = {
    "nan": "NaN or infinite",
    "+inf": "NaN or infinite",
    "-inf": "NaN or infinite",
    "shape": "shape",
    "float64": "dtype",
    "int": "dtype",
    "missing-key": "parameter names differ",
    "extra-key": "parameter names differ",
    "huge-norm": "max-update-norm",
    "metadata-types": REASON,
    "metadata-missing": METRICS,
}


def _malicious_app(kind: str | None) -> ClientApp:
    """A ClientApp that answers training with the hostile reply `kind` (None: it sends nothing usable,
    a refusal); it never evaluates."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:  # noqa: ARG001
        weights = TrainIns.from_record(msg.content).weights()
        if kind is None:
            content = TrainRes(weights=None, epsilon=0.0, reason="absent").to_record()
        else:
            hostile = HOSTILE[kind](weights)
            content = hostile if isinstance(hostile, RecordDict) else TrainRes(weights=hostile, epsilon=0.0).to_record()
        return Message(content=content, reply_to=msg)

    return app


class HostileGrid(DirectGrid):
    """Node 0 runs the real ClientApp; node i ≥ 1 the malicious app of `kinds[i - 1]`."""

    def __init__(self, config: StrataConfig, kinds: list[str | None]) -> None:
        super().__init__(config)
        assert self.n == len(kinds) + 1
        self.malicious = {i + 1: _malicious_app(kind) for i, kind in enumerate(kinds)}

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]  # noqa: ARG002
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            app = self.malicious.get(node, self.app)
            replies.append(app(deliver(msg), self.contexts[node]))
        return replies


def _config(tiny_config: StrataConfig, out: Path) -> StrataConfig:
    return tiny_config.replace(
        {
            "run.out": str(out),
            "federation.num-hubs": len(HOSTILE) + 1,
            "federation.rounds": 2,
            "federation.eval-release": "none",
            "federation.oracle-eval": False,
            "federation.server-optimizer": "fedavg",
            "federation.server-lr": 1.0,
            "data.synthetic-users": 60,
        }
    )


def test_every_hostile_update_is_rejected_and_the_model_is_untouched(
    tiny_config: StrataConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kinds = list(HOSTILE)
    hostile_cfg = _config(tiny_config, tmp_path / "hostile")
    with caplog.at_level(logging.WARNING, logger="strata"):
        run_federation(HostileGrid(hostile_cfg, list(kinds)), hostile_cfg)
    clean_cfg = _config(tiny_config, tmp_path / "clean")
    run_federation(HostileGrid(clean_cfg, [None] * len(kinds)), clean_cfg)

    hostile, clean = RunDir.of(tmp_path / "hostile"), RunDir.of(tmp_path / "clean")
    for line in hostile.read_metrics():
        assert line["train"]["clients"] == 1, line  # the honest node only
        assert line["train"]["failed"] == len(kinds), line  # 100% of the hostile replies rejected
    a, b = hostile.load_weights(), clean.load_weights()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # not a bit of poison
    for node, kind in enumerate(kinds, start=1):
        lines = [r.getMessage() for r in caplog.records if f"node {node}:" in r.getMessage()]
        assert len(lines) == 2, (kind, lines)  # one per round, naming the device
        assert all(EXPECTED_REASON[kind] in line for line in lines), (kind, lines)
