"""Typed experiment configuration: TOML presets, `key=value` overrides, Flower run-config.

One config object per run, built once at the edge (CLI or Flower `context.run_config`)
and passed inward. Its flat form (`section.key` -> scalar) is exactly what Flower's
`[tool.flwr.app.config]` and `--run-config` carry, so both paths share one schema.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

from .model_config import ModelConfig
from .privacy.accounting import check_delta, default_delta

Scalar = bool | int | float | str


@dataclass(frozen=True)
class DataConfig:
    """Where the ratings come from and how they are split."""

    source: str = "synthetic"
    """`ml-100k` (fetched into the cache), `synthetic`, a MovieLens directory, or a CSV file."""
    catalog: str = ""
    """Item catalog CSV for a generic ratings CSV (optional)."""
    cache_dir: str = "~/.cache/strata"
    """Where fetched data sets are kept."""
    positive_threshold: float = 4.0
    """Ratings at or above this are positives for the VAE and the ranking metrics."""
    test_fraction: float = 0.2
    """Share of each user's ratings held out for evaluation."""
    min_ratings_for_test: int = 5
    """Users with fewer ratings keep all of them for training."""
    holdout: Literal["test", "validation"] = "test"
    """Evaluate on the test split, or on a validation split carved from train (to choose epochs/rounds)."""
    rating_min: float = 1.0
    rating_max: float = 5.0
    """The public rating scale: evaluation releases clip predictions and errors to it."""
    synthetic_users: int = 200
    synthetic_items: int = 150
    synthetic_categories: int = 4
    synthetic_subs_per_category: int = 3
    synthetic_ratings_per_user: int = 30
    """The planted generator's size: users, items, categories, sub-interests each, mean profile length."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError("data.test-fraction must be in [0, 1).")
        if self.min_ratings_for_test < 1:
            raise ValueError("data.min-ratings-for-test must be at least 1.")
        if not self.rating_min < self.rating_max:
            raise ValueError(f"data.rating-min {self.rating_min:g} must be below data.rating-max {self.rating_max:g}.")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings of central and client-side training."""

    epochs: int = 50
    """Central training epochs."""
    batch_size: int = 100
    """Expected users per step (Poisson-sampled under DP); also the public loss normaliser."""
    lr: float = 1e-3
    """Learning rate of central training (its first epoch)."""
    lr_final: float = 1.0
    """Central learning rate of the last epoch as a fraction of `lr`, reached by a half-cosine decay
    over the epochs (1: constant)."""
    local_epochs: int = 1
    """Passes over its users a client makes per round."""
    local_lr: float = 1.0
    """Client SGD learning rate (the server optimizer sets the real step size)."""
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.epochs < 0 or self.local_epochs < 1:
            raise ValueError("train.batch-size and train.local-epochs must be >= 1, train.epochs >= 0.")
        if self.lr <= 0 or self.local_lr <= 0:
            raise ValueError("train.lr and train.local-lr must be positive.")
        if not 0.0 <= self.lr_final <= 1.0:
            raise ValueError(f"train.lr-final is a fraction of train.lr in [0, 1], not {self.lr_final:g}.")


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential-privacy mode, noise and budgets."""

    mode: Literal["off", "local", "central", "local+central"] = "off"
    """`local`: Opacus DP-SGD inside each client; `central`: user-level DP-FedAvg on the
    server (McMahan et al. 2018); `local+central`: both. The privacy unit is one user."""
    noise_multiplier: float = 1.0
    """σ of DP-SGD (noise std = σ · max-grad-norm). Ignored when target-epsilon > 0."""
    target_epsilon: float = 0.0
    """If > 0, calibrate σ so that the planned rounds spend exactly this ε."""
    max_grad_norm: float = 1.0
    """Per-user clipping bound C."""
    delta: float = 0.0
    """δ of the reported (ε, δ); 0 means 1 / (100 · population). Must be below 1 / population."""
    population: int = 0
    """N: the public number of users of the federation, fixed before any data is seen. δ
    defaults to 1/(100·N), the central divisor is q·N and the local DP-SGD plan assumes
    N / num-hubs users per hub. Required in deployment; `strata simulate` and `strata central`
    set it from the data set when 0 (a simulated population is public by construction)."""
    max_epsilon: float = 0.0
    """A client refuses to train when its next round would exceed this ε (0: no limit)."""
    accountant: Literal["pld", "rdp"] = "pld"
    """Headline accountant (PLD from dp-accounting); RDP is the cross-check."""
    ghost_clipping: bool = True
    """Clip each user's gradient by book-keeping (`shared/bookkeeping.py`: exact per-user norms and
    the clipped sum from one backward pass, 1.3-2.2x a plain step) instead of Opacus' per-sample
    hooks (30-90x); noise and the step are Opacus' either way."""
    update_clip: float = 1.0
    """Central DP: L2 bound S on each user's model update (new - global weights), applied
    on the client before the update leaves it (per user, also inside a hub)."""
    central_noise_multiplier: float = 1.0
    """Central DP: z; the server adds N(0, z²S²) per coordinate to the sum of clipped
    updates. Ignored when central-target-epsilon > 0."""
    central_target_epsilon: float = 0.0
    """Central DP: if > 0, calibrate z so that the planned rounds spend exactly this ε
    (earlier runs in the server's ledger included)."""
    central_max_epsilon: float = 0.0
    """Central DP: the server ends the run (and exports the model) before a round that
    would take the central ε above this (0: no limit)."""
    release_noise_multiplier: float = 4.0
    """z of one-shot releases (popularity prior, interest census): noise std z times the
    per-user L2 bound, added by each client under local privacy, by the server under central."""
    eval_noise_multiplier: float = 10.0
    """z of each federated evaluation release (the sum of users' bounded metric vectors, norm
    ≤ √6): added by each client under local privacy, by the server under central."""
    expected_users: int = 0
    """Central DP: the public N_users of the expected count q·N_users the noisy sum is
    divided by; 0 means `population`. Never read from data."""
    user_sample_rate: float = 1.0
    """Central DP: each client includes each of its users per round with this probability by its own
    secret coin; the ledger records it as q in a hub (× fraction-train for one-user devices)."""

    @property
    def resolved_delta(self) -> float:
        """δ of every guarantee: `delta`, or 1/(100·N) for the public population N."""
        if self.population <= 0:
            raise ValueError(
                "privacy.population (the public number of users N) is not set: δ and the DP plan depend on it. "
                "Set it in the config; `strata simulate` and `strata central` set it from the data set."
            )
        return self.delta or default_delta(self.population)

    @property
    def local_dp(self) -> bool:
        """Clients run DP-SGD (`local` or `local+central`)."""
        return self.mode in ("local", "local+central")

    @property
    def central_dp(self) -> bool:
        """The server runs DP-FedAvg (`central` or `local+central`)."""
        return self.mode in ("central", "local+central")

    def __post_init__(self) -> None:
        if self.mode not in ("off", "local", "central", "local+central"):
            raise ValueError(
                f"privacy.mode must be 'off', 'local', 'central' or 'local+central', not {self.mode!r}."
            )
        if self.update_clip <= 0:
            raise ValueError("privacy.update-clip (the central clipping norm S) should be a positive value.")
        if self.central_noise_multiplier < 0 or self.central_target_epsilon < 0 or self.central_max_epsilon < 0:
            raise ValueError(
                "privacy.central-noise-multiplier, central-target-epsilon and central-max-epsilon must be >= 0."
            )
        if self.central_dp and self.central_target_epsilon == 0 and self.central_noise_multiplier == 0:
            raise ValueError(
                f"privacy.mode = {self.mode!r} needs noise: set privacy.central-noise-multiplier > 0 "
                "or privacy.central-target-epsilon > 0."
            )
        if self.release_noise_multiplier <= 0 or self.eval_noise_multiplier <= 0:
            raise ValueError("privacy.release-noise-multiplier and eval-noise-multiplier must be positive.")
        if self.expected_users < 0:
            raise ValueError("privacy.expected-users must be >= 0 (0: privacy.population).")
        if not 0.0 < self.user_sample_rate <= 1.0:
            raise ValueError(f"privacy.user-sample-rate must be in (0, 1], got {self.user_sample_rate:g}.")
        if self.user_sample_rate < 1.0 and not self.central_dp:
            raise ValueError(
                "privacy.user-sample-rate < 1 is central DP's per-user sampling: set privacy.mode = 'central' or "
                "'local+central' (local DP-SGD samples its batches itself)."
            )
        if self.population < 0:
            raise ValueError("privacy.population must be >= 0 (0: set from the data set in simulation).")
        if self.population > 0 and self.delta > 0:
            check_delta(self.delta, self.population)
        if self.max_grad_norm <= 0:
            raise ValueError("privacy.max-grad-norm (the clipping norm) should be a positive value.")
        if self.noise_multiplier < 0 or self.target_epsilon < 0 or self.max_epsilon < 0:
            raise ValueError("privacy.noise-multiplier, target-epsilon and max-epsilon must be >= 0.")
        if not 0.0 <= self.delta < 1.0:
            raise ValueError("privacy.delta must be in [0, 1).")


