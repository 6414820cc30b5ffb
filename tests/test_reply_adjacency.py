"""What leaves a real device depends on its user's data only through accounted noise.

A deployed device (node config `data-path`, the public catalog, no policy file: the strict
built-in policy) holds one user. The user's data set D and a neighbour D' (one rating changed)
get the same four instructions: train, evaluate, popularity, census. Everything in the replies
other than the mechanism's output — the records, keys, ε, refusal flags and reasons, shapes —
is identical, each array-valued reply has its ledger entry with the same (mechanism, q,
steps, σ, C), and the arrays do differ: they carry the user's data, but only through noise.
Under privacy `off` the device refuses everything (the strict policy requires local DP).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fakes import deliver
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict

from client.client_app import build_client_app
from shared.config import StrataConfig
from shared.data.csv_loader import load_csv
from shared.features import model_features
from shared.metrics import EVAL_FIELDS
from shared.model import build_model
from shared.privacy.ledger import Ledger
from shared.protocol import EvaluateIns, ReleaseIns, TrainIns
from shared.run_dir import client_ledger_name

N_ITEMS, N_INTERESTS = 12, 3
RATINGS = [(i, 1.0 + (i * 7) % 5) for i in range(9)]  # one user, nine ratings, values 1..5


def _write(tmp: Path, name: str, ratings: list[tuple[int, float]]) -> Path:
    path = tmp / f"{name}.csv"
    path.write_text("user,item,rating\n" + "".join(f"u1,i{i:02d},{r:g}\n" for i, r in ratings), encoding="utf-8")
    return path


def _catalog(tmp: Path) -> Path:
    path = tmp / "catalog.csv"
    rows = "".join(f"i{i:02d},Title {i},{'Drama' if i % 2 else 'Comedy'}\n" for i in range(N_ITEMS))
    path.write_text("item,title,categories\n" + rows, encoding="utf-8")
    return path


def _instructions(config: StrataConfig, catalog: Path) -> list[tuple[str, str, RecordDict]]:
    data = load_csv(_write(catalog.parent, "any", RATINGS), catalog)
    model = build_model(data.n_items, config.model, model_features(data.catalog, config), seed=0)
    arrays = ArrayRecord({k: v.detach().clone() for k, v in model.named_parameters()})
    interests = np.zeros((data.n_items, N_INTERESTS))
    interests[np.arange(data.n_items), np.arange(data.n_items) % N_INTERESTS] = 1.0
    return [
        ("popularity", MessageType.QUERY, ReleaseIns(kind="popularity", server_round=0, run_id="r").to_record()),
        ("train", MessageType.TRAIN, TrainIns(arrays=arrays, server_round=1, run_id="r").to_record()),
        ("evaluate", MessageType.EVALUATE, EvaluateIns(arrays=arrays, server_round=1, run_id="r").to_record()),
        (
            "census",
            MessageType.QUERY,
            ReleaseIns(kind="census", server_round=2, run_id="r", arrays=arrays, interests=interests).to_record(),
        ),
    ]


def _replies(config: StrataConfig, data: Path, catalog: Path, ledger_dir: Path) -> tuple[list[RecordDict], Ledger]:
    app = build_client_app(config)
    node_config: dict[str, bool | float | int | str] = {
        "data-path": str(data),
        "catalog-path": str(catalog),
        "ledger-dir": str(ledger_dir),
    }
    context = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})
    out = []
    for _, kind, content in _instructions(config, catalog):
        reply = app(deliver(Message(content=content, message_type=kind, dst_node_id=7)), context)
        assert not reply.has_error(), reply.error
        out.append(reply.content)
    return out, Ledger.open(ledger_dir / client_ledger_name(data.stem))


def _public_part(content: RecordDict) -> dict[str, object]:
    """Everything in a reply except the values of the mechanism's arrays (their names and shapes stay)."""
    out: dict[str, object] = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            out[name] = {k: (tuple(a.shape), a.dtype) for k, a in record.items()}
        else:
            out[name] = dict(record.items())
    return out


def _arrays(content: RecordDict) -> list[np.ndarray]:
    return [a.numpy() for record in content.values() if isinstance(record, ArrayRecord) for a in record.values()]


@pytest.fixture
def device_config(tiny_config: StrataConfig) -> StrataConfig:
    """Local DP in the device topology, a public population large enough for the strict δ cap."""
    return tiny_config.replace(
        {
            "privacy.mode": "local",
            "privacy.population": 100_000,
            "privacy.noise-multiplier": 1.0,
            "federation.topology": "device",
            "federation.rounds": 1,
            "federation.census": True,
            "train.batch-size": 1,
        }
    )


def test_neighbouring_data_sets_give_replies_that_differ_only_through_noise(
    device_config: StrataConfig, tmp_path: Path
) -> None:
    catalog = _catalog(tmp_path)
    changed = [(i, (5.0 if r < 3 else 1.0) if i == 4 else r) for i, r in RATINGS]  # one rating changed
    d = _write(tmp_path, "u1", RATINGS)
    (tmp_path / "neighbour").mkdir()
    d_prime = _write(tmp_path / "neighbour", "u1", changed)
    replies, ledger = _replies(device_config, d, catalog, tmp_path / "ledger-d")
    replies_prime, ledger_prime = _replies(device_config, d_prime, catalog, tmp_path / "ledger-d-prime")
    names = [name for name, _, _ in _instructions(device_config, catalog)]
    for name, a, b in zip(names, replies, replies_prime, strict=True):
        assert _public_part(a) == _public_part(b), name
    for name, a in zip(names, replies, strict=True):
        assert a["metrics"]["refused"] == 0 and a["config"]["reason"] == "", name
    # Every array that left the device is a release in its ledger, the same mechanism on both sides.
    assert [(e.mechanism, e.round) for e in ledger.entries] == [
        ("gaussian-sum", 0),
        ("dp-sgd", 1),
        ("gaussian-sum", 1),
        ("gaussian-sum", 2),
    ]
    public = [(e.mechanism, e.noise_multiplier, e.sample_rate, e.steps, e.max_grad_norm) for e in ledger.entries]
    assert public == [
        (e.mechanism, e.noise_multiplier, e.sample_rate, e.steps, e.max_grad_norm) for e in ledger_prime.entries
    ]
    assert all(e.noise_multiplier > 0 for e in ledger.entries)
    # The arrays themselves differ (noise is fresh on each side), and the evaluation release has 6 coordinates.
    for name, a, b in zip(names, replies, replies_prime, strict=True):
        assert any(not np.array_equal(x, y) for x, y in zip(_arrays(a), _arrays(b), strict=True)), name
    assert _arrays(replies[2])[0].shape == (len(EVAL_FIELDS),)


def test_without_noise_the_strict_device_refuses_everything(device_config: StrataConfig, tmp_path: Path) -> None:
    """A server asking a deployed device (strict policy) for privacy `off` gets refusals, no values."""
    catalog = _catalog(tmp_path)
    replies, ledger = _replies(
        device_config.replace({"privacy.mode": "off"}), _write(tmp_path, "u1", RATINGS), catalog, tmp_path / "l"
    )
    for content in replies:
        assert set(content.keys()) == {"metrics", "config"}  # no weights, no release
        assert content["metrics"]["refused"] == 1 and str(content["config"]["reason"]).startswith("policy:")
    assert len(ledger) == 0
    assert all(c["metrics"]["epsilon"] == 0.0 for c in replies)  # nothing was spent
