"""The audit's canary users: their profiles, their secret inclusion coins, and their scores.

Two kinds: `random` canaries rate k catalog items drawn uniformly, scored by the model's
log-likelihood of those items (black-box); `dirac` canaries each rate one item that no one else
holds, added to the public catalog, scored white-box by how far training moved that item's own
parameters along the canary's own gradient (Steinke, Nasr & Jagielski's gradient-canary idea
restricted to the coordinates only this canary's item has).
"""

from __future__ import annotations

import csv
import random
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from shared.config import StrataConfig
from shared.data.csv_writer import write_catalog_csv
from shared.data.matrices import UserTensors, train_tensors
from shared.model import StrataLoss
from shared.data.split import split_configured
from shared.data.types import Catalog, LoadReport, RatingsData
from shared.seeds import CANARIES, make_rng

CANARY_PREFIX = "canary-"
"""User ids of canaries; a data set with users of this form is refused."""
CANARY_ITEM_PREFIX = "canary-item-"
"""Item ids of Dirac canaries' own items."""
CanaryKind = Literal["random", "dirac"]
"""`random`: k catalog items drawn uniformly. `dirac`: one item of its own, added to the catalog
(every canary's item is in the public catalog whether the canary is included or not)."""


@dataclass(frozen=True)
class Canaries:
    """The canary users: original ids, their items (catalog ids), and the secret inclusion coins."""

    user_ids: tuple[str, ...]
    items: tuple[tuple[str, ...], ...]
    """Original catalog item ids of each canary, all rated `rating`."""
    rating: float
    included: np.ndarray
    """bool per canary: True when the canary is in the training data. Secret until training ends."""
    kind: CanaryKind = "random"
    new_items: tuple[str, ...] = ()
    """Items the audit adds to the public catalog (a Dirac canary's own item), in catalog order."""

    @property
    def m(self) -> int:
        """Return the number of canaries."""
        return len(self.user_ids)


# ---------------------------------------------------------------------------------------------


def draw_coins(m: int, rng: random.Random | None = None) -> np.ndarray:
    """Draw `m` fair inclusion coins from OS randomness (`secrets`) unless `rng` is given (tests)."""
    source = rng if rng is not None else secrets.SystemRandom()
    return np.fromiter((source.random() < 0.5 for _ in range(m)), dtype=bool, count=m)


def make_canaries(
    data: RatingsData,
    *,
    m: int,
    k: int,
    seed: int,
    rating: float | None = None,
    coins: random.Random | None = None,
    kind: CanaryKind = "random",
) -> Canaries:
    """Make `m` canary users: each rates `k` distinct catalog items drawn uniformly (`random`), or
    one item that no one else holds (`dirac`, `k` ignored).

    A Dirac canary is close to the worst case DP protects against: its whole gradient pushes the
    score of its own item, which no other user touches, so membership shows in that one score.
    Profiles come from `seed` (reproducible, public to the auditor); inclusion coins from OS
    randomness. Rating defaults to the data's highest rating, so every canary item is a positive.
    """
    if m < 2:
        raise ValueError(f"the audit needs at least 2 canaries; got {m}.")
    if kind not in ("random", "dirac"):
        raise ValueError(f"canary kind must be 'random' or 'dirac', not {kind!r}.")
    if kind == "random" and not 1 <= k <= data.n_items:
        raise ValueError(f"canary items must be in 1..{data.n_items} (the catalog size); got {k}.")
    clash = [u for u in data.user_ids if u.startswith(CANARY_PREFIX)]
    clash += [i for i in data.catalog.item_ids if i.startswith(CANARY_ITEM_PREFIX)]
    if clash:
        raise ValueError(
            f"the data set already has users or items named like canaries (e.g. {clash[0]!r}); is it an audit's output?"
        )
    value = float(rating if rating is not None else (data.ratings.max() if data.n_ratings else 5.0))
    width = len(str(m - 1))
    ids = tuple(f"{CANARY_PREFIX}{j:0{width}d}" for j in range(m))
    if kind == "dirac":
        new_items = tuple(f"{CANARY_ITEM_PREFIX}{j:0{width}d}" for j in range(m))
        return Canaries(
            user_ids=ids,
            items=tuple((item,) for item in new_items),
            rating=value,
            included=draw_coins(m, coins),
            kind=kind,
            new_items=new_items,
        )
    rng = make_rng(seed, CANARIES)
    items = tuple(
        tuple(data.catalog.item_ids[i] for i in np.sort(rng.choice(data.n_items, size=k, replace=False)))
        for _ in range(m)
    )
    return Canaries(user_ids=ids, items=items, rating=value, included=draw_coins(m, coins))


def audit_catalog(catalog: Catalog, canaries: Canaries) -> Catalog:
    """Return the audited run's public catalog: the real one plus the canaries' own items
    (untitled, no category, no year)."""
    if not canaries.new_items:
        return catalog
    n = len(canaries.new_items)
    return Catalog(
        item_ids=catalog.item_ids + canaries.new_items,
        titles=catalog.titles + ("",) * n,
        categories=catalog.categories + ((),) * n,
        years=catalog.years + (None,) * n,
    )


