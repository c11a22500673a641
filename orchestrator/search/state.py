"""All search state in one checkpointable object, and its (de)serialisation.

``SearchState`` holds the supernet and its weight ``Trainer`` (the training core shared with retraining), α and
its optimiser, the step counters, the REINFORCE baseline, the curve accumulators and the runtime (device,
precision, ranks). Learning rates are a pure function of the step counter and every random choice of the
search a pure function of (seed, stream, counter), so a checkpoint needs no scheduler state. Each rank's own
random state (dropout, augmentation in this process) is saved and restored per rank.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from orchestrator.latency.model import LatencyModel
from orchestrator.search.adam import arch_optimizer
from orchestrator.search.config import SearchConfig, mul_log_scale
from orchestrator.search.sampling import generator
from orchestrator.spaces import SearchSpace
from orchestrator.supernet import ArchLogits, Supernet
from orchestrator.train.checkpoint import RESUME_FREE, check_resume, cpu, header, loop_state, restore_loop_state
from orchestrator.train.core import Trainer, cosine_lr, sgd
from orchestrator.train.runtime import Runtime


@dataclass
class SearchState:
    """Mutable by design: the step functions advance it in place. ``latency`` is derived from the config."""

    cfg: SearchConfig
    space: SearchSpace
    latency: LatencyModel
    supernet: Supernet
    logits: ArchLogits
    trainer: Trainer
    arch_opt: torch.optim.Optimizer  # Adam; BlockAdam under arch.skip_zero_active (search/adam.py)
    steps_per_epoch: int
    rt: Runtime = field(default_factory=Runtime)
    step: int = 0  # weight steps done
    arch_step: int = 0  # architecture steps done
    baseline: float | None = None  # REINFORCE moving-average baseline
    window: dict = field(default_factory=dict)  # sums since the last curve point
    history: list[dict] = field(default_factory=list)  # curve points
    seconds: dict = field(default_factory=lambda: {"warmup": 0.0, "weight": 0.0, "arch": 0.0, "eval": 0.0})
    paths: list = field(default_factory=list)  # paths sampled since the last consistency check (not saved)

    @property
    def weight_opt(self) -> torch.optim.Optimizer:
        return self.trainer.opt

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch

    @property
    def searching(self) -> bool:
        """Whether the current weight step lies in the search phase (after warm-up)."""
        return self.epoch >= self.cfg.warmup_epochs


def init_state(cfg: SearchConfig, latency: LatencyModel, steps_per_epoch: int,
               rt: Runtime | None = None) -> SearchState:
    """A fresh search: supernet and α initialised from the seed alone (on the CPU, so every device and every
    rank starts from the same bits), then moved to the runtime's device."""
    rt = rt or Runtime()
    space = cfg.search_space
    if latency.space != space:
        raise ValueError(f"hardware: latency model is for space {latency.space.name!r}, config names {space.name!r}")
    if steps_per_epoch < 1:
        raise ValueError("weight.batch_size: larger than the weight-training split, so an epoch has no step")
    if cfg.arch.regularizer == "mul#log":
        mul_log_scale(latency.unit, cfg.arch.mul_log_unit)  # a unit the official code has no counterpart of
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        supernet = Supernet(space, linear_init=cfg.init.linear, zero_last_gamma=cfg.init.zero_last_gamma)
    logits = ArchLogits(space)
    with torch.no_grad():
        init = torch.randn(logits.alpha.shape, generator=generator(cfg.seed, "alpha-init", 0), device="cpu")
        logits.alpha.copy_(init * cfg.arch.init_std)
    supernet = rt.module(supernet)
    logits = logits.to(rt.device)
    w, a = cfg.weight, cfg.arch
    trainer = Trainer(supernet, sgd(supernet, w.lr, w.momentum, w.nesterov, w.weight_decay, w.no_decay_bn), rt,
                      w.label_smoothing)
    arch_opt = arch_optimizer(logits.alpha, a.lr, a.betas, a.eps, a.weight_decay, per_block=a.skip_zero_active)
    return SearchState(cfg, space, latency, supernet, logits, trainer, arch_opt, steps_per_epoch, rt)


