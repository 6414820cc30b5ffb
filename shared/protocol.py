"""The wire protocol: every message between the server and a device, as a typed value.

Each message is a frozen dataclass with `to_record()` (a Flower `RecordDict`) and
`from_record()` (which fails with `ProtocolError` naming the bad key). The ClientApp, the
strategy and the release code use only these; no other module spells a message key.

=========================  =============  ==============================================
message                    direction      content
=========================  =============  ==============================================
`TrainIns`                 server → dev.  global weights; round, run id
`TrainRes`                 dev. → server  new weights (or the sum of clipped per-user
                                          updates; or the change, compact), unless
                                          refused; ε; refusal reason
`EvaluateIns`              server → dev.  global weights; round, run id
`EvaluateRes`              dev. → server  the (noised) sum of the users' bounded
                                          evaluation vectors; ε; refusal reason
`ReleaseIns`               server → dev.  release kind, round, run id; weights and the
                                          item × interest matrix for the census
`ReleaseRes`               dev. → server  the (noised) sum of the users' bounded
                                          vectors; ε; refusal reason
`CohortIns`                server → node  simulation only: a `TrainIns` or `EvaluateIns`
                                          for several virtual devices run in turn
`CohortRes`                node → server  the sum of their accepted replies and each
                                          device's outcome, ε, key and reason
=========================  =============  ==============================================

A reply carries only the accounted mechanism's output (weights, a release sum with its
ledger entry), the device's ε (a function of the public plan and of its participation), the
public key that signs its ledger (so the server's instruction log names whose ledger must
hold the entry) and, when it refuses, why. No count, loss, sum or id otherwise: in the `device` topology any of
them would be one user's exact value.

`REPLY_SCHEMAS` lists exactly what each reply may carry (record → key → kind); a test
holds every real reply to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Self

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from .transport import CompactUpdate

# Records of a message's RecordDict.
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
RELEASE = "release"
INTERESTS = "interests"
COHORT = "cohort"
SCALES = "scales"

# Keys inside them.
SERVER_ROUND = "server-round"
RUN_ID = "run-id"
RELEASE_KIND = "release"
EPSILON = "epsilon"
REFUSED = "refused"
REASON = "reason"
KEY = "key"
SUM = "sum"
L2_MATRIX = "l2"
DEVICES = "devices"
OUTCOMES = "outcomes"
EPSILONS = "epsilons"
KEYS = "keys"
REASONS = "reasons"
ENCODING = "encoding"

Weights = dict[str, torch.Tensor]


class ProtocolError(ValueError):
    """A message does not have the shape its type requires."""


def _record(content: RecordDict, name: str, kind: type) -> object:
    if name not in content:
        raise ProtocolError(f"message has no {name!r} record (has: {', '.join(sorted(content.keys())) or 'none'}).")
    record = content[name]
    if not isinstance(record, kind):
        raise ProtocolError(f"message record {name!r} is a {type(record).__name__}, expected {kind.__name__}.")
    return record


def _scalar(record: Mapping[str, object], key: str, kind: type[int] | type[float] | type[str], where: str) -> object:
    if key not in record:
        raise ProtocolError(f"{where} has no {key!r}.")
    value = record[key]
    ok = isinstance(value, str) if kind is str else isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        raise ProtocolError(f"{where}[{key!r}] is {type(value).__name__} {value!r}, expected {kind.__name__}.")
    return value


def _int(record: Mapping[str, object], key: str, where: str) -> int:
    value = _scalar(record, key, int, where)
    assert isinstance(value, int | float)
    if float(value) != int(value):
        raise ProtocolError(f"{where}[{key!r}] = {value!r} is not an integer.")
    return int(value)


def _float(record: Mapping[str, object], key: str, where: str) -> float:
    value = _scalar(record, key, float, where)
    assert isinstance(value, int | float)
    return float(value)


def _str(record: Mapping[str, object], key: str, where: str) -> str:
    return str(_scalar(record, key, str, where))


def _instruction_config(content: RecordDict) -> tuple[int, str]:
    config = _record(content, CONFIG, ConfigRecord)
    assert isinstance(config, ConfigRecord)
    return _int(config, SERVER_ROUND, CONFIG), _str(config, RUN_ID, CONFIG)


def _named_array(content: RecordDict, name: str, key: str) -> np.ndarray:
    """Return array `key` of the ArrayRecord `name`; raise `ProtocolError` when either is missing."""
    record = _record(content, name, ArrayRecord)
    assert isinstance(record, ArrayRecord)
    if key not in record:
        raise ProtocolError(f"message record {name!r} has no {key!r} array.")
    return record[key].numpy()


def _arrays(content: RecordDict) -> ArrayRecord:
    arrays = _record(content, ARRAYS, ArrayRecord)
    assert isinstance(arrays, ArrayRecord)
    return arrays


@dataclass(frozen=True, kw_only=True)
class _GlobalWeightsIns:
    """An instruction that carries the global weights, the round and the run id."""

    arrays: ArrayRecord
    server_round: int
    run_id: str
    _decoded: dict[str, Weights] = field(default_factory=dict, compare=False, repr=False)

    def weights(self) -> Weights:
        """Return the global weights as a torch state dict (decoded once; callers do not modify it)."""
        if "weights" not in self._decoded:
            self._decoded["weights"] = dict(self.arrays.to_torch_state_dict())
        return self._decoded["weights"]

    def to_record(self) -> RecordDict:
        """Encode as a Flower `RecordDict`."""
        return RecordDict(
            {ARRAYS: self.arrays, CONFIG: ConfigRecord({SERVER_ROUND: self.server_round, RUN_ID: self.run_id})}
        )

    @classmethod
    def from_record(cls, content: RecordDict) -> Self:
        """Decode a received `RecordDict`; raise `ProtocolError` naming a missing or ill-typed key."""
        server_round, run_id = _instruction_config(content)
        return cls(arrays=_arrays(content), server_round=server_round, run_id=run_id)


@dataclass(frozen=True, kw_only=True)
class TrainIns(_GlobalWeightsIns):
    """Train one round from the global weights."""


def _status(content: RecordDict) -> tuple[bool, float, str, str]:
    """(refused, ε, reason, key) of a reply."""
    metrics = _record(content, METRICS, MetricRecord)
    assert isinstance(metrics, MetricRecord)
    config = _record(content, CONFIG, ConfigRecord)
    assert isinstance(config, ConfigRecord)
    refused = bool(_int(metrics, REFUSED, METRICS))
    reason = _str(config, REASON, CONFIG)
    if refused and not reason:
        raise ProtocolError(f"a refusal must give its reason in {CONFIG}[{REASON!r}].")
    return refused, _float(metrics, EPSILON, METRICS), reason, _str(config, KEY, CONFIG)


def _status_records(
    refused: bool, epsilon: float, reason: str, key: str
) -> dict[str, ArrayRecord | MetricRecord | ConfigRecord]:
    if refused and not reason:
        raise ValueError("a refusal must give its reason.")
    return {
        METRICS: MetricRecord({EPSILON: epsilon, REFUSED: int(refused)}),
        CONFIG: ConfigRecord({REASON: reason if refused else "", KEY: key}),
    }


@dataclass(frozen=True, kw_only=True)
class TrainRes:
    """A device's reply to `TrainIns`: the accounted mechanism's weights, unless it refused.

    Nothing else about the device's users leaves it: no counts, no loss (those stay in the
    device's own log). ε is a function of the public plan and the device's participation.
    Under a compact `federation.transport` the reply is the change in `compact` instead.
    """

    weights: Weights | None
    """New weights; under central DP the sum of clipped per-user updates; None when refused or compact."""
    epsilon: float
    """The device's ε after this round."""
    reason: str = ""
    """Why the device refused (empty when it trained)."""
    key: str = ""
    """The public key (hex) that signs the device's ledger ("" when it keeps none)."""
    compact: CompactUpdate | None = None
    """The change from the global weights (under central DP the clipped update), encoded compactly."""

    SCHEMA: ClassVar[dict[str, dict[str, str]]] = {
        ARRAYS: {"*": "tensor"},
        SCALES: {"*": "array"},
        METRICS: {EPSILON: "float", REFUSED: "int"},
        CONFIG: {REASON: "str", KEY: "str", ENCODING: "str"},
    }

    @property
    def refused(self) -> bool:
        """Return whether the device refused to train (it sent no update)."""
        return self.weights is None and self.compact is None

    def to_record(self) -> RecordDict:
        """Encode as a Flower `RecordDict` (no weights when refused)."""
        content = RecordDict(_status_records(self.refused, self.epsilon, self.reason, self.key))
        config = content[CONFIG]
        assert isinstance(config, ConfigRecord)
        config[ENCODING] = self.compact.encoding if self.compact is not None else "float32"
        if self.compact is not None:
            content[ARRAYS] = ArrayRecord({k: Array(c) for k, c in self.compact.codes.items()})
            if self.compact.scales:
                scales = {k: Array(np.array([s], dtype=np.float32)) for k, s in self.compact.scales.items()}
                content[SCALES] = ArrayRecord(scales)
        elif self.weights is not None:
            content[ARRAYS] = ArrayRecord(self.weights)
        return content

    @classmethod
    def from_record(cls, content: RecordDict) -> TrainRes:
        """Decode a received `RecordDict`; raise `ProtocolError` naming a missing or ill-typed key."""
        refused, epsilon, reason, key = _status(content)
        config = _record(content, CONFIG, ConfigRecord)
        assert isinstance(config, ConfigRecord)
        encoding = _str(config, ENCODING, CONFIG)
        if refused:
            return cls(weights=None, epsilon=epsilon, reason=reason, key=key)
        if encoding == "float32":
            weights = dict(_arrays(content).to_torch_state_dict())
            return cls(weights=weights, epsilon=epsilon, reason=reason, key=key)
        compact = _compact(content, encoding)
        return cls(weights=None, epsilon=epsilon, reason=reason, key=key, compact=compact)


