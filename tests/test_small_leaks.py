"""The smaller leaks of issue 9 (defect 7): the report's example user, the generate
comparison with the real data, the central reference's ledger, empty Poisson batches."""

from __future__ import annotations

import copy
import dataclasses
import html
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from server.privacy_report import write_privacy_report
from server.run_report import write_run_report
from shared.config import DataConfig, ModelConfig
from shared.data.matrices import UserTensors, train_tensors
from shared.data.source import load_source
from shared.data.split import split_users
from shared.data.synthetic import make_synthetic
from shared.data.types import RatingsData
from shared.features import catalog_features
from shared.model import build_model
from shared.privacy.accounting import epsilon_of
from shared.privacy.ledger import read_entries
from shared.run_dir import RunDir
from shared.training import DPSettings, make_optimizer, train_users
from simulation import generate
from simulation.central import run_central
from simulation.cli import _example_user, main
from simulation.recommend import recommend_for_user

from conftest import TINY_DATA, TINY_MODEL, make_config

# Literal on purpose: the page must say these words.
SYNTHETIC_LABEL = "synthetic example user (sampled from the model; no real user's data)"
REAL_WARNING = "real user — NOT private: this page shows one user's exact data"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _load_with_other_ratings(data: DataConfig, seed: int) -> RatingsData:
    """`load_source` with every rating changed (1 ↔ 5, 2 ↔ 4): the same users, items and catalog."""
    real = load_source(data, seed)
    return dataclasses.replace(real, ratings=(6.0 - real.ratings).astype(np.float32))


# ------------------------------------------------------------ 1. the report's example user


def test_default_report_example_is_a_synthetic_user(trained_run: RunDir) -> None:
    example, why = _example_user(trained_run)
    assert example is not None, why
    config = trained_run.read_config()
    real_ids = set(load_source(config.data, config.run.seed).user_ids)
    assert example["synthetic"] is True
    assert example["user"] not in real_ids
    assert example["items"] and example["profile"]["l1"]  # a full layered example, as a device computes it
    page = write_run_report(trained_run, example=example).read_text(encoding="utf-8")
    assert html.escape(SYNTHETIC_LABEL) in page
    assert html.escape(REAL_WARNING) not in page
    assert "the first user id of the data set" not in page


