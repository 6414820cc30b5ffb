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


def read_run_config(run_dir: Path) -> StrataConfig:
    """The resolved config a run directory was written with."""
    import tomllib

    from shared.config import from_flat

    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a Strata run directory?")
    nested = tomllib.loads(path.read_text())
    return from_flat({f"{sec}.{k}": v for sec, table in nested.items() for k, v in table.items()})


def load_exported(run_dir: Path) -> tuple[torch.nn.Module, dict, StrataConfig]:
    """The final model of a run (eval mode), its manifest and its config.

    The model is rebuilt with the run's public catalog features; the weights are checked
    against the manifest's fingerprint.
    """
    from shared.data.source import load_source
    from shared.features import model_features
    from shared.model import build_model

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    manifest_path = run_dir / "model" / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} does not exist: the run has not finished.")
    manifest = json.loads(manifest_path.read_text())
    weights = torch.load(run_dir / "model" / "weights.pt")
    if weights_fingerprint(weights) != manifest["weights_fingerprint"]:
        raise ValueError(f"{run_dir}/model/weights.pt does not match the fingerprint in its manifest.")
    catalog = load_source(config.data, config.run.seed).catalog
    if list(catalog.item_ids) != manifest["item_index"]:
        raise ValueError(f"the catalog of {config.data.source!r} does not match the model's item index.")
    model = build_model(len(catalog.item_ids), config.model, model_features(catalog, config), config.run.seed)
    model.load_state_dict(weights, strict=False)
    model.eval()
    return model, manifest, config
