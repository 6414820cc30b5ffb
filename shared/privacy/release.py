"""One-shot Gaussian releases of per-user statistics (DESIGN.md §4: "DP release of anything else").

Each user contributes one vector scaled to L2 norm at most `bound`; the holders' sum gets
N(0, z²·bound²) per coordinate. Adding or removing one user moves the sum by at most
`bound` (the add/remove adjacency the DP-SGD accounting uses too), so the release is the
Gaussian mechanism with noise multiplier z, recorded as one `gaussian-sum` ledger entry
(q = 1, one step).

Used for the popularity prior that initialises the decoder's item bias, for the interest
census and for federated evaluation (`shared.metrics.user_metric_rows`). Noise comes from an
OS-seeded generator: a public seed must not replay it.
"""

from __future__ import annotations

import secrets

import numpy as np

from ..config import PrivacyConfig, StrataConfig
from ..metrics import EVAL_BOUND
from .ledger import LedgerEntry

RELEASE = "gaussian-sum"
POPULARITY = "popularity"
CENSUS = "census"
EVALUATION = "evaluation"
KINDS = (POPULARITY, CENSUS, EVALUATION)
CENSUS_TOP_K = 3
"""A user holds (at most) their top-3 fine interests in the census: bound √3."""


def bounded_rows(rows: np.ndarray, bound: float) -> np.ndarray:
    """Scale each row down to L2 norm at most `bound` (rows already within it are unchanged)."""
    if bound <= 0:
        raise ValueError(f"the L2 bound of a release must be positive, got {bound}.")
    rows = np.asarray(rows, dtype=np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    scale = np.minimum(1.0, bound / np.maximum(norms, 1e-300))
    scaled: np.ndarray = rows * scale
    return scaled


def gaussian_noise(size: int, std: float) -> np.ndarray:
    """Draw N(0, std²) per coordinate from a generator seeded by the OS."""
    return np.random.default_rng(secrets.randbits(128)).normal(0.0, std, size=size)


def release_entry(*, noise_multiplier: float, bound: float, run_id: str, server_round: int, holder: str) -> LedgerEntry:
    """Return the ledger entry of one release by `holder` (a client id, "server" or "central")."""
    return LedgerEntry.gaussian_sum(
        noise_multiplier=noise_multiplier, bound=bound, run_id=run_id, round=server_round, holder=holder
    )


def popularity_rows(positives: np.ndarray) -> np.ndarray:
    """Return per-user popularity contributions: the binary positives row scaled to unit L2 norm
    (a user with n positives adds 1/√n to each of them)."""
    return bounded_rows(positives, 1.0) if len(positives) else np.zeros_like(positives, dtype=np.float64)


def census_rows(shares: np.ndarray, k: int = CENSUS_TOP_K) -> np.ndarray:
    """Return per-user census contributions: 1 for each of the user's top-k interests with a
    positive share, 0 elsewhere (L2 norm ≤ √k)."""
    shares = np.asarray(shares, dtype=np.float64)
    out = np.zeros_like(shares)
    if shares.size == 0:
        return out
    top = np.argsort(-shares, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(shares))[:, None]
    out[rows, top] = (shares[rows, top] > 0).astype(np.float64)
    return out


def bias_from_popularity(noisy_sum: np.ndarray, smoothing: float = 1.0) -> np.ndarray:
    """Compute the decoder item bias from a (noisy) popularity sum: log(max(c, 0) + smoothing), centred.

    Post-processing of the DP release: costs no privacy.
    """
    b = np.log(np.maximum(noisy_sum, 0.0) + smoothing)
    centred: np.ndarray = (b - b.mean()).astype(np.float32)
    return centred


def noise_holder(mode: str) -> str:
    """Return who adds a release's noise under privacy `mode`: each client over its own users when
    clients do not trust the server (`local`, `local+central`), the server over the sum under
    `central`, nobody with privacy `off` (the exact sum; no guarantee is claimed)."""
    if mode in ("local", "local+central"):
        return "client"
    if mode == "central":
        return "server"
    return ""


def release_bound(kind: str) -> float:
    """Return the L2 bound of one user's contribution to a release of `kind`."""
    if kind not in KINDS:
        raise ValueError(f"unknown release {kind!r}; known: {', '.join(KINDS)}.")
    return {POPULARITY: 1.0, CENSUS: float(np.sqrt(CENSUS_TOP_K)), EVALUATION: EVAL_BOUND}[kind]


def release_noise_multiplier(kind: str, privacy: PrivacyConfig) -> float:
    """Return z of a release of `kind`: `eval-noise-multiplier` for evaluation, else `release-noise-multiplier`."""
    return privacy.eval_noise_multiplier if kind == EVALUATION else privacy.release_noise_multiplier


def release_round(kind: str, config: StrataConfig) -> int:
    """Return the round a one-shot release is recorded under: 0 before training, rounds + 1 after it.

    An evaluation release is recorded under the round it evaluates (`evaluation_rounds`)."""
    if kind == EVALUATION:
        raise ValueError("an evaluation release is recorded under the round it evaluates (evaluation_rounds).")
    return 0 if kind == POPULARITY else config.federation.rounds + 1


def evaluation_rounds(config: StrataConfig) -> list[int]:
    """Return the rounds after which the clients release a DP evaluation (`federation.eval-release`)."""
    fed = config.federation
    if fed.eval_release == "none":
        return []
    if fed.eval_release == "final":
        return [fed.rounds]
    return [r for r in range(1, fed.rounds + 1) if r % fed.eval_every == 0 or r == fed.rounds]


def release_kind(server_round: int, config: StrataConfig) -> str | None:
    """Return which release a `gaussian-sum` entry of `server_round` is under `config` (None: none planned)."""
    kinds = {release_round(k, config): k for k in (POPULARITY, CENSUS)}
    kinds.update(dict.fromkeys(evaluation_rounds(config), EVALUATION))
    return kinds.get(server_round)


def planned_releases(config: StrataConfig, *, run_id: str, holder: str, server: bool) -> list[LedgerEntry]:
    """Return the release entries `holder` (a client, or the server when `server`) may write in this
    run (popularity prior, evaluations, census): counted when noise is calibrated to a target ε,
    so that the target holds with them included (a client asked to evaluate in every round that
    releases one: the worst case under any evaluation sampling)."""
    who = noise_holder(config.privacy.mode)
    if not who or (who == "server") != server:
        return []
    rounds: list[tuple[str, int]] = []
    if config.model.popularity_prior:
        rounds.append((POPULARITY, release_round(POPULARITY, config)))
    rounds += [(EVALUATION, r) for r in evaluation_rounds(config)]
    if config.federation.census:
        rounds.append((CENSUS, release_round(CENSUS, config)))
    return [
        release_entry(
            noise_multiplier=release_noise_multiplier(k, config.privacy), bound=release_bound(k), run_id=run_id,
            server_round=r, holder=holder,
        )
        for k, r in rounds
    ]
