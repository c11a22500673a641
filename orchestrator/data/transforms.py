"""The standard ImageNet transforms (torchvision ``transforms.v2``), the image decoders shared by all readers, and
the one conversion of a uint8 batch into the normalised float tensor a step reads.

Weight steps see RandomResizedCrop + horizontal flip, optionally with the official colour distortion;
architecture steps (the held-out split) and validation see Resize + CenterCrop, as ProxylessNAS does. Both take
either a PIL image (ImageFolder) or a decoded uint8 tensor (shards) and give a (3, R, R) **uint8** tensor: every
geometric and colour operation already ran on uint8 pixels, so JPEG batches travel from the loader processes to the
device at 1 byte a pixel. ImageNet's mean/std normalisation runs on the device, in ``normalize_images`` (called by
``Runtime.batch`` for every uint8 batch of search, warm-up, evaluation and retrain), with the very operations of
``v2.ToDtype(float32, scale=True)`` followed by ``v2.Normalize``: the steps read the same float pixels as when the
loader processes normalised (``tests/test_numerics.py``).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_FRACTION = 0.875  # 224 of 256, the usual eval crop


def pixel_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's mean and std as float32 (3, 1, 1) tensors on ``device``, for ``normalize_images``."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device).view(-1, 1, 1)
    return mean, std


def normalize_images(x: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """uint8 images (..., 3, H, W) to ImageNet-normalised float32 on their own device, keeping their memory format.

    The operations of ``v2.ToDtype(torch.float32, scale=True)`` then ``v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)``
    in the same order (convert, multiply by 1/255, subtract the mean, divide by the std), each correctly rounded in
    float32, so the result equals the old loader-side normalisation bit for bit on the CPU. ``stats`` are
    ``pixel_stats(x.device)``, passed in so that a step does not copy them to the device every time."""
    if x.dtype != torch.uint8:
        raise ValueError(f"normalize_images: expected uint8 images, got {x.dtype}")
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"normalize_images: expected (..., 3, H, W) images, got shape {tuple(x.shape)}")
    mean, std = stats if stats is not None else pixel_stats(x.device)
    return x.to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)


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
    """Random-resized crop, flip and optional colour distortion (``none | normal | strong``) for weight training,
    to a (3, R, R) uint8 tensor (``normalize_images`` makes it float on the device).

    The crop resizes uint8 pixels (as it did when this transform ended in float normalisation); the jitter runs
    after the flip, on the uint8 image, as the official code's ``ColorJitter`` on the PIL image."""
    _check(resolution)
    if color_jitter not in COLOR_JITTER:
        raise ValueError(f"color_jitter must be one of {', '.join(COLOR_JITTER)}, got {color_jitter!r}")
    jitter = COLOR_JITTER[color_jitter]
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(resolution, scale=(0.08, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        *([v2.ColorJitter(**jitter)] if jitter else []),
    ])


def eval_transform(resolution: int, crop_fraction: float = CROP_FRACTION) -> v2.Compose:
    """Resize the short side to resolution/crop_fraction, then a centre crop, to a (3, R, R) uint8 tensor:
    deterministic, for α steps and eval."""
    _check(resolution)
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(int(math.ceil(resolution / crop_fraction)), antialias=True),
        v2.CenterCrop(resolution),
    ])


def decode(data: bytes) -> torch.Tensor:
    """Encoded image bytes (JPEG, PNG, GIF, ...) to a (3, H, W) uint8 tensor; RuntimeError if they do not decode.

    A 16-bit image (PNG) comes back from torchvision as uint16 and is brought to 8 bits as ``to_rgb`` does
    (v / 257, rounded); an animated GIF gives its first frame."""
    x = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    if x.dim() == 4:
        x = x[0]
    if x.dtype != torch.uint8:
        x = x.to(torch.float32).div_(257.0).round_().clamp_(0, 255).to(torch.uint8)
    return x


class UnreadableImage(OSError):
    """An image file that does not decode (truncated, not an image, a decompression bomb, ...): one line, naming
    the file."""


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # what PIL opens 16-bit greyscale PNG/TIFF as


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB. PIL's own ``convert("RGB")`` clips 16-bit greyscale (modes ``I;16``, ``I``) at
    255, which turns nearly every pixel white; those are scaled (v / 257, rounded: 65535 -> 255) instead. Palette,
    CMYK, greyscale and alpha images go through PIL's conversion (alpha dropped)."""
    if im.mode in _SIXTEEN_BIT:
        a = np.asarray(im).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # PIL warns when a palette with transparency goes straight to RGB
    return im if im.mode == "RGB" else im.convert("RGB")


def open_image(path: str) -> Image.Image:
    """An image file decoded to 8-bit RGB (the ImageFolder reader's decoder); ``UnreadableImage`` naming the file
    for anything that does not decode, a decompression bomb (more pixels than PIL's ``MAX_IMAGE_PIXELS`` allows
    twice over, refused from the header before any memory is spent) included."""
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except Image.DecompressionBombError as e:
        raise UnreadableImage(f"{printable(path)}: cannot read image (decompression bomb: {_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001  PIL's decoders raise OSError, SyntaxError, ValueError, EOFError, ...
        raise UnreadableImage(f"{printable(path)}: cannot read image ({_first_line(e)})") from None


def printable(path: str) -> str:
    """A path as text that can always be printed and stored: bytes of a name that is not UTF-8 (which Python holds
    as surrogates) shown as ``\\xff`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
