"""A search runs on an ImageFolder tree (ImageNet's layout) of real JPEG files, through the same path as digits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from orchestrator.search import load_config, open_data, run_search
from tests.conftest import ROOT


def write_imagefolder(root, classes: int, per_class: int) -> None:
    """``classes`` folders of ``per_class`` 24 px JPEG files each, in ImageNet's layout."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            # a class-dependent mean so that the images carry a (weak) label signal
            pixels = np.clip(rng.normal(20 * c + 30, 40, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(d / f"img{i}.JPEG", quality=90)


def test_search_on_an_imagefolder(tmp_path):
    write_imagefolder(tmp_path / "train", classes=10, per_class=8)
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [
        "data.kind=imagefolder", f"data.uri={tmp_path / 'train'}", "data.holdout_per_class=2",
        "data.valid_fraction=0.25", "epochs=2", "warmup_epochs=1", "weight.batch_size=8", "arch.batch_size=8"])
    data = open_data(cfg)
    assert (len(data.train), len(data.holdout), len(data.valid)) == (40, 20, 20)
    x, y = next(cfg.data.feed(data.train, batch_size=4).epoch(0))
    assert tuple(x.shape) == (4, 3, 16, 16) and 0 <= int(y.min()) and int(y.max()) < 10
    result = run_search(cfg, data)
    assert result.arch.startswith("tiny:") and result.steps == 10 and result.arch_steps > 0
    assert result.val_images == 20


def test_imagefolder_with_the_wrong_number_of_classes_is_refused(tmp_path):
    write_imagefolder(tmp_path / "train", classes=3, per_class=6)
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["data.kind=imagefolder", f"data.uri={tmp_path / 'train'}",
                                                         "data.holdout_per_class=1"])
    with pytest.raises(ValueError, match="has 3 classes, but space 'tiny' expects 10"):
        open_data(cfg)
    variant = load_config(ROOT / "configs" / "tiny.yaml", ["data.kind=imagefolder", f"data.uri={tmp_path / 'train'}",
                                                            "data.holdout_per_class=1", "num_classes=3"])
    assert variant.search_space.name == "tiny[c3]" and open_data(variant).num_classes == 3


def test_imagefolder_needs_a_uri():
    with pytest.raises(ValueError, match="data.uri"):
        load_config(ROOT / "configs" / "tiny.yaml", ["data.kind=imagefolder"])