def _compact(content: RecordDict, encoding: str) -> CompactUpdate:
    """Read a compact update of `encoding`; `ProtocolError` for a wrong dtype or a missing or bad scale."""
    dtype = {"float16": np.float16, "int8": np.int8}.get(encoding)
    if dtype is None:
        raise ProtocolError(f"{CONFIG}[{ENCODING!r}] = {encoding!r}: expected float32, float16 or int8.")
    codes = {k: a.numpy() for k, a in _arrays(content).items()}
    for k, c in codes.items():
        if c.dtype != dtype:
            raise ProtocolError(f"{ARRAYS}[{k!r}] is {c.dtype}, expected {np.dtype(dtype)} for encoding {encoding}.")
    scales: dict[str, float] = {}
    if encoding == "int8":
        for k in codes:
            scale = _named_array(content, SCALES, k)
            if scale.shape != (1,) or not np.isfinite(scale).all() or not scale[0] > 0:
                raise ProtocolError(f"{SCALES}[{k!r}] must be one positive finite float, not {scale!r}.")
            scales[k] = float(scale[0])
    return CompactUpdate(encoding, codes, scales)  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class EvaluateIns(_GlobalWeightsIns):
    """Release a DP evaluation of the global weights on the device's held-out ratings."""


@dataclass(frozen=True, kw_only=True)
class _SumRes:
    """A device's part of a DP release: the (noised) sum of its users' bounded vectors, unless refused."""

    total: np.ndarray | None
    """The sum; None when the device's policy or budget refused the release."""
    epsilon: float
    """The device's ε afterwards."""
    reason: str = ""
    """Why the device refused (empty when it contributed)."""
    key: str = ""
    """The public key (hex) that signs the device's ledger ("" when it keeps none)."""

    SCHEMA: ClassVar[dict[str, dict[str, str]]] = {
        RELEASE: {SUM: "array"},
        METRICS: {EPSILON: "float", REFUSED: "int"},
        CONFIG: {REASON: "str", KEY: "str"},
    }

    @property
    def refused(self) -> bool:
        """Whether the device refused to contribute."""
        return self.total is None

    def to_record(self) -> RecordDict:
        """Encode as a Flower `RecordDict` (no release record when refused)."""
        content = RecordDict(_status_records(self.refused, self.epsilon, self.reason, self.key))
        if self.total is not None:
            content[RELEASE] = ArrayRecord({SUM: Array(np.asarray(self.total, dtype=np.float64))})
        return content

    @classmethod
    def from_record(cls, content: RecordDict) -> Self:
        """Decode a received `RecordDict`; raise `ProtocolError` naming a missing or ill-typed key."""
        refused, epsilon, reason, key = _status(content)
        total = None if refused else _named_array(content, RELEASE, SUM)
        return cls(total=total, epsilon=epsilon, reason=reason, key=key)


