"""Adam on α with a step count per block, as the official code's one Adam parameter per block.

The official code gives every ``MixedEdge`` its own α parameter, so Adam keeps a step count and moments per block,
and a block whose α gradient is ``None`` (``set_arch_param_grad`` when its active candidate is ``zero``) is left
out of the step altogether: its step count does not advance and its moments do not decay. Here α is one
(blocks × candidates) tensor; ``BlockAdam.step(rows)`` steps only the blocks in ``rows``, each with its own count,
which is the official update. Used under ``arch.skip_zero_active``; otherwise α's optimiser is ``torch.optim.Adam``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class BlockAdam(torch.optim.Optimizer):
    """Adam (Kingma & Ba, as ``torch.optim.Adam`` without amsgrad) over 2-D parameters whose rows are independent
    parameters: each row has its own step count, and a step may leave rows out entirely."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, rows: torch.Tensor | None = None) -> None:  # type: ignore[override]
        """One Adam step of the rows where ``rows`` (a bool vector over the first dimension) is true; every row
        when it is None. A row left out keeps its value, its step count and its moments."""
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.dim() != 2:
                    raise ValueError(f"BlockAdam steps 2-D parameters (blocks × candidates), got {tuple(p.shape)}")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros(p.shape[0], dtype=torch.float64, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                counts = state["step"] = state["step"].to(device=p.device, dtype=torch.float64)  # a loaded one: CPU
                on = torch.ones(p.shape[0], dtype=torch.bool, device=p.device) if rows is None else rows.to(p.device)
                idx = torch.nonzero(on).squeeze(1)
                if idx.numel() == 0:
                    continue
                grad = p.grad[idx]
                if group["weight_decay"]:
                    grad = grad + group["weight_decay"] * p[idx]
                steps = counts[idx] + 1
                counts[idx] = steps
                exp_avg = state["exp_avg"][idx].lerp(grad, 1 - beta1)
                exp_avg_sq = state["exp_avg_sq"][idx].mul(beta2).addcmul(grad, grad, value=1 - beta2)
                state["exp_avg"][idx], state["exp_avg_sq"][idx] = exp_avg, exp_avg_sq
                step_size = (group["lr"] / (1 - beta1 ** steps)).to(p.dtype)[:, None]
                bias2_sqrt = (1 - beta2 ** steps).sqrt().to(p.dtype)[:, None]
                denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(group["eps"])
                p[idx] = p[idx] - step_size * exp_avg / denom


def arch_optimizer(alpha: torch.Tensor, lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
                   per_block: bool) -> torch.optim.Optimizer:
    """α's optimiser: ``BlockAdam`` where blocks may sit a step out (``arch.skip_zero_active``), else Adam."""
    cls = BlockAdam if per_block else torch.optim.Adam
    return cls([alpha], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
