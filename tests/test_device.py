"""Every tensor a step touches lives on the configured device: weight and architecture steps of a search, and a
retrain step.

On a machine without a GPU everything is on the CPU anyway, so the check must be able to fail here too: the
steps run with the *default* device set to ``meta``. A tensor created without an explicit device (a gate, a
mask, an index, a cost vector) then lands on ``meta``, and a dispatch mode records the device of every tensor
every op sees; the test asserts they are all the configured device. A negative control shows that a step which
forgets a device is caught.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from orchestrator.latency.profiles import latency_model
from orchestrator.network import build_net
from orchestrator.search import config_from_dict, init_state, open_data
from orchestrator.train.loop import local_batch
from orchestrator.search.steps import arch_step, weight_step
from orchestrator.train.core import Trainer, evaluate, sgd
from orchestrator.train.runtime import Runtime


class DeviceRecorder(TorchDispatchMode):
    """Records (op, device) for every tensor argument and result of every op dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten((args, kwargs, out))[0]:
            if isinstance(t, torch.Tensor):
                self.seen.add((str(func), str(t.device)))
        return out


@contextlib.contextmanager
def strict_device(device: torch.device):
    """Run a block with the default device on ``meta`` and record the device of every tensor of every op;
    on exit, fail if any was not ``device``."""
    rec = DeviceRecorder()
    with torch.device("meta"), rec:
        yield rec
    stray = sorted({(op, dev) for op, dev in rec.seen if dev != str(device)})
    assert not stray, f"tensors off the configured device {device}: {stray[:8]}"
    assert rec.seen, "nothing was recorded"


CFG = {"space": "tiny", "hardware": "flops", "target": 0.12, "epochs": 2, "warmup_epochs": 1,
       "weight": {"batch_size": 16}, "arch": {"batch_size": 16, "regularizer": "add#linear"}}


def _search_state(algo: str):
    cfg = config_from_dict({**CFG, "arch": {**CFG["arch"], "algo": algo, "rl_samples": 2}})
    rt = Runtime(device=torch.device("cpu"))
    data = open_data(cfg)
    state = init_state(cfg, latency_model("flops", cfg.search_space), 10, rt)
    feed = cfg.data.feed(data.train, batch_size=local_batch(16, 1, "b"))
    return state, rt, next(feed.epoch(0))


@pytest.mark.parametrize("algo", ["grad", "rl"])
def test_search_steps_touch_only_the_configured_device(algo):
    state, rt, batch = _search_state(algo)
    for t in [*state.supernet.parameters(), *state.supernet.buffers(), state.logits.alpha, state.logits.mask]:
        assert t.device == rt.device
    x, y = rt.batch(*batch)
    with strict_device(rt.device) as rec:
        weight_step(state, x, y)
        arch_step(state, x, y)
    ops = {op for op, _ in rec.seen}
    assert any("convolution" in op for op in ops)  # the steps really ran under the recorder


def test_retrain_step_and_evaluation_touch_only_the_configured_device():
    rt = Runtime(device=torch.device("cpu"))
    net = rt.module(build_net("tiny:k3e3.zero/k5e6.k7e3"))
    trainer = Trainer(net, sgd(net, 0.1, 0.9, True, 4e-5, True), rt, 0.1)
    x, y = rt.batch(torch.randn(8, 3, 16, 16, device="cpu"), torch.randint(0, 10, (8,), device="cpu"))
    with strict_device(rt.device):
        trainer.step(x, y, lr=0.1)
        evaluate(net, [(x, y)], rt)


def test_a_step_that_forgets_the_device_is_caught():
    """Negative control: a tensor made without ``device=`` inside a step fails the check."""
    state, rt, batch = _search_state("grad")
    x, y = rt.batch(*batch)
    with pytest.raises(AssertionError, match="off the configured device cpu"):
        with strict_device(rt.device):
            weight_step(state, x, y)
            torch.zeros(x.shape[-1]).sum()  # forgot device=: lands on meta, and the recorder sees it
    with pytest.raises(RuntimeError):  # mixed with the step's tensors, it fails at once
        with strict_device(rt.device):
            x + torch.ones(x.shape[-1])
