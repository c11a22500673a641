"""All search state in one checkpointable object, and its (de)serialisation.

``SearchState`` holds the supernet, α, both optimisers, the step counters, the REINFORCE baseline, the curve
accumulators and the global torch RNG; learning rates are a pure function of the step counter, so the schedule
needs no state of its own. ``state_dict``/``load_state_dict`` round-trip it bit for bit.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch

from orchestrator.latency.model import LatencyModel
from orchestrator.search.config import SearchConfig
from orchestrator.search.sampling import generator
from orchestrator.spaces import SearchSpace, get_space
from orchestrator.supernet import ArchLogits, Supernet

STATE_VERSION = 1
# Keys that may differ between a checkpoint and the config resuming it (they change no computed value).
_RESUME_FREE_KEYS = ("log_every", "checkpoint_every")


@dataclass
class SearchState:
    """Mutable by design: the step functions advance it in place. ``latency`` is derived from the config."""

    cfg: SearchConfig
    space: SearchSpace
    latency: LatencyModel
    supernet: Supernet
    logits: ArchLogits
    weight_opt: torch.optim.SGD
    arch_opt: torch.optim.Adam
    steps_per_epoch: int
    step: int = 0  # weight steps done
    arch_step: int = 0  # architecture steps done
    baseline: float | None = None  # REINFORCE moving-average baseline
    window: dict = field(default_factory=dict)  # sums since the last curve point
    history: list[dict] = field(default_factory=list)  # curve points

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


def init_state(cfg: SearchConfig, latency: LatencyModel, steps_per_epoch: int) -> SearchState:
    """A fresh search: supernet and α initialised from the seed alone, without touching the global RNG."""
    space = get_space(cfg.space)
    if latency.space != space:
        raise ValueError(f"hardware: latency model is for space {latency.space.name!r}, config names {cfg.space!r}")
    if steps_per_epoch < 1:
        raise ValueError("weight.batch_size: larger than the weight-training split, so an epoch has no step")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        supernet = Supernet(space, linear_init=cfg.init.linear, zero_last_gamma=cfg.init.zero_last_gamma)
    logits = ArchLogits(space)
    with torch.no_grad():
        init = torch.randn(logits.alpha.shape, generator=generator(cfg.seed, "alpha-init", 0))
        logits.alpha.copy_(init * cfg.arch.init_std)
    w, a = cfg.weight, cfg.arch
    weight_opt = torch.optim.SGD(supernet.parameters(), lr=w.lr, momentum=w.momentum, nesterov=w.nesterov,
                                 weight_decay=w.weight_decay)
    arch_opt = torch.optim.Adam([logits.alpha], lr=a.lr, betas=a.betas, eps=a.eps, weight_decay=a.weight_decay)
    return SearchState(cfg, space, latency, supernet, logits, weight_opt, arch_opt, steps_per_epoch)


def weight_lr(cfg: SearchConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of weight step ``step``: a cosine over the warm-up from ``warmup_lr``, then a cosine over the
    search epochs from ``lr`` (the official schedule: two phases, each annealed to 0)."""
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return 0.5 * cfg.weight.warmup_lr * (1 + math.cos(math.pi * step / warm))
    total = (cfg.epochs - cfg.warmup_epochs) * steps_per_epoch
    return 0.5 * cfg.weight.lr * (1 + math.cos(math.pi * (step - warm) / total))


def state_dict(state: SearchState) -> dict:
    """Everything needed to continue the search exactly, as tensors and plain Python values (``torch.save``-able)."""
    return {
        "version": STATE_VERSION,
        "config": state.cfg.to_dict(),
        "space_fingerprint": state.space.fingerprint(),
        "steps_per_epoch": state.steps_per_epoch,
        "supernet": {k: v.detach().clone() for k, v in state.supernet.state_dict().items()},
        "alpha": state.logits.alpha.detach().clone(),
        "weight_opt": state.weight_opt.state_dict(),
        "arch_opt": state.arch_opt.state_dict(),
        "step": state.step,
        "arch_step": state.arch_step,
        "baseline": state.baseline,
        "window": dict(state.window),
        "history": [dict(h) for h in state.history],
        "torch_rng": torch.get_rng_state(),
    }


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        if not prefix and k in _RESUME_FREE_KEYS:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(prefix + k)
    return keys


def _check_compatible(state: SearchState, saved: dict) -> None:
    if saved.get("version") != STATE_VERSION:
        raise ValueError(f"checkpoint version {saved.get('version')!r} is not {STATE_VERSION}")
    if saved["space_fingerprint"] != state.space.fingerprint():
        space = saved.get("config", {}).get("space", "?")
        raise ValueError(f"checkpoint is of space {space!r} (fingerprint {saved['space_fingerprint']}), "
                         f"not {state.space.name!r} ({state.space.fingerprint()})")
    if saved["steps_per_epoch"] != state.steps_per_epoch:
        raise ValueError(f"checkpoint has {saved['steps_per_epoch']} steps per epoch, data gives {state.steps_per_epoch}")


def _load_weights(state: SearchState, saved: dict) -> None:
    state.supernet.load_state_dict(saved["supernet"])
    state.weight_opt.load_state_dict(saved["weight_opt"])
    state.step = saved["step"]
    state.window = dict(saved["window"])
    state.history = [dict(h) for h in saved["history"]]
    torch.set_rng_state(saved["torch_rng"])


def load_state_dict(state: SearchState, saved: dict) -> None:
    """Restore a checkpoint into a state built from the same config; ``ValueError`` names what does not match."""
    _check_compatible(state, saved)
    diff = _config_diff(state.cfg.to_dict(), saved["config"])
    if diff:
        raise ValueError(f"checkpoint was written with another config (differs in {', '.join(diff)})")
    _load_weights(state, saved)
    with torch.no_grad():
        state.logits.alpha.copy_(saved["alpha"])
    state.arch_opt.load_state_dict(saved["arch_opt"])
    state.arch_step, state.baseline = saved["arch_step"], saved["baseline"]


# What a search may change relative to the warm-up it forks from: warm-up trains weights only, so neither the
# hardware, the target nor anything of the architecture step has touched the state yet.
_FORK_FREE = ("hardware", "latency_table", "target", "arch.")


def warmup_steps(state: SearchState) -> int:
    return state.cfg.warmup_epochs * state.steps_per_epoch


def fork_from_warmup(state: SearchState, saved: dict) -> None:
    """Start this search from a shared warm-up checkpoint (same space, data, seed and weight recipe; any hardware
    and target), so that a sweep pays for warm-up once. α and its optimiser stay this search's own."""
    _check_compatible(state, saved)
    if saved["step"] != warmup_steps(state) or saved["arch_step"] != 0:
        raise ValueError(f"checkpoint at step {saved['step']} is not the end of warm-up (step {warmup_steps(state)})")
    diff = [k for k in _config_diff(state.cfg.to_dict(), saved["config"]) if not k.startswith(_FORK_FREE)]
    if diff:
        raise ValueError(f"warm-up checkpoint was written with another config (differs in {', '.join(diff)})")
    _load_weights(state, saved)


def alpha_fingerprint(state: SearchState) -> str:
    """sha256 of α's bytes: equal on every rank iff the architecture parameters are bit-identical."""
    a = state.logits.alpha.detach().to("cpu").contiguous()
    return hashlib.sha256(a.numpy().tobytes()).hexdigest()
