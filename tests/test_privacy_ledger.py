"""Ledger composition across rounds and runs, and the accountants against known values."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from flwr.app import ArrayRecord, Context, RecordDict
from opacus.accountants import RDPAccountant
from scipy.stats import norm

from client.budget import ClientBudget
from client.ledger_store import open_ledger, save_to_state
from client.rounds import train_round
from client.store import DeviceStore, simulation_store
from client.trainer import parameters_of
from shared.config import StrataConfig
from shared.model import build_model
from shared.privacy import accounting
from shared.privacy.accounting import (
    PRV_EPS_ERROR,
    EpsilonCache,
    calibrate_noise_multiplier,
    epsilon_of,
    prv_epsilon,
)
from shared.privacy.ledger import Ledger, LedgerEntry, LedgerError
from shared.protocol import TrainIns, TrainRes
from shared.run_dir import RunDir


def _analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """Exact ε of one Gaussian mechanism with sensitivity 1 (Balle & Wang 2018)."""

    def delta_of(eps: float) -> float:
        tail = norm.cdf(-eps * sigma + 1 / (2 * sigma)) - math.exp(eps) * norm.cdf(-eps * sigma - 1 / (2 * sigma))
        return float(tail)

    lo, hi = 0.0, 50.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
    return hi


def test_pld_matches_the_analytic_gaussian_mechanism() -> None:
    entry = LedgerEntry.dp_sgd(
        noise_multiplier=2.0, sample_rate=1.0, steps=1, run_id="r", round=1, client="c", max_grad_norm=1.0
    )
    exact = _analytic_gaussian_epsilon(2.0, 1e-5)
    pld = epsilon_of([entry], 1e-5, "pld")
    rdp = epsilon_of([entry], 1e-5, "rdp")
    assert exact <= pld <= exact + 0.01
    assert rdp >= pld  # RDP is the conservative cross-check


def test_rdp_matches_opacus_accountant() -> None:
    entries = [
        LedgerEntry.dp_sgd(
            noise_multiplier=1.1, sample_rate=0.01, steps=500, run_id="r", round=k, client="c", max_grad_norm=1.0
        )
        for k in range(3)
    ]
    opacus = RDPAccountant()
    opacus.history = [(1.1, 0.01, 1500)]
    ours = epsilon_of(entries, 1e-5, "rdp")
    assert ours == pytest.approx(opacus.get_epsilon(1e-5), rel=0.03)


def test_grouped_composition_equals_sequential_composition() -> None:
    entries = [
        LedgerEntry.dp_sgd(
            noise_multiplier=1.3, sample_rate=0.05, steps=7, run_id="r", round=k, client="c", max_grad_norm=1.0
        )
        for k in range(3)
    ]
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    step = dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(1.3))
    for _ in range(3):
        acc.compose(dp_accounting.SelfComposedDpEvent(step, 7))
    assert epsilon_of(entries, 1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-3)


@pytest.mark.parametrize(
    "groups",
    [
        ((6.1355, 1.0, 100),),  # Gaussian releases (q = 1)
        ((2.7, 0.3, 200),),
        ((1.2, 0.05, 300), (3.0, 1.0, 1), (8.0, 1.0, 2)),  # DP-SGD plus one-shot releases
    ],
)
def test_cached_step_plds_give_exactly_the_accountants_epsilon(groups: tuple[tuple[float, float, int], ...]) -> None:
    """The per-process step PLDs and RDP curves change the cost of ε, not its value: bit-identical to
    dp-accounting's PLDAccountant and RdpAccountant over the same events."""
    event = dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
        )
        for sigma, q, steps in groups
    ])
    pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=accounting.PLD_DISCRETIZATION)
    reference = pld.compose(event).get_epsilon(1e-5)
    rdp_reference = rdp_privacy_accountant.RdpAccountant().compose(event).get_epsilon(1e-5)
    assert accounting._pld_epsilon(groups, 1e-5) == reference
    assert accounting._pld_epsilon(groups, 1e-5) == reference  # the second time from the cached step PLDs
    assert accounting._pld_epsilon(((0.0, 0.5, 3), *groups), 1e-5) == math.inf  # a noiseless step is not DP
    assert accounting._rdp_epsilon(groups, 1e-5) == rdp_reference


