"""The `strata` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

# One OpenBLAS thread (before numpy loads; Ray workers inherit it): its thread pool was seen
# spinning for minutes when numpy ran in Flower's ServerApp thread. Heavy math is torch's.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from client.recommend import format_recommendations  # noqa: E402
from server.privacy_report import write_privacy_report  # noqa: E402
from server.run_report import REAL_EXAMPLE_WARNING, write_run_report  # noqa: E402
from server.taxonomy import build_taxonomy, render_tree  # noqa: E402
from shared.config import StrataConfig, load_config  # noqa: E402
from deploy.certs import make_certs  # noqa: E402
from deploy.local import deploy_local  # noqa: E402
from shared.data.device_files import CATALOG_NAME, split_devices  # noqa: E402
from shared.data.fetch import DATASETS  # noqa: E402
from shared.data.source import load_source  # noqa: E402
from shared.data.validate import validate_path  # noqa: E402
from shared.metrics import ORACLE_LABEL  # noqa: E402
from shared.run_dir import JsonDict, RunDir  # noqa: E402

from .audit import format_audit, run_audit  # noqa: E402
from .bench_commands import cmd_bench  # noqa: E402
from .central import run_central  # noqa: E402
from .generate import generate_profiles, synthetic_example  # noqa: E402
from .layer_eval import evaluate_layers, format_layer_metrics  # noqa: E402
from .recommend import recommend_for_user  # noqa: E402
from .simulate import simulate  # noqa: E402

log = logging.getLogger(__name__)

EXAMPLE_N = 10
"""Recommendations shown for the report's example user."""