@dataclass(frozen=True)
class FederationConfig:
    """Topology, rounds and server aggregation of federated training."""

    topology: Literal["device", "hub"] = "hub"
    """`device`: one user per client; `hub`: users spread over num-hubs edge hubs."""
    num_hubs: int = 10
    hub_assignment: Literal["iid", "dirichlet"] = "iid"
    dirichlet_alpha: float = 0.5
    """Concentration of the non-IID Dirichlet over users' top category."""
    rounds: int = 10
    fraction_train: float = 1.0
    """Share of clients sampled for training each round."""
    min_available_clients: int = 1
    """Clients that must be connected before round 1 starts (`strata simulate` sets the topology's count)."""
    wait_for_clients_s: float = 300.0
    """How long the server waits for min-available-clients before giving up with an error."""
    min_train_clients: int = 1
    """A round with fewer successful replies is skipped (logged), never averaged over nothing."""
    max_update_norm: float = 1000.0
    """Largest L2 norm of a reply's change to the global weights that plain FedAvg averages (0: no
    bound); a larger one is rejected and logged. Under central DP the public clipping bound applies."""
    eval_every: int = 1
    """Evaluation every this many rounds (and always after the last)."""
    eval_release: Literal["every", "final", "none"] = "final"
    """When the clients release a DP evaluation (noisy sums of bounded per-user metrics, a
    ledger entry each, counted in the guarantee): at every evaluation, after the last round
    only, or never. The only evaluation a deployment has."""
    oracle_eval: bool = True
    """Simulation only: the runner also evaluates the global model on the held-out data itself
    at every evaluation ("simulation oracle — not a release"; no device is asked). A deployed
    server has no held-out data and refuses it."""
    fraction_evaluate: float = 1.0
    """Share of clients asked for an evaluation release."""
    server_optimizer: Literal["fedavg", "fedadam"] = "fedadam"
    """How the server applies the averaged client update (FedAdam: Reddi et al. 2021)."""
    server_lr: float = 1e-3
    num_cpus_per_client: float = 1.0
    """Ray resources per virtual client in simulation."""
    cohorts: int = 0
    """Simulation only. 0: one Flower node per device. k >= 1: k Flower nodes, each running its share
    of the round's sampled devices in turn (one message per cohort); every device is still sampled,
    trained, noised, accounted and ledgered on its own (the cohort node screens and sums their replies)."""
    transport: Literal["float32", "float16", "int8"] = "float32"
    """What a device sends: its float32 weights, or its change from the global ones in float16 or int8
    (a scale per tensor, unbiased rounding), encoded after clipping and noise (`shared/transport.py`)."""
    census: bool = False
    """After training, release a census of how many users hold each interest (`census.json`)."""

    def __post_init__(self) -> None:
        if self.topology not in ("device", "hub"):
            raise ValueError(f"federation.topology must be 'device' or 'hub', not {self.topology!r}.")
        if self.max_update_norm < 0:
            raise ValueError("federation.max-update-norm must be >= 0 (0: no bound).")
        if self.rounds < 1 or self.num_hubs < 1 or self.eval_every < 1:
            raise ValueError("federation.rounds, num-hubs and eval-every must be >= 1.")
        if not 0.0 < self.fraction_train <= 1.0 or not 0.0 < self.fraction_evaluate <= 1.0:
            raise ValueError("federation.fraction-train and fraction-evaluate must be in (0, 1].")
        if self.eval_release not in ("every", "final", "none"):
            raise ValueError(f"federation.eval-release must be 'every', 'final' or 'none', not {self.eval_release!r}.")
        if self.cohorts < 0:
            raise ValueError("federation.cohorts must be >= 0 (0: one Flower node per device).")


