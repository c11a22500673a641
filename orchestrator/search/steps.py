"""The two steps of ProxylessNAS as small functions of explicit state.

Gradients are averaged across data-parallel ranks by the state's runtime (``state.rt.comm``) after backward and
before the optimiser step: the active path's weight gradients inside the training core's step, α's gradient
here. One process is rank 0 of 1, where averaging is the identity. Every tensor a step creates lives on the
device of the batch it is given.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from orchestrator.search.config import SearchConfig, mul_log_scale
from orchestrator.search.objective import (
    binary_connect_grad,
    path_latency,
    regularized_loss,
    rescale_pairs,
    rl_reward,
)
from orchestrator.search.sampling import generator, sample_pairs, sample_path
from orchestrator.search.state import SearchState, weight_lr


def weight_step(state: SearchState, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """One SGD step on one path sampled from softmax(α); only that path's weights get gradients and move.

    The step itself is the training core's (``Trainer.step``, shared with retraining), given the sampled path as
    its forward function; ``images`` and ``labels`` are on the runtime's device. The trainer's runtime averages
    gradients across ranks."""
    path = sample_path(state.logits.probs().detach(), generator(state.cfg.seed, "path", state.step))
    state.paths.append(("w", state.step, tuple(path)))
    lr = weight_lr(state.cfg, state.step, state.steps_per_epoch)
    metrics = state.trainer.step(images, labels, lr, forward=lambda x: state.supernet(x, path))
    state.step += 1
    return {**metrics, "lr": lr}


def _apply_alpha_grad(state: SearchState, grad: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Set α's gradient, all-reduce it, take the Adam step (of the blocks in ``rows`` only, when given: the
    optimiser is then ``BlockAdam``); returns α before the step (for the rescale)."""
    alpha = state.logits.alpha
    alpha.grad = grad.masked_fill(~state.logits.mask, 0.0).contiguous()
    state.rt.comm.mean_([alpha.grad])
    before = alpha.detach().clone()
    if rows is None:
        state.arch_opt.step()
    else:
        state.arch_opt.step(rows)
    state.arch_opt.zero_grad(set_to_none=True)
    return before


def rl_epoch_schedule(steps_per_epoch: int, updates: int) -> frozenset[int]:
    """The weight steps of an epoch (0-based) after which REINFORCE updates, ``updates`` of them spread evenly: the
    official ``RLArchSearchConfig.get_update_schedule`` (``get_split_list``: the epoch cut into ``updates``
    segments, the first ``steps_per_epoch % updates`` one step longer, one update after each segment's last step;
    empty segments of an epoch shorter than ``updates`` steps collapse, so then every step gets one)."""
    base, longer = divmod(steps_per_epoch, updates)
    ends = itertools.accumulate(base + (1 if k < longer else 0) for k in range(updates))
    return frozenset(e - 1 for e in ends if e >= 1)


def arch_updates_after(cfg: SearchConfig, step: int, steps_per_epoch: int) -> int:
    """How many architecture steps follow the weight step that has just made ``step`` weight steps done.

    The official schedules (``get_update_schedule`` and ``train``), in search epochs only and, with
    ``arch.skip_first_search_epoch``, not in the first one: the gradient algorithm (and REINFORCE under
    ``arch.rl_schedule: update_every``) takes ``update_steps`` after weight step i of an epoch (0-based) when
    (i + 1) % update_every == 0; REINFORCE under ``per_epoch`` one after each step of ``rl_epoch_schedule``. The
    last warm-up weight step is a warm-up step, so no update follows it."""
    if step < 1:
        return 0
    a = cfg.arch
    epoch, i = divmod(step - 1, steps_per_epoch)
    first = cfg.warmup_epochs + (1 if a.skip_first_search_epoch else 0)
    if epoch < first:
        return 0
    if a.algo == "rl" and a.rl_schedule == "per_epoch":
        return 1 if i in rl_epoch_schedule(steps_per_epoch, a.rl_updates_per_epoch) else 0
    return a.update_steps if (i + 1) % a.update_every == 0 else 0


def arch_update_due(cfg: SearchConfig, step: int, steps_per_epoch: int) -> bool:
    """Whether architecture updates follow the weight step that has just made ``step`` weight steps done."""
    return arch_updates_after(cfg, step, steps_per_epoch) > 0


