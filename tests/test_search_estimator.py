"""The two-path estimator, the rescale, path sampling and the weight step, on hand-built tiny cases (seconds)."""

from __future__ import annotations

import itertools

import pytest
import torch

from orchestrator.search import config_from_dict, init_state, weight_step
from orchestrator.search.objective import binary_connect_grad, rescale_pairs
from orchestrator.search.sampling import generator, sample_pairs, sample_path
from orchestrator.latency.profiles import latency_model
from orchestrator.spaces import get_space


def _toy_estimates(alpha: torch.Tensor, losses: torch.Tensor, n: int) -> torch.Tensor:
    """Mean two-path gradient over ``n`` sampled pairs for a one-block toy.

    The block's output is y = Σ_j g_j o_j and the loss is linear, L = w·y, so candidate j alone has loss
    L_j = w·o_j and the expected loss is Σ p_j L_j. Gate gradients come from autograd, as in the search.
    """
    k = alpha.shape[1]
    outputs = torch.eye(k, dtype=torch.float64)  # o_j = e_j, so w = losses gives L_j = losses[j]
    probs = torch.softmax(alpha, dim=-1)
    total = torch.zeros_like(alpha)
    for s in range(n):
        (pair,) = sample_pairs(probs, generator(123, "toy", s))
        gates = torch.zeros(len(pair), dtype=torch.float64)
        gates[0] = 1.0
        gates.requires_grad_()
        y = sum(g * outputs[c] for g, c in zip(gates, pair))
        (gg,) = torch.autograd.grad((losses * y).sum(), [gates])
        total += binary_connect_grad(alpha, [pair], [gg])
    return total / n


def _exact(alpha: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    a = alpha.clone().requires_grad_()
    (g,) = torch.autograd.grad((torch.softmax(a, -1) * losses).sum(), [a])
    return g


def _pair_expectation(alpha: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """The estimator's exact expectation by enumerating ordered draws without replacement."""
    p = torch.softmax(alpha[0], 0)
    out = torch.zeros_like(alpha)
    for i, j in itertools.permutations(range(len(p)), 2):
        prob = p[i] * p[j] / (1 - p[i])
        q = torch.softmax(alpha[0, [i, j]], 0)
        g = losses[[i, j]]
        out[0, [i, j]] += prob * (q * g - q * (q * g).sum())
    return out


def test_two_candidates_estimator_equals_exact_gradient():
    """With two candidates the pair is the whole block: the mean estimate is ∇α Σ p_i L_i (within MC error)."""
    alpha = torch.tensor([[0.7, -0.4]], dtype=torch.float64)
    losses = torch.tensor([2.0, 0.5], dtype=torch.float64)
    est, exact = _toy_estimates(alpha, losses, 200), _exact(alpha, losses)
    assert torch.allclose(est, exact, atol=1e-12)  # linear loss: every sample already gives the exact gradient


def test_uniform_alpha_estimator_is_exact_gradient_up_to_known_scale():
    """At uniform α (where a search starts) E[estimate] = N / (2(N−1)) · ∇α Σ p_i L_i for N candidates."""
    n_cand = 5
    alpha = torch.zeros(1, n_cand, dtype=torch.float64)
    losses = torch.tensor([1.5, 0.2, 0.9, 2.4, 1.1], dtype=torch.float64)
    est, exact = _toy_estimates(alpha, losses, 4000), _exact(alpha, losses)
    scale = n_cand / (2 * (n_cand - 1))
    assert torch.allclose(est, scale * exact, atol=0.01 * exact.abs().max().item() + 3e-3)
    assert torch.nn.functional.cosine_similarity(est.flatten(), exact.flatten(), dim=0) > 0.99


def test_nonuniform_estimator_matches_its_expectation_and_descends():
    """Away from uniform α the two-path estimate is biased (pairs are not drawn ∝ (p_i+p_j)²), so we check the
    Monte-Carlo mean against the estimator's enumerated expectation, and that it still points along the exact
    gradient (cosine > 0.9): an Adam step on it lowers the expected loss."""
    alpha = torch.tensor([[0.8, -0.3, 0.1, -1.0]], dtype=torch.float64)
    losses = torch.tensor([1.0, 0.3, 2.0, 0.6], dtype=torch.float64)
    est, expect, exact = _toy_estimates(alpha, losses, 4000), _pair_expectation(alpha, losses), _exact(alpha, losses)
    assert torch.allclose(est, expect, atol=0.01)
    assert torch.nn.functional.cosine_similarity(est.flatten(), exact.flatten(), dim=0) > 0.9


def test_rescale_keeps_pair_mass_and_others_probabilities():
    alpha = torch.tensor([[0.3, -0.2, 0.5, 0.0]])
    before = alpha.clone()
    alpha[0, 1] += 0.4
    alpha[0, 2] -= 0.1
    rescale_pairs(alpha, before, [(1, 2)])
    p0, p1 = torch.softmax(before, -1), torch.softmax(alpha, -1)
    assert torch.allclose(p0[0, [0, 3]], p1[0, [0, 3]], atol=1e-6)
    assert torch.allclose(p0[0, [1, 2]].sum(), p1[0, [1, 2]].sum(), atol=1e-6)
    assert p1[0, 1] > p0[0, 1]


def test_sampling_is_a_pure_function_of_seed_and_step():
    probs = torch.softmax(torch.randn(6, 7), -1)
    assert sample_path(probs, generator(3, "path", 10)) == sample_path(probs, generator(3, "path", 10))
    assert sample_pairs(probs, generator(3, "pair", 4)) == sample_pairs(probs, generator(3, "pair", 4))
    paths = {tuple(sample_path(probs, generator(3, "path", s))) for s in range(20)}
    assert len(paths) > 1
    for pair in sample_pairs(probs, generator(0, "pair", 0)):
        assert len(pair) == 2 and pair[0] != pair[1]


def test_weight_step_moves_only_the_active_path():
    """After several steps (momentum buffers exist), a step leaves every inactive candidate's weights bit-identical."""
    cfg = config_from_dict({"space": "tiny", "target": 0.1, "epochs": 2, "warmup_epochs": 1,
                            "weight": {"batch_size": 8, "weight_decay": 1e-3},
                            "arch": {"regularizer": "add#linear"}})
    space = get_space("tiny")
    state = init_state(cfg, latency_model("flops", space), steps_per_epoch=10)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    for _ in range(5):
        weight_step(state, x, y)
    path = sample_path(state.logits.probs(), generator(cfg.seed, "path", state.step))
    before = {n: p.detach().clone() for n, p in state.supernet.named_parameters()}
    weight_step(state, x, y)
    moved = {n for n, p in state.supernet.named_parameters() if not torch.equal(p, before[n])}
    for b, (block, active) in enumerate(zip(state.supernet.blocks, path)):
        active_op = space.candidates[active].encode()
        for name, _ in block.named_parameters():
            full = f"blocks.{b}.{name}"
            assert (full in moved) == name.startswith(f"candidates.{active_op}."), full
    assert state.logits.alpha.grad is None
    assert any(n.startswith("stem.") for n in moved) and any(n.startswith("head.") for n in moved)
