"""Every preset in configs/ loads and says what it claims. The ImageNet ones cannot run here (no ImageNet, no GPU):
they are loaded, type-checked and compared with the official recipes they cite."""

from __future__ import annotations

import pytest

from orchestrator.retrain import load_retrain_config
from orchestrator.search import load_config
from orchestrator.sweep import load_sweep
from tests.conftest import ROOT

CONFIGS = ROOT / "configs"
KIND = {"sweep": load_sweep, "retrain": load_retrain_config}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_loads(path):
    kind = next((k for k in KIND if k in path.stem.split("-")), "search")
    cfg = KIND.get(kind, load_config)(path)
    data = cfg.retrain.data if kind == "sweep" and cfg.retrain else getattr(cfg, "data", None)
    assert data is None or data.kind in ("digits", "imagefolder", "shards")


@pytest.mark.parametrize("name,hardware,target", [("imagenet-gpu", "cuda-nvidia-h100-80gb-hbm3", 5.0),
                                                  ("imagenet-mobile", "pixel1", 80.0)])
def test_imagenet_search_presets_follow_the_official_search(name, hardware, target):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.search_space.name == "proxyless-imagenet" and (cfg.hardware, cfg.target) == (hardware, target)
    assert (cfg.epochs, cfg.warmup_epochs) == (160, 40)
    w, a = cfg.weight, cfg.arch
    assert (w.lr, w.warmup_lr, w.batch_size, w.weight_decay, w.label_smoothing) == (0.025, 0.05, 256, 4e-5, 0.1)
    assert (a.lr, a.betas, a.update_every, a.algo) == (1e-3, (0.0, 0.999), 5, "grad")
    assert cfg.data.kind == "shards" and cfg.data.valid_uri and cfg.data.holdout_per_class == 50
    assert cfg.data.jitter("search") == "normal"


def test_imagenet_retrain_preset_is_the_official_recipe():
    r = load_retrain_config(CONFIGS / "retrain-imagenet.yaml")
    assert (r.epochs, r.lr, r.batch_size, r.momentum, r.nesterov) == (300, 0.05, 256, 0.9, True)
    assert (r.weight_decay, r.no_decay_bn, r.label_smoothing) == (4e-5, True, 0.1)
    assert r.data.jitter("retrain") == "strong" and r.data.kind == "shards" and r.data.valid_uri


def test_imagenet_sweep_preset_runs_on_gpus_and_retrains_on_the_search_data():
    s = load_sweep(CONFIGS / "sweep-imagenet-gpu.yaml")
    search = load_config(CONFIGS / "imagenet-gpu.yaml")
    assert s.use_gpu and s.allow_autoscale and s.retrain.epochs == 300
    assert s.retrain.data.uri == search.data.uri and s.retrain.data.jitter("retrain") == "strong"
    # another search data source carries over to the retrains
    moved = load_sweep(CONFIGS / "sweep-imagenet-gpu.yaml", ["overrides=[data.uri=s3://elsewhere/train]"])
    assert moved.retrain.data.uri == "s3://elsewhere/train"
