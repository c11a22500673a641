"""The retrain config: the weight optimiser's recipe (``SGDConfig``) with a cosine schedule over ``epochs``, the
net's seed, numerics and the data (the same ``data:`` section as a search's)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from orchestrator.config import apply_overrides, build, load, to_dict
from orchestrator.data.source import DataSpec, Splits, open_splits
from orchestrator.spaces import SearchSpace
from orchestrator.train.core import SGDConfig

__all__ = ["RetrainConfig", "retrain_config_from_dict", "load_retrain_config", "retrain_data"]


@dataclass(frozen=True)
class RetrainConfig(SGDConfig):
    """How a net is retrained: SGD with (Nesterov) momentum, a cosine schedule to 0, label smoothing, and the
    data. ``lr`` is at ``batch_size`` (the official ImageNet recipe: 0.05 at 256)."""

    epochs: int = 5
    seed: int = 0  # the net's initialisation
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast of forward passes; weights stay fp32
    channels_last: bool = False
    data: DataSpec = field(default_factory=DataSpec)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs < 1:
            raise ValueError(f"epochs: must be at least 1, got {self.epochs}")

    def to_dict(self) -> dict:
        return to_dict(self)

    def replace(self, **changes: Any) -> "RetrainConfig":
        return dataclasses.replace(self, **changes)


def _named(msg: str) -> str:
    return msg if msg.startswith("retrain.") else f"retrain.{msg}"


def retrain_config_from_dict(data: Mapping[str, Any] | None, overrides: Sequence[str] = ()) -> RetrainConfig:
    """A retrain config from a mapping (``retrain.<key>`` named in errors)."""
    try:
        return build(RetrainConfig, apply_overrides(dict(data or {}), list(overrides)))
    except ValueError as e:
        raise ValueError(_named(str(e))) from None


def load_retrain_config(path: str | Path, overrides: Sequence[str] = ()) -> RetrainConfig:
    """A retrain config from YAML (at top level or under ``retrain:``) plus ``--set`` pairs."""
    try:
        return load(RetrainConfig, path, overrides, section="retrain")
    except ValueError as e:
        head, _, rest = str(e).partition(": ")
        raise ValueError(f"{head}: {_named(rest)}") from None


def retrain_data(arch_space: SearchSpace, cfg: RetrainConfig) -> Splits:
    """The splits a net of ``arch_space`` retrains on; a net whose classes (or nothing of) the data fits is
    refused here, before any compute (an ImageNet net on the digits, say)."""
    return open_splits(cfg.data, arch_space.resolution, arch_space.num_classes, "retrain",
                       f"the net's space {arch_space.name!r}")
