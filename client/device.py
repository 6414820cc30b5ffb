"""One device as a message finds it: its data, policy, budget and ledger, opened from the node config.

A real device's node config names its files (`data-path`, `ledger-dir`, `signing-key`, ...); a
simulated one is a `partition-id` whose ledger lives in the run directory. A simulated cohort
node opens several devices in turn, each with its own ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from flwr.app import Context

from shared.config import StrataConfig
from shared.privacy.accounting import EpsilonCache
from shared.privacy.ledger import Ledger
from shared.privacy.signing import SigningKey
from shared.run_dir import JsonDict, RunDir, client_ledger_name

from .budget import ClientBudget
from .ledger_store import open_ledger, save_to_state
from .policy import Policy, effective_max_epsilon, policy_for
from .replay import ReplyCache
from .store import DeviceStore, store_for


@dataclass(frozen=True)
class Device:
    """What one device answers an instruction with."""

    store: DeviceStore
    policy: Policy
    budget: ClientBudget
    ledger: Ledger
    ledger_path: Path
    real: bool
    """A real device (its own `ledger-dir`): it keeps its replies and computed ε values on disk."""
    mirrored: bool = True
    """Whether the ledger is mirrored in the run's `context.state` (not for a cohort's devices)."""

    def replies(self, kind: str) -> ReplyCache | None:
        """Return the cache of this device's last reply to `kind` (real devices only)."""
        return ReplyCache.beside(self.ledger_path, kind) if self.real else None

    def close(self, context: Context) -> None:
        """Mirror the ledger into the run's state (checked against the file at the next message)."""
        if self.mirrored:
            save_to_state(context, self.ledger)


def _ledger_path(config: StrataConfig, node_config: JsonDict, client_id: str) -> Path:
    """In `ledger-dir` of the node config (a device), else in the run directory (simulation)."""
    configured = node_config.get("ledger-dir")
    ledger_dir = Path(str(configured)).expanduser() if configured else RunDir.of(config.run_dir).ledger_dir
    return ledger_dir / client_ledger_name(client_id)


def _signer(node_config: JsonDict, ledger_path: Path) -> SigningKey:
    """Return the device's signing key: node config `signing-key` (a device), else `keys/` beside its ledgers."""
    configured = node_config.get("signing-key")
    if configured:
        return SigningKey.load(Path(str(configured)).expanduser())
    path = ledger_path.parent.parent / "keys" / f"{ledger_path.stem}.pem"
    if not path.exists():  # a new run directory (or one removed since): a new key, not a remembered one
        _loaded_key.cache_clear()
    return _loaded_key(path)


@lru_cache(maxsize=8192)
def _loaded_key(path: Path) -> SigningKey:
    """Load (or create) a simulated device's key once per process: a cohort node opens every device each round."""
    return SigningKey.load_or_create(path)


def open_device(config: StrataConfig, context: Context, node_config: JsonDict, *, mirror: bool = True) -> Device:
    """Open the device `node_config` describes (a real one, or the simulated `partition-id`).

    `mirror=False` keeps no copy of the ledger in `context.state`: a cohort node runs thousands of
    devices and Flower's RecordDict rebuilds its record views on every access, so a copy per device
    would make each access cost O(devices). Their ledgers stay on disk, append-only, chained and signed.
    """
    store = store_for(config, node_config)
    policy = policy_for(config, node_config)
    path = _ledger_path(config, node_config, store.client_id)
    ledger = open_ledger(context if mirror else None, path, _signer(node_config, path))
    real = bool(node_config.get("ledger-dir"))
    # A real device keeps computed ε values: each message is a fresh ClientApp process.
    cache = EpsilonCache(path.parent / "epsilons" / f"{path.stem}.json") if real else None
    cap = effective_max_epsilon(policy, config)
    budget = ClientBudget.from_config(config.privacy, ledger=ledger, max_epsilon=cap, cache=cache)
    return Device(
        store=store, policy=policy, budget=budget, ledger=ledger, ledger_path=path, real=real, mirrored=mirror
    )
