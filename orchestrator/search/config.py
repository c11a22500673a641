"""Typed search configuration: frozen dataclasses loaded (``orchestrator.config``) from YAML plus ``--set``.

Everything is checked when the config is built, so a bad value fails in milliseconds with the offending key
named, before data, supernet or latency model are touched. Hardware names are resolved (and so checked) by
``orchestrator.search.loop.resolve_latency`` before any other work, because the set of profiles lives elsewhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from orchestrator.config import apply_overrides, build, read_yaml, to_dict
from orchestrator.config import fail as _fail
from orchestrator.data.source import DataSpec
from orchestrator.latency.profiles import RUNTIMES
from orchestrator.search.fidelity import apply_fidelity
from orchestrator.spaces import SearchSpace, get_space
from orchestrator.train.core import SGDConfig

REGULARIZERS = ("mul#log", "add#linear", "latency", "none")
# ``arch.mul_log_unit: official``: the factor from a latency model's unit to the official code's unit for it, where
# mul#log takes the logarithm (raw MACs for the FLOP proxy, whose reference is 300e6; milliseconds for latency).
OFFICIAL_UNITS: dict[str, float] = {"MMAC": 1e6, "ms": 1.0}


def mul_log_scale(unit: str, mode: str) -> float:
    """What mul#log multiplies E[LAT] and T by before the logarithm (``arch.mul_log_unit``): 1 under ``profile``
    (the profile's own unit: MMAC for ``flops``), the factor to the official unit under ``official``;
    ``ValueError`` naming the key for a unit the official code has no counterpart of."""
    if mode == "profile":
        return 1.0
    if unit not in OFFICIAL_UNITS:
        _fail("arch.mul_log_unit", f"official units are known for latency models in {', '.join(OFFICIAL_UNITS)}, "
                                   f"not {unit!r}; use profile")
    return OFFICIAL_UNITS[unit]


@dataclass(frozen=True)
class WeightConfig(SGDConfig):
    """Weight step: SGD with Nesterov momentum and a cosine schedule (official ProxylessNAS defaults)."""

    lr: float = 0.025  # search-phase initial lr, cosine to 0 over the search epochs
    no_decay_bn: bool = False  # BN weights without weight decay (the official search decays them; retrain does not)
    # the global batch of a weight step, split evenly among the ranks
    batch_size: int = field(default=256, metadata={"max": 65536})
    warmup_lr: float = 0.05  # warm-up phase initial lr, its own cosine over the warm-up epochs

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.warmup_lr <= 0:
            raise ValueError(f"warmup_lr: must be positive, got {self.warmup_lr}")


@dataclass(frozen=True)
class ArchConfig:
    """Architecture step: two-path BinaryConnect gradient (``grad``) or REINFORCE (``rl``), Adam on α.

    The switches marked "fidelity" differ between the official code (mit-han-lab/proxylessnas), the paper and this
    project; ``fidelity: official|paper|project`` sets them all at once (``orchestrator.search.fidelity``).
    """

    algo: Literal["grad", "rl"] = "grad"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.0, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    init_std: float = 1e-3  # α ~ N(0, init_std), as the official arch_init_ratio
    update_every: int = 5  # one architecture update every k weight steps of an epoch (search epochs only)
    update_steps: int = 1  # arch steps per update
    # the global held-out batch of an arch step, split evenly among the ranks
    batch_size: int = field(default=256, metadata={"max": 65536})
    rescale: bool = True  # two mode: keep the sampled pair's total probability mass after each Adam step
    regularizer: str = "mul#log"
    reg_alpha: float = 0.2  # mul#log: CE * alpha * (log E[LAT] / log T) ** beta
    reg_beta: float = 0.3
    reg_lambda: float = 0.1  # add#linear: CE + lambda * (E[LAT] - T) / T
    rl_samples: int = 10  # architectures sampled per REINFORCE update
    # b <- d * b + (1 - d) * mean reward. The official code writes b += 0.99 * (mean - b), which is d = 0.01 here.
    rl_baseline_decay: float = 0.99
    rl_tradeoff: float = 0.1  # reward = acc * (T / LAT) ** rl_tradeoff
    # Fidelity: which gate gradients the gradient step computes. ``two`` (the paper; this project): two candidates
    # per block sampled, BinaryConnect over the pair, the inactive one run without autograd. ``full_v2`` (the
    # official default ``grad_binary_mode``): one active candidate, every other candidate of the block run without
    # autograd for its gate gradient, BinaryConnect over the whole block; costs one forward per candidate.
    grad_mode: Literal["two", "full_v2"] = "two"
    # Fidelity, two mode only: the probabilities E[LAT] weighs each block's latencies with. ``pair`` (official
    # ``current_prob_over_ops``): the sampled pair's renormalised probabilities, 0 elsewhere, so only the pair moves
    # and the rescale keeps every other candidate's probability. ``full`` (this project): softmax over the block, so
    # the latency term's exact gradient reaches every candidate on every step (every α moves by about ±lr with Adam
    # β1 = 0) and pushes latency down faster; the rescale then no longer keeps the others' probabilities.
    latency_probs: Literal["pair", "full"] = "full"
    # Fidelity: the official code drops a block's whole α gradient (the latency term's included) and its rescale
    # when the sampled active candidate is ``zero``. This project updates it like any other block: the inactive
    # candidate's gate gradient and the latency term are informative there too.
    skip_zero_active: bool = False
    # Fidelity: REINFORCE baseline order. ``before`` (official): move the baseline toward the batch's mean reward,
    # then compute advantages against it. ``after`` (this project): advantages against the baseline of earlier
    # batches, then move it, so a batch is never compared with a baseline that already contains its own rewards.
    rl_baseline: Literal["before", "after"] = "after"
    # Fidelity: the unit in which mul#log takes log E[LAT] / log T. The ratio's pressure near the target is β / ln T,
    # so the unit matters. ``profile`` (this project): the profile's own unit (MMAC for ``flops``, ms for tables).
    # ``official``: the official code's unit, raw MACs for ``flops`` (its reference is 300e6: β / ln T = 0.0154
    # against 0.0526 for 300 MMAC) and ms for latency tables. add#linear and the REINFORCE reward are unit-free.
    mul_log_unit: Literal["profile", "official"] = "profile"
    # Fidelity: when REINFORCE updates α, and on how many held-out images. ``update_every`` (this project): after
    # every ``update_every``-th weight step, as the gradient algorithm, on ``batch_size`` images. ``per_epoch`` (the
    # official RLArchSearchConfig): ``rl_updates_per_epoch`` updates spread evenly over each search epoch (its
    # get_split_list schedule; every weight step when an epoch has fewer), each on ``rl_batch_size`` images (the
    # official test_batch_size). The gradient algorithm always follows ``update_every``.
    rl_schedule: Literal["update_every", "per_epoch"] = "update_every"
    # per_epoch schedule: the official rl_update_steps_per_epoch (an epoch of fewer weight steps updates after each)
    rl_updates_per_epoch: int = field(default=300, metadata={"max": 1_000_000})
    # per_epoch schedule: the global held-out batch of a REINFORCE update
    rl_batch_size: int = field(default=1000, metadata={"max": 65536})
    # Fidelity: the official loop skips architecture updates in the first search epoch (``if epoch > 0``), letting
    # the weights adapt to the first α-driven paths. This project starts them at once, after its warm-up.
    skip_first_search_epoch: bool = False

    @property
    def holdout_batch(self) -> tuple[int, str]:
        """The global held-out batch of one architecture step, and the key that sets it."""
        if self.algo == "rl" and self.rl_schedule == "per_epoch":
            return self.rl_batch_size, "arch.rl_batch_size"
        return self.batch_size, "arch.batch_size"


@dataclass(frozen=True)
class InitConfig:
    """Weight initialisation of the supernet (convolutions: He normal, fan-out; BN: gamma 1, beta 0, always)."""

    # Fidelity: classifier init. ``uniform`` (official ``init_model``): U(±1/sqrt(fan_in)). ``normal`` (this
    # project): N(0, 0.01), the MobileNet/torchvision recipe, which starts every logit near 0 (loss near log K).
    linear: Literal["normal", "uniform"] = "normal"
    # Fidelity: zero-initialise the last BN gamma of every residual branch, so each residual block starts as the
    # identity (Goyal et al. 2017). The official code does not. On (this project) it keeps the shortcut's signal
    # intact while sampled candidates change every step; but the gates' gradients of residual blocks are then
    # exactly 0 until warm-up moves those gammas, so a search without warm-up learns nothing there at first.
    zero_last_gamma: bool = True


@dataclass(frozen=True)
class SearchConfig:
    """One search. ``epochs`` counts the whole run; the first ``warmup_epochs`` of it train weights only."""

    space: str = "digits-32"  # a registered space, or a task variant of one (e.g. tiny[c3,r64])
    # the task's classes; default the space's (instantiates a variant)
    num_classes: int | None = field(default=None, metadata={"max": 100_000})
    # the task's input side in px; default the space's
    resolution: int | None = field(default=None, metadata={"max": 1024})
    width_mult: float | None = None  # width multiplier of the space; default the space's
    hardware: str = "flops"
    # what runs the networks on that hardware: torch (eager), onnxruntime, openvino, litert or tensorrt; the table
    # must have been measured (or fitted from a kit) in it
    runtime: str = "torch"
    latency_table: str | None = None
    target: float = 1.0  # latency target T in the hardware profile's unit
    epochs: int = 10
    warmup_epochs: int = 2
    seed: int = 0
    log_every: int = 10  # weight steps per curve point / on_step call
    checkpoint_every: int = 0  # weight steps between checkpoint hook calls; 0 = only at the end
    # How the net is derived from α. ``argmax`` (the paper and the official code): each block's most probable op;
    # the target is soft and the net can land above it. ``budget`` (this project): the most probable net under α
    # whose predicted latency is at most ``target`` (``orchestrator.derive``, exact), so the target is a hard budget.
    derive: Literal["argmax", "budget"] = "budget"
    precision: Literal["fp32", "bf16"] = "fp32"  # (autocast of forward passes; weights and α stay fp32)
    channels_last: bool = False  # channels-last memory format for activations and weights
    weight: WeightConfig = field(default_factory=WeightConfig)
    arch: ArchConfig = field(default_factory=ArchConfig)
    init: InitConfig = field(default_factory=InitConfig)
    data: DataSpec = field(default_factory=DataSpec)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def search_space(self) -> SearchSpace:
        """The space searched: ``space`` instantiated with the task's classes, resolution and width."""
        return get_space(self.space).variant(self.num_classes, self.resolution, self.width_mult)

    def to_dict(self) -> dict:
        return to_dict(self)

    def replace(self, **changes: Any) -> "SearchConfig":
        return dataclasses.replace(self, **changes)




def _positive(key: str, value: float, strict: bool = True) -> None:
    if value <= 0 if strict else value < 0:
        _fail(key, f"must be {'positive' if strict else 'non-negative'}, got {value}")


def _choice(key: str, value: str, known: tuple[str, ...]) -> None:
    if value not in known:
        _fail(key, f"unknown value {value!r} (known: {', '.join(known)})")


def validate(cfg: SearchConfig) -> None:
    """Range and choice checks of every key; raises ``ValueError`` naming the first offending key."""
    try:
        get_space(cfg.space)
    except ValueError as e:
        _fail("space", str(e))
    try:
        cfg.search_space
    except ValueError as e:
        raise ValueError(str(e)) from None  # already names num_classes, resolution or width_mult
    if not cfg.hardware:
        _fail("hardware", "must name a hardware profile, e.g. 'flops'")
    _choice("runtime", cfg.runtime, RUNTIMES)
    _positive("target", cfg.target)
    _positive("epochs", cfg.epochs)
    _positive("warmup_epochs", cfg.warmup_epochs, strict=False)
    if cfg.warmup_epochs >= cfg.epochs:
        _fail("warmup_epochs", f"warm-up ({cfg.warmup_epochs} epochs) must be shorter than the run "
                               f"(epochs={cfg.epochs}) so that search epochs remain")
    _positive("log_every", cfg.log_every)
    _positive("checkpoint_every", cfg.checkpoint_every, strict=False)
    a = cfg.arch
    _positive("arch.lr", a.lr)
    if len(a.betas) != 2 or not all(0 <= b < 1 for b in a.betas):
        _fail("arch.betas", f"must be two numbers in [0, 1), got {a.betas}")
    _positive("arch.eps", a.eps)
    _positive("arch.weight_decay", a.weight_decay, strict=False)
    _positive("arch.init_std", a.init_std, strict=False)
    _positive("arch.update_every", a.update_every)
    _positive("arch.update_steps", a.update_steps)
    _positive("arch.batch_size", a.batch_size)
    if a.regularizer not in REGULARIZERS:
        _fail("arch.regularizer", f"unknown regularizer {a.regularizer!r} (known: {', '.join(REGULARIZERS)})")
    _positive("arch.reg_alpha", a.reg_alpha)
    _positive("arch.reg_beta", a.reg_beta)
    _positive("arch.reg_lambda", a.reg_lambda, strict=False)
    # The unit is the profile's (MMAC for flops, ms for tables: resolve_latency checks a table's own unit later).
    if a.regularizer == "mul#log" and cfg.target * mul_log_scale("MMAC" if cfg.hardware == "flops" else "ms",
                                                                 a.mul_log_unit) <= 1:
        _fail("target", f"mul#log divides by log(target), so the target must exceed 1 in the unit mul#log uses "
                        f"(arch.mul_log_unit), got {cfg.target}; use arch.regularizer=add#linear for sub-unit "
                        f"latencies")
    _positive("arch.rl_samples", a.rl_samples)
    if not 0 <= a.rl_baseline_decay < 1:
        _fail("arch.rl_baseline_decay", f"must be in [0, 1), got {a.rl_baseline_decay}")
    _positive("arch.rl_tradeoff", a.rl_tradeoff, strict=False)
    _positive("arch.rl_updates_per_epoch", a.rl_updates_per_epoch)
    _positive("arch.rl_batch_size", a.rl_batch_size)
    if a.skip_first_search_epoch and cfg.epochs - cfg.warmup_epochs < 2:
        _fail("arch.skip_first_search_epoch", f"with {cfg.epochs - cfg.warmup_epochs} search epoch(s) no "
                                              f"architecture step would run; raise epochs or switch it off")


# ---- loading ----------------------------------------------------------------------------------------------------

def config_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> SearchConfig:
    """Build and validate a config from a raw dict and ``--set`` overrides; a ``fidelity`` key (in either) sets
    every fidelity switch at once (``orchestrator.search.fidelity`` has the presets and the precedence)."""
    if not isinstance(data, dict):
        raise ValueError(f"a search config must be a mapping, got {type(data).__name__}")
    data, overrides = apply_fidelity(data, overrides)
    return build(SearchConfig, apply_overrides(data, overrides))


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SearchConfig:
    """Read a YAML preset, apply its ``fidelity`` and the ``--set`` overrides, and validate; ``ValueError`` names the
    file and the bad key."""
    path = Path(path)
    data = read_yaml(path)
    try:
        return config_from_dict(data, overrides)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
