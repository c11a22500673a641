"""The embedded default dataset: scikit-learn's bundled handwritten digits (1,797 real 8x8 images, 10 classes).

It installs offline with scikit-learn, so the demo and the tests need no download. Images are brought to the
space's resolution and to 3 channels, and split with a seed into weight-training, held-out (architecture
steps) and validation parts that never overlap.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DIGITS = 1797  # images in scikit-learn's digits
MAX_BYTES = 4 * 2**30  # the float (N, 3, R, R) tensor of every digit, held in memory by every rank: up to 4 GiB


def load_digits_tensors(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as (N, 3, R, R) float images normalised to mean 0 / std 1, and int64 labels; ``ValueError`` when
    they would not fit in ``MAX_BYTES`` (the 8 px digits upsampled to a large resolution carry no more signal)."""
    from sklearn.datasets import load_digits

    size = DIGITS * 3 * resolution * resolution * 4
    if size > MAX_BYTES:
        top = int((MAX_BYTES / (DIGITS * 3 * 4)) ** 0.5)
        raise ValueError(f"resolution: the embedded digits at {resolution} px would take {size / 2**30:.1f} GiB in "
                         f"memory; they are held at up to {top} px (use an imagefolder or shards data set above)")
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    return x.expand(-1, 3, -1, -1).contiguous(), torch.tensor(d.target, dtype=torch.int64)


def split_indices(labels: np.ndarray, holdout_per_class: int, valid_fraction: float, seed: int):
    """Seeded per-class split: ``holdout_per_class`` images of each class for architecture steps (as ProxylessNAS
    takes 50 per class from ImageNet's train set), a stratified validation share, the rest for weights."""
    if holdout_per_class < 1:
        raise ValueError(f"holdout_per_class must be at least 1, got {holdout_per_class}")
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    rng = np.random.default_rng(seed)
    train, holdout, valid = [], [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_valid = int(round(valid_fraction * len(idx)))
        if holdout_per_class + n_valid >= len(idx):
            raise ValueError(f"class {c} has {len(idx)} images, too few for the held-out and validation splits")
        holdout += idx[:holdout_per_class].tolist()
        valid += idx[holdout_per_class : holdout_per_class + n_valid].tolist()
        train += idx[holdout_per_class + n_valid :].tolist()
    return sorted(train), sorted(holdout), sorted(valid)

