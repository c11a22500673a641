"""The two steps of ProxylessNAS as small functions of explicit state.

Gradients are averaged across data-parallel ranks by the state's runtime (``state.rt.comm``) after backward and
before the optimiser step: the active path's weight gradients inside the training core's step, α's gradient
here. One process is rank 0 of 1, where averaging is the identity. Every tensor a step creates lives on the
device of the batch it is given.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from orchestrator.search.objective import (
    binary_connect_grad,
    path_latency,
    regularized_loss,
    rescale_pairs,
    rl_reward,
)
from orchestrator.search.sampling import generator, sample_pairs, sample_path
from orchestrator.search.state import SearchState, weight_lr

Sync = Callable[[list[torch.Tensor]], None]


def no_sync(tensors: list[torch.Tensor]) -> None:
    """The one-process default: gradients are already complete."""


def weight_step(state: SearchState, images: torch.Tensor, labels: torch.Tensor, *, sync: Sync | None = None) -> dict:
    """One SGD step on one path sampled from softmax(α); only that path's weights get gradients and move.

    The step itself is the training core's (``Trainer.step``, shared with retraining), given the sampled path as
    its forward function; ``images`` and ``labels`` are on the runtime's device. ``sync`` is unused here: the
    trainer's runtime averages gradients across ranks."""
    path = sample_path(state.logits.probs().detach(), generator(state.cfg.seed, "path", state.step))
    state.paths.append(("w", state.step, tuple(path)))
    lr = weight_lr(state.cfg, state.step, state.steps_per_epoch)
    metrics = state.trainer.step(images, labels, lr, forward=lambda x: state.supernet(x, path))
    state.step += 1
    return {**metrics, "lr": lr}


def _apply_alpha_grad(state: SearchState, grad: torch.Tensor, sync: Sync | None) -> torch.Tensor:
    """Set α's gradient, all-reduce it, take the Adam step; returns α before the step (for the rescale)."""
    alpha = state.logits.alpha
    alpha.grad = grad.masked_fill(~state.logits.mask, 0.0).contiguous()
    (sync or state.rt.comm.mean_)([alpha.grad])
    before = alpha.detach().clone()
    state.arch_opt.step()
    state.arch_opt.zero_grad(set_to_none=True)
    return before


def arch_step_grad(state: SearchState, images: torch.Tensor, labels: torch.Tensor, *,
                   sync: Sync | None = None) -> dict:
    """The paper's two-path gradient step on a held-out batch.

    Per block two candidates are sampled, the active one gated 1 and the other 0; both run, so the gates'
    gradients exist, and BinaryConnect maps them onto α over the pair. The latency term E[LAT] is a function of
    softmax(α) and is backpropagated into α directly on every step, whatever was sampled (the official code drops
    it when a ``zero`` op is active). After Adam, the pair is rescaled to keep its probability mass.
    """
    cfg, alpha = state.cfg, state.logits.alpha
    probs = state.logits.probs()
    pairs = sample_pairs(probs, generator(cfg.seed, "pair", state.arch_step))
    state.paths.append(("a", state.arch_step, tuple(pairs)))
    gates = [torch.zeros(len(p), device=images.device).index_fill_(0, torch.tensor([0], device=images.device), 1.0)
             .requires_grad_() for p in pairs]
    state.supernet.train()
    with state.rt.precision.autocast(state.rt.device):
        out = state.supernet(images, pairs, gates)
    ce = F.cross_entropy(out.float(), labels)
    expected = state.latency.expected(probs)
    loss = regularized_loss(ce, expected, cfg.target, cfg.arch)
    grads = torch.autograd.grad(loss, [alpha, *gates], allow_unused=True)
    direct = grads[0] if grads[0] is not None else torch.zeros_like(alpha)
    grad = direct + binary_connect_grad(alpha, pairs, grads[1:])
    before = _apply_alpha_grad(state, grad, sync)
    if cfg.arch.rescale:
        rescale_pairs(alpha.data, before, pairs)
    state.arch_step += 1
    acc = (out.detach().argmax(1) == labels).float().mean()
    return {"arch_loss": loss.detach(), "arch_ce": ce.detach(), "arch_acc": acc, "expected_latency": expected.detach()}


def arch_step_rl(state: SearchState, images: torch.Tensor, labels: torch.Tensor, *,
                 sync: Sync | None = None) -> dict:
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
        logps.append(logp_all[torch.arange(len(path), device=dev), torch.tensor(path, device=dev)].sum())
        accs.append(acc)
    # The baseline must stay identical on every rank, so it moves with the all-reduced mean reward.
    mean_t = torch.tensor([sum(rewards) / len(rewards)], dtype=torch.float64, device=dev)
    (sync or state.rt.comm.mean_)([mean_t])
    mean_reward = float(mean_t.item())
    baseline = mean_reward if state.baseline is None else state.baseline
    loss = -sum((r - baseline) * lp for r, lp in zip(rewards, logps)) / len(rewards)
    (grad,) = torch.autograd.grad(loss, [state.logits.alpha])
    _apply_alpha_grad(state, grad, sync)
    state.baseline = a.rl_baseline_decay * baseline + (1 - a.rl_baseline_decay) * mean_reward
    state.arch_step += 1
    expected = state.latency.expected(state.logits.probs().detach()).item()
    return {"arch_loss": float(loss.detach()), "arch_acc": sum(accs) / len(accs), "reward": mean_reward,
            "expected_latency": expected}


def arch_step(state: SearchState, images: torch.Tensor, labels: torch.Tensor, *, sync: Sync | None = None) -> dict:
    """The configured architecture step (``arch.algo``)."""
    fn = arch_step_grad if state.cfg.arch.algo == "grad" else arch_step_rl
    return fn(state, images, labels, sync=sync)
