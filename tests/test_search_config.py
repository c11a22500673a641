"""Config loading and validation: bad values fail before any work, naming the key; presets load."""

from __future__ import annotations

from pathlib import Path

import pytest

import orchestrator.search as search
from orchestrator.cli import main
from orchestrator.config import apply_overrides
from orchestrator.search import SearchConfig, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


@pytest.mark.parametrize("preset", ["demo", "tiny", "imagenet-gpu", "imagenet-mobile"])
def test_presets_load(preset):
    cfg = load_config(ROOT / "configs" / f"{preset}.yaml")
    assert isinstance(cfg, SearchConfig) and cfg.warmup_epochs < cfg.epochs


def test_imagenet_presets_carry_official_hyperparameters():
    for name, target in (("imagenet-gpu", 5.0), ("imagenet-mobile", 80.0)):
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        assert (cfg.epochs - cfg.warmup_epochs, cfg.warmup_epochs, cfg.target) == (120, 40, target)
        assert (cfg.arch.lr, cfg.arch.betas, cfg.arch.update_every, cfg.arch.regularizer) == (
            1e-3, (0.0, 0.999), 5, "mul#log")
        assert (cfg.weight.lr, cfg.weight.momentum, cfg.weight.nesterov, cfg.weight.label_smoothing) == (
            0.025, 0.9, True, 0.1)


def test_overrides_are_dotted_and_typed():
    cfg = load_config(TINY, ["arch.lr=0.02", "arch.betas=[0.5, 0.9]", "weight.nesterov=false", "epochs=5"])
    assert (cfg.arch.lr, cfg.arch.betas, cfg.weight.nesterov, cfg.epochs) == (0.02, (0.5, 0.9), False, 5)
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}}


@pytest.mark.parametrize(
    "override, key",
    [
        ("target=-1", "target"),
        ("target=0", "target"),
        ("arch.regularizer=l2", "arch.regularizer"),
        ("warmup_epochs=10", "warmup_epochs"),
        ("arch.algo=evolution", "arch.algo"),
        ("weight.batch_size=0", "weight.batch_size"),
        ("arch.lr=fast", "arch.lr"),
        ("arch.colour=red", "arch.colour"),
        ("space=imagenet-9000", "space"),
    ],
)
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ValueError, match=rf"{key}: "):
        load_config(TINY, [override])


def test_mul_log_rejects_sub_unit_target():
    with pytest.raises(ValueError, match="target: mul#log"):
        config_from_dict({"space": "tiny", "target": 0.5, "arch": {"regularizer": "mul#log"}})


@pytest.mark.parametrize(
    "override, needle",
    [("target=-3", "target: must be positive"), ("arch.regularizer=l2", "arch.regularizer: unknown regularizer"),
     ("hardware=tpu-v9", "hardware: unknown hardware 'tpu-v9'"), ("warmup_epochs=4", "warmup_epochs: warm-up")],
)
def test_cli_rejects_bad_config_with_one_line(override, needle, tmp_path, capsys, monkeypatch):
    """`nas search` prints one `error: ...` line, exits 2, and starts no work (no output folder content)."""
    monkeypatch.setattr(search, "open_data", lambda cfg: pytest.fail("data opened before validation"))
    with pytest.raises(SystemExit) as exc:
        main(["search", "--config", str(TINY), "--set", override, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