@dataclass(frozen=True, kw_only=True)
class EvaluateRes(_SumRes):
    """A device's evaluation release: the sum of its users' evaluation vectors
    (`shared.metrics.user_metric_rows`), noised on the device under local privacy."""


@dataclass(frozen=True, kw_only=True)
class ReleaseIns:
    """Contribute to a one-shot release (`shared.privacy.release.KINDS`)."""

    kind: str
    server_round: int
    run_id: str
    arrays: ArrayRecord | None = None
    """The model, for a census."""
    interests: np.ndarray | None = None
    """The I×C item × interest matrix, for a census."""

    def weights(self) -> Weights | None:
        """Return the model's weights as a torch state dict, or None when none were sent."""
        return dict(self.arrays.to_torch_state_dict()) if self.arrays is not None else None

    def to_record(self) -> RecordDict:
        """Encode as a Flower `RecordDict`."""
        content = RecordDict(
            {CONFIG: ConfigRecord({RELEASE_KIND: self.kind, RUN_ID: self.run_id, SERVER_ROUND: self.server_round})}
        )
        if self.arrays is not None:
            content[ARRAYS] = self.arrays
        if self.interests is not None:
            content[INTERESTS] = ArrayRecord({L2_MATRIX: Array(np.ascontiguousarray(self.interests, dtype=np.float64))})
        return content

    @classmethod
    def from_record(cls, content: RecordDict) -> ReleaseIns:
        """Decode a received `RecordDict`; raise `ProtocolError` naming a missing or ill-typed key."""
        server_round, run_id = _instruction_config(content)
        config = content[CONFIG]
        assert isinstance(config, ConfigRecord)
        interests = None
        if INTERESTS in content:
            interests = _named_array(content, INTERESTS, L2_MATRIX)
        return cls(
            kind=_str(config, RELEASE_KIND, CONFIG),
            server_round=server_round,
            run_id=run_id,
            arrays=_arrays(content) if ARRAYS in content else None,
            interests=interests,
        )


