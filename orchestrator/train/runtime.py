"""Where a training run executes: its device, its numeric precision, and its place among data-parallel ranks.

One process is rank 0 of 1 (``Comm``); a Ray Train worker is one rank of a ``torch.distributed`` group
(``DistComm``: gloo on CPUs, NCCL on GPUs, so every collective runs on tensors on the rank's device). Nothing
here reads global mode: a ``Runtime`` is built once per process and passed to whatever trains.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from orchestrator.data.transforms import normalize_images, pixel_stats

log = logging.getLogger(__name__)

__all__ = ["DEVICES", "PRECISIONS", "resolve_device", "Precision", "RanksDiverged", "Comm", "DistComm", "Runtime",
           "rng_state", "set_rng_state", "bn_buffers", "average_bn_stats", "eval_bn"]

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; ``ValueError`` for a GPU
    that is not there, so ``--device cuda`` never silently trains on the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: unknown device {name!r} (known: auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {name} asked for, but this machine has no CUDA GPU "
                             f"(torch {torch.__version__}, torch.cuda.is_available() is False)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device: {name} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type != "cpu":
        raise ValueError(f"device: unsupported device type {dev.type!r} (known: auto, cpu, cuda, cuda:N)")
    return dev


@dataclass(frozen=True)
class Precision:
    """Numeric settings of a step: bf16 autocast of the forward pass, channels-last memory format."""

    dtype: str = "fp32"  # fp32 | bf16 (autocast; weights, gradients and α stay fp32)
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in PRECISIONS:
            raise ValueError(f"precision: must be one of {', '.join(PRECISIONS)}, got {self.dtype!r}")

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class RanksDiverged(RuntimeError):
    """Ranks no longer run one computation (α, the sampled paths or the tensors they reduce differ). A bug to
    report, never a fault to retry."""


class Comm:
    """Collectives of one process (rank 0 of 1): every operation is the identity."""

    rank = 0
    world = 1

    def mean_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Average tensors in place across ranks."""

    def sum_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum tensors in place across ranks."""

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (a small picklable object), in rank order."""
        return [value]


class DistComm(Comm):
    """Collectives over the initialised ``torch.distributed`` group (as inside a Ray Train worker). Tensors are
    flattened into one buffer per call, in the caller's order, which is the same on every rank."""

    def __init__(self) -> None:
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: DistComm runs inside Train workers")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def _reduce(self, tensors: Sequence[torch.Tensor], mean: bool) -> None:
        if self.world == 1:
            return
        flat = torch.cat([t.reshape(-1).to(torch.float64 if t.dtype == torch.float64 else torch.float32)
                          for t in tensors]) if tensors else torch.zeros(0)
        # Ranks that ran different paths reduce buffers of different sizes: gloo then aborts the process and NCCL
        # may hang. One small all-reduce of (size, -size) first turns that into an error every rank raises alike.
        device = flat.device if tensors else self._device()
        size = torch.tensor([flat.numel(), -flat.numel()], dtype=torch.int64, device=device)
        dist.all_reduce(size, op=dist.ReduceOp.MAX)
        if int(size[0]) != -int(size[1]):
            sizes = self.gather(flat.numel())
            odd = [r for r, n in enumerate(sizes) if n != sizes[0]]
            raise RanksDiverged(f"ranks reduce different tensors: rank(s) {odd} hold {sizes[odd[0]]} values, rank 0 "
                                f"{sizes[0]} (they ran different paths or models)")
        if not tensors:
            return
        dist.all_reduce(flat)
        if mean:
            flat /= self.world
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t).to(t.dtype))
            offset += n

    def mean_(self, tensors: Sequence[torch.Tensor]) -> None:
        self._reduce(tensors, mean=True)

    def sum_(self, tensors: Sequence[torch.Tensor]) -> None:
        self._reduce(tensors, mean=False)

    def _device(self) -> torch.device:
        """Where this group's collectives run: NCCL only on the rank's GPU, gloo on the CPU."""
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def gather(self, value: Any) -> list[Any]:
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out


@dataclass
class Runtime:
    """Device, precision and collectives of one process (one rank)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: Precision = field(default_factory=Precision)
    comm: Comm = field(default_factory=Comm)
    _pixel_stats: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False,
                                                                    compare=False)

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def world(self) -> int:
        return self.comm.world

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch moved to the device (asynchronously from pinned memory), in the configured memory format.

        The one place where images become what a step reads: uint8 images (JPEG data: ImageFolder and shards)
        cross to the device at 1 byte a pixel and are normalised there (``normalize_images``); float images (the
        embedded digits, already normalised) are only moved."""
        x = x.to(self.device, non_blocking=True)
        if self.precision.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if x.dtype == torch.uint8:
            if self._pixel_stats is None:
                self._pixel_stats = pixel_stats(self.device)
            x = normalize_images(x, self._pixel_stats)
        return x, y.to(self.device, non_blocking=True)

    def module(self, m: nn.Module) -> nn.Module:
        """A module moved to the device, in the configured memory format."""
        m = m.to(self.device)
        return m.to(memory_format=torch.channels_last) if self.precision.channels_last else m


# ------------------------------------------------------------------------------------------------------ state
def rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    """This process's random state: the CPU generator and, on a GPU, the device's."""
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict[str, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    """Running statistics of every BatchNorm, in module order (the same on every rank)."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            out += [m.running_mean, m.running_var]
    return out


def average_bn_stats(model: nn.Module, comm: Comm) -> None:
    """Make BatchNorm running statistics the mean over ranks, so evaluation and checkpoints do not depend on the
    rank (train-mode BN still normalises each rank's batch with its own statistics)."""
    with torch.no_grad():
        comm.mean_(bn_buffers(model))


@contextlib.contextmanager
def eval_bn(model: nn.Module, batch_stats: bool) -> Iterator[None]:
    """Evaluate with running statistics (``model.eval()``), or with each batch's own statistics without
    updating the running ones (as the official search validates supernet paths)."""
    was = model.training
    saved = None
    if batch_stats:
        saved = [(m, m.momentum) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        model.train()
        for m, _ in saved:
            m.momentum = 0.0  # normalise with batch statistics, leave the running ones as they are
    else:
        model.eval()
    try:
        yield
    finally:
        for m, mom in saved or ():
            m.momentum = mom
        model.train(was)
