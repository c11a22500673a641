"""Budgeted derivation: exact against brute force on ``tiny``, monotone in the budget, the argmax when the budget is
loose, refused when unreachable; ``nas arch derive`` from a real search's result.json, checkpoint and MLflow run."""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from orchestrator import tracking
from orchestrator.cli import main
from orchestrator.derive import Derived, derive_front, derive_under_budget, fastest_latency, log_probs_from_alpha
from orchestrator.latency.model import LatencyModel
from orchestrator.latency.profiles import latency_model
from orchestrator.search.jobs import log_search_result
from orchestrator.spaces import get_space
from orchestrator.supernet import ArchLogits
from tests.conftest import ROOT, assert_one_line_error, run_nas, run_nas_inprocess

TINY_CONFIG = ROOT / "configs" / "tiny.yaml"


@dataclass(frozen=True)
class PairModel(LatencyModel):
    """A latency model with terms between neighbouring blocks ([B-1][C][C]), as ``derive`` reads them."""

    pair_costs: tuple | None = None


@pytest.fixture(scope="module")
def tiny_model() -> LatencyModel:
    return latency_model("flops", get_space("tiny"))


def _random_log_probs(model: LatencyModel, seed: int, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return log_probs_from_alpha(rng.normal(scale=scale, size=np.shape(model.costs)), model)


def _enumerate(model: LatencyModel, log_probs: np.ndarray, pair: np.ndarray | None = None) -> list[tuple]:
    """Every architecture of the space as (latency, log-probability, indices), one at a time. Latency is summed
    block by block (a block's cost, then its term with the block before) and the fixed part added last: the order
    ``LatencyModel.exact`` uses, so that budgets placed exactly at an architecture's latency compare exactly."""
    mask = np.asarray(model.space.allowed_mask())
    out = []
    for idx in itertools.product(*[np.flatnonzero(row) for row in mask]):
        lat = 0.0
        for b, c in enumerate(idx):
            lat += model.costs[b][c]
            if pair is not None and b > 0:
                lat += pair[b - 1][idx[b - 1]][c]
        out.append((model.fixed + lat, sum(log_probs[b][c] for b, c in enumerate(idx)), tuple(int(c) for c in idx)))
    return out


def _brute_best(archs: list[tuple], budget: float) -> tuple:
    return max((a for a in archs if a[0] <= budget), key=lambda a: (a[1], -a[0]))


def test_budgeted_net_is_the_brute_force_best(tiny_model):
    space = tiny_model.space
    lo, hi = tiny_model.bounds()
    for seed in range(3):
        lp = _random_log_probs(tiny_model, seed)
        archs = _enumerate(tiny_model, lp)
        assert len(archs) == space.search_space_size() == 1764
        lats = sorted({a[0] for a in archs})
        # Budgets across the range, plus budgets exactly at some architectures' latencies (the boundary case).
        budgets = list(np.linspace(lo, hi, 9)) + [lats[1], lats[len(lats) // 3], lats[len(lats) // 2]]
        for budget in budgets:
            d = derive_under_budget(lp, tiny_model, budget)
            lat, logp, idx = _brute_best(archs, budget)
            assert space.indices(d.arch) == idx, (seed, budget)
            assert d.log_prob == pytest.approx(logp, abs=1e-12)
            assert d.predicted_latency == tiny_model.exact(d.arch) <= budget
            assert d.budget == budget


def test_pairwise_terms_stay_exact(tiny_model):
    """With costs between neighbouring blocks the programme carries the previous choice; ignoring them, or
    comparing states across different last choices, gives other nets (checked: both fail this test)."""
    B, C = np.shape(tiny_model.costs)
    lo, _ = tiny_model.bounds()
    differs = 0
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        # Pairwise terms of the size of a block's cost, some negative (e.g. a fused pair is cheaper).
        pair = rng.normal(0.01, 0.02, size=(B - 1, C, C))
        model = PairModel(tiny_model.space, "flops+pairs", tiny_model.costs, tiny_model.fixed, unit="MMAC",
                          pair_costs=tuple(tuple(map(tuple, m)) for m in pair))
        lp = _random_log_probs(tiny_model, seed)
        archs = _enumerate(tiny_model, lp, pair)
        lats = [a[0] for a in archs]
        assert fastest_latency(model) == min(lats)
        for budget in np.linspace(min(lats), max(lats), 10):
            d = derive_under_budget(lp, model, budget)
            lat, logp, idx = _brute_best(archs, budget)
            assert model.space.indices(d.arch) == idx, (seed, budget)
            assert d.predicted_latency == lat <= budget
            assert d.log_prob == pytest.approx(logp, abs=1e-12)
            if budget >= lo and derive_under_budget(lp, tiny_model, budget).arch != d.arch:
                differs += 1
    assert differs > 0, "the pairwise terms never changed the answer: the test would not notice them ignored"


def test_tighter_budgets_never_give_slower_or_more_probable_nets(tiny_model):
    lo, hi = tiny_model.bounds()
    budgets = list(np.linspace(lo, hi * 1.1, 60))
    for seed in range(3):
        lp = _random_log_probs(tiny_model, seed, scale=2.0)
        front = derive_front(lp, tiny_model, budgets[::-1])[::-1]  # any order in, the same order out
        assert [d.budget for d in front] == budgets
        for tight, loose in zip(front, front[1:]):
            assert tight.predicted_latency <= loose.predicted_latency
            assert tight.log_prob <= loose.log_prob
        assert front == [derive_under_budget(lp, tiny_model, b) for b in budgets]
        assert len({d.arch for d in front}) > 3  # a real front, not one net


def test_loose_budget_gives_the_argmax_of_alpha(tiny_model):
    space = tiny_model.space
    _, hi = tiny_model.bounds()
    for seed in range(3):
        logits = ArchLogits(space)
        with torch.no_grad():
            logits.alpha.copy_(torch.randn(logits.alpha.shape, generator=torch.Generator().manual_seed(seed)))
        lp = log_probs_from_alpha(logits.alpha, tiny_model)
        argmax = logits.derive()
        for budget in (hi, hi * 10):
            d = derive_under_budget(lp, tiny_model, budget)
            assert d.arch == argmax
            assert d.log_prob == pytest.approx(float(lp.max(axis=1).sum()))
            top = logits.probs().detach().max(dim=1).values
            assert math.exp(d.log_prob) == pytest.approx(float(top.prod()), rel=1e-5)


def test_unreachable_budget_is_refused_naming_the_fastest(tiny_model):
    lp = _random_log_probs(tiny_model, 0)
    lo, _ = tiny_model.bounds()
    assert fastest_latency(tiny_model) == lo
    fastest = derive_under_budget(lp, tiny_model, fastest_latency(tiny_model))  # exactly at the fastest: it fits
    assert fastest.predicted_latency == fastest_latency(tiny_model)
    with pytest.raises(ValueError, match=rf"fastest possible is {lo:.6g} MMAC"):
        derive_under_budget(lp, tiny_model, lo * 0.99)
    with pytest.raises(ValueError, match="fastest possible"):
        derive_front(lp, tiny_model, [lo * 2, lo * 0.5])
    with pytest.raises(ValueError, match="log softmax"):  # α itself is not a distribution
        derive_under_budget(np.where(np.isfinite(lp), 1.0, -np.inf), tiny_model, lo * 2)
    with pytest.raises(ValueError, match="shape"):
        derive_under_budget(lp[:2], tiny_model, lo * 2)
    with pytest.raises(ValueError, match="positive"):
        derive_under_budget(lp, tiny_model, float("nan"))


def _random_model(space, rng: np.random.Generator) -> LatencyModel:
    """Random costs over many magnitudes (zero stays 0) and a fixed part of another magnitude: the sums whose
    rounding depends on the order of addition."""
    mask = np.asarray(space.allowed_mask())
    costs = rng.uniform(0.0, 1.0, size=mask.shape) * 10.0 ** rng.uniform(-4, 3, size=mask.shape)
    zero = [i for i, c in enumerate(space.candidates) if c.encode() == "zero"]
    costs[:, zero] = 0.0
    costs = np.where(mask, costs, np.nan)
    fixed = float(rng.uniform(0.0, 1.0) * 10.0 ** rng.uniform(-3, 3))
    return LatencyModel(space, "random", tuple(map(tuple, costs.tolist())), fixed, unit="u")


def test_bounds_and_the_fastest_net_agree_exactly_on_random_models():
    """One summation order: ``bounds()`` and the derivation's fastest net agree bit for bit on every model, so a
    target that a sweep accepts (``bounds``) is one derive reaches. Summing the fixed part first, as ``bounds``
    once did, disagreed on 95 of these 300 models (checked)."""
    spaces = [get_space("tiny"), get_space("proxyless-imagenet")]
    for seed in range(300):
        rng = np.random.default_rng(seed)
        model = _random_model(spaces[seed % 2], rng)
        lo, hi = model.bounds()
        assert fastest_latency(model) == lo, seed
        costs = np.where(np.asarray(model.space.allowed_mask()), np.asarray(model.costs), np.inf)
        fastest = model.space.arch_from_indices([int(i) for i in np.argmin(costs, axis=1)])
        slowest = model.space.arch_from_indices([int(i) for i in np.argmax(np.nan_to_num(costs, posinf=-1), 1)])
        assert model.exact(fastest) == lo and model.exact(slowest) == hi, seed
        d = derive_under_budget(_random_log_probs(model, seed), model, lo)  # the bound itself is a valid budget
        assert d.predicted_latency == lo == model.exact(d.arch), seed


def test_derive_is_fast_on_the_imagenet_space():
    """21 blocks x 7 candidates with the official Pixel-1 table: milliseconds, well within a CLI call."""
    model = latency_model("pixel1", get_space("proxyless-imagenet"), runtime="litert")
    lp = _random_log_probs(model, 0)
    lo, hi = model.bounds()
    budgets = list(np.linspace(lo, hi, 10))
    t0 = time.perf_counter()
    front = derive_front(lp, model, budgets)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, elapsed
    for d in front:
        assert isinstance(d, Derived) and d.predicted_latency <= d.budget
        assert d.predicted_latency == model.exact(d.arch)
    assert all(a.predicted_latency <= b.predicted_latency for a, b in zip(front, front[1:]))


# ------------------------------------------------------------------------------------------ nas arch derive
@pytest.fixture(scope="module")
def search_dir(tmp_path_factory):
    """One short real ``nas search`` on tiny, shared by the CLI tests: result.json and checkpoint.pt."""
    out = tmp_path_factory.mktemp("search")
    with pytest.raises(SystemExit) as e:
        main(["search", "--config", str(TINY_CONFIG), "--set", "epochs=2", "--set", "weight.batch_size=128",
              "--set", "log_every=4", "--out", str(out), "--quiet"])
    assert e.value.code == 0
    assert (out / "result.json").is_file() and (out / "checkpoint.pt").is_file()
    return out


def _derive_json(capsys, *args: str):
    proc = run_nas_inprocess(capsys, "arch", "derive", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_cli_derive_from_result_and_checkpoint(search_dir, capsys, tiny_model):
    result = json.loads((search_dir / "result.json").read_text())
    target = result["target"]
    from_result = _derive_json(capsys, "--from", str(search_dir / "result.json"), "--target", str(target))
    assert {"arch", "predicted_latency", "log_prob", "budget", "unit", "hardware"} <= set(from_result)
    assert from_result["predicted_latency"] <= target == from_result["budget"]
    assert from_result["unit"] == "MMAC" and from_result["hardware"] == "flops"
    expected = derive_under_budget(log_probs_from_alpha(result["alpha"], tiny_model), tiny_model, target)
    assert from_result["arch"] == expected.arch.encode()
    assert from_result["log_prob"] == pytest.approx(expected.log_prob)
    # The checkpoint holds the same α (float32 in both): the same answer, bit for bit.
    assert _derive_json(capsys, "--from", str(search_dir / "checkpoint.pt"), "--target", str(target)) == from_result
    # A folder is read through its result.json.
    assert _derive_json(capsys, "--from", str(search_dir), "--target", str(target)) == from_result

    text = run_nas_inprocess(capsys, "arch", "derive", "--from", str(search_dir / "result.json"),
                             "--target", str(target))
    assert text.returncode == 0
    assert text.stdout.splitlines()[0] == f"arch: {from_result['arch']}"
    assert "predicted latency:" in text.stdout and "log-probability:" in text.stdout


def test_cli_targets_give_a_front_ending_at_the_search_argmax(search_dir, capsys, tiny_model):
    result = json.loads((search_dir / "result.json").read_text())
    lo, hi = tiny_model.bounds()
    budgets = [lo, (lo + hi) / 2, hi]
    rows = _derive_json(capsys, "--from", str(search_dir / "checkpoint.pt"),
                        "--targets", ",".join(repr(b) for b in budgets))
    assert isinstance(rows, list) and [r["budget"] for r in rows] == budgets
    assert rows[0]["predicted_latency"] == pytest.approx(lo)  # only the fastest nets fit the lowest budget
    assert rows[-1]["arch"] == result["arch"]  # no constraint left: the search's own argmax
    assert all(a["predicted_latency"] <= b["predicted_latency"] and a["log_prob"] <= b["log_prob"]
               for a, b in zip(rows, rows[1:]))


def test_cli_derive_from_an_mlflow_run(search_dir, capsys, tmp_path):
    """The search run's result.json artifact, logged by the function Ray searches log it with."""
    result = json.loads((search_dir / "result.json").read_text())
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id = tracking.create_run(uri, "derive-test", "search")
    log_search_result(uri, run_id, result, {})
    target = str(result["target"])
    from_file = _derive_json(capsys, "--from", str(search_dir / "result.json"), "--target", target)
    assert _derive_json(capsys, "--from", f"runs:/{run_id}", "--tracking-uri", uri, "--target", target) == from_file
    assert _derive_json(capsys, "--from", run_id, "--tracking-uri", uri, "--target", target) == from_file
    assert_one_line_error(run_nas_inprocess(capsys, "arch", "derive", "--from", "runs:/" + "0" * 32,
                                            "--tracking-uri", uri, "--target", target), "MLflow run", "0" * 32)


def test_cli_derive_bad_input_is_one_line(search_dir, capsys, tmp_path, tiny_model):
    res = str(search_dir / "result.json")
    lo, _ = tiny_model.bounds()

    def derive(*args: str):
        return run_nas_inprocess(capsys, "arch", "derive", *args)

    assert_one_line_error(derive("--from", res, "--target", str(lo / 2)), "fastest possible is", f"{lo:.6g}")
    assert_one_line_error(derive("--from", res), "--target")
    assert_one_line_error(derive("--from", res, "--target", "1", "--targets", "1,2"), "--target")
    assert_one_line_error(derive("--from", res, "--targets", "0.1,fast"), "--targets")
    assert_one_line_error(derive("--from", str(tmp_path / "none.json"), "--target", "1"), "none.json", "no such file")
    assert_one_line_error(derive("--from", str(tmp_path), "--target", "1"), "no result.json")
    assert_one_line_error(derive("--from", res, "--target", "1", "--hardware", "pixel1"), "--hardware", "tiny")
    assert_one_line_error(derive("--from", res, "--target", "1", "--hardware", "cpu-nothing"), "--hardware")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert_one_line_error(derive("--from", str(broken), "--target", "1"), "broken.json", "not valid JSON")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"arch": "tiny:k3e3.zero/k3e3.zero"}))
    assert_one_line_error(derive("--from", str(other), "--target", "1"), "not a search result")
    # Checkpoints load with weights_only=True: a pickle that would run code is refused, not executed.
    evil = tmp_path / "evil.pt"
    torch.save({"alpha": torch.zeros(4, 7), "config": {"space": "tiny"}, "x": PairModel}, evil)
    assert_one_line_error(derive("--from", str(evil), "--target", "1"), "evil.pt", "refused")


def test_installed_nas_arch_derive(search_dir):
    """The installed command, once, as a user runs it."""
    proc = run_nas("arch", "derive", "--from", str(search_dir), "--targets", "0.07,0.2", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["budget"] for r in rows] == [0.07, 0.2]
    assert all(r["predicted_latency"] <= r["budget"] and r["arch"].startswith("tiny:") for r in rows)