class _QuietLibraries(logging.Filter):
    """Keep Flower's and Ray's chatter below WARNING out of Strata's progress log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(("flwr", "ray", "opacus", "alembic"))


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QuietLibraries())
        for noisy in ("flwr", "ray", "opacus", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def _config(args: argparse.Namespace) -> StrataConfig:
    overrides = list(args.set or [])
    if getattr(args, "out", None):
        overrides.append(f"run.out={json.dumps(args.out)}")
    return load_config(args.config, overrides)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="TOML preset, e.g. configs/smoke.toml")
    p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--out", "-o", help="run directory (default runs/<run.name>)")


def _print_headline(summary: JsonDict) -> None:
    release, oracle = summary.get("final_eval") or {}, summary.get("final_oracle") or {}
    print()
    if summary.get("already_finished"):
        print("This run directory holds a finished run: its results are shown; nothing new was trained or released.")
    print(f"Run directory: {summary['run_dir']}")
    if release:
        print(
            f"DP evaluation release: NDCG@100 {release['ndcg@100']:.4f} ± {release['ndcg@100-std']:.4f} · "
            f"Recall@20 {release['recall@20']:.4f} ± {release['recall@20-std']:.4f} · "
            f"RMSE {release['rmse']:.4f} ± {release['rmse-std']:.4f}"
        )
    if oracle:
        print(
            f"{ORACLE_LABEL}: NDCG@100 {oracle['ndcg@100']:.4f} · Recall@20 {oracle['recall@20']:.4f} · "
            f"RMSE {oracle['rmse']:.4f} · MAE {oracle['mae']:.4f}"
        )
    eps, central_eps = summary.get("epsilon", 0.0), summary.get("central_epsilon", 0.0)
    if eps:
        print(f"ε spent, local DP (max over clients): {eps:.3f}")
    if central_eps:
        print(f"ε spent, central DP-FedAvg: {central_eps:.3f}")
    if not eps and not central_eps:
        print("ε: no DP mechanism was run (privacy off)")
    print(f"Wall time: {summary['wall_s']:.1f} s")


def cmd_data(args: argparse.Namespace) -> int:
    """Run `strata data fetch` or `strata data validate`."""
    if args.data_cmd == "fetch":
        if args.name not in DATASETS:
            print(f"unknown data set {args.name!r}; available: {', '.join(DATASETS)}", file=sys.stderr)
            return 2
        path = DATASETS[args.name](Path(args.cache_dir).expanduser())
        print(path)
        return 0
    if args.data_cmd == "split-devices":
        return _split_devices(args)
    result = validate_path(args.path)
    print(result.summary())
    return 0 if result.ok else 1


def _split_devices(args: argparse.Namespace) -> int:
    config = load_config(None, [f"data.source={json.dumps(args.source)}", *(args.set or [])])
    data = load_source(config.data, args.seed)
    out = Path(args.out)
    files = split_devices(
        data, out, topology=args.topology, num_hubs=args.num_hubs, assignment=args.hub_assignment, seed=args.seed
    )
    print(f"{len(files)} device files ({args.topology} topology) and the catalog in {out}:")
    print(f"  catalog        {out / CATALOG_NAME}   (the server's data.catalog; every device's catalog-path)")
    print(f"  devices        {out}/0.csv … {files[-1].name}   (each SuperNode's data-path; client id = file stem)")
    print(f"  population     {data.n_users}   (set privacy.population = {data.n_users} on the server)")
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    """Run `strata certs`: CA, SuperLink certificate, SuperNode auth keys, device signing keys."""
    files = make_certs(Path(args.dir), nodes=args.nodes, sans=tuple(args.san or ()))
    print(f"Certificates and keys in {files.root} (private keys 0600):")
    print(
        f"  SuperLink      --ssl-ca-certfile {files.ca_cert} --ssl-certfile {files.server_cert} "
        f"--ssl-keyfile {files.server_key}"
    )
    print(f"  SuperNodes     --root-certificates {files.ca_cert} --auth-supernode-private-key {files.node_key(0)} …")
    print(f"  registration   flwr supernode register {files.node_public_key(0)} CONNECTION …")
    if args.nodes:
        print(f"  device ledgers --node-config \"signing-key='{files.signing_key(0)}' …\"")
        print(f"  auditors       strata privacy-report RUN --verify --keys {files.public_keys}")
    return 0


def cmd_deploy_local(args: argparse.Namespace) -> int:
    """Run `strata deploy-local`: SuperLink + N SuperNodes on loopback as real processes, one run."""
    overrides = list(args.set or [])
    if args.rounds is not None:
        overrides.append(f"federation.rounds={args.rounds}")
    config = load_config(args.config or "configs/deploy-local.toml", overrides)
    result = deploy_local(config, Path(args.out), nodes=args.nodes, tls=not args.insecure, timeout_s=args.timeout)
    print()
    print(f"Run {result['run_id']}: {result['status']}, {result['rounds_trained']} rounds, {result['wall_s']} s")
    print(f"Run directory: {result['run_dir']} (device ledgers collected into ledgers/)")
    print(f"Process logs:  {result['logs']}")
    print(f"Verify:        strata privacy-report {result['run_dir']} --verify --keys {result['keys']}")
    return 0 if result["status"] == "finished:completed" else 1


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run `strata simulate`: the federation on Flower's simulation engine."""
    _print_headline(simulate(_config(args), ray_address=args.ray_address))
    return 0


def cmd_central(args: argparse.Namespace) -> int:
    """Run `strata central`: the central reference training."""
    _print_headline(run_central(_config(args)))
    return 0