def weight_lr(cfg: SearchConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of weight step ``step``: a cosine over the warm-up from ``warmup_lr``, then a cosine over the
    search epochs from ``lr`` (the official schedule: two phases, each annealed to 0)."""
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return cosine_lr(cfg.weight.warmup_lr, step, warm)
    return cosine_lr(cfg.weight.lr, step - warm, (cfg.epochs - cfg.warmup_epochs) * steps_per_epoch)


def state_dict(state: SearchState) -> dict:
    """Everything needed to continue the search exactly, in the one checkpoint format (``train.checkpoint``):
    tensors and plain Python values (loads with ``weights_only=True``). Collective: every rank calls it."""
    saved = header("search", state.cfg.to_dict(), state.space, state.steps_per_epoch, state.supernet, state.rt)
    return {**saved, **loop_state(state), "hardware": state.latency.hardware,
            "model": cpu(state.supernet.state_dict()), "opt": cpu(state.weight_opt.state_dict()),
            "alpha": cpu(state.logits.alpha), "arch_opt": cpu(state.arch_opt.state_dict()),
            "arch_step": state.arch_step, "baseline": state.baseline}


def _load_weights(state: SearchState, saved: dict) -> None:
    state.supernet.load_state_dict(saved["model"])
    state.weight_opt.load_state_dict(saved["opt"])
    restore_loop_state(state, saved, state.cfg.seed)


def load_state_dict(state: SearchState, saved: dict) -> None:
    """Restore a checkpoint into a state built from the same config; ``ValueError`` names what does not match."""
    check_resume(saved, "search", state.cfg.to_dict(), state.space, state.steps_per_epoch)
    _load_weights(state, saved)  # a resumed run goes on timing (its seconds are restored)
    with torch.no_grad():
        state.logits.alpha.copy_(saved["alpha"])
    state.arch_opt.load_state_dict(saved["arch_opt"])
    state.arch_step, state.baseline = saved["arch_step"], saved["baseline"]


# What a search may change relative to the warm-up it forks from: warm-up trains weights only, so neither the
# hardware, the target nor anything of the architecture step has touched the state yet.
_FORK_FREE = ("hardware", "runtime", "latency_table", "target", "arch.")


def warmup_steps(state: SearchState) -> int:
    return state.cfg.warmup_epochs * state.steps_per_epoch


def fork_from_warmup(state: SearchState, saved: dict) -> None:
    """Start this search from a shared warm-up checkpoint (same space, data, seed and weight recipe; any hardware
    and target), so that a sweep pays for warm-up once. α and its optimiser stay this search's own."""
    free = RESUME_FREE + tuple(k for k in _config_keys(state.cfg.to_dict()) if k.startswith(_FORK_FREE))
    check_resume(saved, "search", state.cfg.to_dict(), state.space, state.steps_per_epoch, free=free,
                 what="warm-up checkpoint")
    if saved["step"] != warmup_steps(state) or saved["arch_step"] != 0:
        raise ValueError(f"checkpoint at step {saved['step']} is not the end of warm-up (step {warmup_steps(state)})")
    fresh = dict(state.seconds)
    _load_weights(state, saved)
    state.seconds = fresh  # a fork times its own search (the warm-up is the sweep's)


def _config_keys(config: dict, prefix: str = "") -> list[str]:
    """Every dotted key of a config dict."""
    out = []
    for k, v in config.items():
        out += _config_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
    return out


def alpha_fingerprint(state: SearchState) -> str:
    """sha256 of α's bytes: equal on every rank iff the architecture parameters are bit-identical."""
    a = state.logits.alpha.detach().to("cpu").contiguous()
    return hashlib.sha256(a.numpy().tobytes()).hexdigest()


def path_fingerprint(paths: list) -> str:
    """sha256 of the paths a rank sampled since the last check: equal on every rank iff they sampled alike."""
    return hashlib.sha256(repr(paths).encode()).hexdigest()


__all__ = ["SearchState", "init_state", "weight_lr", "state_dict", "load_state_dict", "fork_from_warmup",
           "alpha_fingerprint", "path_fingerprint", "warmup_steps"]