@dataclass(frozen=True, kw_only=True)
class ReleaseRes(_SumRes):
    """A device's part of a one-shot release (popularity prior, census)."""


def cohort_of(content: RecordDict) -> tuple[int, ...] | None:
    """Return the devices of a cohort instruction (`CohortIns`), or None for a one-device one."""
    if COHORT not in content:
        return None
    record = _record(content, COHORT, ConfigRecord)
    assert isinstance(record, ConfigRecord)
    devices = record.get(DEVICES)
    if not isinstance(devices, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in devices):
        raise ProtocolError(f"{COHORT}[{DEVICES!r}] must be a list of device indices, got {devices!r}.")
    return tuple(int(d) for d in devices)


def cohort_ins(content: RecordDict, devices: tuple[int, ...]) -> RecordDict:
    """Return `content` (a `TrainIns`, `EvaluateIns` or `ReleaseIns` record) addressed to a cohort of `devices`."""
    out = RecordDict(dict(content.items()))
    out[COHORT] = ConfigRecord({DEVICES: list(devices)})
    return out


Outcome = Literal["accepted", "refused", "rejected", "failed"]


@dataclass(frozen=True, kw_only=True)
class DeviceOutcome:
    """What became of one device of a cohort."""

    device: int
    outcome: Outcome
    epsilon: float = 0.0
    key: str = ""
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class CohortRes:
    """A cohort node's reply (simulation only): the sum of its devices' accepted replies (changes
    from the global weights for training, release sums for an evaluation) and every device's outcome.

    Each device was screened on its own before the sum (`shared.update_check`), as the server
    screens a device's own reply; the sum is what the server would have added up."""

    outcomes: tuple[DeviceOutcome, ...]
    changes: Weights | None = None
    """Sum of the accepted devices' weights − the global weights (training), float32; None when none
    was accepted."""
    total: np.ndarray | None = None
    """Sum of the accepted devices' release vectors (evaluation); None when none was accepted."""

    SCHEMA: ClassVar[dict[str, dict[str, str]]] = {
        ARRAYS: {"*": "tensor"},
        RELEASE: {SUM: "array"},
        COHORT: {DEVICES: "list", OUTCOMES: "list", EPSILONS: "list", KEYS: "list", REASONS: "list"},
    }
    """`arrays` (training) or `release` (evaluation), never both. A sum of changes, not of weights:
    coordinates no device changed are exactly 0 in float32 (a float32 sum of weights would put
    rounding noise there, which FedAdam turns into full ±lr steps)."""

    @property
    def accepted(self) -> int:
        """Devices whose reply is in the sum."""
        return sum(o.outcome == "accepted" for o in self.outcomes)

    def to_record(self) -> RecordDict:
        """Encode as a Flower `RecordDict`."""
        content = RecordDict(
            {
                COHORT: ConfigRecord(
                    {
                        DEVICES: [o.device for o in self.outcomes],
                        OUTCOMES: [str(o.outcome) for o in self.outcomes],
                        EPSILONS: [float(o.epsilon) for o in self.outcomes],
                        KEYS: [o.key for o in self.outcomes],
                        REASONS: [o.reason for o in self.outcomes],
                    }
                )
            }
        )
        if self.changes is not None:
            content[ARRAYS] = ArrayRecord(self.changes)
        if self.total is not None:
            content[RELEASE] = ArrayRecord({SUM: Array(np.asarray(self.total, dtype=np.float64))})
        return content

    @classmethod
    def from_record(cls, content: RecordDict) -> CohortRes:
        """Decode a received `RecordDict`; raise `ProtocolError` naming a missing or ill-typed key."""
        record = _record(content, COHORT, ConfigRecord)
        assert isinstance(record, ConfigRecord)
        columns = [record.get(k) for k in (DEVICES, OUTCOMES, EPSILONS, KEYS, REASONS)]
        if not all(isinstance(c, list) for c in columns) or len({len(c) for c in columns}) != 1:  # type: ignore[arg-type]
            raise ProtocolError(f"{COHORT} must hold equally long lists {DEVICES}, {OUTCOMES}, {EPSILONS}, ...")
        outcomes = []
        for device, outcome, epsilon, key, reason in zip(*columns, strict=True):
            if outcome not in ("accepted", "refused", "rejected", "failed"):
                raise ProtocolError(f"{COHORT}: device {device} has outcome {outcome!r}.")
            outcomes.append(
                DeviceOutcome(
                    device=int(device), outcome=outcome, epsilon=float(epsilon), key=str(key), reason=str(reason)
                )
            )
        changes = dict(_arrays(content).to_torch_state_dict()) if ARRAYS in content else None
        total = _named_array(content, RELEASE, SUM) if RELEASE in content else None
        return cls(outcomes=tuple(outcomes), changes=changes, total=total)


REPLY_SCHEMAS: dict[type, dict[str, dict[str, str]]] = {
    TrainRes: TrainRes.SCHEMA,
    EvaluateRes: EvaluateRes.SCHEMA,
    ReleaseRes: ReleaseRes.SCHEMA,
    CohortRes: CohortRes.SCHEMA,
}
"""Reply type → record → key → kind ("*" stands for every weight name)."""
