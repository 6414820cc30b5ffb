"""Resume after a kill: the SuperLink (with its SuperExec and ServerApp) SIGKILLed mid-run.

Two real deployments of the same config on loopback: one uninterrupted; one whose SuperLink
process tree is killed right after round 1, restarted on the same sqlite database (it keeps its
registered nodes; the SuperNodes are restarted, as a device's supervisor would), and resumed by a
new `flwr run`, whose ServerApp
loads Strata's checkpoint and goes on from round 2. Privacy is off (the devices' policy allows it
here), so training is deterministic and the two final models can be compared: they agree to
float32 rounding (the float64 sums of the replies may be added in another order: the node ids and
so the reply order differ between the deployments). The resumed run's Strata run id is the
checkpoint's, and a round the devices had already answered is answered from their reply cache.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import tomli_w
import torch

from deploy.local import LocalStack, deployment_env, prepare
from deploy.processes import Processes, descendants
from shared.config import StrataConfig, load_config
from shared.run_dir import RunDir

REPO = Path(__file__).resolve().parent.parent
ROUNDS = 3


def _config() -> StrataConfig:
    return load_config(
        REPO / "configs" / "deploy-local.toml",
        [
            'data.source="synthetic"',
            "data.synthetic-users=120",
            "data.synthetic-items=60",
            f"federation.rounds={ROUNDS}",
            f"federation.eval-every={ROUNDS}",
            'federation.eval-release="none"',
            'privacy.mode="off"',
        ],
    )


def _allow_no_dp(root: Path, nodes: int) -> None:
    """This test's devices accept privacy off (a research deployment): trust `any`."""
    for i in range(nodes):
        policy = {"trust": "any", "max-epsilon": 10.0, "max-delta": 1e-4, "max-clip": 1.0, "min-noise-multiplier": 0.0}
        (root / "device-state" / str(i) / "policy.toml").write_text(tomli_w.dumps({"device-policy": policy}))


def _rounds_done(run: RunDir) -> int:
    return len(run.metrics_path.read_text().splitlines()) if run.metrics_path.is_file() else 0


def _deploy(root: Path, *, kill_after_round: int | None) -> RunDir:
    layout, certs, run_config = prepare(_config(), root, nodes=2)
    _allow_no_dp(layout.root, 2)
    run = RunDir.of(layout.run)
    with Processes(layout.logs, deployment_env(layout)) as procs:
        stack = LocalStack(layout, certs, procs)
        stack.boot(2)
        run_id = stack.submit(run_config)
        if kill_after_round is None:
            status = stack.wait(run_id, timeout_s=900)
            assert status == "finished:completed", status
            return run
        deadline = time.monotonic() + 600
        while _rounds_done(run) < kill_after_round and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _rounds_done(run) == kill_after_round
        serverapps = [
            pid
            for pid in descendants(procs.started["superlink"].pid)
            if b"flwr-serverapp" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(serverapps) == 1, serverapps
        os.kill(serverapps[0], signal.SIGKILL)  # the ServerApp dies mid-run: no goodbye, no summary
        resumed = stack.submit(run_config)  # a new `flwr run`: the ServerApp resumes from the checkpoint
        status = stack.wait(resumed, timeout_s=900)
        assert status == "finished:completed", (layout.logs / "superlink.log").read_text()[-3000:]
    return run


def test_a_killed_serverapp_resumes_from_the_checkpoint_to_the_same_model(tmp_path: Path) -> None:
    straight = _deploy(tmp_path / "straight", kill_after_round=None)
    resumed = _deploy(tmp_path / "resumed", kill_after_round=1)

    metrics = resumed.read_metrics()
    assert [m["round"] for m in metrics] == list(range(1, ROUNDS + 1))  # no round lost or repeated
    assert all(m["train"]["clients"] == 2 for m in metrics), metrics  # every round from both devices
    assert (resumed.read_summary() or {})["rounds"] == ROUNDS
    a, b = straight.load_weights(), resumed.load_weights()
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a), worst