@dataclass(frozen=True)
class RunConfig:
    """Name, seed and output directory of a run."""

    name: str = "run"
    seed: int = 0
    out: str = ""
    """Run directory; empty means runs/<name>."""


@dataclass(frozen=True)
class DevicePolicyConfig:
    """A device's own privacy policy (`client/policy.py`): bounds it puts on every instruction.

    In simulation this `[device-policy]` section is applied to every virtual device when
    `apply` is true; a deployed device reads the same keys from the TOML file named by its
    node config `privacy-policy` (and uses the strict defaults below without one).
    """

    apply: bool = False
    """Simulation: hold every virtual device to this policy (false: devices accept the run's settings)."""
    trust: Literal["none", "aggregator", "any"] = "none"
    """Who may add the noise: `none` (only the device: local DP required), `aggregator` (central DP
    allowed, updates still clipped on the device), `any` (no DP required; research only)."""
    max_epsilon: float = 10.0
    """Lifetime ε per user; the run's privacy.max-epsilon can only lower it."""
    max_delta: float = 1e-5
    """Largest δ the device accepts."""
    max_clip: float = 1.0
    """Largest per-user clipping bound (max-grad-norm, update-clip)."""
    min_noise_multiplier: float = 0.5
    """Smallest σ of DP-SGD and z of a release the device runs."""
    allowed_releases: str = "popularity,census,evaluation"
    """Comma-separated DP releases the device takes part in (popularity, census, evaluation)."""

    def __post_init__(self) -> None:
        if not self.max_epsilon > 0 or not 0 < self.max_delta < 1 or not self.max_clip > 0:
            raise ValueError("device-policy: max-epsilon and max-clip must be positive, max-delta in (0, 1).")
        if self.min_noise_multiplier < 0:
            raise ValueError("device-policy: min-noise-multiplier must be >= 0.")

    @property
    def releases(self) -> tuple[str, ...]:
        """The allowed releases as a tuple."""
        return tuple(r.strip() for r in self.allowed_releases.split(",") if r.strip())


