"""`strata bench --only deploy`: a loopback deployment under load, measured.

N SuperNodes (TLS + node authentication) × R rounds of local DP on ML-100K split one hub per
node, through `deploy.local`. Measured: seconds per round (the ServerApp's own round times),
failures, each SuperNode's peak resident memory (its process tree: the SuperNode and the
ClientApp processes it starts, sampled every 0.5 s from /proc), the SuperLink's, and the bytes
of one instruction and one reply (their serialized Flower records; TLS and HTTP framing not
counted). The result replaces the marked section of the benchmark file, leaving the rest alone.
"""

from __future__ import annotations

import logging
import platform
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import ArrayRecord
from flwr.common.serde import recorddict_to_proto

from shared.config import StrataConfig
from shared.protocol import TrainIns, TrainRes
from shared.run_dir import JsonDict, RunDir

from .local import LocalStack, collect_keys, collect_ledgers, deployment_env, prepare
from .processes import Processes, descendants

log = logging.getLogger(__name__)

START, END = "<!-- deploy-bench:start -->", "<!-- deploy-bench:end -->"
MIN_AVAILABLE_BYTES = 1.5 * 2**30
"""Stop the benchmark (and say so) when the machine has less memory available than this."""


def _memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) bytes of one process ((0, 0) when it is gone). PSS shares shared pages out among
    the processes that map them, so it adds up across processes; RSS counts them in each."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0, 0
    fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in rollup[1:] if line.split()[1:2]}
    return fields.get("Rss", 0), fields.get("Pss", 0)


def _available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Footprint:
    """Peak resident memory of process trees, sampled in a background thread."""

    roots: dict[str, int]
    peaks: dict[str, int] = field(default_factory=dict)
    """Peak RSS of each tree."""
    pss_peaks: dict[str, int] = field(default_factory=dict)
    """Peak PSS of each tree."""
    total_pss_peak: int = 0
    """Peak PSS of all trees together: what the deployment costs the machine."""
    low_memory: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        """Take one sample of every tree."""
        total_pss = 0
        for name, pid in self.roots.items():
            sizes = [_memory(p) for p in (pid, *descendants(pid))]
            rss, pss = sum(r for r, _ in sizes), sum(p for _, p in sizes)
            self.peaks[name] = max(self.peaks.get(name, 0), rss)
            self.pss_peaks[name] = max(self.pss_peaks.get(name, 0), pss)
            total_pss += pss
        self.total_pss_peak = max(self.total_pss_peak, total_pss)
        self.low_memory = self.low_memory or _available() < MIN_AVAILABLE_BYTES

    def run(self) -> None:
        """Sample until stopped."""
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.5)

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()


def message_bytes(run: RunDir) -> tuple[int, int]:
    """Return the serialized bytes of one training instruction (global weights) and one reply (new weights)."""
    weights = run.load_weights()
    down = TrainIns(arrays=ArrayRecord(weights), server_round=1, run_id="x" * 12).to_record()
    up = TrainRes(weights=weights, epsilon=1.0, key="0" * 64).to_record()
    return recorddict_to_proto(down).ByteSize(), recorddict_to_proto(up).ByteSize()


