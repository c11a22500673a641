"""The architecture objective and the two-path gradient, as small pure functions (testable on toy cases)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from orchestrator.search.config import ArchConfig


def regularized_loss(ce: torch.Tensor, expected_latency: torch.Tensor, target: float, arch: ArchConfig,
                     scale: float = 1.0) -> torch.Tensor:
    """The latency-aware loss of the official code, both forms, plus a latency-only and a CE-only objective.

    ``mul#log``: CE · a · (log(s · E[LAT]) / log(s · T))^b, with ``scale`` s the factor to the unit the logarithm
    is taken in (``mul_log_scale``: 1, or 1e6 for the official code's raw MACs); ``add#linear``:
    CE + λ · (E[LAT] − T) / T; ``latency``: E[LAT] / T (no accuracy term; for checks); ``none``: CE.
    """
    reg = arch.regularizer
    if reg == "mul#log":
        ratio = torch.log(expected_latency * scale) / math.log(target * scale)
        return ce * arch.reg_alpha * ratio ** arch.reg_beta
    if reg == "add#linear":
        return ce + arch.reg_lambda * (expected_latency - target) / target
    if reg == "latency":
        return expected_latency / target + 0.0 * ce
    if reg == "none":
        return ce
    raise ValueError(f"arch.regularizer: unknown regularizer {reg!r}")


def binary_connect_grad(
    alpha: torch.Tensor, pairs: Sequence[Sequence[int]], gate_grads: Sequence[torch.Tensor | None]
) -> torch.Tensor:
    """∂L/∂α from the binary gates' gradients, over each block's sampled pair only (the paper's two-path mode).

    With q = softmax(α[pair]) and G_j = ∂L/∂g_j: ∂L/∂α_i = Σ_j G_j q_j (δ_ij − q_i) for i, j in the pair; every
    other entry gets 0. A gate with no gradient (a ``zero`` op, whose output is empty) counts as G = 0.
    """
    out = torch.zeros_like(alpha, dtype=alpha.dtype)
    for b, (pair, g) in enumerate(zip(pairs, gate_grads)):
        if len(pair) < 2 or g is None:
            continue
        idx = torch.tensor(list(pair), device=alpha.device)
        q = torch.softmax(alpha[b, idx].detach(), dim=0)
        g = g.detach().to(alpha.dtype)
        out[b, idx] = q * g - q * (q * g).sum()
    return out


@torch.no_grad()
def rescale_pairs(alpha: torch.Tensor, before: torch.Tensor, pairs: Sequence[Sequence[int]]) -> None:
    """Shift each block's two updated logits by one offset so that their summed exp (so their probability mass
    relative to the untouched candidates) is what it was before the step, as the official
    ``rescale_updated_arch_param``. In place on ``alpha``."""
    for b, pair in enumerate(pairs):
        if len(pair) < 2:
            continue
        idx = torch.tensor(list(pair), device=alpha.device)
        offset = torch.logsumexp(alpha[b, idx], 0) - torch.logsumexp(before[b, idx], 0)
        alpha[b, idx] -= offset


def path_latency(costs: Sequence[Sequence[float]], fixed: float, path: Sequence[int]) -> float:
    """Exact latency of one path under a latency model's cost matrix."""
    return fixed + sum(costs[b][c] for b, c in enumerate(path))


def rl_reward(accuracy: float, latency: float, target: float, tradeoff: float) -> float:
    """REINFORCE reward of the official code: accuracy × (T / LAT)^w."""
    return accuracy * (target / latency) ** tradeoff if latency > 0 else accuracy