@dataclass(frozen=True)
class StrataConfig:
    """The whole configuration of one run, one section per concern."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    device_policy: DevicePolicyConfig = field(default_factory=DevicePolicyConfig)

    @property
    def run_dir(self) -> Path:
        """Return the run directory (`run.out`, else `runs/<name>`)."""
        return Path(self.run.out or f"runs/{self.run.name}")

    def to_flat(self) -> dict[str, Scalar]:
        """`section.key` -> value, keys in Flower's dashed style."""
        flat: dict[str, Scalar] = {}
        for sec in fields(self):
            for f in fields(getattr(self, sec.name)):
                flat[f"{_dash(sec.name)}.{_dash(f.name)}"] = getattr(getattr(self, sec.name), f.name)
        return flat

    def to_nested(self) -> dict[str, dict[str, Scalar]]:
        """Return `{section: {dashed-key: value}}`, the shape of a TOML preset."""
        out: dict[str, dict[str, Scalar]] = {}
        for key, value in self.to_flat().items():
            sec, name = key.split(".", 1)
            out.setdefault(sec, {})[name] = value
        return out

    def replace(self, overrides: dict[str, Any]) -> StrataConfig:
        """Return a copy with `section.key` overrides applied (values parsed and type-checked)."""
        return from_flat({**self.to_flat(), **overrides})


