"""The content score (`model.content-weight`) and the neighbour correction of ratings
(`model.content-ratings`): fixed functions of the user's own history and the public item features,
with no parameter to train or send."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from client.profiles import predicted_distribution
from shared.config import ModelConfig
from shared.data.matrices import train_tensors
from shared.data.split import split_users
from shared.data.synthetic import make_synthetic
from shared.features import catalog_features
from shared.model import CONTENT_RATINGS_MAX_ITEMS, StrataModel, build_model


def _setup(weight: float) -> tuple[StrataModel, torch.Tensor, torch.Tensor]:
    data, _ = make_synthetic(n_users=20, n_items=30, n_categories=3, subs_per_category=2, seed=2)
    feats = torch.from_numpy(catalog_features(data.catalog))
    cfg = ModelConfig(hidden_dim=8, latent_dim=4, rating_dim=2, dropout=0.0, content_weight=weight)
    t = train_tensors(split_users(data, seed=2), data.n_items, 4.0)
    return build_model(data.n_items, cfg, feats, 0), t.positives, feats


def test_the_content_score_is_the_history_similarity_without_the_item_itself() -> None:
    model, positives, feats = _setup(1.5)
    basis = F.normalize(feats - feats.mean(0), dim=1)
    scores = model.content_scores(positives)
    for u in range(5):
        items = positives[u].nonzero().flatten()
        for i in range(positives.shape[1]):
            others = items[items != i]
            expected = 1.5 * float((basis[others] @ basis[i]).sum()) / float(len(items)) ** 0.5
            assert float(scores[u, i]) == pytest.approx(expected, abs=1e-5)
    assert not model.content_scores(torch.zeros_like(positives)).any()  # no history, no score


def test_the_content_score_adds_no_parameter_and_shifts_the_logits_by_itself() -> None:
    with_content, positives, _ = _setup(2.0)
    without, _, _ = _setup(0.0)
    shapes = {n: p.shape for n, p in without.named_parameters()}
    assert {n: p.shape for n, p in with_content.named_parameters()} == shapes
    with_content.eval()
    without.eval()
    ratings = positives * 4.0
    shift = with_content(positives, ratings, positives).logits - without(positives, ratings, positives).logits
    assert torch.allclose(shift, with_content.content_scores(positives), atol=1e-5)
    assert shift.abs().max() > 0.1


@pytest.mark.parametrize("weight", [-0.5, float("inf"), float("nan")])
def test_a_content_weight_that_is_not_a_finite_non_negative_number_is_refused(weight: float) -> None:
    with pytest.raises(ValueError, match="model.content-weight"):
        ModelConfig(content_weight=weight)


def test_a_users_profile_distribution_is_the_softmax_of_the_scores_the_model_ranks_by() -> None:
    model, positives, _ = _setup(2.0)
    model.eval()
    row = positives[:1]
    with torch.no_grad():
        logits = model(row, row * 4.0, row).logits
    assert predicted_distribution(model, row[0]) == pytest.approx(torch.softmax(logits.double(), 1)[0].numpy())


def test_the_neighbour_correction_adds_the_users_own_residuals_on_similar_items_in_eval_mode_only() -> None:
    data, _ = make_synthetic(n_users=12, n_items=30, n_categories=3, subs_per_category=2, seed=4)
    feats = torch.from_numpy(catalog_features(data.catalog))
    t = train_tensors(split_users(data, seed=4), data.n_items, 4.0)
    plain_cfg = ModelConfig(hidden_dim=8, latent_dim=4, rating_dim=2, dropout=0.0)
    plain = build_model(data.n_items, plain_cfg, feats, 0)
    corrected = build_model(data.n_items, dataclasses.replace(plain_cfg, content_ratings=True), feats, 0)
    kernel = corrected.get_buffer("rating_kernel")
    assert kernel.diagonal().abs().max() == 0  # a rating never corrects itself
    basis = F.normalize(feats - feats.mean(0), dim=1)
    with torch.no_grad():
        torch.manual_seed(0)
        train_plain, train_corrected = plain(*t.as_tuple()).rating, corrected(*t.as_tuple()).rating
        assert torch.equal(train_plain, train_corrected)  # training is unchanged
        plain.eval()
        corrected.eval()
        base, out = plain(*t.as_tuple()).rating, corrected(*t.as_tuple()).rating
    ratings, mask = t.ratings, t.mask
    for u in range(4):
        known = mask[u].nonzero().flatten()
        for i in range(0, data.n_items, 7):
            others = known[known != i]
            k = (basis[others] @ basis[i]).clamp(min=0) ** 2
            expected = base[u, i] + (k * (ratings[u, others] - base[u, others])).sum() / (k.sum() + 1.0)
            assert float(out[u, i]) == pytest.approx(float(expected), abs=1e-4)
    empty = torch.zeros_like(mask)
    with torch.no_grad():
        assert torch.equal(corrected(t.positives, ratings, empty).rating, plain(t.positives, ratings, empty).rating)


def test_the_neighbour_correction_refuses_a_catalog_whose_kernel_would_not_fit() -> None:
    n_items = CONTENT_RATINGS_MAX_ITEMS + 1
    cfg = ModelConfig(hidden_dim=2, latent_dim=2, content_ratings=True)
    with pytest.raises(ValueError, match="content-ratings keeps an items × items kernel"):
        build_model(n_items, cfg, torch.zeros(n_items, 2), 0)