def run_deploy_bench(
    config: StrataConfig, root: Path, *, nodes: int, persist: bool = False, timeout_s: float = 3600.0
) -> JsonDict:
    """Deploy `nodes` SuperNodes on loopback, run the config's rounds, and measure them.

    The SuperLink keeps its state in memory unless `persist`: with sqlite state, 20 SuperNodes on
    this 2-core machine made Flower 1.42's SuperLink fail with "database is locked" and the run
    ended `finished:failed` before round 1 (measured 2026-12-02)."""
    layout, certs, run_config = prepare(config, root, nodes=nodes)
    run = RunDir.of(layout.run)
    started = time.perf_counter()
    status = "not started"
    with Processes(layout.logs, deployment_env(layout)) as procs:
        stack = LocalStack(layout, certs, procs)
        nodes_started = stack.boot(nodes, persist=persist)
        roots = {"superlink": procs.started["superlink"].pid}
        roots.update({f"supernode-{i}": node.pid for i, node in enumerate(nodes_started)})
        footprint = Footprint(roots)
        sampler = threading.Thread(target=footprint.run, daemon=True)
        sampler.start()
        run_id = stack.submit(run_config)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                status = stack.status(run_id)
                if status.startswith("finished") or footprint.low_memory:
                    break
                time.sleep(5.0)  # each poll starts a `flwr` process
        finally:
            footprint.stop()
            sampler.join()
    if footprint.low_memory:
        status = f"stopped: less than {MIN_AVAILABLE_BYTES / 2**30:.1f} GiB of memory left"
    collect_ledgers(layout, nodes)
    collect_keys(layout, certs)
    metrics = run.read_metrics() if run.metrics_path.is_file() else []
    node_peaks = [v for k, v in footprint.peaks.items() if k.startswith("supernode-")]
    node_pss = [v for k, v in footprint.pss_peaks.items() if k.startswith("supernode-")]
    down, up = message_bytes(run) if run.weights_path.is_file() else (0, 0)
    return {
        "nodes": nodes,
        "state": "sqlite" if persist else "in memory",
        "rounds": config.federation.rounds,
        "fraction_train": config.federation.fraction_train,
        "fraction_evaluate": config.federation.fraction_evaluate,
        "status": status,
        "rounds_done": len(metrics),
        "round_s": [float(m["round_s"]) for m in metrics],
        "failures": int(sum(m["train"].get("failed", 0) + m["train"].get("refused", 0) for m in metrics)),
        "accepted": [int(m["train"].get("clients", 0)) for m in metrics],
        "supernode_peak_rss": node_peaks,
        "supernode_peak_pss": node_pss,
        "superlink_peak_rss": footprint.peaks.get("superlink", 0),
        "total_peak_pss": footprint.total_pss_peak,
        "bytes_down_per_node_round": down,
        "bytes_up_per_node_round": up,
        "wall_s": round(time.perf_counter() - started, 1),
        "run_dir": str(run),
    }


def render_deploy(result: JsonDict, *, command: str) -> str:
    """Return the markdown section of a deploy benchmark."""
    mib = 2**20
    rounds = result["round_s"]
    peaks = result["supernode_peak_rss"] or [0]
    intro = (
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}, machine: {platform.machine()} "
        f"{platform.system()}, the same shared 2-core machine. Real processes on loopback: one SuperLink "
        f"(TLS, node authentication, state {result['state']}) and {result['nodes']} SuperNodes, local DP-SGD on "
        "ML-100K split "
        f"one hub per node (`configs/deploy-local.toml`); each round samples fraction-train "
        f"{result.get('fraction_train', 1.0):g} of the nodes to train and fraction-evaluate "
        f"{result.get('fraction_evaluate', 1.0):g} to evaluate."
    )
    per_round = f"{statistics.median(rounds):.1f} ({min(rounds):.1f}–{max(rounds):.1f})" if rounds else "—"
    node_rss = f"{statistics.median(peaks) / mib:.0f} MiB ({max(peaks) / mib:.0f} MiB)"
    pss = result["supernode_peak_pss"] or [0]
    node_pss = f"{statistics.median(pss) / mib:.0f} MiB ({max(pss) / mib:.0f} MiB)"
    traffic = f"{result['bytes_down_per_node_round']:,} / {result['bytes_up_per_node_round']:,}"
    lines = [
        START,
        "## Deployment under load (`strata bench --only deploy`)",
        "",
        intro,
        "",
        "| Figure | Value |",
        "|---|---|",
        f"| Status | {result['status']} ({result['rounds_done']} of {result['rounds']} rounds) |",
        f"| Failed or refused replies | {result['failures']} (accepted per round: {result['accepted']}) |",
        f"| Seconds per round, median (min–max) | {per_round}; each: {[round(r) for r in rounds]} |",
        f"| SuperNode peak RSS (node + its ClientApp), median (max) | {node_rss} |",
        f"| SuperNode peak PSS (shared pages split among processes), median (max) | {node_pss} |",
        f"| All processes' peak PSS together | {result['total_peak_pss'] / 2**30:.2f} GiB |",
        f"| SuperLink peak RSS (with SuperExec and ServerApp) | {result['superlink_peak_rss'] / mib:.0f} MiB |",
        f"| Bytes down / up per node per round (serialized records) | {traffic} |",
        f"| Wall time | {result['wall_s']:.0f} s |",
        "",
        END,
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str, *, start: str = START, end: str = END) -> None:
    """Replace the section of `path` between `start` and `end` (the deploy section by default) or
    append it, leaving everything else as it is."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")
