from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import StrataConfig, from_flat, load_config


def test_flat_roundtrip_and_overrides(tmp_path: Path) -> None:
    preset = tmp_path / "p.toml"
    preset.write_text('[federation]\ntopology = "device"\nrounds = 7\n')
    cfg = load_config(preset, ["federation.rounds=9", 'model.item-side="both"'])
    assert cfg.federation.topology == "device"
    assert cfg.federation.rounds == 9
    assert cfg.model.item_side == "both"
    assert from_flat(cfg.to_flat()) == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("federation.roundz=3", "Unknown config key 'federation.roundz'"),
        ("nosuch.key=1", "Unknown config section 'nosuch'"),
        ("federation.rounds=abc", "federation.rounds must be of type int"),
        ('privacy.mode="central-ish"', "privacy.mode must be one of"),
        ("privacy.max-grad-norm=0", r"clipping norm\) should be a positive value"),
        ("train.lr-final=1.5", r"train.lr-final is a fraction of train.lr in \[0, 1\], not 1.5"),
    ],
)
def test_bad_config_fails_with_a_sentence(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_defaults_are_valid() -> None:
    assert StrataConfig().privacy.mode == "off"


def test_pyproject_run_config_lists_every_key() -> None:
    """`flwr run --run-config` can only override keys that pyproject.toml declares."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    declared = pyproject["tool"]["flwr"]["app"]["config"]
    assert set(declared) == set(StrataConfig().to_flat())
    assert from_flat(declared).run.out == "runs/flwr-smoke"
