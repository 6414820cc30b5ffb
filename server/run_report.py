"""`report.html` of a run: utility, ε, interest taxonomy, DP census and an example user (DESIGN.md §6).

One self-contained page (inline CSS and SVG, no scripts; every text is HTML-escaped):

- **Utility over rounds**: NDCG@100, Recall@20 and RMSE of the `eval` entries of `metrics.jsonl`.
- **ε over rounds**: `epsilon` (and `central_epsilon` where present) per round; with
  `privacy.mode = "off"` the page says there is no guarantee.
- **Interest taxonomy**: L1 categories → L2 interests with sizes and names (`load_taxonomy`,
  which builds `taxonomy.json` from the model and the public catalog if it is missing).
- **DP interest census**: bars from `census.json` in the run directory if present, else a
  placeholder ("DP interest census not run"). Expected format::

      {"interests": [{"id": str, "label": str, "count": float}, ...],
       "epsilon": float | null, "delta": float, ...}

  `id` is an L1 or L2 interest id of the taxonomy, `label` its readable name, `count` the
  noisy number of users holding it (may be negative or fractional after noise; drawn clipped
  at 0), and (ε, δ) the census's own DP guarantee (ε null: released without noise, privacy
  off). `server/release.py` writes it when `federation.census` is on.
- **Example user**: one user's layered profile and top-10 layered recommendations, computed
  as a device does (`client.recommend.recommend`) and chosen by the caller. `strata report`
  shows a *synthetic* user sampled from the model (`simulation.generate.synthetic_example`,
  labelled `SYNTHETIC_EXAMPLE_LABEL`): no real user's data is on the page. A real user only
  with `strata report RUN --example-user ID`; the section is then marked
  `REAL_EXAMPLE_WARNING`, as is any example not flagged `"synthetic": true`.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from pathlib import Path

from shared.metrics import ORACLE_LABEL
from shared.run_dir import JsonDict, RunDir

from .html_parts import CSS as _CSS
from .html_parts import escape as _e
from .html_parts import line_chart as _line_chart
from .html_parts import table as _table
from .taxonomy import load_taxonomy

log = logging.getLogger(__name__)

SYNTHETIC_EXAMPLE_LABEL = "synthetic example user (sampled from the model; no real user's data)"
"""The example section's label for a synthetic user (`example["synthetic"]` is True)."""
REAL_EXAMPLE_WARNING = "real user — NOT private: this page shows one user's exact data"
"""The example section's mark for any other example: a real user's exact profile and list."""

_EXTRA_CSS = """
.cards{display:flex;gap:1em;flex-wrap:wrap;margin:.8em 0}
.card{border:1px solid #ccc;border-radius:6px;padding:.5em 1em;min-width:9em;background:#fafafa}
.card .v{font-size:1.5em;font-weight:600}.card .k{color:#555;font-size:.85em}
.note{border-left:4px solid #1f77b4;background:#f2f7fc;padding:.5em 1em}
.warning{border-left:4px solid #c62828;background:#fdecea;padding:.5em 1em}
.placeholder{border:2px dashed #bbb;color:#555;padding:1em;border-radius:6px;background:#fafafa}
tr.l1 td{background:#f4f4f4;font-weight:600} td.id{white-space:nowrap}
"""


def write_run_report(run: RunDir, *, example: JsonDict | None = None, example_error: str | None = None) -> Path:
    """Write the run's `report.html`; return its path.

    `example` is one user's layered recommendations (`client.recommend.recommend`) chosen by
    the caller, or None with `example_error` saying why there is none. It is labelled
    synthetic only when `example["synthetic"]` is True; anything else is marked as a real
    user's exact, non-private data.
    """
    config = run.read_config()
    taxonomy, taxonomy_error = _taxonomy(run)
    census, census_error = read_census(run)
    page = render_html(
        run_name=config.run.name,
        run_dir=str(run),
        privacy_mode=config.privacy.mode,
        metrics=run.read_metrics(),
        summary=run.read_summary(),
        taxonomy=taxonomy,
        taxonomy_error=taxonomy_error,
        census=census,
        census_error=census_error,
        example=example,
        example_error=example_error or ("no example user was chosen" if example is None else None),
    )
    path = run.run_report_path
    path.write_text(page, encoding="utf-8")
    log.info("wrote %s", path)
    return path