def sample_active(state: SearchState) -> list[tuple[int, ...]]:
    """The candidates each block runs in this architecture step, the active one first.

    ``two``: a pair drawn from softmax(α) (``sample_pairs``). ``full_v2``: one active candidate drawn from
    softmax(α), then every other allowed candidate of the block."""
    cfg = state.cfg
    probs = state.logits.probs().detach()
    if cfg.arch.grad_mode == "two":
        return sample_pairs(probs, generator(cfg.seed, "pair", state.arch_step))
    path = sample_path(probs, generator(cfg.seed, "active", state.arch_step))
    allowed = state.logits.mask.tolist()
    return [(a, *(c for c, ok in enumerate(row) if ok and c != a)) for a, row in zip(path, allowed)]


def latency_probs(state: SearchState, active: Sequence[Sequence[int]]) -> torch.Tensor:
    """The per-block probabilities E[LAT] weighs latencies with, differentiable in α.

    ``full`` (and always in ``full_v2``): softmax(α) over the block. ``pair``: softmax over the sampled pair only,
    0 elsewhere, as the official two mode's ``current_prob_over_ops``."""
    if state.cfg.arch.grad_mode != "two" or state.cfg.arch.latency_probs == "full":
        return state.logits.probs()
    mask = state.logits.mask
    rows = torch.tensor([b for b, p in enumerate(active) for _ in p], device=mask.device)
    cols = torch.tensor([c for p in active for c in p], device=mask.device)
    sel = torch.zeros_like(mask).index_put_((rows, cols), torch.ones_like(rows, dtype=torch.bool))
    return torch.softmax(state.logits.masked().masked_fill(~sel, float("-inf")), dim=-1)


@dataclass
class ArchGradient:
    """What one gradient architecture step computes before the optimiser: ∂L/∂α (the latency term's direct part
    plus BinaryConnect over each block's candidates that ran), the gate gradients and the loss terms."""

    alpha_grad: torch.Tensor
    gate_grads: list[torch.Tensor]  # per block, in the order of ``active[b]``
    active: list[tuple[int, ...]]
    loss: torch.Tensor
    ce: torch.Tensor
    expected: torch.Tensor
    logits: torch.Tensor


