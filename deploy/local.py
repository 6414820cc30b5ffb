"""`strata deploy-local`: the whole deployment on loopback, as real processes.

    certificates and keys (strata certs) → one ratings CSV per device (split-devices) →
    SuperLink (TLS, node authentication, sqlite state) → `flwr supernode register` of each node
    key → N SuperNodes, each with its own data, catalog, ledger directory, policy and signing
    key → `flwr run` with the server's config → progress until the run finishes → the devices'
    ledgers collected into the run directory for the auditor → every process stopped by PID.

The server's config names only the catalog (`data.source = "devices"`) and the public
population; the ratings stay in the devices' files. Everything lives under one directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from shared.config import StrataConfig
from shared.data.device_files import CATALOG_NAME, split_devices
from shared.data.source import DEVICES, load_source
from shared.privacy.signing import public_key_path
from shared.run_dir import JsonDict, RunDir, client_ledger_name

from .certs import CertFiles, make_certs
from .processes import Processes, free_port, wait_for_port

log = logging.getLogger(__name__)

CONNECTION = "strata-local"
"""The name of the SuperLink connection in the deployment's private FLWR_HOME."""
APP_DIR = Path(__file__).resolve().parent.parent
"""The Flower app (this repository's pyproject.toml) that `flwr run` submits."""
DEVICE_POLICY = {
    "trust": "none",
    "max-epsilon": 10.0,
    "max-delta": 1e-4,
    "max-clip": 1.0,
    "min-noise-multiplier": 0.5,
}
"""The policy file each loopback device holds: local DP required, ε ≤ 10, δ ≤ 1e-4, clip ≤ 1."""