# ---------------------------------------------------------------------------- reading


def read_census(run: RunDir) -> tuple[JsonDict | None, str | None]:
    """`census.json` if present and well formed: (census, None); absent: (None, None); bad: (None, why)."""
    path = run.census_path
    if not path.is_file():
        return None, None
    try:
        census = run.read_census()
        assert census is not None
        rows = census["interests"]
        for r in rows:
            str(r["id"]), str(r["label"]), float(r["count"])
        if census["epsilon"] is not None:  # None: released without noise (privacy off)
            float(census["epsilon"])
        float(census["delta"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        why = f"{path} is not in the expected format ({type(exc).__name__}: {exc})"
        log.warning("%s", why)
        return None, why
    return census, None


def _taxonomy(run: RunDir) -> tuple[JsonDict | None, str | None]:
    try:
        return load_taxonomy(run), None
    except (FileNotFoundError, ValueError) as exc:
        log.warning("report: no taxonomy for %s: %s", run, exc)
        return None, str(exc)


# ------------------------------------------------------------------------------- SVG


def _bars(
    rows: list[tuple[str, float, str]], *, width: int = 760, label_width: int = 260, max_value: float | None = None
) -> str:
    """Horizontal SVG bars: (label, value, text drawn after the bar); values below 0 are drawn as 0."""
    bar_h, gap, top = 18, 6, 4
    h = top + len(rows) * (bar_h + gap) + 4
    vmax = max_value if max_value is not None else max((max(v, 0.0) for _, v, _ in rows), default=1.0)
    vmax = vmax if vmax > 0 else 1.0
    plot = width - label_width - 200
    out = [f'<svg width="{width}" height="{h}" viewBox="0 0 {width} {h}" role="img" aria-label="bar chart">']
    for k, (label, value, text) in enumerate(rows):
        y = top + k * (bar_h + gap)
        w = max(value, 0.0) / vmax * plot
        fits = int((label_width - 8) / 6.8)  # characters of 12 px text that fit left of the axis
        short = label if len(label) <= fits else label[: fits - 1] + "…"
        out.append(
            f'<text x="{label_width - 8}" y="{y + bar_h - 5}" font-size="12" text-anchor="end">'
            f"<title>{_e(label)}</title>{_e(short)}</text>"
        )
        out.append(f'<rect x="{label_width}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="#1f77b4"/>')
        out.append(f'<text x="{label_width + w + 6:.1f}" y="{y + bar_h - 5}" font-size="11">{_e(text)}</text>')
    out.append(f'<line x1="{label_width}" x2="{label_width}" y1="{top - 2}" y2="{h - 2}" stroke="#333"/>')
    out.append("</svg>")
    return "".join(out)


# ------------------------------------------------------------------------------ HTML


def _fmt(v: object, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if isinstance(v, int | float) and math.isfinite(float(v)) else "—"


def _series(metrics: list[JsonDict], key: str) -> list[tuple[float, JsonDict]]:
    return [
        (float(m["round"]), m[key]) for m in metrics if isinstance(m.get(key), dict) and m[key] and "round" in m
    ]


def _cards(final: JsonDict, label: str, with_std: bool) -> str:
    def value(key: str) -> str:
        v = final.get(key)
        std = final.get(f"{key}-std") if with_std else None
        return _fmt(v) + (f" ± {_fmt(std)}" if isinstance(std, float) and math.isfinite(std) else "")

    cards = [("NDCG@100", "ndcg@100"), ("Recall@20", "recall@20"), ("RMSE", "rmse")]
    return (
        "<div class='cards'>"
        + "".join(
            f"<div class='card'><div class='v'>{_e(value(key))}</div><div class='k'>{_e(label)} {_e(name)}</div></div>"
            for name, key in cards
        )
        + "</div>"
    )


def _utility_section(metrics: list[JsonDict], summary: JsonDict | None) -> list[str]:
    releases, oracle = _series(metrics, "eval"), _series(metrics, "oracle")
    final_release = (summary or {}).get("final_eval") or (releases[-1][1] if releases else {})
    final_oracle = (summary or {}).get("final_oracle") or (oracle[-1][1] if oracle else {})
    parts = ["<h2 id='utility'>Utility over rounds</h2>"]
    if final_release:
        parts.append(_cards(final_release, "DP release", with_std=True))
        parts.append(
            "<p class='muted'>The clients' DP evaluation release: noisy sums of bounded per-user metric vectors, a "
            "ledger entry each and part of the guarantee; ± is the first-order noise std "
            f"(noise std {_e(_fmt(final_release.get('noise-std'), 2))} on each sum).</p>"
        )
    if final_oracle:
        parts.append(_cards(final_oracle, "oracle", with_std=False))
        parts.append(f"<p class='muted'><b>{_e(ORACLE_LABEL)}</b>: computed by the simulation runner from every "
                     "user's held-out ratings, never through a device; a deployment has no such figure.</p>")
    evals = oracle or releases
    if not evals:
        parts.append("<p>No evaluation entries in <code>metrics.jsonl</code>.</p>")
        return parts
    which = ORACLE_LABEL if oracle else "DP evaluation release"
    ranking = [
        (name, [(r, float(e[key])) for r, e in evals if key in e], False)
        for name, key in (("NDCG@100", "ndcg@100"), ("Recall@20", "recall@20"))
    ]
    parts.append(_line_chart([s for s in ranking if s[1]], x_label="round / epoch", y_label="ranking metric"))
    rmse = [(r, float(e["rmse"])) for r, e in evals if "rmse" in e]
    if rmse:
        parts.append(_line_chart([("RMSE", rmse, False)], x_label="round / epoch", y_label="RMSE (rating)"))
    parts.append(f"<p class='muted'>Curves: {_e(which)}, {len(evals)} evaluation point(s).</p>")
    return parts


def _epsilon_section(metrics: list[JsonDict], privacy_mode: str) -> list[str]:
    parts = ["<h2 id='epsilon'>ε over rounds</h2>"]
    if privacy_mode == "off":
        parts.append(
            "<div class='placeholder'><b>Privacy off</b> (<code>privacy.mode = \"off\"</code>): no DP mechanism ran, "
            "so there is no guarantee (ε = ∞).</div>"
        )
        return parts
    local = [(float(m["round"]), float(m["epsilon"])) for m in metrics if "epsilon" in m and "round" in m]
    central = [
        (float(m["round"]), float(m["central_epsilon"])) for m in metrics if "central_epsilon" in m and "round" in m
    ]
    series = [
        (name, pts, False) for name, pts in (("ε (local, max over clients)", local), ("ε (central)", central)) if pts
    ]
    if not series or all(v == 0 for _, pts, _ in series for _, v in pts):
        parts.append(
            f"<p>privacy.mode = <code>{_e(privacy_mode)}</code>, but <code>metrics.jsonl</code> records no ε.</p>"
        )
        return parts
    parts.append(_line_chart(series, x_label="round / epoch", y_label="ε so far"))
    last = ", ".join(f"{name} {pts[-1][1]:.3f}" for name, pts, _ in series)
    parts.append(
        f"<p>After the last round: {_e(last)}. User-level, composed with the PLD accountant; "
        "<code>strata privacy-report RUN --verify</code> recomputes it from the ledgers.</p>"
    )
    return parts


def _taxonomy_section(taxonomy: JsonDict | None, error: str | None) -> list[str]:
    parts = ["<h2 id='taxonomy'>Interest taxonomy</h2>"]
    if taxonomy is None:
        parts.append(f"<div class='placeholder'>No taxonomy: {_e(error or 'unknown reason')}</div>")
        return parts
    cats = taxonomy["categories"]
    n_l2 = sum(len(c["interests"]) for c in cats)
    parts.append(
        f"<p>{len(cats)} L1 categories, {n_l2} L2 interests over {taxonomy['n_items']} items — built from the model's "
        f"item vectors and the public catalog only (model {_e(taxonomy['model_fingerprint'][:12])}, taxonomy "
        f"{_e(taxonomy['fingerprint'][:12])}). Bars: items per L1 category and the model's population prior share.</p>"
    )
    parts.append(
        _bars(
            [
                (c["id"], float(c["n_items"]), f"{c['n_items']} items · prior {100 * c['prior_share']:.1f}%")
                for c in cats
            ]
        )
    )
    rows = [
        (
            "<table><thead><tr><th>L1 / L2 interest</th><th>items</th><th>prior</th>"
            "<th>name (representative titles, decades, keywords)</th></tr></thead><tbody>"
        )
    ]
    for c in cats:
        rows.append(
            f"<tr class='l1'><td class='id'>{_e(c['id'])}</td><td class='num'>{c['n_items']}</td>"
            f"<td class='num'>{100 * c['prior_share']:.1f}%</td><td>{len(c['interests'])} L2 interest(s)</td></tr>"
        )
        for it in c["interests"]:
            rows.append(
                f"<tr><td class='id'>&nbsp;&nbsp;└ {_e(it['id'])}</td><td class='num'>{it['n_items']}</td>"
                f"<td class='num'>{100 * it['prior_share']:.1f}%</td><td>{_e(it['name'])}</td></tr>"
            )
    rows.append("</tbody></table>")
    parts.append("".join(rows))
    return parts


def _census_section(census: JsonDict | None, error: str | None) -> list[str]:
    parts = ["<h2 id='census'>DP interest census</h2>"]
    if census is None:
        why = f" ({error})" if error else ""
        parts.append(
            f"<div class='placeholder'><b>DP interest census not run</b>{_e(why)}. When <code>census.json</code> "
            "is in the run directory this section shows how many users hold each interest (noisy counts).</div>"
        )
        return parts
    rows = sorted(census["interests"], key=lambda r: -float(r["count"]))
    if census["epsilon"] is None:
        parts.append("<p>Number of users holding each interest, released <b>without noise</b> (privacy was off).</p>")
    else:
        parts.append(
            f"<p>Noisy number of users holding each interest, released with (ε, δ) = "
            f"({float(census['epsilon']):.3g}, {float(census['delta']):.3g}) on top of training. Negative noisy counts "
            "are drawn as 0.</p>"
        )
    parts.append(
        _bars(
            [
                (
                    f"{r['id']}: {r['label']}" if r["label"] != r["id"] else str(r["id"]),
                    float(r["count"]),
                    f"{float(r['count']):.1f}",
                )
                for r in rows
            ],
            label_width=360,
        )
    )
    return parts


def _example_section(example: JsonDict | None, error: str | None) -> list[str]:
    title = "Example user: layered profile and recommendations"
    if example is None:
        why = _e(error or "unknown reason")
        return [f"<h2 id='example-user'>{title}</h2>", f"<div class='placeholder'>No example user: {why}</div>"]
    p, h = example["profile"], example["history"]
    user = _e(example["user"])
    blend = _e(f"the model's prediction weighs {100 * p['blend']['model_weight']:.0f}% in the blended shares.")
    if example.get("synthetic") is True:
        label = _e(SYNTHETIC_EXAMPLE_LABEL)
        note = (
            f"<p class='note'>User <b>{user}</b> is not a person: a profile of {h['train_ratings']} ratings "
            f"({h['train_positives']} positives) sampled from the model alone (the sampling of "
            "<code>strata generate</code>), then profiled and recommended exactly as a device does with its own "
            f"ratings. Like the model, it holds the run's guarantee; {blend}</p>"
        )
    else:
        label = _e(REAL_EXAMPLE_WARNING)
        note = (
            f"<p class='warning'><b>{label}.</b> User <b>{user}</b>, chosen with "
            "<code>strata report --example-user</code>: the profile and list below are computed from this user's "
            "own train ratings (as on the user's device, where none of it would leave the device) and are not "
            f"covered by the run's DP guarantee. Do not publish this page. {h['train_ratings']} train ratings, "
            f"{h['train_positives']} positives; {blend}</p>"
        )
    parts = [f"<h2 id='example-user'>{title} — {label}</h2>", note]
    parts.append("<h3>L1 core interests (blended share; population prior in brackets)</h3>")
    l1 = [e for e in p["l1"] if e["share"] > 0.005][:10]
    parts.append(
        _bars([(e["id"], e["share"], f"{100 * e['share']:.0f}%  (prior {100 * e['prior']:.0f}%)") for e in l1])
    )
    parts.append("<h3>L2 fine interests</h3>")
    if p["l2"]:
        parts.append(
            _table(
                ["interest", "share", "observed", "predicted", "name"],
                [
                    (
                        e["id"],
                        f"{100 * e['share']:.1f}%",
                        f"{100 * e['observed']:.1f}%",
                        f"{100 * e['predicted']:.1f}%",
                        e["name"],
                    )
                    for e in p["l2"]
                ],
                numeric=(1, 2, 3),
            )
        )
    else:
        parts.append("<p>None observed.</p>")
    parts.append("<h3>L3 latent interests (predicted, not yet shown)</h3>")
    if p["l3"]:
        parts.append(
            _table(
                ["interest", "lift", "predicted", "observed", "name"],
                [
                    (
                        e["id"],
                        f"{e['lift']:.1f}×",
                        f"{100 * e['predicted']:.1f}%",
                        f"{100 * e['observed']:.1f}%",
                        e["name"],
                    )
                    for e in p["l3"]
                ],
                numeric=(1, 2, 3),
            )
        )
    else:
        parts.append(
            "<p>None: the model predicts no interest well above the population prior that the user has not shown.</p>"
        )
    parts.append(
        f"<h3>Top {len(example['items'])}, layered (calibrated to L1, discovery slots for L3; "
        f"miscalibration KL {example['miscalibration']:.3f})</h3>"
    )
    parts.append(
        _table(
            ["#", "title", "r̂", "layer", "interest", "why"],
            [
                (r["rank"], r["title"], f"{r['predicted_rating']:.1f}", r["layer"], r["interest"], r["why"])
                for r in example["items"]
            ],
            numeric=(0, 2),
        )
    )
    return parts


def render_html(
    *,
    run_name: str,
    run_dir: str,
    privacy_mode: str,
    metrics: list[JsonDict],
    summary: JsonDict | None,
    taxonomy: JsonDict | None,
    taxonomy_error: str | None = None,
    census: JsonDict | None = None,
    census_error: str | None = None,
    example: JsonDict | None = None,
    example_error: str | None = None,
) -> str:
    """Render the run report as one self-contained HTML page (inline CSS and SVG, no scripts)."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    eps = (summary or {}).get("epsilon")
    if privacy_mode == "off":
        privacy = "privacy off — no DP guarantee (ε = ∞)"
    elif isinstance(eps, int | float):
        privacy = f"privacy.mode = {privacy_mode}, ε = {eps:.3f}" + (
            f", central ε = {summary['central_epsilon']:.3f}"
            if summary and isinstance(summary.get("central_epsilon"), int | float)
            else ""
        )
    else:
        privacy = f"privacy.mode = {privacy_mode}"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Run report — {_e(run_name)}</title><style>{_CSS}{_EXTRA_CSS}</style></head><body>",
        f"<h1>Run report — “{_e(run_name)}”</h1>",
        f"<p class='muted'>{_e(run_dir)} · {_e(privacy)} · generated {_e(when)}</p>",
    ]
    parts += _utility_section(metrics, summary)
    parts += _epsilon_section(metrics, privacy_mode)
    parts += _taxonomy_section(taxonomy, taxonomy_error)
    parts += _census_section(census, census_error)
    parts += _example_section(example, example_error)
    parts.append(
        "<p class='muted'>Budget details: <code>privacy_report.html</code> "
        "(<code>strata privacy-report RUN</code>).</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)
