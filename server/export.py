"""The final model with its manifest: architecture, item index, fingerprints, config."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

import torch

from shared.config import StrataConfig
from shared.data.types import Catalog


def weights_fingerprint(weights: OrderedDict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k, v in weights.items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def export_model(
    out_dir: Path,
    weights: OrderedDict[str, torch.Tensor],
    config: StrataConfig,
    catalog: Catalog,
    *,
    data_fingerprint: str,
    rounds: int,
) -> dict:
    """Write `weights.pt` and `manifest.json`; return the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(weights, out_dir / "weights.pt")
    manifest = {
        "format": "strata-model/1",
        "architecture": {"class": "StrataModel", "n_items": catalog.n_items, **config.to_nested()["model"]},
        "item_index": list(catalog.item_ids),
        "data_fingerprint": data_fingerprint,
        "weights_fingerprint": weights_fingerprint(weights),
        "rounds": rounds,
        "config": config.to_nested(),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
