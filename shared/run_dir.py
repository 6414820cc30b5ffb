"""The run directory (`runs/NAME/`): one type owns every path of its layout.

README's "Run directory" section documents the layout::

    config.toml               the resolved config of the run
    metrics.jsonl             one line per round
    summary.json              the run's final summary
    checkpoints/latest.pt     the server's checkpoint of the last finished round
    model/weights.pt          the final weights
    model/manifest.json       architecture, item index, catalog and weights fingerprints, config
    ledgers/client-<id>.jsonl each client's privacy ledger (in simulation)
    ledgers/central.jsonl     the server's (or the central reference's) ledger
    taxonomy.json             the interest taxonomy of the final model
    census.json               the DP interest census
    privacy_report.{json,html}, report.html
    ../audit.json             the canary audit that trained this run, if any

Everything here reads or writes files; nothing trains or aggregates.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
import torch

from .config import StrataConfig, from_flat
from .data.source import catalog_fingerprint, load_catalog
from .data.types import Catalog
from .features import model_features
from .model import StrataModel, build_model
from .privacy.signing import PUBLIC_SUFFIX, read_public_key

MODEL_FORMAT = "strata-model/1"
TAXONOMY_FORMAT = "strata-taxonomy/1"
CLIENT_LEDGER_PREFIX = "client-"
CENTRAL_LEDGER = "central.jsonl"

JsonDict = dict[str, Any]


class RunDirError(FileNotFoundError):
    """A file the caller needs is missing from the run directory."""


def weights_fingerprint(weights: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names and bytes of the weights, in order."""
    h = hashlib.sha256()
    for k, v in weights.items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def client_key_name(client_id: str) -> str:
    """Return the key-holder name of a client (its signing key is `<name>.pem`, its ledger `<name>.jsonl`)."""
    return f"{CLIENT_LEDGER_PREFIX}{client_id}"


def pinned_keys(keys_dir: Path) -> dict[str, str]:
    """Return the public keys in `keys_dir` (`<holder>.pem.pub`, hex), by holder name."""
    return {p.name.removesuffix(".pem" + PUBLIC_SUFFIX): read_public_key(p) for p in sorted(keys_dir.glob("*.pem.pub"))}


def client_ledger_name(client_id: str) -> str:
    """Return the file name of a client's ledger, in a run directory or a device's ledger-dir."""
    return f"{CLIENT_LEDGER_PREFIX}{client_id}.jsonl"


