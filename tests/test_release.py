"""One-shot DP releases: the popularity prior and the interest census (bounded per-user
contributions, Gaussian noise where the privacy mode says, one ledger entry each)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fakes import DirectGrid
from flwr.app import ArrayRecord

from client.budget import ClientBudget
from client.release import contribute
from client.rounds import noise_multiplier_for
from client.store import DeviceStore, simulation_store
from client.trainer import local_plan, parameters_of
from server.privacy_report import write_privacy_report
from server.release import collect_release
from shared.config import StrataConfig
from shared.data.matrices import train_tensors
from shared.model import build_model
from shared.privacy.accounting import epsilon_of
from shared.privacy.ledger import Ledger, LedgerEntry, LedgerError
from shared.privacy.release import (
    bias_from_popularity,
    bounded_rows,
    census_rows,
    planned_releases,
    popularity_rows,
    release_bound,
    release_entry,
)
from shared.protocol import ReleaseIns
from shared.run_dir import RunDir
from simulation.simulate import simulate


def _budget(config: StrataConfig, store: DeviceStore, ledger: Ledger | None = None) -> ClientBudget:
    ledger = ledger if ledger is not None else Ledger()
    return ClientBudget.from_config(config.privacy, ledger=ledger)


def _popularity(server_round: int = 0) -> ReleaseIns:
    return ReleaseIns(kind="popularity", server_round=server_round, run_id="r")


def test_bounded_rows_respect_the_bound_and_keep_small_rows() -> None:
    rows = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    out = bounded_rows(rows, 1.0)
    assert np.linalg.norm(out, axis=1) == pytest.approx([1.0, 0.5, 0.0])
    assert out[1] == pytest.approx(rows[1])
    assert np.linalg.norm(popularity_rows(np.array([[1.0, 1.0, 0.0, 1.0]]))) == pytest.approx(1.0)


def test_census_rows_mark_at_most_top_k_held_interests() -> None:
    shares = np.array([[0.5, 0.3, 0.1, 0.1, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]])
    rows = census_rows(shares, k=3)
    assert rows.tolist() == [[1, 1, 1, 0, 0], [0, 0, 1, 0, 0]]
    assert np.linalg.norm(rows, axis=1).max() <= np.sqrt(3) + 1e-12


def test_release_entry_is_one_gaussian_step() -> None:
    e = release_entry(noise_multiplier=3.0, bound=1.0, run_id="r", server_round=0, holder="c")
    assert (e.mechanism, e.sample_rate, e.steps) == ("gaussian-sum", 1.0, 1)
    one_step = LedgerEntry.dp_sgd(
        noise_multiplier=3.0, sample_rate=1.0, steps=1, run_id="r", round=0, client="c", max_grad_norm=1.0
    )
    assert epsilon_of([e], 1e-5) == pytest.approx(epsilon_of([one_step], 1e-5))  # the Gaussian mechanism
    with pytest.raises(LedgerError, match="one step"):
        LedgerEntry(
            mechanism="gaussian-sum", noise_multiplier=3.0, sample_rate=0.5, steps=1, run_id="r", round=0, client="c"
        )


def test_local_mode_client_noises_and_records_its_release(tiny_config: StrataConfig) -> None:
    cfg = tiny_config.replace({"privacy.mode": "local", "privacy.release-noise-multiplier": 2.0})
    store = simulation_store(cfg, 0)
    exact = popularity_rows(train_tensors(store.users, store.n_items, 4.0).positives.numpy()).sum(axis=0)
    noise = []
    ledger = Ledger()
    for _ in range(60):
        reply = contribute(store, cfg, _popularity(), _budget(cfg, store))
        noise.append(reply.total - exact)
    reply = contribute(store, cfg, _popularity(), _budget(cfg, store, ledger))
    (entry,) = ledger.entries
    assert (entry.noise_multiplier, entry.max_grad_norm, entry.round, entry.client) == (2.0, 1.0, 0, store.client_id)
    assert reply.epsilon == pytest.approx(epsilon_of([entry], cfg.privacy.resolved_delta))
    draws = np.concatenate(noise)
    # z · bound per coordinate, within 5 standard errors of a sample std (σ/√(2n))
    assert np.std(draws) == pytest.approx(2.0 * 1.0, rel=5 / np.sqrt(2 * draws.size))


def test_privacy_off_release_is_exact_and_unrecorded(tiny_config: StrataConfig) -> None:
    store = simulation_store(tiny_config, 1)
    ledger = Ledger()
    reply = contribute(store, tiny_config, _popularity(), _budget(tiny_config, store, ledger))
    exact = popularity_rows(train_tensors(store.users, store.n_items, 4.0).positives.numpy()).sum(axis=0)
    assert reply.total == pytest.approx(exact) and len(ledger) == 0 and reply.epsilon == 0.0


def test_central_mode_server_adds_the_noise_and_records_it(tiny_config: StrataConfig) -> None:
    cfg = tiny_config.replace({"privacy.mode": "central", "privacy.release-noise-multiplier": 3.0})
    grid = DirectGrid(cfg)
    server_ledger = Ledger()
    n_items = cfg.data.synthetic_items
    release = collect_release(grid, cfg, "popularity", run_id="r", dim=n_items, server_ledger=server_ledger, timeout=60)
    exact = sum(
        popularity_rows(train_tensors(simulation_store(cfg, i).users, n_items, 4.0).positives.numpy()).sum(axis=0)
        for i in range(grid.n)
    )
    (entry,) = server_ledger.entries
    assert (entry.client, entry.noise_multiplier, entry.round) == ("server", 3.0, 0)
    assert release is not None
    assert release.clients == grid.n
    assert not np.allclose(release.total, exact)
    # Clients added nothing and recorded nothing: their ledgers in context.state are empty.
    assert all(eps == 0.0 for eps in release.client_epsilon.values())


def test_popularity_prior_makes_the_untrained_model_rank_by_popularity(tiny_config: StrataConfig) -> None:
    store = simulation_store(tiny_config, 0)
    model = build_model(store.n_items, tiny_config.model, store.features, 0)
    counts = np.arange(store.n_items, dtype=np.float64)
    model.start_from_popularity(torch.from_numpy(bias_from_popularity(counts)))
    model.eval()
    x = torch.zeros(2, store.n_items)
    x[0, 3] = 1.0
    x[1, 7] = 1.0
    logits = model(x, x, x).logits
    assert torch.equal(logits.argsort(dim=1, descending=True)[0], torch.arange(store.n_items - 1, -1, -1))
    assert torch.allclose(logits[0], logits[1])


def test_calibration_counts_the_planned_releases(tiny_config: StrataConfig) -> None:
    cfg = tiny_config.replace(
        {
            "privacy.mode": "local",
            "privacy.target-epsilon": 3.0,
            "model.popularity-prior": True,
            "federation.census": True,
        }
    )
    store = simulation_store(cfg, 0)
    planned = planned_releases(cfg, run_id="r", holder=store.client_id, server=False)
    # The prior (round 0), the final evaluation release (round 2) and the census (round 3).
    assert [e.round for e in planned] == [0, cfg.federation.rounds, cfg.federation.rounds + 1]
    assert [(e.max_grad_norm, e.noise_multiplier) for e in planned] == [
        (release_bound("popularity"), cfg.privacy.release_noise_multiplier),
        (release_bound("evaluation"), cfg.privacy.eval_noise_multiplier),
        (release_bound("census"), cfg.privacy.release_noise_multiplier),
    ]
    sigma = noise_multiplier_for(cfg, store, _budget(cfg, store), "r")
    plain = cfg.replace(
        {"model.popularity-prior": False, "federation.census": False, "federation.eval-release": "none"}
    )
    without = noise_multiplier_for(plain, store, _budget(plain, store), "r")
    assert sigma > without  # the releases take part of the budget
    q, steps = local_plan(cfg)
    rounds = [
        LedgerEntry.dp_sgd(
            noise_multiplier=sigma,
            sample_rate=q,
            steps=steps,
            run_id="r",
            round=r,
            client=store.client_id,
            max_grad_norm=1.0,
        )
        for r in range(1, cfg.federation.rounds + 1)
    ]
    total = epsilon_of([*planned, *rounds], cfg.privacy.resolved_delta)
    assert total <= 3.0 and total == pytest.approx(3.0, rel=0.02)


@pytest.mark.parametrize("mode", ["local", "central"])
def test_simulation_with_prior_and_census_verifies(tiny_config: StrataConfig, mode: str) -> None:
    cfg = tiny_config.replace(
        {
            "privacy.mode": mode,
            "privacy.target-epsilon" if mode == "local" else "privacy.central-target-epsilon": 6.0,
            "model.popularity-prior": True,
            "federation.census": True,
        }
    )
    summary = simulate(cfg)
    run = RunDir.of(cfg.run_dir)
    census, taxonomy = run.read_census(), run.read_taxonomy()
    assert census is not None and taxonomy is not None  # the taxonomy is the final model's
    assert len(census["interests"]) == sum(len(c["interests"]) for c in taxonomy["categories"])
    assert census["epsilon"] == pytest.approx(
        epsilon_of(
            [
                release_entry(
                    noise_multiplier=cfg.privacy.release_noise_multiplier,
                    bound=np.sqrt(3),
                    run_id="",
                    server_round=0,
                    holder="x",
                )
            ],
            census["delta"],
        )
    )
    report, verified = write_privacy_report(run, verify=True)
    assert verified, [c for c in report["verification"]["checks"] if not c["passed"]]
    epsilon = summary["epsilon"] if mode == "local" else summary["central_epsilon"]
    assert epsilon == pytest.approx(6.0, rel=0.02)  # releases included, still the target
    ledger_files = [run.central_ledger_path] if mode == "central" else run.client_ledger_paths()
    assert ledger_files
    releases = [json.loads(x) for f in ledger_files for x in f.read_text().splitlines() if "gaussian-sum" in x]
    # prior, final evaluation, census
    assert sorted({r["round"] for r in releases}) == [0, cfg.federation.rounds, cfg.federation.rounds + 1]


def test_census_contribution_is_bounded_and_noised(tiny_config: StrataConfig) -> None:
    cfg = tiny_config.replace({"privacy.mode": "local", "privacy.release-noise-multiplier": 2.0})
    store = simulation_store(cfg, 0)
    weights = parameters_of(build_model(store.n_items, cfg.model, store.features, 0))
    rng = np.random.default_rng(0)
    interests = np.zeros((store.n_items, 6))
    interests[np.arange(store.n_items), rng.integers(0, 6, store.n_items)] = 1.0
    census = ReleaseIns(kind="census", server_round=3, run_id="r", arrays=ArrayRecord(weights), interests=interests)
    off = cfg.replace({"privacy.mode": "off"})
    exact = contribute(store, off, census, _budget(off, store)).total
    assert exact is not None
    assert exact.sum() <= 3 * store.n_users  # each user holds at most 3 interests
    assert np.all(exact == np.round(exact)) and exact.max() <= store.n_users
    ledger = Ledger()
    budget = _budget(cfg, store, ledger)
    totals = [contribute(store, cfg, census, budget).total for _ in range(80)]
    draws = [t - exact for t in totals if t is not None]
    assert len(draws) == 80
    noise = np.concatenate(draws)
    # The sample std of n Gaussian draws errs by σ/√(2n) (3.2% at n = 480): within 5 of those, so the
    # secret noise fails this check about once in 10⁶ runs; a missing √3 or a doubled σ is > 40% off.
    assert np.std(noise) == pytest.approx(2.0 * np.sqrt(3), rel=5 / np.sqrt(2 * noise.size))
    assert abs(noise.mean()) <= 5 * 2.0 * np.sqrt(3) / np.sqrt(noise.size)  # centred on the exact sum
    assert len(ledger) == 80
    assert all(e.mechanism == "gaussian-sum" and e.max_grad_norm == pytest.approx(np.sqrt(3)) for e in ledger.entries)
