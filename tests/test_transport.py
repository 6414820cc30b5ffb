"""Compact transport (`shared/transport.py`): what a device sends in float16 or int8 decodes to
its change within the encoding's rounding, int8 rounding is unbiased, a central-DP update stays
within the clipping bound after encoding, a hub under central DP refuses, and a malformed
compact reply is a protocol error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from client.budget import ClientBudget
from client.rounds import train_round
from client.store import simulation_store
from shared.config import StrataConfig
from shared.model import build_model
from shared.privacy.ledger import Ledger
from shared.protocol import ProtocolError, TrainIns, TrainRes
from shared.transport import INT8_MAX, decoded_norm, encode, transport_refusal, within


def _change(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(300, 40, generator=gen) * 1e-3, "b": torch.randn(40, generator=gen) * 1e-2}


def test_float16_and_int8_decode_within_their_rounding_and_shrink_the_bytes() -> None:
    change = _change()
    f16 = encode(change, "float16", torch.Generator().manual_seed(1))
    i8 = encode(change, "int8", torch.Generator().manual_seed(1))
    f32_bytes = sum(v.numel() * 4 for v in change.values())
    assert f16.nbytes == f32_bytes // 2 and i8.nbytes == f32_bytes // 4 + 4 * len(change)
    for k, v in change.items():
        assert torch.allclose(f16.decode()[k], v, rtol=2.0**-11, atol=2.0**-25)  # half an ulp; subnormals: 2^-25
        step = i8.scales[k]
        assert step == pytest.approx(float(v.abs().max()) / INT8_MAX, rel=1e-6)
        assert np.abs(i8.codes[k]).max() <= INT8_MAX
        assert (i8.decode()[k] - v).abs().max() <= step * (1 + 1e-5)  # one rounding step at most


def test_int8_rounding_is_unbiased() -> None:
    change = {"w": torch.linspace(-1.0, 1.0, 201) * 0.37}
    gen = torch.Generator().manual_seed(2)
    draws = torch.stack([encode(change, "int8", gen).decode()["w"] for _ in range(4000)])
    step = 0.37 / INT8_MAX
    # Each coordinate's mean of 4000 draws: std ≤ step/2/√4000; 6 of them bound every one of 201.
    assert (draws.mean(0) - change["w"]).abs().max() <= 6 * step / 2 / math.sqrt(4000)


@pytest.mark.parametrize("encoding", ["float16", "int8"])
def test_within_brings_the_decoded_norm_under_the_bound(encoding: str) -> None:
    change = _change(3)
    norm = math.sqrt(sum(float((v.double() ** 2).sum()) for v in change.values()))
    for bound in (norm, norm * 0.999999, norm / 3):  # at the bound, just under (rounding), far under
        bounded = within(encode(change, encoding, torch.Generator().manual_seed(4)), bound)
        assert decoded_norm(bounded) <= bound
    small = encode(change, encoding, torch.Generator().manual_seed(4))
    assert within(small, norm * 10) is small  # already within: unchanged


def test_encoding_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        encode({"w": torch.tensor([1.0, float("nan")])}, "int8", torch.Generator())
    with pytest.raises(ValueError, match="float16's range"):
        encode({"w": torch.tensor([1e5])}, "float16", torch.Generator())
    with pytest.raises(ValueError, match="unknown transport"):
        encode({"w": torch.zeros(2)}, "int4", torch.Generator())
    zero = encode({"w": torch.zeros(3)}, "int8", torch.Generator())  # all zero: codes 0, a valid scale
    assert zero.scales["w"] > 0 and not zero.codes["w"].any()


def test_a_hub_under_central_dp_refuses_a_compact_transport() -> None:
    assert "device topology" in transport_refusal("int8", central_dp=True, topology="hub")
    assert transport_refusal("int8", central_dp=True, topology="device") == ""
    assert transport_refusal("float16", central_dp=False, topology="hub") == ""
    assert transport_refusal("float32", central_dp=True, topology="hub") == ""


def _reply(config: StrataConfig) -> tuple[TrainRes, dict[str, torch.Tensor]]:
    store = simulation_store(config, 0)
    model = build_model(store.n_items, config.model, store.features, config.run.seed)
    weights = {k: v.detach().clone() for k, v in model.named_parameters()}
    ins = TrainIns(arrays=ArrayRecord(weights), server_round=1, run_id="t")
    budget = ClientBudget(ledger=Ledger(), delta=1e-5, population=40)  # no local DP here: nothing spent
    return train_round(store, config, ins, budget), weights


@pytest.mark.parametrize("encoding", ["float16", "int8"])
def test_a_central_dp_device_sends_an_update_within_the_clip_after_encoding(
    tiny_config: StrataConfig, encoding: str
) -> None:
    clip = 1e-3  # far below the update's own norm: the encoded update sits at the bound
    cfg = tiny_config.replace(
        {
            "privacy.mode": "central",
            "privacy.update-clip": clip,
            "privacy.user-sample-rate": 1.0,
            "federation.topology": "device",
            "federation.transport": encoding,
        }
    )
    reply, _ = _reply(cfg)
    assert reply.weights is None and reply.compact is not None and reply.compact.encoding == encoding
    assert clip * 0.99 <= decoded_norm(reply.compact) <= clip
    again = TrainRes.from_record(reply.to_record())
    assert again.compact is not None and decoded_norm(again.compact) == decoded_norm(reply.compact)


def test_a_device_sends_its_change_and_the_float32_weights_match_it(tiny_config: StrataConfig) -> None:
    cfg = tiny_config.replace({"federation.topology": "device"})
    plain, start = _reply(cfg)
    compact, _ = _reply(cfg.replace({"federation.transport": "int8"}))
    assert plain.weights is not None and compact.compact is not None
    decoded = compact.compact.decode()
    for k, v in start.items():  # the same seeded training: the change, within one int8 step
        step = compact.compact.scales[k]
        assert (decoded[k] - (plain.weights[k] - v)).abs().max() <= step * (1 + 1e-4) + 1e-7


def test_a_malformed_compact_reply_is_a_protocol_error() -> None:
    good = TrainRes(weights=None, epsilon=0.0, compact=encode(_change(), "int8", torch.Generator()))
    wrong_dtype, bad_scale, no_scale, unknown = (good.to_record() for _ in range(4))
    wrong_dtype["arrays"] = ArrayRecord(
        {"w": Array(np.zeros((300, 40), np.float32)), "b": Array(np.zeros(40, np.int8))}
    )
    bad_scale["scales"]["w"] = Array(np.array([-1.0], np.float32))  # type: ignore[assignment]
    del no_scale["scales"]["b"]
    unknown["config"]["encoding"] = "int4"  # type: ignore[assignment]
    for content, match in (
        (wrong_dtype, "expected int8"),
        (bad_scale, "positive finite"),
        (no_scale, "no 'b' array"),
        (unknown, "expected float32, float16 or int8"),
    ):
        with pytest.raises(ProtocolError, match=match):
            TrainRes.from_record(content)
