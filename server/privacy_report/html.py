"""The privacy report as one self-contained HTML page for auditors (inline CSS and SVG, no scripts)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.html_parts import CSS as _CSS
from server.html_parts import escape as _e
from server.html_parts import histogram as _histogram
from server.html_parts import line_chart as _line_chart
from server.html_parts import table as _table

from .assemble import PrivacyReport
from .read import LAYOUT
from .text import fmt_eps as _fmt_eps
from .text import fmt_delta as _fmt_delta
from .text import plural as _plural


def _shown_clients(per: Mapping[str, Any], limit: int = 6) -> list[str]:
    """All clients when few; else the ones at the minimum, quartiles, median and maximum of ε."""
    names = sorted(per, key=lambda k: per[k]["epsilon"])
    quantiles = (0, 0.25, 0.5, 0.75, 1.0)
    picks = set(names) if len(names) <= limit else {names[round(f * (len(names) - 1))] for f in quantiles}
    return [n for n in per if n in picks]  # in client order


def render_html(report: PrivacyReport | Mapping[str, Any]) -> str:
    """Render the report (a `PrivacyReport` or its `to_dict()`) as one self-contained HTML page."""
    if isinstance(report, PrivacyReport):
        report = report.to_dict()
    g, comp = report["guarantee"], report["composition"]
    ver = report.get("verification")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Privacy report — {_e(report['run_name'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Differential-privacy report — run “{_e(report['run_name'])}”</h1>",
        f"<p class='muted'>{_e(report['run_dir'])} · generated {_e(report['generated_at'])}</p>",
    ]
    if ver is None:
        status = "<span class='status na'>not verified</span> (run <code>strata privacy-report RUN --verify</code>)"
    elif ver["passed"]:
        status = (
            f"<span class='status ok'>verified</span> all {len(ver['checks'])} checks passed "
            f"(tolerance {ver['tolerance']:.0%})"
        )
    else:
        failed = sum(not c["passed"] for c in ver["checks"])
        status = (
            f"<span class='status fail'>VERIFICATION FAILED</span> {failed} of {len(ver['checks'])} checks failed "
            "— see below"
        )
    if g["dp"]:
        big = f"ε = {_fmt_eps(g['epsilon'])}, δ = {_fmt_delta(g['delta'])} · unit: one user"
    else:
        big = "No guarantee: ε = ∞"
    failed_box = not g["dp"] or (ver is not None and not ver["passed"])
    parts += [
        f"<div class='guarantee{' none' if failed_box else ''}'>",
        "<h2 style='margin-top:0;border:0'>The guarantee every user holds</h2>",
        f"<p class='big'>{_e(big)}</p>",
        f"<p>{_e(report['headline'])}</p>",
        f"<p>Privacy unit: <b>{_e(g['unit'])}</b>. δ: {_e(g['delta_source'])}. "
        f"Privacy mode: <code>{_e(g['privacy_mode'])}</code>, topology: <code>{_e(g['topology'])}</code>"
        + (f", {g['n_users']} users" if g["n_users"] is not None else "")
        + f".</p><p>Verification: {status}</p></div>",
        "<h2 id='how-it-was-computed'>How it was computed</h2>",
        (
            "<p><b>privacy.mode was 'off'</b>: clients trained without clipping or noise, so no accountant applies "
            "and ε is infinite. When DP is on, Strata accounts as follows.</p>"
            if g["privacy_mode"] == "off"
            else ""
        ),
        ("<p>Every client keeps an append-only privacy ledger: one entry per DP release, i.e. a round of local "
        "DP-SGD with noise multiplier σ, Poisson sample rate q, a number of steps and clipping norm C. Each entry is "
        "the composition of <i>steps</i> Poisson-subsampled Gaussian mechanisms. A client's ε is the composition of "
        "all entries in its ledger — over every round <i>and every run</i> that used the same ledger directory — "
        f"computed with the privacy-loss-distribution (PLD) accountant of Google's dp-accounting; RDP is computed "
        f"alongside as a conservative cross-check; GDP is never used. A user's data is only ever used by the client "
        f"that holds them, so every user's ε is bounded by that client's; the guarantee every user holds is the "
        f"largest over clients. Rounds in this run: {_e(comp['rounds'])}; runs composed in the ledgers: "
        f"{_e(comp['n_runs'])}.</p>"
        "<p>One-shot releases are ledger entries too (<code>gaussian-sum</code>, q = 1, one step): the item "
        "popularity that initialises the model (round 0) and the interest census (the round after the last). Each "
        "user contributes one vector of L2 norm at most C (popularity: their positives scaled to norm 1; census: "
        "their top-3 interests, norm √3) and the sum gets N(0, z²C²) per coordinate — added by each client over its "
        "own users under local DP, by the server under central DP — so it is the Gaussian mechanism with noise "
        "multiplier z, composed with everything else.</p>"),
        "<h2 id='epsilon-per-client-over-rounds'>ε per client over rounds</h2>",
    ]
    per = report["per_client"]
    central_only = g["topology"] == "central"
    fedavg_only = bool(g.get("central_dp")) and set(per) <= {"central"}
    if g.get("central_dp"):
        parts.append(
            "<p>The server ran user-level <b>DP-FedAvg</b> (McMahan et al. 2018): each client clips every user's "
            "update to norm S and sends the sum; the server adds N(0, z²S²) per coordinate to the sum over the users "
            "included in the round (each independently with probability q: the server's coin for a one-user device, "
            "each client's own coin per user in a hub), divides by the public expected count q·N and records "
            f"one <code>dp-fedavg</code> entry per round in <code>{_e(LAYOUT.central_ledger_path)}</code>. "
            + (
                f"Local ε (max over the client ledgers) = {_e(_fmt_eps(g['local_epsilon']))}; central ε = "
                f"{_e(_fmt_eps(g['central_epsilon']))}; every user's guarantee composes both."
                if g.get("central_epsilon") is not None and not fedavg_only
                else f"Central ε = {_e(_fmt_eps(g['central_epsilon'] or 0.0))}."
            )
            + "</p>"
        )
    if fedavg_only:
        parts.append(
            "<p>No client ledgers: clients ran no local DP (privacy.mode = central). Every user holds the server's "
            "DP-FedAvg ε; see <i>Central ε over rounds</i> below.</p>"
        )
    elif central_only:
        parts.append(
            "<p>No client ledgers: this is a central run, in which one trainer holds every user. "
            "See <i>Central ε over rounds</i> below.</p>"
        )
    elif per and report["max_over_rounds"]:
        shown = _shown_clients(per)
        lines = [(name, [(r, e) for r, e in per[name]["series"]], False) for name in shown]
        max_line = [(r, e) for r, e in report["max_over_rounds"]]
        lines.append((f"max over all {_plural(len(per), 'client')}", max_line, True))
        parts.append(_line_chart(lines, x_label="round", y_label="ε (PLD)"))
        if len({tuple(e for _, e in per[n]["series"]) for n in per}) == 1 and len(per) > 1:
            parts.append(
                f"<p class='muted'>All {len(per)} clients have the same ε at every round: "
                "their lines lie under the maximum.</p>"
            )
        if len(per) > len(shown):
            parts.append(
                f"<p class='muted'>Showing {len(shown)} of {len(per)} clients (min, quartiles, max of final ε) "
                "and the maximum over all.</p>"
            )
        if len(comp["replayed_rounds"]) < comp["rounds"]:
            parts.append(
                f"<p class='muted'>Ledgers replayed at {len(comp['replayed_rounds'])} evenly spaced rounds.</p>"
            )
    else:
        parts.append("<p>No ledger records a DP release: there is nothing to plot.</p>")
    parts.append("<h2 id='distribution-of-per-user-guarantees'>Distribution of per-user guarantees</h2>")
    dist = report["distribution"]
    if fedavg_only:
        parts.append(f"<p>Every user holds the server's DP-FedAvg ε = {_e(_fmt_eps(g['epsilon']))}.</p>")
    elif central_only:
        parts.append(f"<p>Every user holds the central ε = {_e(_fmt_eps(g['epsilon']))}.</p>")
    elif dist:
        parts.append(
            f"<p>Every user holds the ε of the client holding them (in the <code>device</code> topology one user per "
            f"client; in <code>hub</code>, all of a hub's users). Over {_plural(dist['holders'], 'client')}: min ε = "
            f"{dist['min']:.3f}, median ε = {dist['median']:.3f}, max ε = {dist['max']:.3f}.</p>"
        )
        parts.append(_histogram([h["epsilon"] for h in per.values()], x_label="final ε of the client (PLD)"))
    else:
        parts.append("<p>No client ledgers.</p>")
    parts.append("<h2 id='central-epsilon-over-rounds'>Central ε over rounds</h2>")
    central = report["central"]
    if central:
        parts.append(
            f"<p>Central ledger: {central['entries']} entries, ε = {central['epsilon']:.3f} "
            f"(RDP {central['epsilon_rdp']:.3f}).</p>"
        )
        series = [("central", [(r, e) for r, e in central["series"]], True)]
        parts.append(_line_chart(series, x_label="round / epoch", y_label="ε (PLD)"))
    else:
        parts.append(
            f"<p>Not used in this run: no central DP mechanism (no <code>{_e(LAYOUT.central_ledger_path)}</code>).</p>"
        )
    if ver is not None:
        parts.append("<h2 id='verification'>Verification</h2>")
        parts.append(
            f"<p>Every ε recomputed from the ledgers. Tolerance {ver['tolerance']:.0%} relative; "
            "PLD ≤ RDP·(1+tolerance) "
            f"and RDP ≤ {ver['rdp_factor']:g}·PLD (both are upper bounds, PLD the tighter).</p>"
        )
        rows = [(c["name"], "pass" if c["passed"] else "FAIL", c["message"]) for c in ver["checks"]]
        parts.append(_table(["check", "result", "detail"], rows))
    parts.append("<h2 id='empirical-audit'>Empirical audit</h2>")
    audit = report.get("audit")
    if audit:
        parts.append(f"<p>{_e(audit.get('verdict', ''))}</p>")
        if audit.get("planted_noise_divisor", 1.0) != 1.0:
            parts.append(
                "<p><span class='status fail'>planted bug</span> This run was trained with the audit's planted "
                f"bug: devices used σ / {_e(audit['planted_noise_divisor'])} while their ledgers record σ. "
                "Its ε is false by design.</p>"
            )
        if "power_ceiling" in audit:
            claimed = audit.get("reported_epsilon")
            scale = [
                ("ε lower bound (measured)", f"{audit['epsilon_lower_bound']:.3f}"),
                ("claimed ε (the guarantee)", "none (privacy off)" if claimed is None else f"{claimed:.3f}"),
                ("power ceiling (all guesses right)", f"{audit['power_ceiling']:.3f}"),
            ]
            parts.append(_table(["the audit's scale", "ε"], scale))
        parts.append(_table(["field", "value"], [[k, v] for k, v in audit.items() if k != "verdict"]))
    else:
        parts.append(
            "<p>No canary audit was run for this run (<code>strata audit</code> trains its own run with canaries "
            "and bounds ε from below).</p>"
        )
    parts.append("<h2 id='mechanisms'>Mechanisms</h2>")
    if report["mechanisms"]:
        parts.append(
            _table(
                [
                    "mechanism", "σ (noise multiplier)", "q (sample rate)", "steps / round", "C (clip norm)",
                    "entries", "clients",
                ],
                [
                    (m["mechanism"], f"{m['noise_multiplier']:.4g}", f"{m['sample_rate']:.4g}", m["steps_per_round"],
                     f"{m['max_grad_norm']:g}", m["entries"], m["clients"])
                    for m in report["mechanisms"]
                ],
                numeric=(1, 2, 3, 4, 5, 6),
            )
        )
    else:
        parts.append("<p>None recorded.</p>")
    parts.append("<h2 id='runs-in-the-ledgers'>Runs in the ledgers</h2>")
    if comp["runs"]:
        parts.append(
            _table(
                ["run id", "entries", "clients", "rounds", "this run"],
                [
                    (r["run_id"], r["entries"], r["clients"], f"{r['first_round']}–{r['last_round']}",
                     "yes" if r["run_id"] == comp["current_run"] else "")
                    for r in comp["runs"]
                ],
                numeric=(1, 2),
            )
        )
        if comp["n_runs"] > 1:
            parts.append("<p>ε composes over all these runs: they used the same users' data.</p>")
    else:
        parts.append("<p>None.</p>")
    parts.append("<h2 id='refusals-and-failures'>Refusals and failures</h2>")
    refusal_rows = [r for r in report["refusals"] if r["refused"] or r["failed"] or r["skipped"]]
    total = sum(r["refused"] for r in report["refusals"])
    if refusal_rows:
        parts.append(
            f"<p>{total} refusal(s) in total (a client refuses a round that would exceed privacy.max-epsilon).</p>"
        )
        table = [
            (r["round"], r["clients"], r["refused"], r["failed"], "yes" if r["skipped"] else "") for r in refusal_rows
        ]
        parts.append(_table(["round", "clients trained", "refused", "failed", "skipped"], table, numeric=(0, 1, 2, 3)))
    else:
        parts.append(f"<p>No client refused or failed in any of the {len(report['refusals'])} logged round(s).</p>")
    acc = report["accountants"]
    parts.append("<h2 id='accountants-and-versions'>Accountants and versions</h2>")
    roles = [("headline", acc["headline"]), ("cross-check", acc["cross_check"]),
             ("event per ledger entry", acc["event"]), ("never used", acc["never"])]
    parts.append(_table(["role", "accountant"], roles))
    parts.append(_table(["package", "version"], list(report["versions"].items())))
    fp = report["fingerprints"]
    parts.append("<h2 id='fingerprints'>Fingerprints</h2>")
    parts.append(
        _table(
            ["what", "sha256"],
            [("catalog (item ids, titles, categories, years)", fp["catalog"] or "absent"),
             ("model weights", fp["weights"] or "absent")]
            + [(f"{LAYOUT.ledger_dir}/{k}", v) for k, v in fp["ledgers_sha256"].items()],
            mono=(1,),
        )
    )
    if fp["signing_keys"]:
        parts.append(
            "<p>Ed25519 public keys that signed each ledger (verification checks every signature and chain link "
            "against the keys the auditor pins):</p>"
        )
        parts.append(
            _table(["ledger", "signing key"], [(f"{LAYOUT.ledger_dir}/{k}", v) for k, v in fp["signing_keys"].items()],
                   mono=(1,))
        )
    parts.append("<h2 id='scope'>Adjacency, trust model and releases</h2>")
    parts.append(f"<p>{_e(report['adjacency'])}</p><p>{_e(report['trust_model'])}</p>")
    if report["releases"]:
        parts.append("<p>Releases in the guarantee (this run):</p><ul>")
        parts += [f"<li>{_e(item)}</li>" for item in report["releases"]]
        parts.append("</ul>")
    parts.append("<h2 id='what-this-does-not-cover'>What this does not cover</h2><ul>")
    parts += [f"<li>{_e(item)}</li>" for item in report["limits"]]
    parts.append("</ul></body></html>")
    return "\n".join(parts)
