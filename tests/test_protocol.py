"""The wire protocol: every reply the real ClientApp sends is exactly what its schema lists,
and every message type survives `to_record()` / `from_record()` and refuses a malformed record.

A reply is what leaves the device, so its schema is the privacy boundary: the accounted
mechanism's output (weights, or the sum of clipped per-user updates; a release's sum), the
device's ε and a refusal's reason — no count, loss, exact sum or id. The schemas are written
out here by hand, so a key added to a reply (or to `REPLY_SCHEMAS` alone) fails this file
until someone looks at it. Every instruction type is asked in every topology and privacy mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from fakes import DirectGrid
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from client.store import simulation_store
from client.trainer import parameters_of
from shared.config import StrataConfig
from shared.metrics import EVAL_FIELDS
from shared.model import build_model
from shared.transport import CompactUpdate, encode
from shared.protocol import (
    REPLY_SCHEMAS,
    CohortRes,
    EvaluateIns,
    EvaluateRes,
    ProtocolError,
    ReleaseIns,
    ReleaseRes,
    TrainIns,
    DeviceOutcome,
    TrainRes,
    cohort_ins,
    cohort_of,
)

Schema = dict[str, dict[str, str]]
Weights = dict[str, torch.Tensor]
AnyMessage = TrainIns | TrainRes | EvaluateIns | EvaluateRes | ReleaseIns | ReleaseRes

# Reply type -> record -> key -> kind. "*" in "arrays" stands for every weight of the global model.
EXPECTED_SCHEMAS: dict[type, Schema] = {
    # "scales" only with federation.transport = "int8" (one per tensor); "encoding" names the transport.
    TrainRes: {
        "arrays": {"*": "tensor"},
        "scales": {"*": "array"},
        "metrics": {"epsilon": "float", "refused": "int"},
        "config": {"reason": "str", "key": "str", "encoding": "str"},
    },
    EvaluateRes: {
        "release": {"sum": "array"},
        "metrics": {"epsilon": "float", "refused": "int"},
        "config": {"reason": "str", "key": "str"},
    },
    ReleaseRes: {
        "release": {"sum": "array"},
        "metrics": {"epsilon": "float", "refused": "int"},
        "config": {"reason": "str", "key": "str"},
    },
    # Simulation only: a cohort node's sum over its devices (training: "arrays"; evaluation:
    # "release") and one entry per device in each list of "cohort".
    CohortRes: {
        "arrays": {"*": "tensor"},
        "release": {"sum": "array"},
        "cohort": {"devices": "list", "outcomes": "list", "epsilons": "list", "keys": "list", "reasons": "list"},
    },
}
KINDS = {"tensor", "array", "int", "float", "str", "list"}
N_INTERESTS = 5


def test_the_protocol_lists_exactly_these_schemas() -> None:
    assert REPLY_SCHEMAS == EXPECTED_SCHEMAS
    assert {kind for schema in REPLY_SCHEMAS.values() for keys in schema.values() for kind in keys.values()} <= KINDS
    for reply_type, schema in REPLY_SCHEMAS.items():
        assert reply_type.SCHEMA == schema  # type: ignore[attr-defined]


# ------------------------------------------------------------------------- checking a reply


def assert_matches(
    content: RecordDict,
    schema: Schema,
    *,
    weights: Weights,
    dim: int | None = None,
    devices: int = 0,
    dtype: str | None = None,
) -> None:
    """`content` has exactly the records and keys of `schema`, each value of its kind:
    int/float scalars in a MetricRecord, the global model's tensors in "arrays" (of `dtype` when
    given: a compact transport's codes), one float per tensor for {"*": "array"}, a 1-D float
    array of length `dim` for an "array", one entry per device of a cohort in each "list"."""
    assert set(content.keys()) == set(schema), f"records {sorted(content.keys())}, schema {sorted(schema)}"
    for name, keys in schema.items():
        record = content[name]
        if keys in ({"*": "tensor"}, {"*": "array"}):
            assert isinstance(record, ArrayRecord), (name, type(record))
            assert set(record.keys()) == set(weights), f"{name}: {sorted(record.keys())}"
            for key, array in record.items():
                assert isinstance(array, Array)
                if keys == {"*": "array"}:  # one scale per tensor
                    assert tuple(array.shape) == (1,) and array.dtype == "float32", (key, array.shape, array.dtype)
                    continue
                assert tuple(array.shape) == tuple(weights[key].shape), (key, array.shape)
                assert array.dtype == (dtype or str(weights[key].numpy().dtype)), (key, array.dtype)
            continue
        assert set(record.keys()) == set(keys), f"{name}: {sorted(record.keys())}, schema {sorted(keys)}"
        for key, kind in keys.items():
            value = record[key]
            where = f"{name}[{key!r}] = {value!r}"
            if kind in ("int", "float"):
                assert isinstance(record, MetricRecord), (name, type(record))
                assert type(value) is (int if kind == "int" else float), f"{where}: expected {kind}"  # noqa: E721
            elif kind == "str":
                assert isinstance(record, ConfigRecord), (name, type(record))
                assert isinstance(value, str), f"{where}: expected str"
            elif kind == "list":
                assert isinstance(record, ConfigRecord), (name, type(record))
                assert isinstance(value, list) and len(value) == devices, f"{where}: expected {devices} entries"
            elif kind == "array":
                assert isinstance(record, ArrayRecord), (name, type(record))
                assert isinstance(value, Array), where
                vector = value.numpy()
                assert vector.ndim == 1 and np.issubdtype(vector.dtype, np.floating), (
                    where,
                    vector.dtype,
                    vector.shape,
                )
                assert dim is None or vector.shape == (dim,), (where, vector.shape, dim)
            else:
                pytest.fail(f"{where}: unknown kind {kind!r}")


def test_the_check_catches_an_extra_key_a_missing_one_and_a_wrong_kind() -> None:
    weights = _weights_example()
    good = ReleaseRes(total=np.zeros(3), epsilon=0.0).to_record()
    assert_matches(good, EXPECTED_SCHEMAS[ReleaseRes], weights=weights, dim=3)
    extra, missing, wrong, ints = _copy(good), _copy(good), _copy(good), _copy(good)
    _edit(extra, "metrics")["user-id"] = 17
    del _edit(missing, "metrics")["epsilon"]
    _edit(wrong, "metrics")["refused"] = 0.0
    _edit(ints, "release")["sum"] = Array(np.zeros(3, dtype=np.int64))
    for bad in (extra, missing, wrong, ints):
        with pytest.raises(AssertionError):
            assert_matches(bad, EXPECTED_SCHEMAS[ReleaseRes], weights=weights, dim=3)
    with pytest.raises(AssertionError):  # a weight the global model does not have
        assert_matches(
            TrainRes(weights={**weights, "extra": torch.zeros(1)}, epsilon=0.0).to_record(),
            _without_scales(EXPECTED_SCHEMAS[TrainRes]),
            weights=weights,
        )


# ------------------------------------------------------------------------- real replies


def _without_scales(schema: Schema) -> Schema:
    """The schema of a reply in float16 or float32 transport: no int8 scales."""
    return {name: keys for name, keys in schema.items() if name != "scales"}


TRANSPORT_CASES = [
    (transport, mode) for transport in ("float16", "int8") for mode in ("off", "local", "central", "local+central")
]


@pytest.mark.parametrize(("transport", "mode"), TRANSPORT_CASES, ids=[f"{t}-{m}" for t, m in TRANSPORT_CASES])
def test_a_compact_train_reply_is_exactly_its_schema(tiny_config: StrataConfig, transport: str, mode: str) -> None:
    cfg = tiny_config.replace(
        {"privacy.mode": mode, "federation.topology": "device", "federation.transport": transport}
    )
    weights = _weights(cfg)
    reply = _ask(DirectGrid(cfg), _train(weights, 0), MessageType.TRAIN)
    schema = EXPECTED_SCHEMAS[TrainRes] if transport == "int8" else _without_scales(EXPECTED_SCHEMAS[TrainRes])
    assert_matches(reply.content, schema, weights=weights, dtype=transport)
    assert reply.content["config"]["encoding"] == transport
    parsed = TrainRes.from_record(reply.content)
    assert parsed.weights is None and parsed.compact is not None and not parsed.refused


def _weights(config: StrataConfig) -> Weights:
    store = simulation_store(config, 0)
    return dict(parameters_of(build_model(store.n_items, config.model, store.features, config.run.seed)))


def _ask(grid: DirectGrid, content: RecordDict, kind: str, node: int = 0) -> Message:
    (reply,) = grid.send_and_receive([Message(content=content, message_type=kind, dst_node_id=node)])
    assert not reply.has_error(), reply.error
    return reply


def _interest_matrix(n_items: int) -> np.ndarray:
    """An item × interest weight matrix: each item in one of N_INTERESTS interests."""
    m = np.zeros((n_items, N_INTERESTS))
    m[np.arange(n_items), np.arange(n_items) % N_INTERESTS] = 1.0
    return m


@dataclass(frozen=True)
class Case:
    """One instruction to the real ClientApp and the reply type it must get."""

    id: str
    reply: type
    kind: str
    overrides: dict[str, Any]
    content: Callable[[Weights, int], RecordDict]
    dim: Callable[[int], int | None] = lambda n_items: None


def _train(weights: Weights, _: int) -> RecordDict:
    return TrainIns(arrays=ArrayRecord(weights), server_round=1, run_id="t").to_record()


def _evaluate(weights: Weights, _: int) -> RecordDict:
    return EvaluateIns(arrays=ArrayRecord(weights), server_round=1, run_id="t").to_record()


def _popularity(_: Weights, __: int) -> RecordDict:
    return ReleaseIns(kind="popularity", server_round=0, run_id="t").to_record()


def _census(weights: Weights, n_items: int) -> RecordDict:
    ins = ReleaseIns(
        kind="census", server_round=3, run_id="t", arrays=ArrayRecord(weights), interests=_interest_matrix(n_items)
    )
    return ins.to_record()


MODES = ("off", "local", "central", "local+central")
TOPOLOGIES = ("device", "hub")
INSTRUCTIONS: tuple[tuple[str, type, str, Callable[[Weights, int], RecordDict], Callable[[int], int | None]], ...] = (
    ("train", TrainRes, MessageType.TRAIN, _train, lambda n: None),
    ("evaluate", EvaluateRes, MessageType.EVALUATE, _evaluate, lambda n: len(EVAL_FIELDS)),
    ("popularity", ReleaseRes, MessageType.QUERY, _popularity, lambda n: n),
    ("census", ReleaseRes, MessageType.QUERY, _census, lambda n: N_INTERESTS),
)
COHORT = (0, 1)
"""The devices a cohort instruction of these cases addresses."""


def _cohort_train(weights: Weights, n_items: int) -> RecordDict:
    return cohort_ins(_train(weights, n_items), COHORT)


def _cohort_evaluate(weights: Weights, n_items: int) -> RecordDict:
    return cohort_ins(_evaluate(weights, n_items), COHORT)


CASES = [
    Case(
        f"{name}-{mode}-{topology}", reply, kind, {"privacy.mode": mode, "federation.topology": topology}, content, dim
    )
    for name, reply, kind, content, dim in INSTRUCTIONS
    for mode in MODES
    for topology in TOPOLOGIES
]
COHORT_CASES = [  # simulation's cohort mode supports privacy off and local
    Case(
        f"cohort-{name}-{mode}-{topology}",
        CohortRes,
        kind,
        {"privacy.mode": mode, "federation.topology": topology},
        content,
        dim,
    )
    for name, kind, content, dim in (
        ("train", MessageType.TRAIN, _cohort_train, lambda n: None),
        ("evaluate", MessageType.EVALUATE, _cohort_evaluate, lambda n: len(EVAL_FIELDS)),
    )
    for mode in ("off", "local")
    for topology in TOPOLOGIES
]


def test_every_reply_type_is_asked_of_the_client_app() -> None:
    assert {case.reply for case in CASES + COHORT_CASES} == set(REPLY_SCHEMAS)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_real_reply_is_exactly_its_schema(tiny_config: StrataConfig, case: Case) -> None:
    cfg = tiny_config.replace(case.overrides)
    grid = DirectGrid(cfg)
    weights = _weights(cfg)
    n_items = cfg.data.synthetic_items
    reply = _ask(grid, case.content(weights, n_items), case.kind)
    assert_matches(reply.content, _without_scales(EXPECTED_SCHEMAS[case.reply]), weights=weights, dim=case.dim(n_items))
    parsed = case.reply.from_record(reply.content)  # type: ignore[attr-defined]
    assert not parsed.refused and parsed.reason == ""
    assert len(bytes.fromhex(parsed.key)) == 32  # the public key that signs the device's ledger


@pytest.mark.parametrize("case", COHORT_CASES, ids=[c.id for c in COHORT_CASES])
def test_real_cohort_reply_is_exactly_its_schema(tiny_config: StrataConfig, case: Case) -> None:
    cfg = tiny_config.replace(case.overrides)
    weights = _weights(cfg)
    n_items = cfg.data.synthetic_items
    reply = _ask(DirectGrid(cfg), case.content(weights, n_items), case.kind)
    training = case.kind == MessageType.TRAIN
    schema = {k: v for k, v in EXPECTED_SCHEMAS[CohortRes].items() if k != ("release" if training else "arrays")}
    assert_matches(reply.content, schema, weights=weights, dim=case.dim(n_items), devices=len(COHORT))
    parsed = CohortRes.from_record(reply.content)
    assert [o.device for o in parsed.outcomes] == list(COHORT) and parsed.accepted == len(COHORT)
    assert all(o.reason == "" and len(bytes.fromhex(o.key)) == 32 for o in parsed.outcomes)


def test_refused_train_reply_is_the_schema_without_weights(tiny_config: StrataConfig) -> None:
    """A client over its budget replies with its status alone ("refused" = 1) and the reason."""
    cfg = tiny_config.replace({"privacy.mode": "local", "privacy.max-epsilon": 1e-3})
    weights = _weights(cfg)
    reply = _ask(DirectGrid(cfg), _train(weights, 0), MessageType.TRAIN)
    schema = {name: keys for name, keys in EXPECTED_SCHEMAS[TrainRes].items() if name not in ("arrays", "scales")}
    assert_matches(reply.content, schema, weights=weights)
    assert reply.content["metrics"]["refused"] == 1
    parsed = TrainRes.from_record(reply.content)
    assert parsed.refused and parsed.reason.startswith("budget:")


# ------------------------------------------------------------------------- round trips


def _weights_example() -> Weights:
    return {"enc.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "enc.bias": torch.tensor([0.5, -1.0])}


def _compact(encoding: str) -> CompactUpdate:
    change = {k: v / 100 for k, v in _weights_example().items()}
    return encode(change, encoding, torch.Generator().manual_seed(0))


def _samples() -> list[AnyMessage]:
    arrays = ArrayRecord(_weights_example())
    return [
        TrainIns(arrays=arrays, server_round=3, run_id="run-a"),
        TrainRes(weights=_weights_example(), epsilon=0.5, key="ab" * 32),
        TrainRes(weights=None, epsilon=2.0, reason="budget: over"),
        TrainRes(weights=None, epsilon=0.5, key="ab" * 32, compact=_compact("int8")),
        TrainRes(weights=None, epsilon=0.5, key="ab" * 32, compact=_compact("float16")),
        EvaluateIns(arrays=arrays, server_round=2, run_id="run-a"),
        EvaluateRes(total=np.array([3.0, 1.5, 0.75, 0.1, 0.2, 0.9]), epsilon=0.25),
        EvaluateRes(total=None, epsilon=0.25, reason="policy: no evaluation"),
        ReleaseIns(kind="popularity", server_round=0, run_id="run-a"),
        ReleaseIns(kind="census", server_round=11, run_id="run-a", arrays=arrays, interests=np.eye(3, 2)),
        ReleaseRes(total=np.array([1.0, -0.5, 3.25]), epsilon=0.75),
    ]


def _same(a: object, b: object) -> bool:
    """Equality of message values, comparing tensors and arrays by value."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if dataclasses.is_dataclass(a) and not isinstance(a, type) and type(a) is type(b):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return a == b