def write_audit_data(data: RatingsData, canaries: Canaries, out_dir: Path) -> tuple[Path, Path]:
    """Write the real ratings plus the *included* canaries, and the catalog (with every canary's own
    item, included or not); return both paths.

    Files are `ratings.csv` (user,item,rating) and `ratings_catalog.csv`
    (item,title,categories,year), the layout `strata data validate` finds on its own.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    ratings_csv, catalog_csv = out_dir / "ratings.csv", out_dir / "ratings_catalog.csv"
    write_catalog_csv(audit_catalog(data.catalog, canaries), catalog_csv)
    with open(ratings_csv, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["user", "item", "rating"])
        for u, i, r in zip(data.users, data.items, data.ratings, strict=True):
            w.writerow([data.user_ids[u], data.catalog.item_ids[i], f"{float(r):g}"])
        for uid, items, keep in zip(canaries.user_ids, canaries.items, canaries.included, strict=True):
            if keep:
                w.writerows([uid, item, f"{canaries.rating:g}"] for item in items)
    return ratings_csv, catalog_csv


def canary_data(canaries: Canaries, catalog: Catalog) -> RatingsData:
    """All canaries (members or not) as a data set over `catalog`'s item index."""
    pos = {item: j for j, item in enumerate(catalog.item_ids)}
    users = np.repeat(np.arange(canaries.m), [len(x) for x in canaries.items])
    items = np.fromiter((pos[i] for x in canaries.items for i in x), dtype=np.int64, count=len(users))
    return RatingsData(
        name="canaries",
        users=users.astype(np.int64),
        items=items,
        ratings=np.full(len(users), canaries.rating, dtype=np.float32),
        user_ids=canaries.user_ids,
        catalog=catalog,
        report=LoadReport(source="canaries", rows_read=len(users)),
    )


def canary_scores(
    model: torch.nn.Module,
    canaries: Canaries,
    config: StrataConfig,
    catalog: Catalog,
    initial: torch.nn.Module | None = None,
) -> np.ndarray:
    """Score every canary (higher: more likely a member) with the released `model`.

    The canary's training items are its split under the run's data settings (the same per-user
    seeded split the pipeline applies), so a member is scored on exactly what it trained on.
    Random canaries: the log-likelihood of those items given them as input. Dirac canaries: the
    alignment score (needs `initial`, the run's public initial model).
    """
    users = split_configured(canary_data(canaries, catalog), config.data, config.run.seed)
    tensors = train_tensors(users, catalog.n_items, config.data.positive_threshold)
    if canaries.kind == "dirac":
        if initial is None:
            raise ValueError("Dirac canaries are scored against the run's initial model: pass `initial`.")
        pos = {item: j for j, item in enumerate(catalog.item_ids)}
        own = [pos[items[0]] for items in canaries.items]
        return alignment_scores(model, initial, tensors, own)
    return _loglik_scores(model, tensors)


@torch.no_grad()
def _loglik_scores(model: torch.nn.Module, tensors: UserTensors) -> np.ndarray:
    """Σ log softmax(logits)_i over each canary's training items, given those items as input."""
    model.eval()
    out = model(*tensors.as_tuple())
    loglik = F.log_softmax(out.logits, dim=1) * tensors.mask
    return loglik.sum(1).double().numpy()


def _own_slice(param: torch.Tensor, n_items: int, item: int) -> torch.Tensor | None:
    """Return the coordinates of `param` that belong to `item` alone (a row or column of an item layer)."""
    if param.ndim >= 1 and param.shape[0] == n_items:
        return param[item].reshape(-1)
    if param.ndim == 2 and param.shape[1] == n_items:
        return param[:, item].reshape(-1)
    return None


def alignment_scores(
    model: torch.nn.Module, initial: torch.nn.Module, tensors: UserTensors, own_items: list[int]
) -> np.ndarray:
    """⟨θ_final − θ_initial, −∇L_c(θ_initial) / ‖·‖⟩ over the parameters of canary c's own item.

    A member's clipped gradients pushed those coordinates along its own gradient; a non-member's
    item moved only with the noise and with other users' (common) pushes against it as a negative.
    """
    loss_fn = StrataLoss(reduction="sum")
    initial.eval()
    final = dict(model.named_parameters())
    n_items = tensors.positives.shape[1]
    scores = np.empty(len(own_items), dtype=np.float64)
    for row, item in enumerate(own_items):
        initial.zero_grad()
        batch = tuple(t[row : row + 1] for t in tensors.as_tuple())
        loss_fn(initial(*batch), *batch).backward()
        grads, moves = [], []
        for name, param in initial.named_parameters():
            grad = None if param.grad is None else _own_slice(param.grad, n_items, item)
            move = _own_slice(final[name].detach() - param.detach(), n_items, item)
            if grad is not None and move is not None:
                grads.append(grad)
                moves.append(move)
        direction = -torch.cat(grads)
        scores[row] = float(direction @ torch.cat(moves) / direction.norm().clamp(min=1e-12))
    initial.zero_grad()
    return scores