def _read_json(path: Path) -> JsonDict | None:
    if not path.is_file():
        return None
    value = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object.")
    return value


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class RunDir:
    """A run directory and every path in it."""

    path: Path

    @classmethod
    def of(cls, path: str | Path) -> RunDir:
        """Return the run directory at `path`."""
        return cls(Path(path))

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ the layout

    @property
    def config_path(self) -> Path:
        """Return the path of `config.toml`."""
        return self.path / "config.toml"

    @property
    def metrics_path(self) -> Path:
        """Return the path of `metrics.jsonl`."""
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        """Return the path of `summary.json`."""
        return self.path / "summary.json"

    @property
    def checkpoint_path(self) -> Path:
        """Return the path of `checkpoints/latest.pt`."""
        return self.path / "checkpoints" / "latest.pt"

    @property
    def model_dir(self) -> Path:
        """Return the path of `model/`."""
        return self.path / "model"

    @property
    def weights_path(self) -> Path:
        """Return the path of `model/weights.pt`."""
        return self.model_dir / "weights.pt"

    @property
    def manifest_path(self) -> Path:
        """Return the path of `model/manifest.json`."""
        return self.model_dir / "manifest.json"

    @property
    def ledger_dir(self) -> Path:
        """Return the path of `ledgers/`."""
        return self.path / "ledgers"

    @property
    def central_ledger_path(self) -> Path:
        """Return the path of `ledgers/central.jsonl`."""
        return self.ledger_dir / CENTRAL_LEDGER

    @property
    def instruction_log_path(self) -> Path:
        """Return the path of `ledgers/instructions.jsonl`: the server's signed log of its instructions."""
        return self.ledger_dir / "instructions.jsonl"

    @property
    def keys_dir(self) -> Path:
        """Return the path of `keys/`: the simulation's signing keys (private: not part of a release)."""
        return self.path / "keys"

    def signing_key_path(self, holder: str) -> Path:
        """Return the path of the private signing key of `holder` ("server", "central" or `client-<id>`)."""
        return self.keys_dir / f"{holder}.pem"

    @property
    def taxonomy_path(self) -> Path:
        """Return the path of `taxonomy.json`."""
        return self.path / "taxonomy.json"

    @property
    def census_path(self) -> Path:
        """Return the path of `census.json`."""
        return self.path / "census.json"

    @property
    def privacy_report_json(self) -> Path:
        """Return the path of `privacy_report.json`."""
        return self.path / "privacy_report.json"

    @property
    def privacy_report_html(self) -> Path:
        """Return the path of `privacy_report.html`."""
        return self.path / "privacy_report.html"

    @property
    def run_report_path(self) -> Path:
        """Return the path of `report.html`."""
        return self.path / "report.html"

    @property
    def audit_path(self) -> Path:
        """Return the path of `audit.json` of the canary audit whose run this is (next to the run directory)."""
        return self.path.parent / "audit.json"

    def client_ledger_path(self, client_id: str) -> Path:
        """Return the path of `ledgers/client-<id>.jsonl` of one client."""
        return self.ledger_dir / client_ledger_name(client_id)

    def client_ledger_paths(self) -> list[Path]:
        """Return the clients' ledger files, numeric ids in numeric order, then the others."""
        return sorted(self.ledger_dir.glob(f"{CLIENT_LEDGER_PREFIX}*.jsonl"), key=_client_sort_key)

    @staticmethod
    def client_id_of(ledger_path: Path) -> str:
        """Return the client id a ledger file is named after."""
        return ledger_path.stem.removeprefix(CLIENT_LEDGER_PREFIX)

    # ------------------------------------------------------------------ config

    def write_config(self, config: StrataConfig) -> None:
        """Write the resolved config to `config.toml` (creating the directory)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(tomli_w.dumps(config.to_nested()), encoding="utf-8")

    def read_config(self) -> StrataConfig:
        """Read the resolved config the run was written with."""
        if not self.config_path.is_file():
            raise RunDirError(f"{self.config_path} does not exist: is {self.path} a Strata run directory?")
        nested = tomllib.loads(self.config_path.read_text(encoding="utf-8"))
        return from_flat({f"{sec}.{k}": v for sec, table in nested.items() for k, v in table.items()})

    # ------------------------------------------------------------------ metrics and summary

    def read_metrics(self) -> list[JsonDict]:
        """Read the lines of `metrics.jsonl` (empty if absent); a bad line is an error naming it."""
        if not self.metrics_path.is_file():
            return []
        lines: list[JsonDict] = []
        for n, text in enumerate(self.metrics_path.read_text(encoding="utf-8").splitlines(), start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
                int(row["round"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{self.metrics_path}, line {n}: not a metrics line with a 'round': {exc}") from None
            lines.append(row)
        return lines

    def append_metrics(self, line: JsonDict) -> None:
        """Append one line to `metrics.jsonl`."""
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")

    def truncate_metrics(self, last_round: int) -> None:
        """Keep only the lines of rounds up to `last_round` (resuming from a checkpoint)."""
        if not self.metrics_path.exists():
            return
        keep = [
            ln
            for ln in self.metrics_path.read_text(encoding="utf-8").splitlines()
            if ln and json.loads(ln)["round"] <= last_round
        ]
        self.metrics_path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")

    def clear_metrics(self) -> None:
        """Delete `metrics.jsonl` if present."""
        self.metrics_path.unlink(missing_ok=True)

    def read_summary(self) -> JsonDict | None:
        """Return `summary.json`, or None if absent."""
        return _read_json(self.summary_path)

    def write_summary(self, summary: JsonDict) -> None:
        """Write `summary.json`."""
        self.summary_path.write_text(json.dumps(summary, indent=1), encoding="utf-8")

    def clear_summary(self) -> None:
        """Delete `summary.json` if present."""
        self.summary_path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ the model

    def write_model(
        self,
        weights: Mapping[str, torch.Tensor],
        config: StrataConfig,
        catalog: Catalog,
        *,
        rounds: int,
    ) -> JsonDict:
        """Write `model/weights.pt` and `model/manifest.json`; return the manifest.

        The manifest fingerprints public things only: the catalog and the weights, never the ratings.
        """
        self.model_dir.mkdir(parents=True, exist_ok=True)
        torch.save(weights, self.weights_path)
        manifest: JsonDict = {
            "format": MODEL_FORMAT,
            "architecture": {"class": "StrataModel", "n_items": catalog.n_items, **config.to_nested()["model"]},
            "item_index": list(catalog.item_ids),
            "catalog_fingerprint": catalog_fingerprint(catalog),
            "weights_fingerprint": weights_fingerprint(weights),
            "rounds": rounds,
            "config": config.to_nested(),
        }
        self.manifest_path.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        return manifest

    def read_manifest(self) -> JsonDict | None:
        """Return `model/manifest.json`, or None if absent."""
        return _read_json(self.manifest_path)

    def load_weights(self) -> dict[str, torch.Tensor]:
        """Load the final weights, checked against the manifest's fingerprint."""
        manifest = self.read_manifest()
        if manifest is None:
            raise RunDirError(f"{self.manifest_path} does not exist: the run has not finished.")
        weights: dict[str, torch.Tensor] = torch.load(self.weights_path)
        if weights_fingerprint(weights) != manifest["weights_fingerprint"]:
            raise ValueError(f"{self.weights_path} does not match the fingerprint in its manifest.")
        return weights

    def load_model(self) -> tuple[StrataModel, JsonDict, StrataConfig]:
        """Load the final model of the run (eval mode), its manifest and its config.

        The model is rebuilt with the run's public catalog features; the weights are checked
        against the manifest's fingerprint and the catalog against its item index.
        """
        config = self.read_config()
        weights = self.load_weights()
        manifest = self.read_manifest()
        assert manifest is not None  # load_weights checked it
        catalog = load_catalog(config.data, config.run.seed)
        if list(catalog.item_ids) != manifest["item_index"]:
            raise ValueError(f"the catalog of {config.data.source!r} does not match the model's item index.")
        model = build_model(len(catalog.item_ids), config.model, model_features(catalog, config), config.run.seed)
        model.load_state_dict(weights, strict=False)
        model.eval()
        return model, manifest, config

    # ------------------------------------------------------------------ taxonomy and census

    def read_taxonomy(self) -> JsonDict | None:
        """Read `taxonomy.json` if it belongs to the run's current model, else None."""
        taxonomy = _read_json(self.taxonomy_path)
        manifest = self.read_manifest()
        if taxonomy is None or manifest is None:
            return None
        if (
            taxonomy.get("format") == TAXONOMY_FORMAT
            and taxonomy.get("model_fingerprint") == manifest["weights_fingerprint"]
        ):
            return taxonomy
        return None

    def write_taxonomy(self, taxonomy: JsonDict) -> Path:
        """Write `taxonomy.json`; return its path."""
        _write_json(self.taxonomy_path, taxonomy)
        return self.taxonomy_path

    def read_census(self) -> JsonDict | None:
        """Return `census.json`, or None if absent."""
        return _read_json(self.census_path)

    def write_census(self, census: JsonDict) -> Path:
        """Write `census.json`; return its path."""
        _write_json(self.census_path, census)
        return self.census_path

    # ------------------------------------------------------------------ reports

    def read_audit(self) -> JsonDict | None:
        """Return the `strata audit` result for this run, if the run was trained by an audit."""
        audit = _read_json(self.audit_path)
        if audit is None or Path(audit.get("run_dir", "")).resolve() != self.path.resolve():
            return None
        return audit

    def write_privacy_report(self, report: JsonDict, html: str) -> None:
        """Write `privacy_report.json` (strict JSON: no NaN) and `privacy_report.html`."""
        self.privacy_report_json.write_text(json.dumps(report, indent=1, allow_nan=False), encoding="utf-8")
        self.privacy_report_html.write_text(html, encoding="utf-8")


def _client_sort_key(path: Path) -> tuple[int, int | str]:
    cid = RunDir.client_id_of(path)
    return (0, int(cid)) if cid.isdigit() else (1, cid)
