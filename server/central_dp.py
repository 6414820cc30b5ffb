"""User-level DP-FedAvg on the server (McMahan et al. 2018, "Learning Differentially Private
Recurrent Language Models").

Each round the server includes every client independently with probability q (Poisson
sampling, so the subsampled-Gaussian accounting applies), every client sends the sum of its
users' updates each clipped to L2 norm S, and the server releases

    (Σ clipped per-user updates + N(0, z²S² I)) / (q · N_users)

— the *public* expected count, never the private number of users that answered. Every round
releases, including one in which nobody was sampled (noise only), and every round is one
`dp-fedavg` entry in the server's append-only ledger. Sampling and noise come from
generators seeded by the OS: whoever knows the run's (public) seed must not be able to
replay them, or neither amplification nor noise would hold.

Amplification needs every user's inclusion to be independent of every other user's. Where one
client is one user (`device`) the server's coin is the user's. In a hub a user is in the round
exactly when the hub's other users are, so the server's choice of hubs gives no amplification;
there each hub flips its own secret coin per user (`privacy.user-sample-rate`, `client/trainer.py`):
given the server's (data-independent) choice of hubs, a user is included with probability at most
q_user, independently of everyone else, so each round is dominated by the q_user-subsampled Gaussian
and the ledger records q = q_user (1, a plain Gaussian per round, when hubs include everyone).
The divisor is the public expected count fraction-train · q_user · N either way.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections import OrderedDict
from pathlib import Path

import torch

from shared.config import StrataConfig
from shared.privacy.accounting import (
    calibrate_noise_multiplier,
    epsilon_of,
)
from shared.privacy.ledger import SERVER, Ledger, LedgerEntry
from shared.privacy.release import planned_releases
from shared.privacy.signing import SigningKey

log = logging.getLogger(__name__)

Weights = OrderedDict[str, torch.Tensor]

def accounted_sample_rate(config: StrataConfig) -> float:
    """Return the q the ledger may claim per round (see the module docstring): the server's rate times
    the client's per-user rate where a client is one user (`device`), the per-user rate alone in a hub."""
    fed, user_rate = config.federation, config.privacy.user_sample_rate
    return fed.fraction_train * user_rate if fed.topology == "device" else user_rate


def expected_count(config: StrataConfig) -> float:
    """Return the public expected number of users in a round, q_server · q_user · N (the divisor)."""
    p = config.privacy
    return config.federation.fraction_train * p.user_sample_rate * (p.expected_users or p.population)