def test_calibration_hits_the_target() -> None:
    sigma = calibrate_noise_multiplier(target_epsilon=4.0, delta=1e-4, population=1000, sample_rate=0.1, steps=200)
    entry = LedgerEntry.dp_sgd(
        noise_multiplier=sigma, sample_rate=0.1, steps=200, run_id="r", round=1, client="c", max_grad_norm=1.0
    )
    spent = epsilon_of([entry], 1e-4)
    assert 3.9 <= spent <= 4.0


def test_a_devices_epsilon_cache_returns_what_the_accountant_computes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A SuperNode answers each message in a new process: the file-backed cache makes the second
    calibration free, and gives exactly the σ and ε the accountant gives (they are public functions)."""
    path = tmp_path / "epsilons" / "client-0.json"
    plan = {"target_epsilon": 3.0, "delta": 1e-5, "population": 1000, "sample_rate": 0.05, "steps": 150}
    first = calibrate_noise_multiplier(**plan, cache=EpsilonCache(path))  # type: ignore[arg-type]
    assert first == calibrate_noise_multiplier(**plan)  # type: ignore[arg-type]
    assert path.is_file()

    def no_accountant(*args: object) -> float:
        raise AssertionError("the accountant ran although every value was cached")

    with monkeypatch.context() as m:  # a new process: the in-process cache is empty, the file is not
        m.setattr(accounting, "_epsilon", no_accountant)
        assert calibrate_noise_multiplier(**plan, cache=EpsilonCache(path)) == first  # type: ignore[arg-type]
    entry = LedgerEntry.dp_sgd(
        noise_multiplier=first, sample_rate=0.05, steps=150, run_id="r", round=1, client="c", max_grad_norm=1.0
    )
    assert epsilon_of([entry], 1e-5, cache=EpsilonCache(path)) == epsilon_of([entry], 1e-5)

    path.write_text("{not json")  # a damaged cache is ignored (and said), never trusted
    with caplog.at_level(logging.WARNING):
        assert epsilon_of([entry], 1e-5, cache=EpsilonCache(path)) == epsilon_of([entry], 1e-5)
    assert "unreadable ε cache" in caplog.text


def test_calibration_counts_what_was_already_spent() -> None:
    prior = [
        LedgerEntry.dp_sgd(
            noise_multiplier=3.0,
            sample_rate=0.1,
            steps=100,
            run_id="earlier-run",
            round=1,
            client="c",
            max_grad_norm=1.0,
        )
    ]
    assert 0 < epsilon_of(prior, 1e-4) < 4.0
    sigma = calibrate_noise_multiplier(
        target_epsilon=4.0, delta=1e-4, population=1000, sample_rate=0.1, steps=200, prior=prior
    )
    entry = LedgerEntry.dp_sgd(
        noise_multiplier=sigma, sample_rate=0.1, steps=200, run_id="r", round=1, client="c", max_grad_norm=1.0
    )
    total = epsilon_of([*prior, entry], 1e-4)
    assert 3.9 <= total <= 4.0
    with pytest.raises(ValueError, match="already spends"):
        calibrate_noise_multiplier(
            target_epsilon=0.1, delta=1e-4, population=1000, sample_rate=0.1, steps=10, prior=prior
        )


def _train(store: DeviceStore, config: StrataConfig, *, server_round: int, run_id: str, ledger: Ledger) -> TrainRes:
    """One round of `store`'s client from fresh weights, spending from `ledger`."""
    weights = parameters_of(build_model(store.n_items, config.model, store.features, 0))
    ins = TrainIns(arrays=ArrayRecord(weights), server_round=server_round, run_id=run_id)
    budget = ClientBudget.from_config(config.privacy, ledger=ledger)
    return train_round(store, config, ins, budget)