@pytest.mark.parametrize("message", _samples(), ids=lambda m: type(m).__name__)
def test_round_trip(message: Any) -> None:
    again = type(message).from_record(message.to_record())
    assert _same(again, message), (again, message)
    if type(message) in REPLY_SCHEMAS:  # what a device sends holds to its schema (a refusal: no weights)
        schema = dict(REPLY_SCHEMAS[type(message)])
        if isinstance(message, TrainRes) and (message.compact is None or message.compact.encoding != "int8"):
            del schema["scales"]
        if isinstance(message, TrainRes) and message.refused:
            del schema["arrays"]
        if isinstance(message, ReleaseRes | EvaluateRes) and message.refused:
            del schema["release"]
        dtype = message.compact.encoding if isinstance(message, TrainRes) and message.compact else None
        assert_matches(message.to_record(), schema, weights=_weights_example(), dtype=dtype)


def test_cohort_reply_round_trip_and_malformed() -> None:
    summed = {k: v * 2 for k, v in _weights_example().items()}
    outcomes = (
        DeviceOutcome(device=4, outcome="accepted", epsilon=0.5, key="ab" * 32),
        DeviceOutcome(device=9, outcome="refused", epsilon=1.0, key="cd" * 32, reason="budget: over"),
        DeviceOutcome(device=11, outcome="rejected", epsilon=0.5, key="ef" * 32, reason="enc.bias: contains NaN"),
    )
    for message in (
        CohortRes(outcomes=outcomes, changes=summed),
        CohortRes(outcomes=outcomes, total=np.array([3.0, 1.5, 0.75, 0.1, 0.2, 0.9])),
        CohortRes(outcomes=outcomes[1:]),
    ):
        again = CohortRes.from_record(message.to_record())
        assert _same(again, message), (again, message)
    bad_lengths, bad_outcome = CohortRes(outcomes=outcomes).to_record(), CohortRes(outcomes=outcomes).to_record()
    _edit(bad_lengths, "cohort")["keys"] = ["ab" * 32]
    _edit(bad_outcome, "cohort")["outcomes"] = ["accepted", "refused", "averaged"]
    for bad, why in ((bad_lengths, "equally long"), (bad_outcome, "averaged")):
        with pytest.raises(ProtocolError, match=why):
            CohortRes.from_record(bad)
    with pytest.raises(ProtocolError, match="devices"):
        cohort_of(RecordDict({"cohort": ConfigRecord({"devices": ["1"]})}))
    assert cohort_of(cohort_ins(RecordDict(), (3, 5))) == (3, 5) and cohort_of(RecordDict()) is None


