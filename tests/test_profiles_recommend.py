"""On-device profiles on hand-built examples, calibration maths, and recommend on a trained run."""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import pytest
import torch

from client.profiles import ProfileSettings, l1_target, profile_from_distribution, user_profile
from client.recommend import (
    LAYER_L1,
    LAYER_L2,
    LAYER_L3,
    calibrated_list,
    discovery_items,
    miscalibration,
    rank_items,
)
from shared.interests import InterestIndex
from shared.model import StrataModel
from shared.run_dir import RunDir
from simulation.recommend import UnknownUserError, recommend_for_user

# Six items, two categories; item 2 is in both.
ITEM_CATEGORIES = [("A",), ("A",), ("A", "B"), ("B",), ("B",), ("B",)]
TAXONOMY = {
    "n_items": 6,
    "categories": [
        {
            "id": "A",
            "prior_share": 0.5,
            "interests": [
                {"id": "A/0", "category": "A", "name": "a-zero", "prior_share": 0.25, "items": [0, 1]},
                {"id": "A/1", "category": "A", "name": "a-one", "prior_share": 0.25, "items": [2]},
            ],
        },
        {
            "id": "B",
            "prior_share": 0.5,
            "interests": [
                {"id": "B/0", "category": "B", "name": "b-zero", "prior_share": 0.25, "items": [2, 3]},
                {"id": "B/1", "category": "B", "name": "b-one", "prior_share": 0.25, "items": [4, 5]},
            ],
        },
    ],
}
PI = np.array([0.1, 0.1, 0.2, 0.2, 0.2, 0.2])