def test_three_rounds_with_fresh_engines_compose(tiny_config: StrataConfig, tmp_path: Path) -> None:
    """Each round builds a new PrivacyEngine; the ledger must still compose all three."""
    cfg = tiny_config.replace({"privacy.mode": "local", "privacy.noise-multiplier": 1.5})
    store = simulation_store(cfg, 0)
    ledger = Ledger.open(tmp_path / "ledger.jsonl")
    eps = []
    for rnd in (1, 2, 3):
        result = _train(store, cfg, server_round=rnd, run_id="run-a", ledger=ledger)
        eps.append(result.epsilon)
    assert eps[0] < eps[1] < eps[2]
    replayed = Ledger.open(tmp_path / "ledger.jsonl")
    assert len(replayed) == 3
    delta = cfg.privacy.resolved_delta
    assert epsilon_of(replayed.entries, delta) == pytest.approx(eps[2])
    # One accountant over the same history (Opacus's RDP, fed every step at once).
    e = replayed.entries[0]
    opacus = RDPAccountant()
    opacus.history = [(e.noise_multiplier, e.sample_rate, sum(x.steps for x in replayed.entries))]
    assert epsilon_of(replayed.entries, delta, "rdp") == pytest.approx(opacus.get_epsilon(delta), rel=0.03)


def test_ledger_survives_a_second_run(tiny_config: StrataConfig, tmp_path: Path) -> None:
    cfg = tiny_config.replace({"privacy.mode": "local"})
    store = simulation_store(cfg, 1)
    path = RunDir.of(tmp_path).client_ledger_path(store.client_id)
    first = _train(store, cfg, server_round=1, run_id="run-1", ledger=Ledger.open(path))
    second = _train(store, cfg, server_round=1, run_id="run-2", ledger=Ledger.open(path))
    assert second.epsilon > first.epsilon
    assert [e.run_id for e in Ledger.open(path).entries] == ["run-1", "run-2"]


def test_client_refuses_beyond_max_epsilon(
    tiny_config: StrataConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tiny_config.replace({"privacy.mode": "local", "privacy.max-epsilon": 0.5})
    store = simulation_store(cfg, 2)
    ledger = Ledger.open(tmp_path / "l.jsonl")
    with caplog.at_level(logging.WARNING, logger="client.rounds"):
        result = _train(store, cfg, server_round=1, run_id="r", ledger=ledger)
    assert result.weights is None and result.refused
    assert "max-epsilon 0.5" in caplog.text  # the client says why it refused
    assert len(ledger) == 0  # nothing was released, nothing recorded


def test_state_and_disk_must_agree(tmp_path: Path) -> None:
    path = tmp_path / "client-0.jsonl"
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    ledger = open_ledger(ctx, path)
    ledger.append(
        LedgerEntry.dp_sgd(
            noise_multiplier=1.0, sample_rate=1.0, steps=1, run_id="r", round=1, client="0", max_grad_norm=1.0
        )
    )
    save_to_state(ctx, ledger)
    assert len(open_ledger(ctx, path)) == 1
    path.write_text("")  # the file lost its entries
    with pytest.raises(LedgerError, match="does not extend"):
        open_ledger(ctx, path)


def test_bad_ledger_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = LedgerEntry.dp_sgd(
        noise_multiplier=1.0, sample_rate=0.5, steps=2, run_id="r", round=1, client="c", max_grad_norm=1.0
    ).to_json()
    path.write_text(good + "\n" + good.replace('"noise_multiplier": 1.0', '"noise_multiplier": -1') + "\n")
    with pytest.raises(LedgerError, match=r"bad.jsonl, line 2"):
        Ledger.open(path)


@pytest.mark.parametrize(
    ("sigma", "q", "steps"), [(1.0, 0.01, 1000), (4.0, 1.0, 1), (0.8, 0.2, 50), (2.0, 0.05, 400)]
)
def test_prv_agrees_with_pld_within_its_error_bound(sigma: float, q: float, steps: int) -> None:
    """The verifier's second accountant: PRV (Opacus) and PLD (dp-accounting) on the same entries."""
    entries = [
        LedgerEntry.dp_sgd(noise_multiplier=sigma, sample_rate=q, steps=steps, max_grad_norm=1.0, run_id="r",
                           round=1, client="0"),
        LedgerEntry.gaussian_sum(noise_multiplier=5.0, bound=1.0, run_id="r", round=2, holder="0"),
    ]
    pld, prv = epsilon_of(entries, 1e-5), prv_epsilon(entries, 1e-5)
    assert pld > 0 and abs(prv - pld) <= 2 * PRV_EPS_ERROR + 0.01, (pld, prv)