def test_every_message_type_has_a_round_trip_sample() -> None:
    assert {type(m) for m in _samples()} == {TrainIns, TrainRes, EvaluateIns, EvaluateRes, ReleaseIns, ReleaseRes}


# ------------------------------------------------------------------------- malformed records


def _copy(content: RecordDict) -> RecordDict:
    """A copy whose records can be changed without touching `content`'s."""
    return RecordDict({name: type(record)(dict(record.items())) for name, record in content.items()})  # type: ignore[arg-type]


def _edit(content: RecordDict, name: str) -> Any:
    """Record `name` of `content`, to change a value in it (of any kind, on purpose)."""
    return content[name]


OPTIONAL_RECORDS: dict[type, set[str]] = {ReleaseIns: {"arrays", "interests"}}
"""Records a message may lack (the census's model and interest matrix)."""
WEIGHT_RECORDS = {"arrays"}
"""Records of model weights: which names they hold is the strategy's check, not the protocol's."""


def _missing_cases() -> list[tuple[str, AnyMessage, str, str | None]]:
    """(id, sample, record, key): the sample's record without `key` (None: without the record)."""
    cases: list[tuple[str, AnyMessage, str, str | None]] = []
    for message in _samples():
        name = type(message).__name__
        for record_name, record in message.to_record().items():
            if record_name not in OPTIONAL_RECORDS.get(type(message), set()):
                cases.append((f"{name}-{record_name}", message, record_name, None))
            if record_name not in WEIGHT_RECORDS:
                cases += [(f"{name}-{record_name}-{key}", message, record_name, key) for key in record]
    return cases


