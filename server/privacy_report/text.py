"""The privacy report's sentences: the headline, adjacency, trust model, releases, what the guarantee
does not cover, number formats."""

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


def adjacency(config: StrataConfig, delta: float) -> str:
    """State the neighbouring relation the guarantee is for, and where δ comes from."""
    p = config.privacy
    n = f"N = {p.population}" if p.population > 0 else "N"
    return (
        "Adjacency: add or remove one user. Two data sets are neighbours when one holds every rating of one user "
        "and the other none of them; ε and δ bound how much any output can change between them. Replacing one "
        "user by another is two such steps (about 2ε). Mechanism parameters (sample rate, steps, noise) come from "
        f"the configuration and the public population {n} only, never from a device's data; "
        f"δ = {fmt_delta(delta)}" + (" = 1/(100·N)." if p.delta == 0 else " (configured).") + " The catalog "
        "(item ids, titles, categories and their embeddings) is public and not a user's data."
    )


def trust_model(config: StrataConfig, has_central: bool, has_clients: bool) -> str:
    """Say who is trusted with what under the run's privacy mode and topology."""
    p, fed = config.privacy, config.federation
    if p.mode == "off":
        return "Trust model: none claimed (privacy.mode = 'off')."
    if has_central and not has_clients and not p.central_dp:
        return "Trust model: a central reference run; one trainer saw every user's raw data."
    hub = (
        " In the hub topology each hub holds its users' raw data and is trusted by them; the guarantee is "
        "against everyone outside the hub."
        if fed.topology == "hub"
        else " In the device topology a device is one user."
    )
    if p.mode == "local":
        return (
            "Trust model: nobody outside the device. Every value a device sends is the output of a mechanism run "
            "on the device (DP-SGD, or a Gaussian release noised there) and recorded in its own ledger first; the "
            "server, other devices and anyone who sees the model, the metrics or the reports learn at most ε about "
            "a user." + hub
        )
    local = (
        " Each device also runs local DP-SGD, so its users keep their local ε against the server itself."
        if p.local_dp
        else ""
    )
    sampling = (
        f" Each device includes each of its users in a round with probability {p.user_sample_rate:g} by a coin of "
        "its own (secret from the server); the server's ledger claims that rate as q, because every user's "
        "inclusion is then independent of every other's."
        if p.user_sample_rate < 1
        else (" A hub's users are in a round together, so its ledger claims no sampling (q = 1)."
              if fed.topology == "hub" else "")
    )
    return (
        "Trust model: the aggregator. Devices clip each user's update; the server sees the exact sums of clipped "
        "updates (and, under `central`, the exact evaluation and release sums) of the devices it sampled before "
        "it adds the noise. The central ε protects users against everyone who sees the model, the releases and "
        "the logs, not against the server." + sampling + local + hub
    )


def releases(config: StrataConfig, rounds_by_kind: dict[str, list[int]]) -> list[str]:
    """Name every kind of release that went into the guarantee (from the ledgers of the current run)."""
    p = config.privacy
    names = {
        "dp-sgd": f"DP-SGD training (σ per client, q and steps from the public plan, clip C = {p.max_grad_norm:g})",
        "dp-fedavg": f"DP-FedAvg aggregation on the server (z, Poisson sampling, update clip S = {p.update_clip:g})",
        "popularity": f"the popularity prior (Gaussian sum, bound 1, z = {p.release_noise_multiplier:g})",
        "evaluation": (
            "the federated evaluation (Gaussian sum of bounded per-user metric vectors, bound √6, "
            f"z = {p.eval_noise_multiplier:g})"
        ),
        "census": f"the interest census (Gaussian sum, bound √3, z = {p.release_noise_multiplier:g})",
    }
    out = []
    for kind in [*names, *sorted(set(rounds_by_kind) - set(names))]:
        label = names.get(kind, kind)
        rounds = sorted(set(rounds_by_kind.get(kind, [])))
        if rounds:
            where = f"round {rounds[0]}" if len(rounds) == 1 else f"{len(rounds)} rounds ({rounds[0]}–{rounds[-1]})"
            out.append(f"{label}: {where}.")
    return out


def limits(config: StrataConfig, has_central: bool, has_clients: bool, *, fedavg: bool = False) -> list[str]:
    """List what the guarantee does not cover, one sentence or paragraph each."""
    p = config.privacy
    out = [
        ("Timing and participation: when a device answers, how long it takes, the size of its messages, and which "
        "devices took part, refused or failed are visible to the server and are not covered."),
        ("Figures labelled 'simulation oracle — not a release' (the 'oracle' entries of metrics.jsonl, the "
        "summary's final_oracle, the benchmarks) are computed by the simulation runner from every user's held-out "
        "data, exactly: they are research instrumentation, not covered. A deployment has no oracle."),
        ("DP noise and Poisson sampling come from generators seeded from the operating system's secret randomness "
        "on every call (not from run.seed), so they cannot be regenerated from the run's files; they are not "
        "cryptographically secure generators, and Opacus' secure_mode (the defence against floating-point attacks "
        "on the Gaussian sampler) is off."),
        ("Runs on the same users count only when they share this run's ledgers (tuning by several runs spends "
        "budget too); runs elsewhere add to ε."),
    ]
    if p.mode == "off":
        out.insert(0, "privacy.mode is 'off': the run has no differential-privacy guarantee at all (ε = ∞).")
    if has_central and not has_clients and not fedavg:
        out.insert(
            0,
            "This is a central reference run: one trainer saw every user's raw data; its DP-SGD ledger "
            "bounds only what the released model reveals.",
        )
    return out
