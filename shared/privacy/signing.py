"""Ledger signing keys: Ed25519 (through `cryptography`), one per device and one for the server.

A ledger entry carries the SHA-256 of the previous entry's line and the holder's signature
over its own fields, so an entry cannot be changed, removed, reordered or moved to another
holder's ledger without breaking a signature or the chain. The private key never leaves its
holder (a device's key file, named by the node config `signing-key`; in simulation one file per
virtual device in the run directory's `keys/`, which is not part of the release); an auditor
pins the public keys (`keys/*.pub`, or the devices' own published ones) and checks against them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PUBLIC_SUFFIX = ".pub"


class SigningKey:
    """A holder's Ed25519 private key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> SigningKey:
        """Return a fresh key from the OS's randomness."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        """Load the PEM key at `path`, or create it there (mode 0600) with its public key beside it."""
        if path.exists():
            return cls.load(path)
        key = cls.generate()
        try:
            key.save(path)
        except FileExistsError:  # another process of the same holder created it first
            return cls.load(path)
        return key

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """Load a PEM-encoded (unencrypted PKCS#8) Ed25519 private key."""
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 key ({type(key).__name__}).")
        return cls(key)

    def save(self, path: Path) -> None:
        """Write the key (PEM, mode 0600) and its public key (`<path>.pub`, hex)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        public_key_path(path).write_text(self.public_hex() + "\n", encoding="utf-8")

    def public_hex(self) -> str:
        """Return the raw public key, hex-encoded (64 characters)."""
        raw = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return raw.hex()

    def sign(self, message: bytes) -> str:
        """Return the signature of `message`, hex-encoded."""
        return self._key.sign(message).hex()


def public_key_path(private_key_path: Path) -> Path:
    """Return where the public key of the private key at `private_key_path` is kept."""
    return private_key_path.with_name(private_key_path.name + PUBLIC_SUFFIX)


def read_public_key(path: Path) -> str:
    """Read a hex public key file (as `SigningKey.save` writes it)."""
    text = path.read_text(encoding="utf-8").strip()
    try:
        if len(bytes.fromhex(text)) != 32:
            raise ValueError
    except ValueError:
        raise ValueError(f"{path}: not a hex Ed25519 public key.") from None
    return text


def verify_signature(public_hex: str, message: bytes, signature_hex: str) -> bool:
    """Whether `signature_hex` is `public_hex`'s signature of `message`."""
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex)).verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def digest(line: str) -> str:
    """Return the SHA-256 of one ledger line, hex-encoded (what the next entry's `prev` holds)."""
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


class SignedRecord(Protocol):
    """A frozen dataclass record of a signed, hash-chained log (a ledger entry, an instruction)."""

    @property
    def prev(self) -> str:
        """SHA-256 of the previous record's line ("" for the first)."""

    @property
    def key(self) -> str:
        """The signer's public key (hex; "" when unsigned)."""

    @property
    def signature(self) -> str:
        """Ed25519 signature (hex) of `payload(record)`."""


R = TypeVar("R", bound=SignedRecord)


def record_line(record: SignedRecord) -> str:
    """Return the record as one JSON line (sorted keys): what the next record's `prev` hashes."""
    return json.dumps(asdict(cast(Any, record)), sort_keys=True)


def payload(record: SignedRecord) -> bytes:
    """Return what the signature covers: every field but the signature, as sorted-key JSON."""
    fields_ = asdict(cast(Any, record))
    del fields_["signature"]
    return json.dumps(fields_, sort_keys=True).encode("utf-8")


def chained(record: R, *, prev: str, signer: SigningKey | None) -> R:
    """Return `record` chained after `prev` and signed by `signer` (unsigned without one)."""
    linked = replace(cast(Any, record), prev=prev, key=signer.public_hex() if signer else "", signature="")
    out: R = replace(linked, signature=signer.sign(payload(linked))) if signer else linked
    return out


def chain_problems(
    records: Sequence[SignedRecord], where: str, key: str | None, *, noun: str = "entry", holder: str = "this holder"
) -> list[str]:
    """Name every record of one log whose chain link or signature does not hold.

    `key` is the signer's pinned public key (hex); None means none is pinned, which is a problem in
    itself when there are records: an auditor cannot tell whose signatures they are.
    """
    out = [f"{where}: no pinned public key for {holder}"] if records and key is None else []
    prev = ""
    for n, r in enumerate(records, 1):
        at = f"{where}, {noun} {n}"
        if r.prev != prev:
            out.append(f"{at}: chain broken (prev does not match {noun} {n - 1})" if n > 1 else f"{at}: not first")
        if not r.signature:
            out.append(f"{at}: unsigned")
        elif key is not None and r.key != key:
            out.append(f"{at}: signed by key {r.key[:12]}…, not the pinned key of {holder} {key[:12]}…")
        elif not verify_signature(r.key, payload(r), r.signature):
            out.append(f"{at}: signature does not verify (the {noun} was changed after signing)")
        prev = digest(record_line(r))
    return out
