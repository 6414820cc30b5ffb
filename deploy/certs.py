"""`strata certs DIR`: everything a deployment needs to authenticate, made with `cryptography`.

    DIR/ca.crt, ca.key                 the certificate authority (SuperNodes trust ca.crt)
    DIR/server.crt, server.key         the SuperLink's TLS certificate (SANs: localhost, 127.0.0.1, ::1, --san)
    DIR/nodes/node-<i>, node-<i>.pub   SuperNode auth keys (EC P-384, OpenSSH; `flwr supernode register`)
    DIR/signing/client-<i>.pem         device ledger-signing keys (Ed25519, PEM) for node config `signing-key`
    DIR/public-keys/client-<i>.pem.pub the devices' public signing keys, for `privacy-report --keys`

Private keys are written 0600 and never overwritten: run it again and it refuses.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.privacy.signing import SigningKey, public_key_path

DEFAULT_SANS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
VALID_DAYS = 365
CURVE = ec.SECP384R1()
"""Flower's node authentication takes NIST EC keys; TLS uses the same curve."""


@dataclass(frozen=True)
class CertFiles:
    """Where `make_certs` wrote everything."""

    root: Path
    n_nodes: int

    @property
    def ca_cert(self) -> Path:
        """The CA certificate SuperNodes and `flwr` trust (`--root-certificates`)."""
        return self.root / "ca.crt"

    @property
    def server_cert(self) -> Path:
        """The SuperLink's certificate (`--ssl-certfile`)."""
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        """The SuperLink's private key (`--ssl-keyfile`)."""
        return self.root / "server.key"

    def node_key(self, i: int) -> Path:
        """SuperNode `i`'s private auth key (`--auth-supernode-private-key`)."""
        return self.root / "nodes" / f"node-{i}"

    def node_public_key(self, i: int) -> Path:
        """SuperNode `i`'s public auth key (`flwr supernode register`)."""
        return self.root / "nodes" / f"node-{i}.pub"

    def signing_key(self, i: int) -> Path:
        """Device `i`'s ledger-signing key (node config `signing-key`)."""
        return self.root / "signing" / f"client-{i}.pem"

    @property
    def public_keys(self) -> Path:
        """The devices' public signing keys only, for an auditor (`privacy-report --keys`)."""
        return self.root / "public-keys"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as fh:
        fh.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _certificate(
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name | None,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    sans: tuple[str, ...] = (),
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(s) for s in sans]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(signer, hashes.SHA384())


def make_certs(root: Path, *, nodes: int, sans: tuple[str, ...] = ()) -> CertFiles:
    """Write a CA, the SuperLink's certificate, `nodes` SuperNode auth keys and device signing keys."""
    if nodes < 0:
        raise ValueError(f"--nodes must be >= 0; got {nodes}.")
    files = CertFiles(Path(root), nodes)
    if files.ca_cert.exists() or files.server_key.exists():
        raise FileExistsError(f"{files.root} already holds certificates: keys are never overwritten; use a new DIR.")
    ca_key = ec.generate_private_key(CURVE)
    ca_cert = _certificate("Strata deployment CA", ca_key.public_key(), None, ca_key, ca=True)
    server_key = ec.generate_private_key(CURVE)
    all_sans = tuple(dict.fromkeys((*DEFAULT_SANS, *sans)))
    server_cert = _certificate(
        "Strata SuperLink", server_key.public_key(), ca_cert.subject, ca_key, ca=False, sans=all_sans
    )
    _write_private(files.root / "ca.key", _pem_key(ca_key))
    _write_public(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(files.server_key, _pem_key(server_key))
    _write_public(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    for i in range(nodes):
        node = ec.generate_private_key(CURVE)
        _write_private(
            files.node_key(i),
            node.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ),
        )
        _write_public(
            files.node_public_key(i),
            node.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n",
        )
        signer = SigningKey.generate()
        signer.save(files.signing_key(i))
        _write_public(
            files.public_keys / public_key_path(files.signing_key(i)).name, (signer.public_hex() + "\n").encode()
        )
    return files