def test_synthetic_example_reads_no_rating(trained_run: RunDir, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every real rating changed: the synthetic example is the same (model and catalog only)."""
    before, _ = _example_user(trained_run)
    monkeypatch.setattr(generate, "load_source", _load_with_other_ratings)
    after, _ = _example_user(trained_run)
    assert before is not None and json.dumps(before, sort_keys=True) == json.dumps(after, sort_keys=True)


def test_real_example_user_only_on_request_and_marked_not_private(
    trained_run: RunDir, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    config = trained_run.read_config()
    user = load_source(config.data, config.run.seed).user_ids[0]
    with caplog.at_level(logging.WARNING):
        assert main(["report", str(trained_run.path), "--example-user", user]) == 0
    assert REAL_WARNING in caplog.text
    assert REAL_WARNING in capsys.readouterr().out
    page = trained_run.run_report_path.read_text(encoding="utf-8")
    assert html.escape(REAL_WARNING) in page
    assert html.escape(SYNTHETIC_LABEL) not in page
    assert f"User <b>{html.escape(user)}</b>" in page
    # back to the default: the next report shows no real user
    assert main(["report", str(trained_run.path)]) == 0
    page = trained_run.run_report_path.read_text(encoding="utf-8")
    assert html.escape(SYNTHETIC_LABEL) in page and html.escape(REAL_WARNING) not in page


def test_an_unflagged_example_is_marked_as_real(trained_run: RunDir) -> None:
    """The report labels an example synthetic only when it says so; a real user's result is marked."""
    config = trained_run.read_config()
    user = load_source(config.data, config.run.seed).user_ids[0]
    example = recommend_for_user(trained_run, user, n=10, layered=True)
    page = write_run_report(trained_run, example=example).read_text(encoding="utf-8")
    assert html.escape(REAL_WARNING) in page and html.escape(SYNTHETIC_LABEL) not in page


# ------------------------------------------------------- 2. generate's comparison with real data


def test_generate_writes_nothing_from_the_real_ratings_by_default(
    trained_run: RunDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "release" / "syn.csv"
    summary = generate.generate_profiles(trained_run.path, n=20, out=out, seed=4)
    assert sorted(p.name for p in out.parent.iterdir()) == ["syn.csv", "syn_catalog.csv"]
    assert summary["comparison"] is None
    written = _snapshot(out.parent)
    # every real rating changed: the same files, byte for byte, and the same summary
    monkeypatch.setattr(generate, "load_source", _load_with_other_ratings)
    again = generate.generate_profiles(trained_run.path, n=20, out=out, seed=4)
    assert _snapshot(out.parent) == written
    assert again == summary


def test_generate_comparison_only_on_request_and_marked_not_private(
    trained_run: RunDir, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "syn.csv"
    assert main(["generate", str(trained_run.path), "--n", "20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "No comparison with the real ratings was written" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn.csv", "syn_catalog.csv"]

    assert main(["generate", str(trained_run.path), "--n", "20", "--out", str(out), "--compare-to-real"]) == 0
    printed = capsys.readouterr().out
    path = tmp_path / "syn_comparison_NOT_PRIVATE.json"
    assert {p.name for p in tmp_path.iterdir()} == {path.name, "syn.csv", "syn_catalog.csv"}
    report = json.loads(path.read_text(encoding="utf-8"))
    first, second = list(report)[:2]
    assert (first, report[first]) == ("private", False)
    assert second == "warning" and "NOT PRIVATE" in report["warning"]
    assert "not part of the private release" in report["warning"]
    assert report["stats"]["real"]["n_users"] == 200  # it does hold the real statistics
    assert str(path) in printed and "NOT PRIVATE" in printed


# ------------------------------------------------------------ 3. the central reference's ledger


def test_central_runs_into_one_directory_compose(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "central"
    config = make_config(
        out=out, data=TINY_DATA, model=TINY_MODEL, train={"epochs": 2, "batch_size": 8},
        privacy={"mode": "local", "noise_multiplier": 1.0},
    )
    ledger = RunDir.of(out).central_ledger_path
    first = run_central(config, eval_every=2)
    one_run = read_entries(ledger)
    assert one_run
    with caplog.at_level(logging.WARNING):
        second = run_central(config, eval_every=2)
    both = read_entries(ledger)
    assert both[: len(one_run)] == one_run  # kept, not deleted
    assert len(both) == 2 * len(one_run)  # and the second run appended its own
    assert len({e.run_id for e in both}) == 2
    assert second["epsilon"] > first["epsilon"]
    assert second["epsilon"] == pytest.approx(epsilon_of(both, second["delta"]), rel=1e-9)
    assert "ε composes with them" in caplog.text
    _, verified = write_privacy_report(RunDir.of(out), verify=True)  # the report tells the two runs apart
    assert verified

    # calibration to a target counts the earlier entries: all three runs together spend the target
    target = second["epsilon"] + 3.0
    third = run_central(config.replace({"privacy.target-epsilon": target}), eval_every=2)
    every = read_entries(ledger)
    assert every[: len(both)] == both
    spent = epsilon_of(every, third["delta"])
    assert spent == pytest.approx(target, rel=0.02)
    assert third["epsilon"] == pytest.approx(spent, rel=1e-9)


# ----------------------------------------------------------------- 4. empty Poisson batches


ThreeUsers = tuple[int, torch.Tensor, UserTensors]  # n_items, catalog features, train tensors


@pytest.fixture(scope="module")
def three_users() -> ThreeUsers:
    data, _ = make_synthetic(n_users=3, n_items=20, n_categories=2, subs_per_category=2, seed=0)
    tensors = train_tensors(split_users(data, seed=0), data.n_items, 4.0)
    return data.n_items, torch.from_numpy(catalog_features(data.catalog)), tensors


def _train_3_users(
    three_users: ThreeUsers, *, ghost: bool, epochs: int, lr: float
) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    """DP-SGD (σ = 1, C = 1, plain SGD) over 3 users with expected batch 1: q = 1/3, 3 steps
    per epoch, and an empty Poisson sample with probability (2/3)³ ≈ 0.30 at every step."""
    n_items, feats, tensors = three_users
    model = build_model(n_items, ModelConfig(hidden_dim=8, latent_dim=4, rating_dim=2, dropout=0.0), feats, 0)
    before = copy.deepcopy(model)
    stats = train_users(
        model, tensors, epochs=epochs, batch_size=1, optimizer=make_optimizer(model, "sgd", lr), beta=0.0,
        rating_weight=1.0, generator=torch.Generator().manual_seed(0),
        dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=1 / 3, ghost_clipping=ghost),
    )
    return before, model, stats.steps


def _deltas(before: torch.nn.Module, after: torch.nn.Module) -> torch.Tensor:
    return torch.cat(
        [(a - b).detach().flatten() for a, b in zip(after.parameters(), before.parameters(), strict=True)]
    )


@pytest.mark.parametrize("ghost", [False, True], ids=["hooks", "ghost"])
def test_training_with_empty_poisson_batches_completes(three_users: ThreeUsers, ghost: bool) -> None:
    epochs = 20  # 60 steps: P(no empty batch) = 0.70^60 < 1e-9
    before, after, steps = _train_3_users(three_users, ghost=ghost, epochs=epochs, lr=0.1)
    assert steps == epochs * 3
    assert _deltas(before, after).abs().max() > 0


@pytest.mark.parametrize("ghost", [False, True], ids=["hooks", "ghost"])
def test_an_all_empty_epoch_releases_noise_of_the_stated_scale(
    three_users: ThreeUsers, ghost: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every Poisson sample forced empty: each step is zero gradient plus N(0, σ²C²)/B."""
    def empty_batches(self: UniformWithReplacementSampler) -> Iterator[list[int]]:
        for _ in range(self.steps):
            yield []

    monkeypatch.setattr(UniformWithReplacementSampler, "__iter__", empty_batches)
    epochs, lr = 4, 0.1
    before, after, steps = _train_3_users(three_users, ghost=ghost, epochs=epochs, lr=lr)
    assert steps == epochs * 3
    deltas = _deltas(before, after)
    # SGD on zero gradients moves nothing: every change is the noise, std lr·σ·C/B per step
    assert deltas.std().item() == pytest.approx(lr * (steps**0.5), rel=0.1)