@pytest.mark.parametrize(
    ("message", "record", "key"), [c[1:] for c in _missing_cases()], ids=[c[0] for c in _missing_cases()]
)
def test_missing_record_or_key_is_a_protocol_error(message: Any, record: str, key: str | None) -> None:
    content = _copy(message.to_record())
    if key is None:
        del content[record]
    else:
        del _edit(content, record)[key]
    with pytest.raises(ProtocolError, match=repr(key) if key is not None else repr(record)):
        type(message).from_record(content)


def _wrong_kind(value: object) -> object:
    """A value of another kind than `value`, that its record still accepts."""
    if isinstance(value, str):
        return 7
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, int):
        return [1, 2]  # a list where a scalar belongs
    if isinstance(value, float):
        return [1.0, 2.0]
    raise AssertionError(f"no wrong kind for {value!r}")


def _wrong_kind_cases() -> list[tuple[str, AnyMessage, str, str]]:
    cases: list[tuple[str, AnyMessage, str, str]] = []
    for message in _samples():
        for record_name, record in message.to_record().items():
            if isinstance(record, ConfigRecord | MetricRecord):
                cases += [
                    (f"{type(message).__name__}-{record_name}-{key}", message, record_name, key) for key in record
                ]
    return cases


@pytest.mark.parametrize(
    ("message", "record", "key"), [c[1:] for c in _wrong_kind_cases()], ids=[c[0] for c in _wrong_kind_cases()]
)
def test_wrong_value_kind_is_a_protocol_error(message: Any, record: str, key: str) -> None:
    content = _copy(message.to_record())
    _edit(content, record)[key] = _wrong_kind(_edit(content, record)[key])
    with pytest.raises(ProtocolError, match=repr(key)):
        type(message).from_record(content)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            lambda: RecordDict(
                {"arrays": MetricRecord({"w": 1.0}), "config": ConfigRecord({"server-round": 1, "run-id": "r"})}
            ),
            TrainIns,
        ),
        (
            lambda: RecordDict(
                {
                    "metrics": ConfigRecord({"epsilon": 0.0, "refused": 0}),
                    "config": ConfigRecord({"reason": "", "key": ""}),
                }
            ),
            EvaluateRes,
        ),
        (
            lambda: RecordDict(
                {
                    "release": MetricRecord({"sum": 1.0}),
                    "metrics": MetricRecord({"epsilon": 0.0, "refused": 0}),
                    "config": ConfigRecord({"reason": "", "key": ""}),
                }
            ),
            ReleaseRes,
        ),
    ],
    ids=["TrainIns-arrays", "EvaluateRes-metrics", "ReleaseRes-release"],
)
def test_record_of_the_wrong_type_is_a_protocol_error(content: Callable[[], RecordDict], message: Any) -> None:
    with pytest.raises(ProtocolError, match="expected"):
        message.from_record(content())


def test_non_integer_flag_is_a_protocol_error() -> None:
    content = _copy(TrainRes(weights=None, epsilon=0.0, reason="policy: test").to_record())
    _edit(content, "metrics")["refused"] = 0.5
    with pytest.raises(ProtocolError, match="not an integer"):
        TrainRes.from_record(content)


def test_a_refusal_without_its_reason_is_a_protocol_error() -> None:
    content = _copy(TrainRes(weights=None, epsilon=0.0, reason="policy: test").to_record())
    _edit(content, "config")["reason"] = ""
    with pytest.raises(ProtocolError, match="reason"):
        TrainRes.from_record(content)
