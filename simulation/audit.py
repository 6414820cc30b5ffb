"""One-run empirical privacy audit with canary users (Steinke, Nasr & Jagielski 2023).

m synthetic canary users are added to the configured data set, each *independently with
probability ½* (a secret coin from OS randomness); the model is trained once through the real
pipeline; every canary is scored by the final model's log-likelihood of its own training items;
the auditor guesses "member" for the k highest scores and "non-member" for the k lowest (and
abstains on the rest). If the training is (ε, δ)-DP with respect to one user, the number of
correct guesses among r = 2k is bounded in distribution by Binomial(r, e^ε / (1 + e^ε)) plus a
δ term (their Theorem 5.2 / Appendix D); the largest ε that this rejects at the given confidence
is an ε lower bound. It must stay below the reported ε; with DP off it measures the audit's power.

Validity of the reported bound: the coins are drawn after the canary profiles and never shown to
the guesser, and the guess rule depends only on the released model and the public canary set.
By default k is chosen from a small grid *after* looking at the scores, so each grid point is
tested at level (1 − confidence) / len(grid) (Bonferroni): the reported maximum then holds at
the stated confidence. With a fixed `guesses` there is no correction.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from shared.config import StrataConfig
from shared.data.source import clear_caches, load_catalog, load_source
from shared.features import model_features
from shared.model import build_model
from shared.run_dir import JsonDict, RunDir

from client.planted_bug import planted_bug
from server.privacy_report import build_privacy_report

from .canaries import CanaryKind, canary_scores, make_canaries, write_audit_data
from .central import run_central
from .simulate import simulate

log = logging.getLogger(__name__)

GRID_FRACTIONS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5)
"""Default guesses per side, as a share of m (each tested at a Bonferroni-corrected level). A private
model leaks most in the tails of the scores (2%, 5%); all m/2 per side sets the power ceiling."""

Pipeline = Literal["federated", "central"]


# ---------------------------------------------------------------------------------------------
# The ε lower bound (Steinke et al. 2023, Theorem 5.2 and Appendix D)
# ---------------------------------------------------------------------------------------------


def audit_p_value(*, m: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """P[≥ `correct` right out of `guesses`] under the null "the training is (ε, δ)-DP".

    p = P[Bin(r, q) ≥ v] + 2mδ · max_{1≤i≤v} P[v−i ≤ Bin(r, q) < v] / i, with q = e^ε/(1+e^ε).
    """
    if not 0 <= correct <= guesses <= m:
        raise ValueError(f"need 0 ≤ correct ≤ guesses ≤ m; got correct={correct}, guesses={guesses}, m={m}.")
    if epsilon < 0 or not 0.0 <= delta <= 1.0:
        raise ValueError("epsilon must be >= 0 and delta in [0, 1].")
    from scipy import stats  # on use: the CLI's other commands do not load scipy

    q = 1.0 / (1.0 + math.exp(-epsilon))
    p = float(stats.binom.sf(correct - 1, guesses, q))
    if delta > 0 and correct > 0:
        i = np.arange(1, correct + 1)
        below = np.cumsum(stats.binom.pmf(correct - i, guesses, q))  # P[v-i <= Bin < v]
        p += 2.0 * m * delta * float(np.max(below / i))
    return min(p, 1.0)


def epsilon_lower_bound(
    *, m: int, guesses: int, correct: int, delta: float, confidence: float, tol: float = 1e-6
) -> float:
    """Return the largest ε that `correct` right guesses out of `guesses` reject at `confidence` (0 if none)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}.")
    alpha = 1.0 - confidence

    def rejected(eps: float) -> bool:
        return audit_p_value(m=m, guesses=guesses, correct=correct, epsilon=eps, delta=delta) < alpha

    if guesses == 0 or not rejected(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while rejected(hi):
        lo, hi = hi, 2.0 * hi
        if hi > 1e3:  # p-values underflow long before; all guesses right at huge r
            return lo
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rejected(mid) else (lo, mid)
    return lo


def power_ceiling(m: int, *, delta: float, confidence: float, guesses: int | None = None) -> float:
    """Return the largest ε lower bound this audit can show at all: every guess right, at the best grid
    point (each at its Bonferroni-corrected level). A claimed ε above it cannot be contradicted."""
    grid = guess_grid(m, guesses)
    level = 1.0 - (1.0 - confidence) / len(grid)
    return max(epsilon_lower_bound(m=m, guesses=2 * k, correct=2 * k, delta=delta, confidence=level) for k in grid)


def guess_grid(m: int, guesses: int | None = None) -> list[int]:
    """Guesses per side to try: `[guesses]` if fixed, else the distinct GRID_FRACTIONS of m."""
    if guesses is not None:
        if not 1 <= guesses <= m // 2:
            raise ValueError(f"guesses per side must be in 1..{m // 2} (m // 2) for m={m}; got {guesses}.")
        return [guesses]
    grid = sorted({min(m // 2, max(1, round(f * m))) for f in GRID_FRACTIONS})
    if not grid or grid[0] < 1:
        raise ValueError(f"need at least 2 canaries to guess; got m={m}.")
    return grid


def bound_from_scores(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    confidence: float,
    guesses: int | None = None,
) -> JsonDict:
    """Guess members (top k scores) and non-members (bottom k) for each k in the grid; the best
    Bonferroni-corrected ε lower bound, with every grid point's figures."""
    scores, included = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    if scores.shape != included.shape or scores.ndim != 1:
        raise ValueError("scores and included must be 1-D arrays of the same length.")
    if not np.all(np.isfinite(scores)):
        raise ValueError("canary scores must be finite.")
    m = len(scores)
    grid = guess_grid(m, guesses)
    level = 1.0 - (1.0 - confidence) / len(grid)
    order = np.argsort(-scores, kind="stable")
    rows = []
    for k in grid:
        right = int(included[order[:k]].sum()) + int((~included[order[m - k :]]).sum())
        rows.append(
            {
                "guesses_per_side": k,
                "r": 2 * k,
                "correct": right,
                "epsilon_lower_bound": epsilon_lower_bound(
                    m=m, guesses=2 * k, correct=right, delta=delta, confidence=level
                ),
                "epsilon_lower_bound_delta0": epsilon_lower_bound(
                    m=m, guesses=2 * k, correct=right, delta=0.0, confidence=level
                ),
            }
        )
    best = max(rows, key=lambda row: (row["epsilon_lower_bound"], row["epsilon_lower_bound_delta0"]))
    return {
        **best,
        "m": m,
        "confidence": confidence,
        "per_test_confidence": level,
        "selection": "fixed" if guesses is not None else f"best of {len(grid)}, Bonferroni-corrected",
        "grid": rows,
        "delta": delta,
    }


# ---------------------------------------------------------------------------------------------
# The audit
# ---------------------------------------------------------------------------------------------


def _trainer(pipeline: Pipeline) -> Callable[[StrataConfig], dict[str, Any]]:
    if pipeline == "federated":
        return simulate
    if pipeline == "central":
        return run_central
    raise ValueError(f"pipeline must be 'federated' or 'central', not {pipeline!r}.")


def run_audit(
    config: StrataConfig,
    *,
    canaries: int,
    out: Path,
    seed: int,
    confidence: float = 0.95,
    canary_items: int = 20,
    guesses: int | None = None,
    pipeline: Pipeline = "federated",
    canary_kind: CanaryKind = "random",
    planted_noise_divisor: float = 1.0,
) -> JsonDict:
    """Insert `canaries` canary users (each with probability ½), train once, and bound ε from below.

    Writes out/data/ (the training data), out/run/ (the run) and out/audit.json; returns the latter.
    `guesses` fixes the guesses per side (else a Bonferroni-corrected grid); `pipeline="central"`
    trains with `run_central` instead of the Flower simulation. `planted_noise_divisor` > 1 plants
    the test bug of `client.planted_bug` (devices train with σ / divisor, ledgers record σ): an
    audit of such a run should FAIL.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}.")
    out = Path(out)
    run_dir = out / "run"
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(f"{run_dir} already holds a run: an audit needs a fresh --out (new coins, new ledgers).")
    train = _trainer(pipeline)
    if planted_noise_divisor != 1.0 and (pipeline != "federated" or not config.privacy.local_dp):
        raise ValueError(
            "the planted bug divides the devices' DP-SGD σ: it needs the federated pipeline with "
            f"privacy.mode local or local+central (got pipeline {pipeline!r}, mode {config.privacy.mode!r})."
        )
    guess_grid(canaries, guesses)  # fail on bad sizes before training
    started = time.perf_counter()
    base = load_source(config.data, config.run.seed)
    planted = make_canaries(base, m=canaries, k=canary_items, seed=seed, kind=canary_kind)
    ratings_csv, catalog_csv = write_audit_data(base, planted, out / "data")
    # The public population counts every potential canary: how many coins came up is secret.
    audited = config.replace(
        {
            "data.source": str(ratings_csv),
            "data.catalog": str(catalog_csv),
            "run.out": str(run_dir),
            "privacy.population": base.n_users + canaries,
        }
    )
    n_users = base.n_users + int(planted.included.sum())
    log.info(
        "audit: %d canaries of %d items each (rating %g) added with probability 1/2 to %s (%d users); "
        "training once (%s, %s topology, privacy %s)",
        canaries,
        canary_items,
        planted.rating,
        base.name,
        base.n_users,
        pipeline,
        config.federation.topology,
        config.privacy.mode,
    )
    delta = audited.privacy.resolved_delta
    ceiling = power_ceiling(canaries, delta=delta, confidence=confidence, guesses=guesses)
    log.info(
        "audit: power ceiling ε = %.3f (m = %d, δ = %.3g, %.0f%% confidence): the largest lower bound it can show",
        ceiling,
        canaries,
        delta,
        100 * confidence,
    )
    if 2 * canaries * delta >= 1.0 - confidence:
        log.warning(
            "audit: the δ term 2·m·δ = %.3g is not small against the significance level %.3g, so the audit "
            "can hardly reject any ε; set privacy.delta well below %.1e (e.g. 1e-5) for a meaningful audit.",
            2 * canaries * delta,
            1.0 - confidence,
            (1.0 - confidence) / (2 * canaries),
        )
    clear_caches()  # the CSV paths may have held other data earlier in this process
    with planted_bug(planted_noise_divisor):
        train(audited)

    model, manifest, run_config = RunDir.of(run_dir).load_model()
    catalog = load_catalog(run_config.data, run_config.run.seed)
    initial = build_model(catalog.n_items, run_config.model, model_features(catalog, run_config), run_config.run.seed)
    scores = canary_scores(model, planted, run_config, catalog, initial=initial)
    bound = bound_from_scores(scores, planted.included, delta=delta, confidence=confidence, guesses=guesses)
    private = run_config.privacy.mode != "off"
    # The ε of what protects the released model, by the privacy report's rule (local, central or both).
    report, _ = build_privacy_report(RunDir.of(run_dir), verify=False)
    claimed = report.guarantee.epsilon
    reported = float(claimed) if private and claimed != "inf" else math.inf
    status = _status(bound["epsilon_lower_bound"], reported, ceiling, private)
    passed = {"PASS": True, "FAIL": False}.get(status)
    result: JsonDict = {
        "method": "one-run canary audit (Steinke, Nasr & Jagielski 2023), guesses on top/bottom scores",
        "score": (
            "alignment of the move of the canary's own item parameters with its initial gradient (white-box)"
            if canary_kind == "dirac"
            else "log-likelihood of the canary's training items given them as input (final model, eval mode)"
        ),
        **{
            key: bound[key]
            for key in (
                "m",
                "r",
                "guesses_per_side",
                "correct",
                "epsilon_lower_bound",
                "epsilon_lower_bound_delta0",
                "confidence",
                "per_test_confidence",
                "selection",
                "delta",
                "grid",
            )
        },
        "accuracy": bound["correct"] / bound["r"],
        "canary_kind": canary_kind,
        "canary_items": 1 if canary_kind == "dirac" else canary_items,
        "planted_noise_divisor": planted_noise_divisor,
        "canaries_included": int(planted.included.sum()),
        "privacy_mode": run_config.privacy.mode,
        "reported_epsilon": reported if private else None,
        "reported_epsilon_rule": "the privacy report's guarantee (the mode that protects the model)",
        "power_ceiling": ceiling,
        "status": status,
        "passed": passed,
        "verdict": _verdict(bound, reported, confidence, status, ceiling),
        "pipeline": pipeline,
        "topology": run_config.federation.topology,
        "run_dir": str(run_dir),
        # Exact counts: the audit is the auditor's own experiment, not a release of the audited data.
        "data": {
            "source": config.data.source,
            "real_users": base.n_users,
            "training_users": n_users,
            "ratings_csv": str(ratings_csv),
            "catalog_csv": str(catalog_csv),
        },
        "catalog_fingerprint": manifest["catalog_fingerprint"],
        "seed": seed,
        "wall_s": round(time.perf_counter() - started, 2),
        "canaries": [
            {"user": uid, "included": bool(keep), "score": float(s)}
            for uid, keep, s in zip(planted.user_ids, planted.included, scores, strict=True)
        ],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(result, indent=1))
    for line in format_audit(result).splitlines():
        log.info("%s", line)
    return result


def _status(bound: float, reported: float, ceiling: float, private: bool) -> str:
    """PASS, FAIL, INCONCLUSIVE (the claim is above what this audit could ever show) or NO CLAIM (privacy off)."""
    if not private:
        return "NO CLAIM"
    if bound > reported:
        return "FAIL"
    return "INCONCLUSIVE" if reported >= ceiling else "PASS"


def _verdict(bound: JsonDict, reported: float, confidence: float, status: str, ceiling: float) -> str:
    eps, delta, conf = bound["epsilon_lower_bound"], bound["delta"], f"{confidence:.0%} confidence"
    if status == "NO CLAIM":
        if eps > 0:
            return (
                f"privacy off: no ε is claimed; the audit detects membership, ε ≥ {eps:.3f} at δ = {delta:.3g}, {conf}."
            )
        if bound["epsilon_lower_bound_delta0"] > 0:
            return (
                "privacy off: no ε is claimed; membership is detected at δ = 0 "
                f"(ε ≥ {bound['epsilon_lower_bound_delta0']:.3f}) "
                f"but the δ term 2·m·δ = {2 * bound['m'] * delta:.3g} swamps it: set a smaller privacy.delta."
            )
        return f"privacy off: no ε is claimed, yet no membership is detected ({conf}): the audit has no power here."
    if status == "INCONCLUSIVE":
        return (
            f"INCONCLUSIVE: the claimed ε = {reported:.3f} is at or above this audit's power ceiling ε = {ceiling:.3f} "
            f"(m = {bound['m']}, δ = {delta:.3g}, {conf}): no outcome could contradict it (lower bound "
            f"ε ≥ {eps:.3f}). More canaries raise the ceiling."
        )
    if status == "PASS":
        return (
            f"PASS: the lower bound ε ≥ {eps:.3f} is at most the reported ε = {reported:.3f} (δ = {delta:.3g}, {conf})."
        )
    return (
        f"FAIL: the lower bound ε ≥ {eps:.3f} exceeds the reported ε = {reported:.3f} (δ = {delta:.3g}, {conf}): "
        "the training leaks more than its accounting claims."
    )


def format_audit(result: JsonDict) -> str:
    """Format an audit result as a few readable lines: the guesses, the bound and the verdict."""
    lines = [
        (
            f"Audit of {result['run_dir']}: {result['m']} canaries ({result['canaries_included']} included), "
            f"{result['r']} guesses ({result['guesses_per_side']} per side), {result['correct']} correct "
            f"({result['accuracy']:.0%})"
        ),
        (
            f"ε lower bound {result['epsilon_lower_bound']:.3f} at δ = {result['delta']:.3g} "
            f"({result['epsilon_lower_bound_delta0']:.3f} at δ = 0), {result['confidence']:.0%} confidence, "
            f"{result['selection']}"
        ),
    ]
    lines.append(f"power ceiling ε {result['power_ceiling']:.3f} (every guess right)")
    if result["reported_epsilon"] is not None:
        lines.append(f"reported ε {result['reported_epsilon']:.3f} ({result['reported_epsilon_rule']})")
    lines.append(result["verdict"])
    return "\n".join(lines)
