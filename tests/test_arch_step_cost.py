"""Architecture steps compute only what α needs, and nothing changes: gate gradients and the α update equal those of
a plain computation (every sampled candidate with autograd, written here independently of the search code).

The toy is the ``tiny`` space at 16 px with ``init.zero_last_gamma: false``, so that every conv candidate's gate
gradient is non-zero from the first step; the latency costs are the FLOP proxy × 100 so that ``mul#log`` (which
needs a target above 1) applies.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from orchestrator.latency.model import LatencyModel
from orchestrator.latency.profiles import latency_model
from orchestrator.search import arch_step, config_from_dict, init_state, steps
from orchestrator.search.steps import arch_gradient, sample_active
from orchestrator.spaces import get_space

SPACE = get_space("tiny")
STEPS = 3  # consecutive arch steps per case: Adam's state carries over; seed 14 puts zero in pairs both ways
BATCH = 16


def _latency() -> LatencyModel:
    flops = latency_model("flops", SPACE)
    costs = tuple(tuple(c * 100 for c in row) for row in flops.costs)
    return dataclasses.replace(flops, hardware="flops-x100", costs=costs, fixed=flops.fixed * 100)


def _state(regularizer: str, grad_mode: str = "two", latency_probs: str = "full", seed: int = 14):
    cfg = config_from_dict({
        "space": "tiny", "hardware": "flops", "target": 15.0, "epochs": 2, "warmup_epochs": 1, "seed": seed,
        "weight": {"batch_size": BATCH},
        "arch": {"regularizer": regularizer, "grad_mode": grad_mode, "latency_probs": latency_probs,
                 "lr": 0.05, "init_std": 0.5, "batch_size": BATCH},
        "init": {"zero_last_gamma": False},
    })
    state = init_state(cfg, _latency(), steps_per_epoch=10)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(BATCH, 3, 16, 16, generator=gen), torch.randint(0, 10, (BATCH,), generator=gen)
    return state, x, y


def _plain(state, x, y, active):
    """Gate gradients and ∂L/∂α by brute force: every listed candidate runs with autograd on a copy of the net."""
    net, cfg = copy.deepcopy(state.supernet), state.cfg
    alpha = state.logits.alpha.detach().clone().requires_grad_()
    mask = state.logits.mask
    gates = [torch.tensor([1.0] + [0.0] * (len(p) - 1), requires_grad=True) for p in active]
    net.train()
    h = net.stem(x)
    for block, p, g in zip(net.blocks, active, gates):
        y_b = torch.zeros_like(h) if block.shortcut else None
        for g_j, c in zip(g, p):
            module = block.candidate(c)
            if module is not None:
                y_b = g_j * module(h) if y_b is None else y_b + g_j * module(h)
        h = y_b + h if block.shortcut else y_b
    ce = F.cross_entropy(net.head(h), y)
    logits = alpha.masked_fill(~mask, float("-inf"))
    if cfg.arch.latency_probs == "pair" and cfg.arch.grad_mode == "two":
        keep = torch.zeros_like(mask)
        for b, p in enumerate(active):
            keep[b, list(p)] = True
        logits = logits.masked_fill(~keep, float("-inf"))
    costs = torch.nan_to_num(torch.tensor(state.latency.costs), nan=0.0)
    lat = state.latency.fixed + (torch.softmax(logits, -1) * costs).sum()
    a, t = cfg.arch, cfg.target
    loss = (ce * a.reg_alpha * (torch.log(lat) / math.log(t)) ** a.reg_beta if a.regularizer == "mul#log"
            else ce + a.reg_lambda * (lat - t) / t)
    loss.backward()
    grad = alpha.grad.clone()
    for b, (p, g) in enumerate(zip(active, gates)):
        q = torch.softmax(alpha.detach()[b, list(p)], 0)
        for i, ci in enumerate(p):
            grad[b, ci] += sum(g.grad[j] * q[j] * (float(i == j) - q[i]) for j in range(len(p)))
    return [g.grad for g in gates], grad.masked_fill(~mask, 0.0)


def _adam_and_rescale(alpha, opt, grad, active, rescale):
    before = alpha.detach().clone()
    alpha.grad = grad
    opt.step()
    if rescale:
        with torch.no_grad():
            for b, p in enumerate(active):
                idx = list(p)
                alpha[b, idx] -= torch.logsumexp(alpha[b, idx], 0) - torch.logsumexp(before[b, idx], 0)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-6, atol=1e-6 * float(b.abs().max()))


@pytest.mark.parametrize("regularizer, grad_mode, latency_probs", [
    ("mul#log", "two", "full"),
    ("add#linear", "two", "full"),
    ("mul#log", "two", "pair"),
    ("add#linear", "full_v2", "full"),
])
def test_arch_step_equals_plain_computation(regularizer, grad_mode, latency_probs):
    state, x, y = _state(regularizer, grad_mode, latency_probs)
    zero = next(i for i, op in enumerate(SPACE.candidates) if op.is_zero)
    ref_alpha = state.logits.alpha.detach().clone().requires_grad_()
    a = state.cfg.arch
    ref_opt = torch.optim.Adam([ref_alpha], lr=a.lr, betas=a.betas, eps=a.eps, weight_decay=a.weight_decay)
    calls: list[tuple[int, bool, bool]] = []  # (block, active?, grad enabled)
    hooks = []
    for b, block in enumerate(state.supernet.blocks):
        for name, module in block.candidates.items():
            c = SPACE.candidates.index(next(op for op in SPACE.candidates if op.encode() == name))
            hooks.append(module.register_forward_hook(
                lambda m, i, o, b=b, c=c: calls.append((b, c, torch.is_grad_enabled()))))
    zero_active = zero_inactive = False
    for _ in range(STEPS):
        active = sample_active(state)
        zero_active |= any(p[0] == zero for p in active)
        zero_inactive |= any(zero in p[1:] for p in active)
        plain_gates, plain_grad = _plain(state, x, y, active)
        calls.clear()
        new = arch_gradient(state, x, y, active)
        for b, p in enumerate(active):
            assert _close(new.gate_grads[b], plain_gates[b]), (b, p)
            for j, c in enumerate(p):
                if c != zero:
                    assert plain_gates[b][j].abs() > 1e-7, (b, p)  # a real signal, not 0 == 0
        # the active candidate ran with autograd; every other one without
        for b, c, grad_on in calls:
            assert grad_on == (c == active[b][0]), (b, c)
        assert len(calls) == sum(len([c for c in p if c != zero]) for p in active)
        assert _close(new.alpha_grad.masked_fill(~state.logits.mask, 0.0), plain_grad)
        arch_step(state, x, y)
        _adam_and_rescale(ref_alpha, ref_opt, plain_grad, active, grad_mode == "two" and a.rescale)
        assert _close(state.logits.alpha.detach(), ref_alpha.detach())
        assert all(p.grad is None for p in state.supernet.parameters())
        assert all(p.requires_grad for p in state.supernet.parameters())
    for h in hooks:
        h.remove()
    if grad_mode == "two":
        assert zero_active and zero_inactive  # the seed covers both ways `zero` enters a pair
    assert not torch.equal(state.logits.alpha.detach(), _state(regularizer, grad_mode, latency_probs)[0].logits.alpha)


def test_official_zero_active_block_sits_out_adam_as_in_the_official_code():
    """``fidelity: official`` (``full_v2``, ``skip_zero_active``): α over many steps equals the official update,
    re-implemented here from ``MixedEdge.set_arch_param_grad`` and the arch optimiser: one Adam parameter per block,
    and a block whose active candidate is ``zero`` gets gradient None, so Adam neither counts the step nor decays
    its moments there. The earlier emulation (one Adam over all of α, the block's gradient zeroed and its α put
    back after the step) is computed alongside and must differ, so the comparison can tell the two apart (here:
    α within 6e-8 of the official update; the emulation 0.07 away after 12 steps)."""
    seed = 3
    cfg = config_from_dict({
        "space": "tiny", "hardware": "flops", "target": 0.15, "epochs": 3, "warmup_epochs": 1, "seed": seed,
        "weight": {"batch_size": BATCH}, "fidelity": "official",
        "arch": {"regularizer": "add#linear", "lr": 0.05, "init_std": 0.5, "batch_size": BATCH},
    })
    assert (cfg.arch.grad_mode, cfg.arch.skip_zero_active) == ("full_v2", True)
    state = init_state(cfg, latency_model("flops", SPACE), steps_per_epoch=10)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(BATCH, 3, 16, 16, generator=gen), torch.randint(0, 10, (BATCH,), generator=gen)
    zero = next(i for i, op in enumerate(SPACE.candidates) if op.is_zero)
    a = cfg.arch
    blocks = [row.clone().requires_grad_() for row in state.logits.alpha.detach()]  # one parameter per MixedEdge
    official = torch.optim.Adam(blocks, lr=a.lr, betas=a.betas, eps=a.eps, weight_decay=a.weight_decay)
    old = state.logits.alpha.detach().clone().requires_grad_()
    emulation = torch.optim.Adam([old], lr=a.lr, betas=a.betas, eps=a.eps, weight_decay=a.weight_decay)
    skipped_then_updated = set()
    skipped_before: set[int] = set()
    for _ in range(12):
        active = sample_active(state)
        skipped = {b for b, p in enumerate(active) if p[0] == zero}
        skipped_then_updated |= skipped_before - skipped
        skipped_before |= skipped
        _, grad = _plain(state, x, y, active)
        for b, param in enumerate(blocks):
            param.grad = None if b in skipped else grad[b].clone()  # set_arch_param_grad
        official.step()
        keep = old.detach().clone()
        old.grad = grad.index_fill(0, torch.tensor(sorted(skipped), dtype=torch.long), 0.0)
        emulation.step()
        with torch.no_grad():
            old[sorted(skipped)] = keep[sorted(skipped)]
        arch_step(state, x, y)
        assert _close(state.logits.alpha.detach(), torch.stack([p.detach() for p in blocks]))
    assert skipped_then_updated, "no block sat a step out and was updated later: the seed tests nothing"
    assert not _close(old.detach(), torch.stack([p.detach() for p in blocks]))


@pytest.mark.parametrize("preset", ["official", "paper"])
def test_per_block_adam_equals_the_official_update_over_many_steps(preset, monkeypatch):
    """2,000 architecture steps of the official (``full_v2``) and paper (two-path, rescale) presets, each on a random
    gradient of its own magnitude (1e-4 to 1), through the search's own step (``arch_step``: sampling, the zero-active
    rows, ``BlockAdam``, the rescale), against the official update re-implemented here: one ``torch.optim.Adam``
    parameter per ``MixedEdge``, gradient None where the active candidate is ``zero`` (``set_arch_param_grad``), and
    in two mode ``rescale_updated_arch_param`` over the sampled pair, in Python floats, of the blocks that stepped.
    The old emulation (one Adam over α, the skipped rows' gradient zeroed and their α put back) drifts away on the
    same gradients, so the comparison can tell the two apart."""
    cfg = config_from_dict({
        "space": "tiny", "hardware": "flops", "target": 0.15, "epochs": 3, "warmup_epochs": 1, "seed": 5,
        "weight": {"batch_size": BATCH}, "fidelity": preset,
        "arch": {"regularizer": "add#linear", "lr": 0.05, "init_std": 0.5, "batch_size": BATCH},
    })
    a = cfg.arch
    assert a.skip_zero_active and a.grad_mode == ("full_v2" if preset == "official" else "two")
    state = init_state(cfg, latency_model("flops", SPACE), steps_per_epoch=10)
    mask = state.logits.mask
    zero = next(i for i, op in enumerate(SPACE.candidates) if op.is_zero)
    gen = torch.Generator().manual_seed(23)
    grads: list[torch.Tensor] = []

    def random_gradient(state, images, labels, active):  # stands in for the gate gradients, checked above
        g = torch.randn(mask.shape, generator=gen) * 10.0 ** (-4 * torch.rand((), generator=gen))
        grads.append(g.masked_fill(~mask, 0.0))
        z = torch.zeros(())
        return steps.ArchGradient(grads[-1].clone(), [], [tuple(p) for p in active], z, z, z,
                                  torch.zeros(len(labels), 10))

    monkeypatch.setattr(steps, "arch_gradient", random_gradient)
    blocks = [row.clone().requires_grad_() for row in state.logits.alpha.detach()]  # one parameter per MixedEdge
    official = torch.optim.Adam(blocks, lr=a.lr, betas=a.betas, eps=a.eps, weight_decay=a.weight_decay)
    old = state.logits.alpha.detach().clone().requires_grad_()
    emulation = torch.optim.Adam([old], lr=a.lr, betas=a.betas, eps=a.eps, weight_decay=a.weight_decay)
    x, y = torch.zeros(2, 3, 16, 16), torch.zeros(2, dtype=torch.long)
    sat_out = 0
    for n in range(2000):
        active = sample_active(state)
        arch_step(state, x, y)
        grad = grads[-1]
        skipped = [b for b, p in enumerate(active) if p[0] == zero]
        sat_out += len(skipped)
        before = [p.detach().clone() for p in blocks]
        official.zero_grad(set_to_none=True)
        for b, param in enumerate(blocks):
            param.grad = None if b in skipped else grad[b].clone()
        official.step()
        if a.grad_mode == "two":
            with torch.no_grad():
                for b, (param, pair) in enumerate(zip(blocks, active)):
                    if b not in skipped:
                        new_mass = sum(math.exp(float(param[i])) for i in pair)
                        old_mass = sum(math.exp(float(before[b][i])) for i in pair)
                        param[list(pair)] -= math.log(new_mass / old_mass)
        keep = old.detach().clone()
        old.grad = grad.index_fill(0, torch.tensor(skipped, dtype=torch.long), 0.0)
        emulation.step()
        with torch.no_grad():
            old[skipped] = keep[skipped]
        assert _close(state.logits.alpha.detach(), torch.stack([p.detach() for p in blocks])), n
    want = torch.stack([p.detach() for p in blocks])
    assert sat_out > 100, "too few blocks sat a step out: the seed tests nothing"
    assert float((old.detach() - want).abs().max()) > 1e-3  # the emulation is measurably another update
    assert not torch.equal(want, state.logits.alpha.detach().new_zeros(want.shape))


def test_reinforce_step_runs_without_autograd_through_weights():
    state, x, y = _state("add#linear")
    state = dataclasses.replace(state, cfg=state.cfg.replace(
        arch=dataclasses.replace(state.cfg.arch, algo="rl", rl_samples=3)))
    seen = []
    hooks = [m.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))
             for m in state.supernet.modules() if isinstance(m, torch.nn.Conv2d)]
    before = state.logits.alpha.detach().clone()
    arch_step(state, x, y)
    for h in hooks:
        h.remove()
    assert seen and not any(seen)
    assert all(p.grad is None for p in state.supernet.parameters())
    assert not torch.equal(before, state.logits.alpha.detach())
