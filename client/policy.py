"""The device's own privacy policy: what it accepts, whatever the server's run config says.

Under `flwr run` the run config comes from the server side, so a device must not take its
privacy from it: it holds a policy of its own (node config `privacy-policy` = a TOML file
with the fields below; in simulation the `[device-policy]` section of the config) and
refuses, with a reason, every instruction outside it. The run config can only tighten it.

Trust models:

- `none` (the built-in default of a deployed device): local DP is required, every release
  is noised on the device.
- `aggregator`: the server may add the noise (central DP); updates are still clipped here.
- `any`: no privacy required (research simulations without DP only).

A deployed device without a policy file uses `STRICT` (trust `none`, ε ≤ 10, δ ≤ 1e-5,
clip ≤ 1, σ and z ≥ 0.5; popularity, census and evaluation releases allowed).
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

from shared.config import DevicePolicyConfig, StrataConfig, from_flat
from shared.privacy.release import noise_holder, release_noise_multiplier

Policy = DevicePolicyConfig
"""A device policy is the `[device-policy]` section's type; `apply` only matters in simulation."""

STRICT = DevicePolicyConfig()
"""The policy of a deployed device that names no policy file: trust `none`, ε ≤ 10, δ ≤ 1e-5,
clip ≤ 1, σ and z ≥ 0.5, the three DP releases allowed."""
PERMISSIVE = DevicePolicyConfig(
    trust="any", max_epsilon=math.inf, max_delta=0.5, max_clip=math.inf, min_noise_multiplier=0.0
)
"""What a virtual device accepts when the simulation applies no `[device-policy]`: the run's settings."""


def policy_from_file(path: Path) -> Policy:
    """Read a device policy TOML file: the `[device-policy]` keys, flat or under that table."""
    if not path.is_file():
        raise FileNotFoundError(f"device policy {path} does not exist (node config `privacy-policy`).")
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML: {exc}") from None
    table = values.get("device-policy", values)
    try:
        return from_flat({f"device-policy.{k}": v for k, v in table.items()}).device_policy
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def policy_for(config: StrataConfig, node_config: dict[str, Any]) -> Policy:
    """Return the policy this device holds: its own file, else STRICT on a real device; in simulation the
    config's `[device-policy]` when applied, else PERMISSIVE. A server's run config never loosens it."""
    if "privacy-policy" in node_config:
        return policy_from_file(Path(str(node_config["privacy-policy"])).expanduser())
    if "data-path" in node_config:  # a real device (client/store.py): the run config is the server's
        return STRICT
    return config.device_policy if config.device_policy.apply else PERMISSIVE


def effective_max_epsilon(policy: Policy, config: StrataConfig) -> float:
    """Return the lifetime cap in force: the policy's, tightened (never loosened) by the run's max-epsilon."""
    requested = config.privacy.max_epsilon
    return min(policy.max_epsilon, requested) if requested > 0 else policy.max_epsilon


def refusal(policy: Policy, config: StrataConfig, *, noise_multiplier: float | None = None) -> str:
    """Why the device refuses to train or release under `config` ("" when it accepts).

    `noise_multiplier` is the σ the device would use (calibrated or given).
    """
    p = config.privacy
    if policy.trust != "any":
        if p.mode == "off":
            return f"policy: privacy.mode = 'off' asks for no DP; this device requires trust {policy.trust!r}"
        if policy.trust == "none" and not p.local_dp:
            return f"policy: privacy.mode = {p.mode!r} leaves the noise to the server; this device trusts no aggregator"
        if p.resolved_delta > policy.max_delta:
            return f"policy: δ = {p.resolved_delta:.3g} is above this device's max-delta {policy.max_delta:g}"
    if p.mode == "off":
        return ""
    if p.local_dp and p.max_grad_norm > policy.max_clip:
        return f"policy: max-grad-norm {p.max_grad_norm:g} is above this device's max-clip {policy.max_clip:g}"
    if p.central_dp and p.update_clip > policy.max_clip:
        return f"policy: update-clip {p.update_clip:g} is above this device's max-clip {policy.max_clip:g}"
    if noise_multiplier is not None and noise_multiplier < policy.min_noise_multiplier:
        return (
            f"policy: σ = {noise_multiplier:.4g} is below this device's min-noise-multiplier "
            f"{policy.min_noise_multiplier:g}"
        )
    return ""


def release_refusal(policy: Policy, config: StrataConfig, kind: str) -> str:
    """Why the device refuses a DP release of `kind` (popularity, census, evaluation; "" when it accepts)."""
    if kind not in policy.releases:
        return f"policy: the {kind} release is not among this device's allowed releases"
    z = release_noise_multiplier(kind, config.privacy)
    if noise_holder(config.privacy.mode) == "client" and z < policy.min_noise_multiplier:
        return (
            f"policy: the {kind} release's z = {z:g} is below this device's min-noise-multiplier "
            f"{policy.min_noise_multiplier:g}"
        )
    return refusal(policy, config)
