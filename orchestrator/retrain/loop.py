"""Retraining a derived architecture from scratch: its state, its checkpoint and its step, on the one training loop.

A searched architecture is judged by training it alone (its supernet weights are shared and biased), so every
point of a sweep's Pareto front is a retrained net. The step is one SGD step of the standalone net (``Trainer``);
the loop (``train.loop``: feeds, clock, progress, per-epoch evaluation and checkpoints) and the checkpoint format
(``train.checkpoint``) are the search's. It trains on the weight-training and held-out images of the data spec and
validates on its validation split, in one process or as one rank of a Ray Train group.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from orchestrator.arch import Arch
from orchestrator.data.source import Splits
from orchestrator.network import build_net
from orchestrator.retrain.config import RetrainConfig, retrain_data
from orchestrator.spaces import get_space
from orchestrator.train.checkpoint import check_resume, cpu, header, loop_state, restore_loop_state
from orchestrator.train.core import Trainer, cosine_lr, evaluate
from orchestrator.train.loop import Clock, Hooks, Schedule, rank_feed, run_loop
from orchestrator.train.runtime import Precision, Runtime, average_bn_stats

__all__ = ["RetrainState", "retrain_state_dict", "load_retrain_state", "train_net"]


@dataclass
class RetrainState:
    """Mutable by design: the step advances it in place."""

    net: nn.Module
    trainer: Trainer
    steps_per_epoch: int
    step: int = 0
    window: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    seconds: dict = field(default_factory=lambda: {"train": 0.0, "eval": 0.0})

    @property
    def rt(self) -> Runtime:
        return self.trainer.rt


def _resume_config(cfg: RetrainConfig, arch: str) -> dict:
    """What a retrain checkpoint must match: the recipe and the architecture."""
    return {**cfg.to_dict(), "arch": arch}


def retrain_state_dict(state: RetrainState, cfg: RetrainConfig, arch: str) -> dict:
    """Everything to continue exactly, in the one checkpoint format (loads with ``weights_only=True``); collective
    across ranks."""
    space = get_space(Arch.parse(arch).space)
    saved = header("retrain", _resume_config(cfg, arch), space, state.steps_per_epoch, state.net, state.rt)
    return {**saved, **loop_state(state), "arch": arch, "model": cpu(state.net.state_dict()),
            "opt": cpu(state.trainer.opt.state_dict())}


def load_retrain_state(state: RetrainState, saved: dict, cfg: RetrainConfig, arch: str) -> None:
    """Restore a retrain checkpoint of the same net and recipe; ``ValueError`` names what does not match."""
    check_resume(saved, "retrain", _resume_config(cfg, arch), get_space(Arch.parse(arch).space),
                 state.steps_per_epoch)
    state.net.load_state_dict(saved["model"])
    state.trainer.opt.load_state_dict(saved["opt"])
    restore_loop_state(state, saved, cfg.seed)


def train_net(arch: str, cfg: RetrainConfig, *, rt: Runtime | None = None, data: Splits | None = None,
              on_row: Callable[[RetrainState, dict], None] | None = None,
              checkpoint: Callable[[RetrainState], None] | None = None, resume: dict | None = None,
              progress: bool | Callable[..., Any] = False) -> tuple[nn.Module, RetrainState]:
    """Train ``arch`` from scratch with ``cfg`` on this rank of ``rt``: ``on_row(state, row)`` after each epoch's
    evaluation, ``checkpoint(state)`` after each epoch. The net's initialisation and every batch are functions of
    the seeds only, so every rank builds the same net, and resuming from ``resume`` (a ``retrain_state_dict``)
    continues exactly."""
    rt = rt or Runtime(precision=Precision(cfg.precision, cfg.channels_last))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = build_net(arch)
    data = data or retrain_data(net.space, cfg)
    net = rt.module(net)
    trainer = Trainer(net, cfg.optimizer(net), rt, cfg.label_smoothing)
    train = rank_feed(cfg.data, data.train, cfg.batch_size, "batch_size", rt, "retrain")
    valid = rank_feed(cfg.data, data.valid, cfg.batch_size, "batch_size", rt, "valid", shuffle=False,
                      need_batch=False)
    spe = train.batches_per_epoch
    state = RetrainState(net, trainer, spe)
    if resume is not None:
        load_retrain_state(state, resume, cfg, arch)
    total = cfg.epochs * spe
    stream = train.stream(state.step)

    def step(clock: Clock) -> dict:
        x, y = rt.batch(*next(stream))
        clock.lap("data")
        metrics = trainer.step(x, y, cosine_lr(cfg.lr, state.step, total))
        state.step += 1
        clock.lap("train")
        return metrics

    def evaluation() -> dict:
        average_bn_stats(net, rt.comm)
        correct, n = evaluate(net, valid.epoch(0), rt)
        return {"val_accuracy": correct / max(1, n), "val_images": n}

    run_loop(state, step, Schedule(total, log_every=spe, checkpoint_every=spe, eval_every=spe),
             row=lambda means: {"epoch": state.step // spe, "train_loss": means.get("loss", math.nan),
                                "lr": cosine_lr(cfg.lr, state.step, total)},
             evaluate=evaluation,
             hooks=Hooks(on_row=on_row and (lambda row: on_row(state, row)),
                         checkpoint=checkpoint and (lambda: checkpoint(state))),
             progress=progress, desc="retrain", postfix=lambda r: {"val": f"{r['val_accuracy']:.3f}"})
    return net, state