def _bin(name: str) -> str:
    """Return the path of a console script of this Python environment (flwr, flower-superlink, ...)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass(frozen=True)
class Layout:
    """Where a loopback deployment keeps everything, under `root`."""

    root: Path

    @property
    def certs(self) -> Path:
        """`strata certs` output."""
        return self.root / "certs"

    @property
    def devices(self) -> Path:
        """The device ratings files and the catalog."""
        return self.root / "devices"

    @property
    def flwr_home(self) -> Path:
        """The private FLWR_HOME with the connection (and Flower's app cache)."""
        return self.root / "flwr-home"

    @property
    def logs(self) -> Path:
        """One log file per process."""
        return self.root / "logs"

    @property
    def run(self) -> Path:
        """The server's run directory."""
        return self.root / "run"

    def device_state(self, i: int) -> Path:
        """Device `i`'s own directory: its ledger and policy."""
        return self.root / "device-state" / str(i)


def node_config(layout: Layout, certs: CertFiles, i: int) -> str:
    """Return the `--node-config` of device `i`: its data, the catalog, its ledger, policy and signing key."""
    state = layout.device_state(i)
    values = {
        "client-id": str(i),
        "data-path": str(layout.devices / f"{i}.csv"),
        "catalog-path": str(layout.devices / CATALOG_NAME),
        "ledger-dir": str(state / "ledgers"),
        "privacy-policy": str(state / "policy.toml"),
        "signing-key": str(certs.signing_key(i)),
    }
    return " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


def server_config(config: StrataConfig, layout: Layout, *, nodes: int, population: int) -> StrataConfig:
    """Return the server's config: catalog only, the public population, one hub per node, no oracle."""
    return config.replace(
        {
            "data.source": DEVICES,
            "data.catalog": str(layout.devices / CATALOG_NAME),
            "privacy.population": population,
            "federation.topology": "hub",
            "federation.num-hubs": nodes,
            "federation.oracle-eval": False,
            "federation.min-available-clients": nodes,
            "run.out": str(layout.run),
        }
    )


class LocalStack:
    """A SuperLink and its SuperNodes on loopback; `flwr` talks to it through a private FLWR_HOME."""

    def __init__(self, layout: Layout, certs: CertFiles, processes: Processes, *, tls: bool = True) -> None:
        self.layout, self.certs, self.procs, self.tls = layout, certs, processes, tls
        self.port = free_port()
        self.env = processes.env

    def write_connection(self) -> None:
        """Write `$FLWR_HOME/config.toml` with the connection to this SuperLink."""
        conn: dict[str, object] = {"address": f"127.0.0.1:{self.port}"}
        if self.tls:
            conn["root-certificates"] = str(self.certs.ca_cert)
        else:
            conn["insecure"] = True
        self.layout.flwr_home.mkdir(parents=True, exist_ok=True)
        text = tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}})
        (self.layout.flwr_home / "config.toml").write_text(text, encoding="utf-8")

    def start_superlink(self, *, timeout_s: float = 60.0, name: str = "superlink", persist: bool = True) -> None:
        """Start the SuperLink and wait until it listens. `persist`: sqlite state under root (a restart
        keeps its nodes and runs); else Flower's in-memory state (lost with the process)."""
        argv = [_bin("flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port)]
        argv.append("--disable-runtime-dependency-installation")
        if persist:
            argv += ["--database", str(self.layout.root / "state.db")]
        if self.tls:
            argv += [
                "--ssl-ca-certfile",
                str(self.certs.ca_cert),
                "--ssl-certfile",
                str(self.certs.server_cert),
                "--ssl-keyfile",
                str(self.certs.server_key),
                "--enable-supernode-auth",
            ]
        else:
            argv.append("--insecure")
        process = self.procs.start(name, argv)
        wait_for_port(self.port, process, timeout_s=timeout_s, what="the SuperLink")

    def flwr(self, *args: str, timeout_s: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one `flwr` command against this stack's FLWR_HOME."""
        result = subprocess.run(
            [_bin("flwr"), *args], env=self.env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"`flwr {' '.join(args)}` failed ({result.returncode}): {result.stdout}{result.stderr}")
        return result

    def register(self, i: int) -> None:
        """Register SuperNode `i`'s public key with the SuperLink (`flwr supernode register`)."""
        self.flwr("supernode", "register", str(self.certs.node_public_key(i)), CONNECTION)

    def start_supernode(
        self,
        i: int,
        *,
        key: Path | None = None,
        insecure: bool = False,
        name: str | None = None,
        max_retries: int | None = 3,
    ) -> subprocess.Popen[bytes]:
        """Start SuperNode `i` with its node config (its key, or `key`; `insecure`: no TLS at all;
        `max_retries` None: reconnect forever, e.g. across a SuperLink restart)."""
        argv = [
            _bin("flower-supernode"),
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--port",
            str(free_port()),
            "--node-config",
            node_config(self.layout, self.certs, i),
            "--max-retries",
            "3",
        ]
        if insecure or not self.tls:
            argv.append("--insecure")
        else:
            argv += [
                "--root-certificates",
                str(self.certs.ca_cert),
                "--auth-supernode-private-key",
                str(key or self.certs.node_key(i)),
            ]
        return self.procs.start(name or f"supernode-{i}", argv)

    def boot(self, nodes: int, *, persist: bool = True) -> list[subprocess.Popen[bytes]]:
        """Write the connection, start the SuperLink, register every node key (with TLS) and start
        SuperNodes 0..nodes-1; return the SuperNode processes."""
        self.write_connection()
        self.start_superlink(persist=persist)
        if self.tls:
            for i in range(nodes):
                self.register(i)
        return [self.start_supernode(i) for i in range(nodes)]

    def submit(self, run_config: Path, *, timeout_s: float = 600.0) -> int:
        """`flwr run` the app with `run_config`; return the run id. Generous timeout: just after a
        boot, dozens of SuperNodes starting up leave a small machine's CPUs little for `flwr`."""
        result = self.flwr(
            "run", str(APP_DIR), CONNECTION, "--run-config", str(run_config), "--format", "json", timeout_s=timeout_s
        )
        try:
            return int(json.loads(result.stdout)["run-id"])
        except (ValueError, KeyError) as exc:
            raise RuntimeError(f"cannot read the run id from `flwr run`: {result.stdout}{result.stderr}") from exc

    def status(self, run_id: int) -> str:
        """Return the run's status as `flwr ls` shows it (e.g. `running`, `finished:completed`)."""
        result = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json", timeout_s=300.0)
        runs = json.loads(result.stdout).get("runs", [])
        return str(runs[0]["status"]) if runs else "unknown"

    def wait(self, run_id: int, *, timeout_s: float, progress: Path | None = None) -> str:
        """Poll until the run finishes (or time runs out); log its rounds from `progress` (metrics.jsonl)."""
        deadline, shown = time.monotonic() + timeout_s, 0
        while time.monotonic() < deadline:
            status = self.status(run_id)
            if progress is not None and progress.is_file():
                lines = progress.read_text(encoding="utf-8").splitlines()
                for line in lines[shown:]:
                    entry = json.loads(line)
                    log.info("run %d: round %s done (ε %.3f)", run_id, entry.get("round"), entry.get("epsilon", 0.0))
                shown = len(lines)
            if status.startswith("finished"):
                return status
            time.sleep(3.0)  # each poll starts a `flwr` process: keep it rare
        raise TimeoutError(f"run {run_id} did not finish within {timeout_s:.0f} s (last status {status!r}).")


def deployment_env(layout: Layout) -> dict[str, str]:
    """Return the environment of every process: a private FLWR_HOME, no runtime dependency installation."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLWR_HOME"] = str(layout.flwr_home)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def prepare(config: StrataConfig, root: Path, *, nodes: int) -> tuple[Layout, CertFiles, Path]:
    """Certificates, device files, device policies and the server's run-config file; return them."""
    layout = Layout(Path(root).resolve())
    if layout.root.exists() and any(layout.root.iterdir()):
        raise FileExistsError(f"{layout.root} is not empty: a deployment starts in a fresh directory.")
    if nodes < 1:
        raise ValueError(f"--nodes must be at least 1; got {nodes}.")
    certs = make_certs(layout.certs, nodes=nodes)
    data = load_source(config.data, config.run.seed)
    split_devices(data, layout.devices, topology="hub", num_hubs=nodes, seed=config.run.seed)
    for i in range(nodes):
        layout.device_state(i).mkdir(parents=True)
        (layout.device_state(i) / "policy.toml").write_text(
            tomli_w.dumps({"device-policy": DEVICE_POLICY}), encoding="utf-8"
        )
    served = server_config(config, layout, nodes=nodes, population=data.n_users)
    run_config = layout.root / "run-config.toml"
    run_config.write_text(tomli_w.dumps(dict(served.to_flat())), encoding="utf-8")
    return layout, certs, run_config


def collect_ledgers(layout: Layout, nodes: int) -> list[Path]:
    """Copy each device's ledger into the run directory, as an auditor collects them from the devices."""
    run = RunDir.of(layout.run)
    run.ledger_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for i in range(nodes):
        source = layout.device_state(i) / "ledgers" / client_ledger_name(str(i))
        if source.is_file():
            copied.append(Path(shutil.copy2(source, run.ledger_dir / source.name)))
        else:
            log.warning("device %d has no ledger at %s", i, source)
    return copied


def collect_keys(layout: Layout, certs: CertFiles) -> Path:
    """Return the auditor's key directory: each device's public signing key (from `strata certs`, as the
    devices published it) and the server's (from its run directory)."""
    keys = layout.root / "audit-keys"
    keys.mkdir(exist_ok=True)
    for public in sorted(certs.public_keys.glob("*.pem.pub")):
        shutil.copy2(public, keys / public.name)
    run = RunDir.of(layout.run)
    server_public = public_key_path(run.signing_key_path("server"))
    if server_public.is_file():
        shutil.copy2(server_public, keys / server_public.name)
    return keys


def deploy_local(
    config: StrataConfig, root: Path, *, nodes: int, tls: bool = True, timeout_s: float = 1800.0
) -> JsonDict:
    """Run the deployment on loopback end to end; return what happened (status, run dir, files)."""
    layout, certs, run_config = prepare(config, root, nodes=nodes)
    started = time.perf_counter()
    with Processes(layout.logs, deployment_env(layout)) as procs:
        stack = LocalStack(layout, certs, procs, tls=tls)
        stack.boot(nodes)
        run_id = stack.submit(run_config)
        log.info("submitted run %d to the SuperLink at 127.0.0.1:%d (%d SuperNodes)", run_id, stack.port, nodes)
        status = stack.wait(run_id, timeout_s=timeout_s, progress=RunDir.of(layout.run).metrics_path)
    ledgers = collect_ledgers(layout, nodes)
    summary = RunDir.of(layout.run).read_summary() or {}
    return {
        "rounds_trained": summary.get("rounds"),
        "status": status,
        "run_id": run_id,
        "run_dir": str(layout.run),
        "ledgers": [str(p) for p in ledgers],
        "keys": str(collect_keys(layout, certs)),
        "logs": str(layout.logs),
        "wall_s": round(time.perf_counter() - started, 1),
    }