class CentralDP:
    """The server's DP-FedAvg mechanism: secret Poisson sampling, Gaussian noise on the sum,
    division by the public expected count, and the ledger of every release."""

    def __init__(
        self,
        *,
        clip: float,
        noise_multiplier: float,
        fraction: float,
        accounted_rate: float,
        expected_users: float,
        user_rate: float = 1.0,
        max_users_per_client: int = 1,
        ledger: Ledger,
        delta: float,
        accountant: str = "pld",
        sampler: random.Random | None = None,
    ) -> None:
        if clip <= 0:
            raise ValueError("The central clipping norm S (privacy.update-clip) should be a positive value.")
        if noise_multiplier <= 0:
            raise ValueError("The central noise multiplier z should be a positive value.")
        if not 0 < fraction <= 1 or not 0 < user_rate <= 1 or not fraction * user_rate <= accounted_rate <= 1:
            raise ValueError(
                f"The sampling rates (server {fraction}, per user {user_rate}) must be in (0, 1] and the accounted "
                f"rate {accounted_rate} in [their product, 1]."
            )
        if expected_users <= 0:
            raise ValueError(f"The expected count q · N_users must be positive, got {expected_users}.")
        self.clip = clip
        self.noise_multiplier = noise_multiplier
        self.fraction = fraction
        self.user_rate = user_rate
        """Each sampled client's per-user inclusion probability (the coins are the client's)."""
        self.accounted_rate = accounted_rate
        self.expected_users = expected_users
        self.max_users_per_client = max_users_per_client
        """Public bound on the users behind one reply: a reply's norm is at most this × S."""
        self.ledger = ledger
        self.delta = delta
        self.accountant = accountant
        self._sampler = sampler if sampler is not None else random.SystemRandom()

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise on the *averaged* update: z · S / (q · N_users)."""
        return self.noise_multiplier * self.clip / self.expected_users

    def sample(self, nodes: list[int]) -> list[int]:
        """Every node independently with probability q (possibly none)."""
        return [n for n in nodes if self._sampler.random() < self.fraction]

    def noisy_mean(self, clipped_sum: Weights) -> Weights:
        """(sum + N(0, z²S²) per coordinate) / expected count, with noise from an OS-seeded generator."""
        gen = torch.Generator().manual_seed(secrets.randbits(63))
        std = self.noise_multiplier * self.clip
        out: Weights = OrderedDict()
        for k, v in clipped_sum.items():
            noise = torch.normal(0.0, std, size=v.shape, generator=gen, dtype=torch.float64)
            out[k] = ((v.double() + noise) / self.expected_users).to(v.dtype)
        return out

    def entry(self, *, server_round: int, run_id: str) -> LedgerEntry:
        """Return the ledger entry of one round's release."""
        return LedgerEntry.dp_fedavg(
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.accounted_rate,
            clip=self.clip,
            run_id=run_id,
            round=server_round,
        )

    def record(self, *, server_round: int, run_id: str) -> LedgerEntry:
        """Append this round's release to the ledger (durably, before the update is applied)."""
        e = self.entry(server_round=server_round, run_id=run_id)
        self.ledger.append(e)
        return e

    def epsilon(self) -> float:
        """ε(δ) of every release in the ledger (earlier runs included)."""
        return epsilon_of(self.ledger.entries, self.delta, self.accountant) if len(self.ledger) else 0.0

    def epsilon_after_next(self, *, server_round: int, run_id: str) -> float:
        """ε(δ) if one more round were released."""
        planned = self.entry(server_round=server_round, run_id=run_id)
        return epsilon_of([*self.ledger.entries, planned], self.delta, self.accountant)


def build_central_dp(
    config: StrataConfig, *, run_id: str, ledger_path: Path, signer: SigningKey | None = None
) -> CentralDP:
    """Build the server's mechanism for `config`: z given or calibrated over the planned rounds
    (entries of earlier runs in the ledger and this run's releases count), expected count q · N
    with N the configured public population (never a count read from data)."""
    p, fed = config.privacy, config.federation
    ledger = Ledger.open(ledger_path, signer)
    prior = [e for e in ledger.entries if e.run_id != run_id]
    planned = planned_releases(config, run_id=run_id, holder=SERVER, server=True)
    if prior:
        log.warning(
            "%s already holds %d release(s) of earlier runs: the central ε composes with them "
            "(the same users' data is used again). Use a new --out for an untouched budget.",
            ledger_path,
            len(prior),
        )
    delta = p.resolved_delta
    rate = accounted_sample_rate(config)
    if p.central_target_epsilon > 0:
        z = calibrate_noise_multiplier(
            target_epsilon=p.central_target_epsilon,
            delta=delta,
            population=p.population,
            sample_rate=rate,
            steps=fed.rounds,
            accountant=p.accountant,
            prior=[*prior, *planned],
        )
    else:
        z = p.central_noise_multiplier
    central = CentralDP(
        clip=p.update_clip,
        noise_multiplier=z,
        fraction=fed.fraction_train,
        user_rate=p.user_sample_rate,
        accounted_rate=rate,
        expected_users=expected_count(config),
        max_users_per_client=1 if fed.topology == "device" else p.population,
        ledger=ledger,
        delta=delta,
        accountant=p.accountant,
    )
    log.info(
        "central DP-FedAvg: q=%.4f, per-user q=%.4f (accounted %.4f), S=%g, z=%.4f, expected count %.1f, "
        "δ=%.3g; noise std on the mean %.3g",
        fed.fraction_train,
        p.user_sample_rate,
        rate,
        p.update_clip,
        z,
        central.expected_users,
        delta,
        central.noise_std,
    )
    if fed.topology != "device" and p.user_sample_rate == 1.0 and fed.fraction_train < 1.0:
        log.warning(
            "central DP in the %s topology: a user's inclusion follows their hub's, so hub sampling gives no "
            "user-level amplification; the ledger records sample rate 1 (privacy.user-sample-rate < 1 lets "
            "each hub sample its users independently).",
            fed.topology,
        )
    return central