class FakeModel(torch.nn.Module):
    """Encodes anything to z = 0 and decodes to fixed logits log π; no content score."""

    def __init__(self, pi: np.ndarray) -> None:
        super().__init__()
        self.logits = torch.log(torch.tensor(pi, dtype=torch.float64))

    def encode(self, positives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(positives.shape[0], 1), torch.zeros(positives.shape[0], 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(z.shape[0], -1)

    def content_scores(self, positives: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(positives)  # no content score


def _by_id(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in entries}


def test_item_weights_spread_over_categories() -> None:
    index = InterestIndex.from_taxonomy(TAXONOMY, ITEM_CATEGORIES)
    assert index.l1[2].tolist() == [0.5, 0.5]
    assert index.l2[2].tolist() == [0.0, 0.5, 0.5, 0.0]  # A/1 and B/0 each get half of item 2
    assert np.allclose(index.l2.sum(1), 1.0)


def test_profile_by_hand() -> None:
    positives = torch.tensor([1.0, 0, 1, 0, 0, 0])  # items 0 and 2
    settings = ProfileSettings(kappa=2.0, min_lift=1.5)
    # FakeModel has the part of a StrataModel that a profile uses (encode, decode, train/eval).
    model = cast(StrataModel, FakeModel(PI))
    p = user_profile(model, TAXONOMY, positives, ITEM_CATEGORIES, settings=settings)
    l1 = _by_id(p["l1"])
    # observed: A = (1 + 0.5)/2, B = 0.5/2; predicted: A = .1 + .1 + .2/2, B = .2/2 + .2 + .2 + .2
    assert (l1["A"]["observed"], l1["B"]["observed"]) == pytest.approx((0.75, 0.25))
    assert (l1["A"]["predicted"], l1["B"]["predicted"]) == pytest.approx((0.3, 0.7))
    # blend weight of the model: κ/(n + κ) = 2/(2 + 2) = 0.5
    assert p["blend"]["model_weight"] == 0.5
    assert (l1["A"]["share"], l1["B"]["share"]) == pytest.approx((0.525, 0.475))
    assert [e["id"] for e in p["l1"]] == ["A", "B"]
    # L2 observed: A/0 1/2, A/1 .25, B/0 .25, B/1 0; predicted: .2, .1, .3, .4
    l2 = _by_id(p["l2"])
    assert set(l2) == {"A/0", "A/1", "B/0"}  # B/1 has no history: not a fine interest
    assert l2["A/0"]["observed"] == pytest.approx(0.5) and l2["B/0"]["predicted"] == pytest.approx(0.3)
    # L3: B/1 predicted .4 vs prior .25 -> lift 1.6 with no history; B/0's lift is 1.2 < 1.5
    assert [e["id"] for e in p["l3"]] == ["B/1"]
    assert p["l3"][0]["lift"] == pytest.approx(1.6)


def test_profile_without_history_is_the_model_alone() -> None:
    index = InterestIndex.from_taxonomy(TAXONOMY, ITEM_CATEGORIES)
    p = profile_from_distribution(PI, np.zeros(6), index)
    assert p["blend"]["model_weight"] == 1.0 and p["l2"] == []
    assert _by_id(p["l1"])["B"]["share"] == pytest.approx(0.7)
    assert l1_target(p, index) == pytest.approx([0.3, 0.7])


def test_unknown_category_is_an_error() -> None:
    with pytest.raises(ValueError, match="'C'"):
        InterestIndex.from_taxonomy(TAXONOMY, [("A",), ("A",), ("A", "B"), ("B",), ("C",), ("B",)])


def test_miscalibration_by_hand() -> None:
    item_l1 = InterestIndex.from_taxonomy(TAXONOMY, ITEM_CATEGORIES).l1
    # list {item 0}: q = (1, 0), q̃ = 0.99 q + 0.01 p = (.995, .005)
    expected = 0.5 * math.log(0.5 / 0.995) + 0.5 * math.log(0.5 / 0.005)
    assert miscalibration([0], item_l1, np.array([0.5, 0.5])) == pytest.approx(expected)
    assert miscalibration([0, 3], item_l1, np.array([0.5, 0.5])) == pytest.approx(0.0)


def test_calibration_trades_a_little_relevance_for_balance() -> None:
    item_l1 = InterestIndex.from_taxonomy(TAXONOMY, ITEM_CATEGORIES).l1
    scores = np.log(np.array([0.30, 0.28, 0.02, 0.2, 0.1, 0.1]))
    exclude = np.array([False, False, True, False, False, False])  # leave out the two-category item
    target = np.array([0.5, 0.5])
    plain = [int(i) for i in np.argsort(-scores)[:2]]  # items 0 and 1: all A
    # greedy step 1: every one-item list has the same KL, so relevance decides (item 0); step 2: item 3
    # brings KL from 1.96 to 0 at a relevance cost of (.28 − .2)/.3, which λ = 0.5 pays.
    calibrated = calibrated_list(scores, exclude, item_l1, target, 2, lam=0.5)
    assert plain == [0, 1] and calibrated == [0, 3]
    assert miscalibration(calibrated, item_l1, target) < miscalibration(plain, item_l1, target)
    assert calibrated_list(scores, exclude, item_l1, target, 2, lam=0.0) == [0, 1]  # λ = 0: plain ranking
    exclude[0] = True
    assert 0 not in calibrated_list(scores, exclude, item_l1, target, 3)
    # Steck's objective also likes one two-category item that alone matches (½, ½): KL 0 beats any relevance
    assert calibrated_list(scores, np.zeros(6, dtype=bool), item_l1, target, 1, lam=0.5) == [2]


def test_discovery_takes_l3_interests_in_turn() -> None:
    index = InterestIndex.from_taxonomy(TAXONOMY, ITEM_CATEGORIES)
    scores = np.array([6.0, 5, 4, 3, 2, 1])
    exclude = np.array([False, True, False, False, False, False])
    assert discovery_items(scores, exclude, index, ["A/0", "B/1"], 3) == [0, 4, 5]
    assert discovery_items(scores, exclude, index, [], 3) == []


# --- a trained run (the session's `trained_run`: 200 users, 60 items, privacy off) -------------


def _train_items(run: RunDir, user: int) -> set[str]:
    from shared.data.source import load_source
    from shared.data.split import split_configured

    config = run.read_config()
    data = load_source(config.data, config.run.seed)
    (split,) = split_configured(data, config.data, config.run.seed, np.array([user]))
    return {data.catalog.item_ids[i] for i in split.train_items}


def test_recommend_never_returns_train_items_and_explains_each(trained_run: RunDir) -> None:
    from client.recommend import format_recommendations

    trained_run.taxonomy_path.unlink(missing_ok=True)  # another test of the session may have built it
    for user in range(0, 200, 40):
        seen = _train_items(trained_run, user)
        for layered in (False, True):
            result = recommend_for_user(trained_run, str(user), n=10, layered=layered)
            items = [r["item"] for r in result["items"]]
            assert len(items) == 10 == len(set(items))
            assert not seen & set(items)
            assert all(r["layer"] in (LAYER_L1, LAYER_L2, LAYER_L3) and r["why"] for r in result["items"])
            assert all(1.0 <= r["predicted_rating"] <= 5.0 for r in result["items"])
    assert trained_run.taxonomy_path.exists()  # built lazily on first use
    text = format_recommendations(result)
    assert result["items"][0]["title"][:20] in text and "L1 core" in text


def test_unknown_user_names_where_ids_come_from(trained_run: RunDir) -> None:
    with pytest.raises(UnknownUserError, match="data.source='synthetic'"):
        recommend_for_user(trained_run, "no-such-user")


def test_layered_lists_are_better_calibrated(trained_run: RunDir) -> None:
    from server.taxonomy import load_taxonomy
    from shared.data.matrices import train_tensors
    from shared.data.source import load_source
    from shared.data.split import split_configured

    model, _, config = trained_run.load_model()
    data = load_source(config.data, config.run.seed)
    users = split_configured(data, config.data, config.run.seed)
    t = train_tensors(users, data.n_items, config.data.positive_threshold)
    with torch.no_grad():
        logits = model.decode(model.encode(t.positives)[0]).double()
    pi = torch.softmax(logits, 1).numpy()
    index = InterestIndex.from_taxonomy(load_taxonomy(trained_run), data.catalog.categories)
    plain_kl, layered_kl, discovered = [], [], 0
    for u, split in enumerate(users):
        profile = profile_from_distribution(pi[u], t.positives[u].numpy(), index)
        exclude = np.zeros(data.n_items, dtype=bool)
        exclude[split.train_items] = True
        target = l1_target(profile, index)
        plain, _ = rank_items(logits[u].numpy(), exclude, profile, index, 10, layered=False)
        layered, disc = rank_items(logits[u].numpy(), exclude, profile, index, 10, layered=True)
        assert not exclude[layered].any() and len(set(layered)) == 10
        discovered += len(disc)
        plain_kl.append(miscalibration(plain, index.l1, target))
        layered_kl.append(miscalibration(layered, index.l1, target))
    assert np.mean(layered_kl) < np.mean(plain_kl)
    assert discovered > 0  # some users get discovery slots