def _dash(name: str) -> str:
    return name.replace("_", "-")


def _coerce(key: str, value: Any, typ: Any) -> Scalar:
    """Convert a TOML/CLI value to the field's type, or fail with a sentence."""
    allowed = get_args(typ)
    if allowed and all(isinstance(a, str) for a in allowed):  # Literal
        if value not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {value!r}.")
        return str(value)
    try:
        if typ is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError
            return bool(value)
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if typ is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be of type {typ.__name__}; got {value!r}.") from None


def from_flat(flat: dict[str, Any]) -> StrataConfig:
    """Build a config from `section.key` entries; unknown keys are an error."""
    sections: dict[str, dict[str, Any]] = {}
    known = {s.name: s for s in fields(StrataConfig)}
    for key, value in flat.items():
        if "." not in key:
            raise ValueError(f"Unknown config key {key!r}: expected 'section.key'.")
        dashed, name = key.split(".", 1)
        sec = dashed.replace("-", "_")
        if sec not in known:
            sections_list = ", ".join(_dash(k) for k in known)
            raise ValueError(f"Unknown config section {dashed!r} in {key!r}; sections: {sections_list}.")
        cls = get_type_hints(StrataConfig)[sec]
        hints = get_type_hints(cls)
        attr = name.replace("-", "_")
        if attr not in hints:
            options = ", ".join(_dash(f.name) for f in fields(cls))
            raise ValueError(f"Unknown config key {key!r}; {sec} has: {options}.")
        sections.setdefault(sec, {})[attr] = _coerce(key, value, hints[attr])
    built = {name: get_type_hints(StrataConfig)[name](**vals) for name, vals in sections.items()}
    return StrataConfig(**built)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse `section.key=value` (value in TOML syntax, or a bare string)."""
    if "=" not in text:
        raise ValueError(f"Override {text!r} is not of the form section.key=value.")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> StrataConfig:
    """Read a TOML preset (nested tables) and apply `key=value` overrides."""
    flat: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"Config file {p} does not exist.")
        try:
            nested = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{p}: invalid TOML: {exc}") from None
        for sec, table in nested.items():
            if not isinstance(table, dict):
                raise ValueError(f"{p}: top-level key {sec!r} must be a table like [{sec}].")
            for name, value in table.items():
                flat[f"{sec}.{name}"] = value
    for text in overrides or []:
        key, value = parse_override(text)
        flat[key] = value
    try:
        return from_flat(flat)
    except (TypeError, ValueError) as exc:
        where = f"{path}: " if path else ""
        raise ValueError(f"{where}{exc}") from None


def config_from_run_config(run_config: dict[str, Any]) -> StrataConfig:
    """Build the typed config from Flower's `context.run_config` (flat, dashed keys)."""
    return from_flat(dict(run_config))


__all__ = [
    "DataConfig",
    "DevicePolicyConfig",
    "FederationConfig",
    "ModelConfig",
    "PrivacyConfig",
    "RunConfig",
    "StrataConfig",
    "config_from_run_config",
    "from_flat",
    "load_config",
    "parse_override",
]
