"""Dense per-user tensors the model trains and evaluates on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .split import UserRatings


@dataclass(frozen=True)
class UserTensors:
    """Row u describes the u-th user of a client: train positives, train ratings and their mask."""

    positives: torch.Tensor
    """float32 B×I multi-hot of train ratings ≥ threshold (the VAE's input and target)."""
    ratings: torch.Tensor
    """float32 B×I train rating values, 0 where unrated."""
    mask: torch.Tensor
    """float32 B×I, 1 where the user rated the item in train."""

    @property
    def n_users(self) -> int:
        """Return the number of users (rows)."""
        return int(self.positives.shape[0])

    @property
    def n_ratings(self) -> int:
        """Return the number of train ratings over all rows."""
        return int(self.mask.sum().item())

    def as_tuple(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return `(positives, ratings, mask)`."""
        return self.positives, self.ratings, self.mask


def train_tensors(users: list[UserRatings], n_items: int, threshold: float) -> UserTensors:
    """Dense train tensors for a list of users."""
    b = len(users)
    pos = np.zeros((b, n_items), dtype=np.float32)
    rat = np.zeros((b, n_items), dtype=np.float32)
    msk = np.zeros((b, n_items), dtype=np.float32)
    for row, u in enumerate(users):
        rat[row, u.train_items] = u.train_ratings
        msk[row, u.train_items] = 1.0
        pos[row, u.train_items[u.train_ratings >= threshold]] = 1.0
    return UserTensors(torch.from_numpy(pos), torch.from_numpy(rat), torch.from_numpy(msk))
