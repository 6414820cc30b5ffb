"""Faults in a real deployment: SuperNodes SIGKILLed in the middle of a run.

Real processes on loopback (SuperLink with TLS and node authentication, three SuperNodes,
min-train-clients = 2). After round 1 one SuperNode is killed with its ClientApp: the SuperLink
answers for it with an error reply (after about a minute of missed heartbeats), and round 2 must
complete with the other two, the failure counted and logged against the right device, never
averaged in. After round 2 a second one is killed: round 3 has one usable reply, below the
minimum, and must be skipped (the model of round 2 is kept), and the run must still finish.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from deploy.local import LocalStack, deployment_env, prepare
from deploy.processes import Processes
from shared.config import load_config
from shared.run_dir import RunDir

REPO = Path(__file__).resolve().parent.parent


def _wait_for_rounds(run: RunDir, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if run.metrics_path.is_file() and len(run.metrics_path.read_text().splitlines()) >= n:
            return
        time.sleep(0.5)
    raise TimeoutError(f"round {n} did not finish within {timeout_s:.0f} s")


def test_a_supernode_killed_mid_run_fails_its_round_and_the_others_go_on(tmp_path: Path) -> None:
    config = load_config(
        REPO / "configs" / "deploy-local.toml",
        [
            'data.source="synthetic"',
            "data.synthetic-users=200",
            "data.synthetic-items=80",
            "federation.rounds=3",
            "federation.eval-every=3",
            'federation.eval-release="none"',
            "federation.min-train-clients=2",
        ],
    )
    layout, certs, run_config = prepare(config, tmp_path / "deployment", nodes=3)
    run = RunDir.of(layout.run)
    with Processes(layout.logs, deployment_env(layout)) as procs:
        stack = LocalStack(layout, certs, procs)
        stack.boot(3)
        run_id = stack.submit(run_config)
        _wait_for_rounds(run, 1, timeout_s=600)
        procs.kill("supernode-2")  # round 2's instructions are already on their way
        _wait_for_rounds(run, 2, timeout_s=600)
        procs.kill("supernode-1")
        status = stack.wait(run_id, timeout_s=900)
    assert status == "finished:completed", (layout.logs / "superlink.log").read_text()[-3000:]

    metrics = run.read_metrics()
    assert [m["round"] for m in metrics] == [1, 2, 3]
    assert metrics[0]["train"]["clients"] == 3
    second = metrics[1]["train"]
    assert (second["clients"], second["failed"]) == (2, 1), metrics[1]  # the lost node counted, not averaged
    assert not metrics[1]["skipped"]
    third = metrics[2]["train"]
    assert metrics[2]["skipped"] and third["clients"] == 1 and third["failed"] >= 1, metrics[2]  # below the minimum
    weights = run.load_weights()
    assert all(torch.isfinite(w).all() for w in weights.values())

    # The server's signed log names the device that failed: the node that answered round 1 but not round 2.
    log = [json.loads(line) for line in run.instruction_log_path.read_text().splitlines()]
    train = [r for r in log if r["kind"] == "train"]
    by_round = {rnd: {r["node"]: r["outcome"] for r in train if r["round"] == rnd} for rnd in (1, 2)}
    assert sorted(by_round[1].values()) == ["accepted"] * 3
    assert sorted(by_round[2].values()) == ["accepted", "accepted", "failed"]
    lost = next(node for node, outcome in by_round[2].items() if outcome == "failed")
    assert lost in by_round[1]  # matched to the instruction it got, not to the SuperLink's own node id
