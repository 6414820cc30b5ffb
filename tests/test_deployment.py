"""Deployment: certificates, device files, a server that reads only the catalog, and the real stack.

The last test starts real processes on loopback — a SuperLink with TLS, node authentication and
sqlite state, and SuperNodes each holding its own ratings file, policy, ledger and signing key —
runs two rounds of local DP through `flwr run`, verifies the collected ledgers, checks that an
unregistered node and an insecure node are refused, and that every process it started is gone.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key

from deploy.certs import make_certs
from deploy.local import LocalStack, collect_keys, collect_ledgers, deployment_env, prepare
from deploy.processes import Processes, descendants
from server.privacy_report import build_privacy_report
from shared.config import DataConfig, load_config
from shared.data.csv_loader import load_catalog_csv, load_csv
from shared.data.device_files import CATALOG_NAME, split_devices
from shared.data.source import DEVICES, load_catalog, load_source
from shared.data.synthetic import make_synthetic
from shared.privacy.signing import SigningKey
from shared.run_dir import RunDir, pinned_keys

REPO = Path(__file__).resolve().parent.parent
REFUSED = "Exit Code: 305"
"""What Flower logs for a SuperNode the SuperLink does not admit ("Failed to activate SuperNode"); the
process then shuts its local API down and exits with status 1."""


def test_certs_chain_sans_and_keys_load_as_flower_loads_them(tmp_path: Path) -> None:
    files = make_certs(tmp_path / "certs", nodes=2, sans=("edge.example", "10.0.0.5"))
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the chain is broken
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "edge.example"}
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1", "10.0.0.5"}
    assert isinstance(load_pem_private_key(files.server_key.read_bytes(), None), ec.EllipticCurvePrivateKey)
    # SuperNode keys: Flower's own loaders (flower-supernode and `flwr supernode register`).
    from flwr.cli.supernode.register import try_load_public_key

    for i in range(2):
        assert isinstance(load_ssh_private_key(files.node_key(i).read_bytes(), None), ec.EllipticCurvePrivateKey)
        assert try_load_public_key(files.node_public_key(i))
    # Device signing keys: the devices' private keys, and the public ones an auditor pins.
    pinned = pinned_keys(files.public_keys)
    assert pinned == {f"client-{i}": SigningKey.load(files.signing_key(i)).public_hex() for i in range(2)}
    for private in (files.root / "ca.key", files.server_key, files.node_key(0), files.signing_key(1)):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    with pytest.raises(FileExistsError, match="never overwritten"):
        make_certs(tmp_path / "certs", nodes=1)


def test_split_devices_writes_every_rating_once_and_the_catalog(tmp_path: Path) -> None:
    data = make_synthetic(n_users=50, n_items=40, n_categories=2, subs_per_category=2, seed=1)[0]
    out = tmp_path / "devices"
    files = split_devices(data, out, topology="hub", num_hubs=3, seed=4)
    assert [f.name for f in files] == ["0.csv", "1.csv", "2.csv"]
    parts = [load_csv(f, out / CATALOG_NAME) for f in files]
    assert sum(p.n_ratings for p in parts) == data.n_ratings
    users = [set(p.user_ids) for p in parts]
    assert set().union(*users) == set(data.user_ids) and sum(map(len, users)) == data.n_users
    assert load_catalog_csv(out / CATALOG_NAME) == data.catalog
    assert all(p.catalog == data.catalog for p in parts)  # every device sees the same item index
    with pytest.raises(FileExistsError, match="not empty"):
        split_devices(data, out, topology="device")


def test_the_server_reads_only_the_catalog(tmp_path: Path) -> None:
    """No server module calls the ratings loader, and a server config names no ratings at all."""
    offenders = [p for p in (REPO / "server").rglob("*.py") if "load_source" in p.read_text(encoding="utf-8")]
    assert offenders == []
    data = make_synthetic(n_users=20, n_items=30, n_categories=2, subs_per_category=2, seed=0)[0]
    split_devices(data, tmp_path / "d", topology="hub", num_hubs=2)
    served = DataConfig(source=DEVICES, catalog=str(tmp_path / "d" / CATALOG_NAME))
    assert load_catalog(served, 0) == data.catalog
    with pytest.raises(ValueError, match="ratings live on the devices"):
        load_source(served, 0)
    with pytest.raises(ValueError, match="no public catalog"):
        load_catalog(DataConfig(source=str(tmp_path / "d" / "0.csv")), 0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_the_device_app_does_not_load_the_simulation_data_stack() -> None:
    """Every message starts a fresh ClientApp process on a SuperNode: it must not import pandas or
    pyarrow (about 95 MiB), which only the MovieLens loaders of simulation use."""
    probe = "import sys, client.client_app; print(sorted({'pandas', 'pyarrow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_a_real_deployment_with_tls_and_node_auth(tmp_path: Path) -> None:
    config = load_config(
        REPO / "configs" / "deploy-local.toml",
        [
            'data.source="synthetic"',
            "data.synthetic-users=200",
            "data.synthetic-items=80",
            "federation.rounds=2",
            "federation.eval-every=2",
        ],
    )
    layout, certs, run_config = prepare(config, tmp_path / "deployment", nodes=3)
    stranger = make_certs(tmp_path / "stranger", nodes=1)  # a key the SuperLink never registered
    seen: set[int] = set()
    with Processes(layout.logs, deployment_env(layout)) as procs:
        stack = LocalStack(layout, certs, procs)
        stack.write_connection()
        stack.start_superlink()
        for i in range(3):
            stack.register(i)
        unregistered = stack.start_supernode(0, key=stranger.node_key(0), name="unregistered")
        insecure = stack.start_supernode(1, insecure=True, name="insecure")
        for name, node in (("unregistered", unregistered), ("insecure", insecure)):
            code = node.wait(timeout=180)
            text = procs.log_path(name).read_text(errors="replace")
            assert code != 0 and REFUSED in text, (name, code, text[-2000:])
        for i in range(3):
            stack.start_supernode(i)
        run_id = stack.submit(run_config)
        status = stack.wait(run_id, timeout_s=900)
        for process in procs.started.values():
            seen |= {process.pid, *descendants(process.pid)}
    assert status == "finished:completed", (layout.logs / "superlink.log").read_text()[-3000:]
    assert seen and not [pid for pid in seen if _alive(pid)]  # every process it started is gone

    run = RunDir.of(layout.run)
    assert run.read_config().data.source == DEVICES  # the server was never told where ratings are
    metrics = run.read_metrics()
    assert [m["round"] for m in metrics] == [1, 2]
    assert all(m["train"]["clients"] == 3 and m["train"]["failed"] == 0 for m in metrics)
    ledgers = collect_ledgers(layout, 3)
    assert [p.name for p in ledgers] == ["client-0.jsonl", "client-1.jsonl", "client-2.jsonl"]
    report, verified = build_privacy_report(run, verify=True, keys=collect_keys(layout, certs))
    failed = [c for c in report.verification.checks if not c.passed] if report.verification else []
    assert verified, failed
    assert 0 < float(report.guarantee.epsilon) <= 10.0  # the devices' policy cap
    assert np.isfinite(float(report.guarantee.epsilon))