@contextmanager
def _frozen(module: torch.nn.Module) -> Iterator[None]:
    """Weights that do not require grad for the duration: autograd then records nothing for them (no graph through
    the stem, no saved inputs for weight gradients) and no weight gradient can be computed or accumulated."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def arch_gradient(state: SearchState, images: torch.Tensor, labels: torch.Tensor,
                  active: Sequence[Sequence[int]]) -> ArchGradient:
    """∂L/∂α of the architecture loss on one held-out batch, computing only what α needs.

    Each block runs ``active[b]`` gated (1 on the first, 0 on the others): the active candidate with autograd, the
    others under ``no_grad`` (``MixedBlock.forward(no_grad_inactive=True)``). No weight takes part in autograd, so
    the backward computes input gradients along the active path from the loss down to the first searchable block,
    and nothing else."""
    cfg, alpha = state.cfg, state.logits.alpha
    active = [tuple(p) for p in active]
    gates = []
    for p in active:
        g = torch.zeros(len(p), device=images.device)
        g[0] = 1.0
        gates.append(g.requires_grad_())
    state.supernet.train()
    with _frozen(state.supernet), state.rt.precision.autocast(state.rt.device):
        out = state.supernet(images, active, gates, no_grad_inactive=True)
    ce = F.cross_entropy(out.float(), labels)
    expected = state.latency.expected(latency_probs(state, active))
    scale = mul_log_scale(state.latency.unit, cfg.arch.mul_log_unit)
    loss = regularized_loss(ce, expected, cfg.target, cfg.arch, scale)
    grads = torch.autograd.grad(loss, [alpha, *gates], allow_unused=True)
    direct = grads[0] if grads[0] is not None else torch.zeros_like(alpha)
    gate_grads = [g if g is not None else torch.zeros_like(gt) for g, gt in zip(grads[1:], gates)]
    grad = direct + binary_connect_grad(alpha, active, gate_grads)
    return ArchGradient(grad, gate_grads, active, loss.detach(), ce.detach(), expected.detach(), out.detach())


def arch_step_grad(state: SearchState, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """The gradient architecture step on a held-out batch (``arch.grad_mode``: the paper's ``two`` or the
    official default ``full_v2``), then Adam on α and, in two mode, the rescale of each sampled pair.

    The latency term E[LAT] (``arch.latency_probs``) is backpropagated into α directly. With
    ``arch.skip_zero_active`` a block whose active candidate is ``zero`` sits the step out (official: its α
    gradient is None): its α, its Adam step count and its Adam moments stay as they are (``BlockAdam``); otherwise
    it is updated like the others."""
    cfg, alpha = state.cfg, state.logits.alpha
    active = sample_active(state)
    state.paths.append(("a", state.arch_step, tuple(active)))
    res = arch_gradient(state, images, labels, active)
    rows, skipped = None, []
    if cfg.arch.skip_zero_active:
        skipped = [b for b, p in enumerate(active) if state.space.candidates[p[0]].is_zero]
        rows = torch.ones(len(active), dtype=torch.bool, device=alpha.device)
        rows[skipped] = False
    before = _apply_alpha_grad(state, res.alpha_grad, rows)
    if cfg.arch.grad_mode == "two" and cfg.arch.rescale:
        rescale_pairs(alpha.data, before, [p[:1] if b in skipped else p for b, p in enumerate(active)])
    state.arch_step += 1
    acc = (res.logits.argmax(1) == labels).float().mean()
    return {"arch_loss": res.loss, "arch_ce": res.ce, "arch_acc": acc, "expected_latency": res.expected}


def arch_step_rl(state: SearchState, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """REINFORCE: sample ``rl_samples`` paths, reward accuracy × (T / LAT)^w against a moving-average baseline."""
    cfg, a = state.cfg, state.cfg.arch
    logp_all = torch.log_softmax(state.logits.masked(), dim=-1)
    probs = logp_all.detach().exp()
    gen = generator(cfg.seed, "rl", state.arch_step)
    costs, fixed = state.latency.costs, state.latency.fixed
    rewards, logps, accs = [], [], []
    state.supernet.train()
    dev = images.device
    for _ in range(a.rl_samples):
        path = sample_path(probs, gen)
        state.paths.append(("r", state.arch_step, tuple(path)))
        with torch.no_grad(), state.rt.precision.autocast(dev):
            acc = (state.supernet(images, path).argmax(1) == labels).float().mean().item()
        rewards.append(rl_reward(acc, path_latency(costs, fixed, path), cfg.target, a.rl_tradeoff))
        idx = torch.tensor(path, device=logp_all.device)
        logps.append(logp_all[torch.arange(len(path), device=logp_all.device), idx].sum())
        accs.append(acc)
    # The baseline must stay identical on every rank, so it moves with the all-reduced mean reward.
    mean_t = torch.tensor([sum(rewards) / len(rewards)], dtype=torch.float64, device=dev)
    state.rt.comm.mean_([mean_t])
    mean_reward = float(mean_t.item())
    moved = mean_reward if state.baseline is None else (
        a.rl_baseline_decay * state.baseline + (1 - a.rl_baseline_decay) * mean_reward)
    # before (official): advantages against the baseline that already moved toward this batch's mean reward;
    # after: against the previous batches' baseline (this batch's mean on the first update).
    baseline = moved if a.rl_baseline == "before" or state.baseline is None else state.baseline
    loss = -sum((r - baseline) * lp for r, lp in zip(rewards, logps)) / len(rewards)
    (grad,) = torch.autograd.grad(loss, [state.logits.alpha])
    _apply_alpha_grad(state, grad)
    state.baseline = moved
    state.arch_step += 1
    expected = state.latency.expected(state.logits.probs().detach()).item()
    return {"arch_loss": float(loss.detach()), "arch_acc": sum(accs) / len(accs), "reward": mean_reward,
            "expected_latency": expected}


def arch_step(state: SearchState, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """The configured architecture step (``arch.algo``)."""
    fn = arch_step_grad if state.cfg.arch.algo == "grad" else arch_step_rl
    return fn(state, images, labels)
