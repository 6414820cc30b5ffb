"""`strata data split-devices`: one ratings CSV per device plus the public catalog, to try deployment.

DIR/catalog.csv      the public catalog (what the server and every device read)
DIR/<i>.csv          device i's own ratings (its SuperNode's `data-path`); i is its client id
DIR/devices.json     the population N and the files, for the operator (not for the server)
"""

from __future__ import annotations

import json
from pathlib import Path

from .csv_writer import write_catalog_csv, write_ratings_csv
from .topology import partition_users
from .types import RatingsData

CATALOG_NAME = "catalog.csv"
MANIFEST_NAME = "devices.json"


def split_devices(
    data: RatingsData,
    out: Path,
    *,
    topology: str,
    num_hubs: int = 10,
    assignment: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
) -> list[Path]:
    """Write each client's ratings under `out` as the configured topology assigns them; return the files."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: split-devices writes a fresh directory.")
    parts = partition_users(data, topology, num_hubs=num_hubs, assignment=assignment, alpha=alpha, seed=seed)
    write_catalog_csv(data.catalog, out / CATALOG_NAME)
    files = [write_ratings_csv(data, out / f"{i}.csv", users.tolist()) for i, users in enumerate(parts)]
    manifest = {
        "source": data.name,
        "topology": topology,
        "num_devices": len(files),
        "population": data.n_users,
        "catalog": CATALOG_NAME,
        "devices": [f.name for f in files],
        "note": "population is the public N of privacy.population; the device files are private to each device.",
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return files
