"""The privacy report's sentences: the headline, what the guarantee does not cover, number formats."""

from __future__ import annotations

import math

from shared.config import StrataConfig

from .read import LAYOUT

INF = "inf"
"""How an infinite ε is written in the JSON (strict JSON has no infinity; float("inf") reads it)."""


def fmt_eps(eps: float | str) -> str:
    """ε with three decimals; ∞ for `INF` or an infinite float."""
    return "∞" if eps == INF or (isinstance(eps, float) and math.isinf(eps)) else f"{float(eps):.3f}"


def fmt_delta(delta: float) -> str:
    """δ with three significant digits."""
    return f"{delta:.3g}"


def plural(n: int, noun: str) -> str:
    """`n noun`, with an s unless n is 1."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def headline(
    config: StrataConfig,
    eps: float | str,
    eps_rdp: float | str,
    delta: float,
    holder: str | None,
    tied: int,
    n_holders: int,
    rounds: int,
    n_runs: int,
    *,
    fedavg: bool = False,
) -> str:
    """State the guarantee every user holds in one paragraph: (ε, δ), the unit, and whose ledger gives ε."""
    if config.privacy.mode == "off":
        return (
            "No differential-privacy guarantee: privacy.mode is 'off', so users' data was used without DP noise "
            "and no user holds any (ε, δ) guarantee (ε = ∞)."
        )
    if eps == INF:
        return (
            "No guarantee can be stated from this run directory (ε = ∞): clients trained under DP, but their "
            f"ledgers are not in {LAYOUT.ledger_dir}/. Copy the devices' ledgers there and re-run the report."
        )
    if not holder:
        return (
            f"Every user holds (ε = {fmt_eps(eps)}, δ = {fmt_delta(delta)}) user-level DP: the ledgers record no "
            "DP release of users' data."
        )
    if holder == "central" and fedavg:
        who = "the server's DP-FedAvg ledger (clients ran no local DP)"
    elif holder == "central":
        who = "the central trainer's ledger"
    else:
        at = f"{tied} clients tie" if tied > 1 else f"{holder}"
        if tied == n_holders and tied > 1:
            at = f"all {tied} tie"
        who = f"the largest over the ledgers of {plural(n_holders, 'client')} ({at})"
        if fedavg:
            who += ", each composed with the server's DP-FedAvg ledger"
    return (
        f"Every user holds user-level (ε = {fmt_eps(eps)}, δ = {fmt_delta(delta)}) differential privacy: the privacy "
        f"unit is one user (all of their ratings); ε is {who}, computed with the PLD accountant over "
        f"{plural(rounds, 'round')} and {plural(n_runs, 'run')} (RDP cross-check: ε = {fmt_eps(eps_rdp)})."
    )


def limits(config: StrataConfig, has_central: bool, has_clients: bool, *, fedavg: bool = False) -> list[str]:
    """List what the guarantee does not cover, one sentence or paragraph each."""
    p = config.privacy
    out = [
        ("The guarantee is user-level: it bounds what anyone can learn about whether one user (all of their "
        "ratings together) took part. A single rating is covered by the same ε; a group of k users (a household "
        "sharing accounts) only by roughly k·ε."),
        ("The public catalog (item ids, titles, categories, catalog features and any text embedding of them) is "
        "treated as public and has no guarantee."),
        ("Only the DP-SGD releases recorded in the ledgers are covered. Federated-evaluation replies (sums of NDCG, "
        "recall, squared and absolute errors, counts of users and ratings), training-loss and user/example counts "
        "in training replies are released without noise and are not covered."),
        (
            "Central DP (DP-FedAvg) trusts the server: it sees every sampled client's sum of clipped updates before "
            "adding noise, so the central ε protects users against whoever sees the model, not against the server. "
            "Its Poisson sampling and noise come from OS-seeded generators. Amplification by the server's sampling is "
            "claimed only in the device topology (one user per client); in a hub the ledger records sample rate 1."
            if fedavg
            else "Central DP (server-side noise, DP-FedAvg) was not used in this run: the guarantee comes from each "
            "client's local DP-SGD alone; the server's client sampling is fixed-size and no amplification by it is "
            "claimed."
        ),
        ("The sample rate q = 1/⌈n/batch-size⌉ in each ledger entry reveals roughly how many users a client holds; "
        "client sizes are not protected."),
        ("DP noise and Poisson sampling come from torch Mersenne-Twister generators seeded from the operating "
        "system's secret randomness on every call (not from run.seed), so they cannot be regenerated from the run's "
        "files; this is not a cryptographically secure generator, and Opacus' secure_mode (the defence against "
        "floating-point attacks on the Gaussian sampler) is off."),
        "Side channels are not covered: timing, message sizes, which clients answered, refusals and failures.",
        ("Tuning hyper-parameters on the same users (several runs, keeping the best) spends budget too; it is only "
        "counted when those runs share this run's ledger directory. Runs elsewhere on the same users add to ε."),
        ("In the hub topology the hub itself sees its users' raw data; DP protects users against everyone who sees "
        "the hub's updates or the model, not against the hub."),
    ]
    if p.mode == "off":
        out.insert(0, "privacy.mode is 'off': the run has no differential-privacy guarantee at all (ε = ∞).")
    if has_central and not has_clients:
        out.insert(
            0,
            "This is a central reference run: one trainer saw every user's raw data; its DP-SGD ledger "
            "bounds only what the released model reveals.",
        )
    return out
