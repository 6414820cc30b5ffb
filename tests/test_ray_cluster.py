"""`strata simulate --ray-address`: a run on a two-node Ray cluster started on loopback.

The cluster is two real `ray start` processes (a head and a worker node) with one CPU each;
the virtual clients need one CPU each, so Flower's actor pool of two can only be placed with
one actor on each node. The test reads where the actors ran from the cluster's own records.
Both nodes are stopped by their process groups (never `ray stop`, which stops every Ray on
the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from shared.config import StrataConfig
from shared.run_dir import RunDir
from simulation.simulate import simulate

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a `ray start --block` process and everything it started (its own process group)."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)  # any process of the group left?
            except ProcessLookupError:
                proc.wait()
                return
            time.sleep(0.2)
    proc.wait()


def _cluster_cpus(address: str) -> float:
    """CPUs the cluster at `address` reports, from a separate driver process (0 if unreachable)."""
    probe = (
        f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
        "print(ray.cluster_resources().get('CPU', 0))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    return float(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else 0.0


def _start(cmd: list[str], log: IO[bytes], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start `cmd` in a process group of its own, so that it and its children stop together."""
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


@pytest.fixture
def two_node_cluster() -> Iterator[str]:
    """A Ray head and one worker node on 127.0.0.1, one CPU each; yields the head's address."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    procs: list[subprocess.Popen[bytes]] = []
    logs = [open(Path(temp) / f"{name}.log", "wb") for name in ("head", "worker")]  # noqa: SIM115
    try:
        head = [RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", temp]
        head += ["--ray-client-server-port", str(_free_port())]
        procs.append(_start(head + common, logs[0], env))
        deadline = time.monotonic() + 90
        while _cluster_cpus(address) < 1:
            if time.monotonic() > deadline or procs[0].poll() is not None:
                pytest.fail(f"the Ray head did not start: {(Path(temp) / 'head.log').read_text()[-2000:]}")
            time.sleep(1)
        worker = [RAY, "start", "--address", address]
        procs.append(_start(worker + common, logs[1], env))
        while _cluster_cpus(address) < 2:
            if time.monotonic() > deadline or procs[1].poll() is not None:
                pytest.fail(f"the Ray worker node did not join: {(Path(temp) / 'worker.log').read_text()[-2000:]}")
            time.sleep(1)
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for log in logs:
            log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _client_actor_nodes(address: str) -> list[str]:
    """Node IDs of every Flower ClientApp actor the cluster has run (its records of dead actors)."""
    probe = (
        "import ray\n"
        "from ray._private import state\n"
        f"ray.init(address={address!r}, logging_level='ERROR')\n"
        "for a in state.actors().values():\n"
        "    if a['ActorClassName'].endswith('ClientAppActor'):\n"
        "        print(a['Address']['NodeID'])\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.split()


def test_a_simulation_runs_on_both_nodes_of_a_ray_cluster(tiny_config: StrataConfig, two_node_cluster: str) -> None:
    cfg = tiny_config.replace(
        {"federation.num-cpus-per-client": 1.0, "privacy.mode": "local", "privacy.noise-multiplier": 1.0}
    )
    summary = simulate(cfg, ray_address=two_node_cluster)
    run = RunDir.of(cfg.run_dir)
    assert summary["rounds"] == cfg.federation.rounds
    assert [line["train"]["clients"] for line in run.read_metrics()] == [4, 4]
    assert len(run.client_ledger_paths()) == 4  # every hub trained, noised and ledgered as without a cluster
    nodes = _client_actor_nodes(two_node_cluster)
    assert len(nodes) == 2, f"expected one ClientApp actor per CPU of the cluster, found {nodes}"
    assert len(set(nodes)) == 2, f"both actors ran on one node: {nodes}"
