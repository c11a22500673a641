"""End-to-end searches on the tiny space and 16 px digits: latency pressure, targets, determinism and resume.

All runs share one small config (6 epochs, 1 of warm-up, an arch step after every weight step, hardware
``flops`` in MMACs: tiny spans 0.0558 to 0.244). Each search takes a few seconds on one core.
"""

from __future__ import annotations

import functools

import pytest
import torch

from orchestrator.latency.profiles import latency_model
from orchestrator.search import (
    SearchConfig,
    alpha_fingerprint,
    config_from_dict,
    load_checkpoint,
    open_data,
    run_search,
    save_checkpoint,
)
from orchestrator.spaces import get_space
from orchestrator.train.runtime import Comm, Runtime

BASE = {
    "space": "tiny", "hardware": "flops", "epochs": 6, "warmup_epochs": 1, "seed": 0, "log_every": 20,
    "weight": {"batch_size": 32, "lr": 0.05},
    "arch": {"regularizer": "add#linear", "reg_lambda": 1.0, "batch_size": 100, "update_every": 1, "lr": 0.05},
}
TARGETS = (0.06, 0.15, 0.5)  # strict (7% above the fastest net), middle, loose (above the largest net)


def cfg(target: float, **changes) -> SearchConfig:
    d = {**BASE, "target": target, **{k: v for k, v in changes.items() if k != "arch"}}
    d["arch"] = {**BASE["arch"], **changes.get("arch", {})}
    return config_from_dict(d)


@functools.lru_cache(maxsize=None)
def data():
    return open_data(cfg(0.1))


@functools.lru_cache(maxsize=None)
def search(target: float):
    return run_search(cfg(target), data())


def test_latency_only_objective_finds_the_fastest_net():
    c = cfg(0.1, epochs=3, arch={"regularizer": "latency"})
    result = run_search(c, data())
    model = latency_model("flops", get_space("tiny"))
    lo, _ = model.bounds()
    assert result.exact_latency == pytest.approx(lo)
    assert result.arch == "tiny:k3e3.zero/k3e3.zero"
    assert result.curves["expected_latency"][-1] < result.curves["expected_latency"][0]


def test_strict_target_is_met():
    """Under the strict target the derived net's exact latency is at most 10% above the target."""
    strict = TARGETS[0]
    result = search(strict)
    assert result.exact_latency <= 1.10 * strict, result.arch


def test_looser_targets_give_larger_nets():
    """The expected latency the loss sees rises with the target; the derived argmax nets of the strict and the
    loose target are ordered too. (Neighbouring soft targets can derive nets out of order: the argmax of α is
    not monotone in the penalty; budgeted derivation is what gives hard guarantees.)"""
    results = [search(t) for t in TARGETS]
    exact = [r.exact_latency for r in results]
    expected = [r.expected_latency for r in results]
    assert expected == sorted(expected) and expected[0] < expected[-1], expected
    assert exact[0] == min(exact) and exact[0] < exact[-1], [r.arch for r in results]


def test_result_carries_alpha_probs_latencies_and_curves():
    r = search(TARGETS[1])
    assert len(r.alpha) == len(r.probs) == get_space("tiny").num_blocks
    assert all(abs(sum(row) - 1) < 1e-5 for row in r.probs)
    for key in ("loss", "acc", "arch_loss", "expected_latency", "entropy"):
        assert len(r.curves[key]) == len(r.curves["step"]) and r.curves[key][-1] is not None
    assert r.curves["entropy"][-1] < r.curves["entropy"][0]
    assert r.valid_accuracy is not None and r.valid_accuracy > 0.3


def test_same_seed_same_architecture():
    again = run_search(cfg(TARGETS[1]), data())
    first = search(TARGETS[1])
    assert again.arch == first.arch and again.alpha_fingerprint == first.alpha_fingerprint


class _Stop(Exception):
    pass


def _crashed_after_first_checkpoint(c: SearchConfig, path) -> dict:
    """Run ``c`` until its first checkpoint is written to ``path``, stop it there, and read that file back."""
    def crash_after_save(state):
        save_checkpoint(state, path)
        raise _Stop

    with pytest.raises(_Stop):
        run_search(c, data(), checkpoint=crash_after_save)
    return load_checkpoint(path)


def test_interrupted_and_resumed_search_matches_uninterrupted(tmp_path):
    c = cfg(TARGETS[1], checkpoint_every=70)  # step 70 lies in the search phase (steps/epoch = 38)
    saved = _crashed_after_first_checkpoint(c, tmp_path / "checkpoint.pt")
    assert saved["step"] == 70 and saved["arch_step"] > 0
    # A different process state must not matter: scramble the global RNG before resuming.
    torch.manual_seed(12345)
    resumed = run_search(c, data(), resume=saved)
    reference = search(TARGETS[1])
    assert resumed.arch == reference.arch
    assert resumed.alpha_fingerprint == reference.alpha_fingerprint
    assert resumed.curves["loss"] == reference.curves["loss"]


def test_official_search_resumes_exactly_with_its_per_block_adam(tmp_path):
    """Under ``fidelity: official`` α's optimiser keeps a step count per block (``BlockAdam``); its state goes
    through a checkpoint file (loaded with ``weights_only``) and the resumed search ends with the same α bits."""
    c = cfg(TARGETS[1], fidelity="official", epochs=3, checkpoint_every=95)  # arch steps from step 77 (epoch 3)
    saved = _crashed_after_first_checkpoint(c, tmp_path / "checkpoint.pt")
    assert saved["step"] == 95 and saved["arch_step"] > 0
    counts = saved["arch_opt"]["state"][0]["step"]
    assert counts.shape == (len(get_space("tiny").blocks()),) and len(set(counts.tolist())) > 1  # a block sat out
    resumed = run_search(c, data(), resume=saved)
    reference = run_search(c, data())
    assert resumed.alpha_fingerprint == reference.alpha_fingerprint and resumed.arch == reference.arch


def test_resume_rejects_another_config(tmp_path):
    c = cfg(TARGETS[1], epochs=2)
    seen = {}
    run_search(c, data(), checkpoint=lambda state: seen.setdefault("sd", __import__(
        "orchestrator.search", fromlist=["state_dict"]).state_dict(state)))
    with pytest.raises(ValueError, match="target"):
        run_search(cfg(0.2, epochs=2), data(), resume=seen["sd"])


def test_reinforce_lowers_expected_latency():
    c = cfg(0.06, epochs=3, arch={"algo": "rl", "rl_samples": 4, "rl_tradeoff": 3.0, "lr": 0.05})
    r = run_search(c, data())
    assert r.arch_steps > 0
    assert r.curves["expected_latency"][-1] < r.curves["expected_latency"][0]
    assert "reward" in r.curves


def test_runtime_collectives_see_weight_and_alpha_grads():
    """The distributed seam: the runtime's ``mean_`` gets the active path's weight grads and α's grad."""
    calls = []

    class Recording(Comm):
        def mean_(self, tensors):
            calls.append([tuple(t.shape) for t in tensors])

    c = cfg(0.1, epochs=2, arch={"update_every": 19})
    run_search(c, data(), rt=Runtime(comm=Recording()))
    alpha_shape = tuple(torch.Size([get_space("tiny").num_blocks, len(get_space("tiny").candidates)]))
    assert [alpha_shape] in calls
    assert any(len(shapes) > 5 for shapes in calls)
