"""One seed function for every reproducible random stream (LensKit's `make_seed(*keys)` idea).

`make_seed(root, stream, *keys)` hashes its keys (SHA-256 of their text joined by a unit
separator) into a 63-bit seed: the same keys give the same seed on every machine and in
every process (no `hash()`), different keys independent-looking ones. The first key after
the root is a named stream below, so no two uses can collide by accident.

Only public randomness comes from here (splits, partitions, initialisation, dropout,
clustering). DP noise and DP sampling never do: they are drawn from OS-seeded generators,
because anyone knows the run's seed.
"""

from __future__ import annotations

import hashlib

import numpy as np

SPLIT = "split"
"""A user's train/test shuffle: keys (root, SPLIT, user id)."""
PARTITION = "partition"
"""A user's hub: keys (root, PARTITION, user id); a category's non-IID hub weights:
(root, PARTITION, "category", name)."""
LOCAL_TRAINING = "local-training"
"""A client's dropout and batch order in one round: keys (root, LOCAL_TRAINING, client id, round[, user])."""
SAMPLING = "sampling"
"""The server's fixed-size client sampling without central DP: keys (root, SAMPLING)."""
CLUSTERING = "clustering"
"""k-means of one category's item vectors: keys (root, CLUSTERING, category)."""
CANARIES = "canaries"
"""The audit's canary profiles: keys (root, CANARIES)."""
TRANSPORT = "transport"
"""A reply's int8 rounding coins: keys (root, TRANSPORT, client id, round). Applied after clipping
and noise, with a norm bound re-imposed under central DP: the coins need not be secret."""


def make_seed(*keys: object) -> int:
    """Return a stable 63-bit seed from the root seed and identifiers."""
    digest = hashlib.sha256("\x1f".join(map(str, keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_rng(*keys: object) -> np.random.Generator:
    """Return a numpy generator seeded by `make_seed(*keys)`."""
    return np.random.default_rng(make_seed(*keys))
