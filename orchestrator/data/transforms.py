"""The standard ImageNet transforms (torchvision ``transforms.v2``) and the image decoder shared by all readers.

Weight steps see RandomResizedCrop + horizontal flip, optionally with the official colour distortion;
architecture steps (the held-out split) and validation see Resize + CenterCrop, as ProxylessNAS does. Both end
in ImageNet's mean/std normalisation and take either a PIL image (ImageFolder) or a decoded uint8 tensor (shards).
"""

from __future__ import annotations

import math

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_FRACTION = 0.875  # 224 of 256, the usual eval crop


def _check(resolution: int) -> None:
    if resolution < 8:
        raise ValueError(f"resolution must be at least 8 pixels, got {resolution}")


# Colour distortion of the official data provider (mit-han-lab/proxylessnas, ``build_train_transform``):
# ``normal`` is the search default, ``strong`` the retraining default.
COLOR_JITTER: dict[str, dict[str, float] | None] = {
    "none": None,
    "normal": {"brightness": 32.0 / 255.0, "saturation": 0.5},
    "strong": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
}


def train_transform(resolution: int, color_jitter: str = "none") -> v2.Compose:
    """Random-resized crop, flip and optional colour distortion (``none | normal | strong``) for weight training.

    The jitter runs after the flip, on the uint8 image, as the official code's ``ColorJitter`` on the PIL image."""
    _check(resolution)
    if color_jitter not in COLOR_JITTER:
        raise ValueError(f"color_jitter must be one of {', '.join(COLOR_JITTER)}, got {color_jitter!r}")
    jitter = COLOR_JITTER[color_jitter]
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(resolution, scale=(0.08, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        *([v2.ColorJitter(**jitter)] if jitter else []),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def eval_transform(resolution: int, crop_fraction: float = CROP_FRACTION) -> v2.Compose:
    """Resize the short side to resolution/crop_fraction, then a centre crop: deterministic, for α steps and eval."""
    _check(resolution)
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(int(math.ceil(resolution / crop_fraction)), antialias=True),
        v2.CenterCrop(resolution),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def decode(data: bytes) -> torch.Tensor:
    """Encoded image bytes (JPEG, PNG, ...) to a (3, H, W) uint8 tensor; RuntimeError if they do not decode."""
    return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
