"""The training core that search, warm-up and retrain share: optimiser and schedule, one weight step, one
distributed evaluation, and the weight optimiser's config (``SGDConfig``).

A ``Trainer`` trains one model on one rank (``Runtime``: device, precision, collectives). The search gives each
step the sampled path as its forward function; a retrain trains the standalone net itself. Nothing here knows
about Ray: a Ray Train worker passes a ``DistComm`` runtime, one process the default one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.train.runtime import Runtime, eval_bn

__all__ = ["SGDConfig", "cosine_lr", "sgd", "Trainer", "evaluate", "Metrics", "metrics_window", "read_window"]



@dataclass(frozen=True)
class SGDConfig:
    """The weight optimiser of search and retrain alike: SGD with (Nesterov) momentum, weight decay (optionally none
    on BatchNorm), label smoothing, and the global batch of a step (split evenly among the ranks). A search's
    ``weight:`` section and a retrain config extend it with their own schedule and defaults."""

    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    no_decay_bn: bool = True  # BN weights without weight decay (official retraining: no_decay_keys='bn')
    label_smoothing: float = 0.1
    batch_size: int = field(default=64, metadata={"max": 65536})

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr: must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum: must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: Nesterov momentum needs momentum > 0")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: must be non-negative, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {self.batch_size}")

    def optimizer(self, model: nn.Module) -> torch.optim.SGD:
        """This recipe's SGD over ``model``'s parameters (its learning rate is set at every step)."""
        return sgd(model, self.lr, self.momentum, self.nesterov, self.weight_decay, self.no_decay_bn)


def cosine_lr(base: float, step: int, total: int) -> float:
    """A cosine from ``base`` to 0 over ``total`` steps (the official schedule; the search runs two, one for the
    warm-up and one for the search epochs)."""
    return 0.5 * base * (1 + math.cos(math.pi * min(step, total) / max(1, total)))


def sgd(model: nn.Module, lr: float, momentum: float, nesterov: bool, weight_decay: float,
        no_decay_bn: bool) -> torch.optim.SGD:
    """SGD with (Nesterov) momentum; with ``no_decay_bn`` BatchNorm weights and biases get no weight decay
    (the official retraining's ``no_decay_keys='bn'``)."""
    decay, no_decay = [], []
    for m in model.modules():
        for p in m.parameters(recurse=False):
            bn = isinstance(m, nn.modules.batchnorm._BatchNorm)
            (no_decay if bn and no_decay_bn else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


Metrics = dict[str, torch.Tensor]


class Trainer:
    """Weight training of one model on one rank: the step, the evaluation, and the optimiser.

    Inactive candidates of a supernet keep ``grad is None`` after a step (``zero_grad(set_to_none=True)``), which
    torch's SGD skips entirely, so neither momentum nor weight decay moves weights the step did not use. Metrics
    stay on the device (no host synchronisation per step); callers read them when they log."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, rt: Runtime,
                 label_smoothing: float = 0.0) -> None:
        self.model, self.opt, self.rt, self.label_smoothing = model, optimizer, rt, label_smoothing

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float,
             forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Metrics:
        """One SGD step on the batch ``(x, y)`` (already on the device); gradients are averaged over ranks."""
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        with self.rt.precision.autocast(self.rt.device):
            out = (forward or self.model)(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=self.label_smoothing)
        loss.backward()
        self.rt.comm.mean_([p.grad for p in self.model.parameters() if p.grad is not None])
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        acc = (out.detach().argmax(1) == y).float().mean()
        return {"loss": loss.detach(), "acc": acc}

    @torch.no_grad()
    def evaluate(self, net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                 batch_stats: bool = False) -> tuple[int, int]:
        """Top-1 (correct, images) over every rank's share of a split, counts summed across ranks."""
        return evaluate(net, batches, self.rt, batch_stats)


@torch.no_grad()
def evaluate(net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], rt: Runtime,
             batch_stats: bool = False) -> tuple[int, int]:
    """Top-1 (correct, images) of ``net`` over this rank's batches, summed across ranks: each rank evaluates its
    own share of the split once. ``batch_stats`` normalises with each batch's statistics (supernet paths)."""
    counts = torch.zeros(2, dtype=torch.float64, device=rt.device)
    with eval_bn(net, batch_stats):
        for x, y in batches:
            x, y = rt.batch(x, y)
            with rt.precision.autocast(rt.device):
                out = net(x)
            counts[0] += (out.argmax(1) == y).sum()
            counts[1] += y.numel()
    rt.comm.sum_([counts])
    return int(counts[0].item()), int(counts[1].item())


def metrics_window(window: dict[str, tuple[torch.Tensor | float, int]], metrics: Metrics) -> None:
    """Add a step's metrics to running sums (kept on the device until read)."""
    for k, v in metrics.items():
        s, n = window.get(k, (0.0, 0))
        window[k] = (s + v.detach() if isinstance(v, torch.Tensor) else s + float(v), n + 1)


def read_window(window: dict[str, tuple[torch.Tensor | float, int]]) -> dict[str, float]:
    """The means since the last read, as floats (one host synchronisation)."""
    return {k: float(s) / n for k, (s, n) in window.items() if n}


