"""`strata bench`: the benchmark table, or one of the sections that run alone (`--only deploy`,
`--only scale`, `--only dp-step`, `--only n-scaling`, `--only transport`), each replacing only its
own marked part of `--out`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deploy.bench import END as DEPLOY_END
from deploy.bench import START as DEPLOY_START
from deploy.bench import render_deploy, run_deploy_bench, write_section
from shared.config import load_config
from shared.run_dir import JsonDict

from . import dp_step_bench, n_scaling_bench, scale_bench, transport_bench
from .bench import run_bench


def _command() -> str:
    """Return the command line as typed (for the section's provenance line)."""
    return "strata " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("strata") else "strata bench"


def _publish(args: argparse.Namespace, section: str, markers: tuple[str, str], result: JsonDict, raw: Path) -> None:
    """Write `section` between its markers in `--out`, the raw figures to `raw`, and print it."""
    write_section(Path(args.out), section, start=markers[0], end=markers[1])
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(result, indent=1))
    print(section)


def _bench_scale(args: argparse.Namespace) -> int:
    root = Path(args.runs_dir) / "scale"
    result = scale_bench.run_scale_bench(root, rounds=args.rounds, overrides=args.set)
    section = scale_bench.render_scale(result, command=_command())
    _publish(args, section, (scale_bench.START, scale_bench.END), result, root / "scale-bench.json")
    return 0


def _bench_dp_step(args: argparse.Namespace) -> int:
    result = dp_step_bench.run_dp_step_bench()
    section = dp_step_bench.render_dp_step(result, command=_command())
    raw = Path(args.runs_dir) / "dp-step-bench.json"
    _publish(args, section, (dp_step_bench.START, dp_step_bench.END), result, raw)
    return 0


def _bench_n_scaling(args: argparse.Namespace) -> int:
    try:
        sizes = tuple(int(n) for n in args.sizes.split(","))
    except ValueError:
        raise ValueError(f"--sizes must be comma-separated numbers of users, got {args.sizes!r}.") from None
    if min(sizes) < 2:
        raise ValueError(f"--sizes: every N must be at least 2 users, got {args.sizes!r}.")
    root = Path(args.runs_dir) / "n-scaling"
    result = n_scaling_bench.run_n_scaling_bench(
        root, sizes=sizes, epsilon=args.epsilon, seeds=args.seeds, overrides=args.set
    )
    section, svg = n_scaling_bench.render_n_scaling(result, command=_command())
    (Path(args.out).parent / "n-scaling.svg").write_text(svg)
    _publish(args, section, (n_scaling_bench.START, n_scaling_bench.END), result, root / "n-scaling-bench.json")
    return 0


def _bench_transport(args: argparse.Namespace) -> int:
    root = Path(args.runs_dir) / "transport"
    result = transport_bench.run_transport_bench(root, rounds=args.rounds, overrides=args.set)
    section = transport_bench.render_transport(result, command=_command())
    _publish(args, section, (transport_bench.START, transport_bench.END), result, root / "transport-bench.json")
    return 0


def _bench_deploy(args: argparse.Namespace) -> int:
    config = load_config("configs/deploy-local.toml", [f"federation.rounds={args.rounds}", *(args.set or [])])
    root = Path(args.runs_dir) / f"deploy-{args.nodes}"
    result = run_deploy_bench(config, root, nodes=args.nodes, persist=args.sqlite)
    section = render_deploy(result, command=_command())
    _publish(args, section, (DEPLOY_START, DEPLOY_END), result, root / "deploy-bench.json")
    return 0 if result["status"] == "finished:completed" and result["failures"] == 0 else 1


ALONE = {
    "deploy": _bench_deploy,
    "scale": _bench_scale,
    "dp-step": _bench_dp_step,
    "n-scaling": _bench_n_scaling,
    "transport": _bench_transport,
}
"""Benchmarks that run alone and write their own section."""


def cmd_bench(args: argparse.Namespace) -> int:
    """Run `strata bench`: the benchmark table, or one section that runs alone."""
    for alone, bench in ALONE.items():
        if args.only and alone in args.only:
            if args.only != [alone]:
                print(f"--only {alone} runs alone; give the other rows separately.", file=sys.stderr)
                return 2
            return bench(args)
    run_bench(seeds=args.seeds, out=Path(args.out), runs_dir=Path(args.runs_dir), only=args.only, quick=args.quick)
    return 0