def cmd_privacy_report(args: argparse.Namespace) -> int:
    """Run `strata privacy-report`: write (and optionally verify) a run's privacy report."""
    run = RunDir.of(args.run)
    keys = Path(args.keys) if args.keys else None
    report, verified = write_privacy_report(run, verify=args.verify, tolerance=args.tolerance, keys=keys)
    print(f"Privacy report: {run.privacy_report_json} and {run.privacy_report_html.name}")
    print(report["headline"])
    print(report["trust_model"])
    for release in report["releases"]:
        print(f"  - {release}")
    if args.verify:
        print("verify: OK — every ε recomputed from the ledgers agrees" if verified else "verify: FAILED (see above)")
        return 0 if verified else 1
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Run `strata audit`: the one-run canary audit; exit status 1 when it fails."""
    config = load_config(args.config, list(args.set or []))
    result = run_audit(
        config,
        canaries=args.canaries,
        out=Path(args.out),
        seed=config.run.seed if args.seed is None else args.seed,
        confidence=args.confidence,
        canary_items=args.canary_items,
        guesses=args.guesses,
        pipeline="central" if args.central else "federated",
        canary_kind=args.canary_kind,
        planted_noise_divisor=args.planted_bug,
    )
    print()
    print(format_audit(result))
    print(f"Audit: {Path(args.out) / 'audit.json'}")
    return 1 if result["passed"] is False else 0


def cmd_layers(args: argparse.Namespace) -> int:
    """Run `strata layers`: print a run's interest taxonomy (and, with --evaluate, its metrics)."""
    run = RunDir.of(args.run)
    print(render_tree(build_taxonomy(run)))
    if args.evaluate:
        print(format_layer_metrics(evaluate_layers(run)))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Run `strata generate`: synthetic user profiles from a run's model."""
    result = generate_profiles(
        Path(args.run),
        n=args.n,
        out=Path(args.out),
        interest=args.interest,
        seed=args.seed,
        compare_with_real=args.compare_to_real,
    )
    print(f"Synthetic users: {result['out']} (catalog {result['catalog']})")
    print(result["privacy"]["statement"])
    comparison = result["comparison"]
    if comparison is None:
        print("No comparison with the real ratings was written (--compare-to-real writes one; it is not private).")
    else:
        print(f"Comparison with the real ratings: {comparison['path']}")
        print(comparison["warning"])
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Run `strata report`: write a run's report.html."""
    run = RunDir.of(args.run)
    example, why = _example_user(run, args.example_user)
    print(f"Run report: {write_run_report(run, example=example, example_error=why)}")
    if example is not None and not example.get("synthetic"):
        print(f"WARNING: {REAL_EXAMPLE_WARNING} (user {example['user']}).")
    return 0


def _example_user(run: RunDir, user_id: str | None = None) -> tuple[JsonDict | None, str | None]:
    """Choose the report's example user: (layered profile and recommendations, None) or (None, why).

    By default a synthetic user sampled from the run's model (`synthetic_example`: no real
    user's data). Only an explicit `user_id` (`--example-user`) shows a real user, computed as
    that user's device would from their own ratings; the result is marked not private and a
    warning is logged. An unknown `user_id` is an error.
    """
    if user_id is not None:
        log.warning("report: --example-user %s: %s.", user_id, REAL_EXAMPLE_WARNING)
        real = recommend_for_user(run, user_id, n=EXAMPLE_N, layered=True)
        return {**real, "synthetic": False, "label": REAL_EXAMPLE_WARNING}, None
    try:
        return synthetic_example(run, n=EXAMPLE_N), None
    except (FileNotFoundError, ValueError) as exc:
        log.warning("report: no example user for %s: %s", run, exc)
        return None, str(exc)


def cmd_recommend(args: argparse.Namespace) -> int:
    """Run `strata recommend`: top-N recommendations for one user."""
    result = recommend_for_user(RunDir.of(args.run), args.user, n=args.n, layered=args.layered)
    print(json.dumps(result, indent=1) if args.json else format_recommendations(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the `strata` argument parser with all its subcommands."""
    parser = argparse.ArgumentParser(prog="strata", description="Federated, private Mult-VAE recommender training.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, Flower's included")
    sub = parser.add_subparsers(dest="cmd", required=True)

    data = sub.add_parser("data", help="fetch or validate data sets")
    dsub = data.add_subparsers(dest="data_cmd", required=True)
    fetch = dsub.add_parser("fetch", help="download a data set into the cache")
    fetch.add_argument("name", help="data set name (ml-100k)")
    fetch.add_argument("--cache-dir", default="~/.cache/strata")
    validate = dsub.add_parser("validate", help="check a MovieLens directory or a ratings CSV")
    validate.add_argument("path")
    split = dsub.add_parser("split-devices", help="one ratings CSV per device plus the catalog, for deployment")
    split.add_argument("source", help="data source: ml-100k, synthetic, a MovieLens directory or a ratings CSV")
    split.add_argument("--out", "-o", required=True, help="fresh directory for catalog.csv and <i>.csv per device")
    split.add_argument("--topology", choices=["hub", "device"], default="hub")
    split.add_argument("--num-hubs", type=int, default=10)
    split.add_argument("--hub-assignment", choices=["iid", "dirichlet"], default="iid")
    split.add_argument("--seed", type=int, default=0, help="run.seed of the deployment (the hub assignment)")
    split.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="data.* config key, e.g. data.catalog")
    data.set_defaults(func=cmd_data)

    certs = sub.add_parser("certs", help="CA, SuperLink TLS certificate, SuperNode auth keys, device signing keys")
    certs.add_argument("dir", help="fresh directory for the certificates and keys")
    certs.add_argument("--nodes", type=int, default=0, help="SuperNode auth keys and device signing keys to make")
    certs.add_argument("--san", action="append", metavar="HOST", help="extra host name or IP of the SuperLink")
    certs.set_defaults(func=cmd_certs)

    dl = sub.add_parser("deploy-local", help="SuperLink + N SuperNodes on loopback (TLS, node auth), one real run")
    dl.add_argument("--nodes", "-n", type=int, default=3, help="SuperNodes, one data file each (default 3)")
    dl.add_argument("--out", "-o", default="runs/deploy-local", help="fresh directory for everything")
    dl.add_argument("--config", "-c", help="TOML preset (default configs/deploy-local.toml)")
    dl.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    dl.add_argument("--rounds", type=int, help="federation.rounds")
    dl.add_argument("--insecure", action="store_true", help="no TLS and no node authentication (testing only)")
    dl.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the run (default 3600)")
    dl.set_defaults(func=cmd_deploy_local)

    sim = sub.add_parser("simulate", help="federated run on Flower's simulation engine")
    _add_config_args(sim)
    sim.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="run the virtual clients on this running Ray cluster (its head's address) instead of this machine",
    )
    sim.set_defaults(func=cmd_simulate)

    central = sub.add_parser("central", help="central reference training on the same split")
    _add_config_args(central)
    central.set_defaults(func=cmd_central)

    pr = sub.add_parser("privacy-report", help="DP budget report (JSON + HTML) of a run; --verify recomputes every ε")
    pr.add_argument("run", help="run directory")
    pr.add_argument("--verify", action="store_true", help="recompute ε from the ledgers with two accountants")
    pr.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="allowed relative disagreement of a logged ε with its replay (default 0: the same accountant agrees)",
    )
    pr.add_argument(
        "--keys",
        help="folder of the public keys to pin (<holder>.pem.pub: client-<id>, server, central); default RUN/keys",
    )
    pr.set_defaults(func=cmd_privacy_report)

    audit = sub.add_parser("audit", help="one-run canary audit: an empirical ε lower bound (Steinke et al. 2023)")
    audit.add_argument("--config", "-c", help="TOML preset, e.g. configs/audit-hub.toml")
    audit.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    audit.add_argument("--out", "-o", required=True, help="fresh audit directory (data/, run/, audit.json)")
    audit.add_argument("--canaries", "-m", type=int, required=True, help="number of canary users m")
    audit.add_argument("--canary-items", type=int, default=20, help="items each random canary rates (default 20)")
    audit.add_argument(
        "--canary-kind",
        choices=["random", "dirac"],
        default="random",
        help="random: k catalog items; dirac: one item of its own, added to the catalog (stronger)",
    )
    audit.add_argument(
        "--planted-bug",
        type=float,
        default=1.0,
        metavar="DIVISOR",
        help="test the audit: devices train with σ / DIVISOR while ledgers record σ (expect FAIL)",
    )
    audit.add_argument("--guesses", type=int, help="fix the guesses per side (default: Bonferroni-corrected grid)")
    audit.add_argument("--confidence", type=float, default=0.95)
    audit.add_argument("--seed", type=int, help="seed of the canary profiles (default run.seed; coins are OS-random)")
    audit.add_argument("--central", action="store_true", help="train with the central reference, not the federation")
    audit.set_defaults(func=cmd_audit)

    layers = sub.add_parser("layers", help="build and print the interest taxonomy of a run")
    layers.add_argument("run", help="run directory")
    layers.add_argument(
        "--evaluate",
        action="store_true",
        help="also measure the layers on the run's held-out ratings (L3 lift, L2 coherence, plain vs layered lists)",
    )
    layers.set_defaults(func=cmd_layers)

    gen = sub.add_parser("generate", help="synthetic user profiles sampled from a run's model")
    gen.add_argument("run", help="run directory")
    gen.add_argument("--n", type=int, required=True, help="number of synthetic users")
    gen.add_argument("--out", required=True, help="ratings CSV to write (catalog: <stem>_catalog.csv next to it)")
    gen.add_argument("--interest", help="condition on an L2 interest id of the taxonomy, e.g. Drama/1")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--compare-to-real",
        action="store_true",
        help="also write <stem>_comparison_NOT_PRIVATE.json: exact statistics of the real ratings next to the "
        "synthetic ones (NOT private; for the operator only, never to publish)",
    )
    gen.set_defaults(func=cmd_generate)

    report = sub.add_parser("report", help="report.html of a run: utility, ε, taxonomy, census, example user")
    report.add_argument("run", help="run directory")
    report.add_argument(
        "--example-user",
        metavar="ID",
        help="show this real user's profile and recommendations instead of a synthetic one sampled from the model "
        "(NOT private: the page then holds one user's exact data)",
    )
    report.set_defaults(func=cmd_report)

    rec = sub.add_parser("recommend", help="top-N recommendations for one user, on the device's own data")
    rec.add_argument("run", help="run directory")
    rec.add_argument("--user", required=True, help="the user's original id")
    rec.add_argument("-n", type=int, default=10)
    rec.add_argument("--layered", action="store_true", help="calibrate to the user's interests, with discovery slots")
    rec.add_argument("--json", action="store_true", help="JSON output for programs")
    rec.set_defaults(func=cmd_recommend)

    bench = sub.add_parser("bench", help="benchmark table on ML-100K -> docs/benchmarks.md")
    bench.add_argument("--seeds", type=int, default=3)
    bench.add_argument("--out", default="docs/benchmarks.md")
    bench.add_argument("--runs-dir", default="runs/bench")
    bench.add_argument(
        "--only",
        action="append",
        help="run only these rows (repeatable); 'frontier': every privacy-utility frontier row; "
        "'layers': re-measure the interest layers of the runs already in --runs-dir; "
        "'deploy', 'scale', 'dp-step', 'n-scaling' and 'transport' run alone and replace only their section",
    )
    bench.add_argument("--quick", action="store_true", help="tiny synthetic version, to check the pipeline")
    bench.add_argument("--nodes", type=int, default=50, help="--only deploy: SuperNodes on loopback (default 50)")
    bench.add_argument("--rounds", type=int, default=5, help="--only deploy / scale / transport: rounds (default 5)")
    bench.add_argument(
        "--sqlite", action="store_true", help="--only deploy: SuperLink state in sqlite (default memory)"
    )
    bench.add_argument(
        "--set",
        "-s",
        action="append",
        metavar="KEY=VALUE",
        help="--only deploy / scale / n-scaling / transport: config override",
    )
    bench.add_argument(
        "--sizes", default="1000,10000,100000", help="--only n-scaling: numbers of users N, comma-separated"
    )
    bench.add_argument("--epsilon", type=float, default=2.0, help="--only n-scaling: the central ε (default 2)")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `strata` command line; return the exit status."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"strata: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
