"""Fidelity switches (issue 14): each deviation from the official code is a switch, ``fidelity`` sets them all.

Toy cases on the ``tiny`` space; nets use ``init.zero_last_gamma: false`` so that gate gradients are non-zero.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torchvision.transforms import v2

from orchestrator.data.transforms import train_transform
from orchestrator.latency.profiles import latency_model
from orchestrator.search import arch_step, config_from_dict, init_state, load_config, open_data, run_search
from orchestrator.search.fidelity import OFFICIAL, PRESETS, PROJECT
from orchestrator.search.objective import path_latency, rl_reward
from orchestrator.search.sampling import generator, sample_path
from orchestrator.search.config import mul_log_scale
from orchestrator.search.loop import search_feeds
from orchestrator.search.steps import arch_gradient, arch_update_due, arch_updates_after, sample_active
from orchestrator.spaces import get_space
from orchestrator.supernet import Supernet
from tests.conftest import ROOT, assert_one_line_error, run_nas_inprocess

SPACE = get_space("tiny")


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _state(regularizer: str, latency_probs: str, **arch):
    target = {"mul#log": 15.0, "add#linear": 0.12, "none": 0.12}[regularizer]
    cfg = config_from_dict({
        "space": "tiny", "hardware": "flops", "target": target, "epochs": 3, "warmup_epochs": 1, "seed": 1,
        "arch": {"regularizer": regularizer, "latency_probs": latency_probs, "lr": 0.05, "init_std": 0.5,
                 "betas": [0.0, 0.999], "weight_decay": 0.0, **arch},
        "init": {"zero_last_gamma": False},
    })
    lat = latency_model("flops", SPACE)
    if regularizer == "mul#log":  # mul#log needs latencies above 1: the FLOP proxy in units of 10 kMAC
        lat = dataclasses.replace(lat, costs=tuple(tuple(c * 100 for c in r) for r in lat.costs), fixed=lat.fixed * 100)
    state = init_state(cfg, lat, steps_per_epoch=10)
    gen = torch.Generator().manual_seed(0)
    return state, torch.randn(16, 3, 16, 16, generator=gen), torch.randint(0, 10, (16,), generator=gen)


# ---- latency_probs and the rescale -------------------------------------------------------------------------

@pytest.mark.parametrize("regularizer", ["mul#log", "add#linear", "none"])
def test_pair_probs_and_rescale_keep_the_other_candidates(regularizer):
    state, x, y = _state(regularizer, "pair")
    active = sample_active(state)  # the pairs the step will draw (a pure function of seed and step)
    p0 = state.logits.probs().detach().clone()
    arch_step(state, x, y)
    p1 = state.logits.probs().detach()
    for b, pair in enumerate(active):
        others = [c for c in range(p0.shape[1]) if c not in pair and state.logits.mask[b, c]]
        assert torch.allclose(p1[b, others], p0[b, others], rtol=1e-6, atol=0), (b, pair)
        assert (p1[b, list(pair)] - p0[b, list(pair)]).abs().max() > 1e-4, (b, pair)  # the pair moved


@pytest.mark.parametrize("regularizer", ["mul#log", "add#linear"])
def test_full_probs_move_every_candidate(regularizer):
    state, x, y = _state(regularizer, "full")
    active = sample_active(state)
    p0 = state.logits.probs().detach().clone()
    arch_step(state, x, y)
    p1 = state.logits.probs().detach()
    moved = [(p1[b, c] - p0[b, c]).abs().item() > 1e-5 for b, pair in enumerate(active)
             for c in range(p0.shape[1]) if c not in pair and state.logits.mask[b, c]]
    assert moved and all(moved)


def test_skip_zero_active_keeps_that_blocks_alpha():
    zero = next(i for i, op in enumerate(SPACE.candidates) if op.is_zero)
    for skip in (True, False):
        state, x, y = _state("add#linear", "full", skip_zero_active=skip)
        for step in range(40):  # the first arch step counter whose pairs have zero active
            state.arch_step = step
            blocks = [b for b, p in enumerate(sample_active(state)) if p[0] == zero]
            if blocks:
                break
        a0 = state.logits.alpha.detach().clone()
        arch_step(state, x, y)
        assert torch.equal(state.logits.alpha.detach()[blocks], a0[blocks]) == skip
        assert not torch.equal(state.logits.alpha.detach(), a0)


# ---- REINFORCE baseline ---------------------------------------------------------------------------------

def _rl_expected(state, x, y, baseline: float) -> torch.Tensor:
    """α after one REINFORCE step with advantages against ``baseline``, computed here from the same samples."""
    a = state.cfg.arch
    alpha = state.logits.alpha.detach().clone().requires_grad_()
    logp = torch.log_softmax(alpha.masked_fill(~state.logits.mask, float("-inf")), -1)
    gen = generator(state.cfg.seed, "rl", state.arch_step)
    terms = []
    for _ in range(a.rl_samples):
        path = sample_path(logp.detach().exp(), gen)
        with torch.no_grad():
            acc = (state.supernet(x, path).argmax(1) == y).float().mean().item()
        r = rl_reward(acc, path_latency(state.latency.costs, state.latency.fixed, path), state.cfg.target,
                      a.rl_tradeoff)
        terms.append((r, logp[torch.arange(len(path)), torch.tensor(path)].sum()))
    loss = -sum((r - baseline) * lp for r, lp in terms) / len(terms)
    loss.backward()
    opt = torch.optim.Adam([alpha], lr=a.lr, betas=a.betas, eps=a.eps)
    alpha.grad = alpha.grad.masked_fill(~state.logits.mask, 0.0)
    opt.step()
    return alpha.detach(), sum(r for r, _ in terms) / len(terms)


def test_reinforce_baseline_before_follows_the_official_order():
    """Official: baseline += 0.99 * (mean − baseline), then advantages against the moved baseline."""
    state, x, y = _state("add#linear", "full")
    state = dataclasses.replace(state, cfg=config_from_dict(
        state.cfg.to_dict(), ["fidelity=official", "arch.algo=rl", "arch.rl_samples=4"]))
    assert state.cfg.arch.rl_baseline == "before"
    b0 = 3.0  # far from any reward in [0, 1.3], so the two orders give different advantages
    state.baseline = b0
    _, mean = _rl_expected(state, x, y, 0.0)
    moved = b0 + 0.99 * (mean - b0)
    want_before, _ = _rl_expected(state, x, y, moved)
    want_after, _ = _rl_expected(state, x, y, b0)
    arch_step(state, x, y)
    got = state.logits.alpha.detach()
    assert state.baseline == pytest.approx(moved, rel=1e-9)
    assert torch.allclose(got, want_before, atol=1e-7) and not torch.allclose(got, want_after, atol=1e-5)


def test_reinforce_baseline_after_uses_the_previous_baseline():
    state, x, y = _state("add#linear", "full", algo="rl", rl_samples=4, rl_baseline="after")
    state.baseline = b0 = 3.0
    want, mean = _rl_expected(state, x, y, b0)
    arch_step(state, x, y)
    assert torch.allclose(state.logits.alpha.detach(), want, atol=1e-7)
    assert state.baseline == pytest.approx(0.99 * b0 + 0.01 * mean, rel=1e-9)


# ---- the unit of mul#log ----------------------------------------------------------------------------------------

def test_official_mul_log_takes_the_logarithm_in_raw_macs():
    """``arch.mul_log_unit: official`` (the official preset) on ``flops``: the loss and ∂L/∂α equal the official
    computation, in which E[LAT] and the reference are raw MACs (here: a model whose costs are the MACs themselves,
    under ``profile``). Taking the logarithm in MMAC instead, the ratio log E / log T of this tiny net (0.1 MMAC)
    would be another number altogether, and the test would fail."""
    base = {"space": "tiny", "hardware": "flops", "target": 0.15, "epochs": 3, "warmup_epochs": 1, "seed": 1,
            "arch": {"regularizer": "mul#log", "lr": 0.05, "init_std": 0.5}, "init": {"zero_last_gamma": False}}
    mmac = latency_model("flops", SPACE)
    official = init_state(config_from_dict({**base, "fidelity": "official"}), mmac, steps_per_epoch=10)
    assert official.cfg.arch.mul_log_unit == "official"
    macs = dataclasses.replace(mmac, costs=tuple(tuple(c * 1e6 for c in r) for r in mmac.costs),
                               fixed=mmac.fixed * 1e6, unit="MAC")
    ref = init_state(config_from_dict({**base, "fidelity": "official", "target": 0.15e6},
                                      ["arch.mul_log_unit=profile"]), macs, steps_per_epoch=10)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 16, 16, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    active = sample_active(official)
    got, want = arch_gradient(official, x, y, active), arch_gradient(ref, x, y, active)
    assert float(got.expected) == pytest.approx(float(want.expected) / 1e6, rel=1e-6)
    assert float(got.loss) == pytest.approx(float(want.loss), rel=1e-6)
    assert torch.allclose(got.alpha_grad, want.alpha_grad, rtol=1e-5, atol=1e-6 * float(want.alpha_grad.abs().max()))
    # The pressure near the target, β / ln T, is 3.4x weaker than in MMAC at the official reference of 300e6.
    assert 0.3 / math.log(300e6) == pytest.approx(0.0154, abs=1e-4) and 0.3 / math.log(300) == pytest.approx(0.0526,
                                                                                                              abs=1e-4)
    # In MMAC a 0.15 target cannot be a mul#log target (log T < 0); in MACs it can. A unit the official code has
    # no counterpart of is refused, naming the switch.
    with pytest.raises(ValueError, match="^target: mul#log divides by log"):
        config_from_dict(base, ["fidelity=project"])
    assert (mul_log_scale("MMAC", "official"), mul_log_scale("ms", "official"), mul_log_scale("MMAC", "profile")) \
        == (1e6, 1.0, 1.0)
    with pytest.raises(ValueError, match="^arch.mul_log_unit: official units are known for latency models in "):
        init_state(official.cfg, dataclasses.replace(mmac, unit="us"), steps_per_epoch=10)


# ---- schedule -----------------------------------------------------------------------------------------------

def test_arch_update_schedule():
    base = {"space": "tiny", "target": 0.1, "epochs": 4, "warmup_epochs": 1, "arch": {"update_every": 3,
                                                                                      "regularizer": "add#linear"}}
    spe = 10
    on = config_from_dict(base, ["arch.skip_first_search_epoch=true"])
    off = config_from_dict(base)
    due = lambda cfg: [s for s in range(1, 4 * spe + 1) if arch_update_due(cfg, s, spe)]  # noqa: E731
    # per epoch after its 3rd, 6th and 9th weight step; never right after the last warm-up step (step 10)
    assert due(off) == [13, 16, 19, 23, 26, 29, 33, 36, 39]
    assert due(on) == [23, 26, 29, 33, 36, 39]


def _official_rl_schedule(n_batch: int, updates: int) -> dict[int, int]:
    """``RLArchSearchConfig.get_update_schedule`` of the official code (``update_per_epoch=False``), rewritten here
    line by line with its ``get_split_list``: {weight step of the epoch: updates after it}."""
    seg = [n_batch // updates] * updates
    for i in range(n_batch % updates):
        seg[i] += 1
    for j in range(1, len(seg)):
        seg[j] += seg[j - 1]
    return {j - 1: 1 for j in seg}


def test_reinforce_per_epoch_schedule_is_the_official_one():
    base = {"space": "tiny", "target": 0.1, "epochs": 3, "warmup_epochs": 1,
            "arch": {"regularizer": "add#linear", "algo": "rl", "update_every": 3}}
    official = config_from_dict({**base, "fidelity": "official"}, ["arch.skip_first_search_epoch=false"])
    assert (official.arch.rl_schedule, official.arch.rl_updates_per_epoch) == ("per_epoch", 300)
    assert official.arch.holdout_batch == (1000, "arch.rl_batch_size")  # the official test_batch_size
    for spe in (1000, 5005, 301, 300, 299, 10, 1):
        due = {s - spe - 1: arch_updates_after(official, s, spe) for s in range(spe + 1, 2 * spe + 1)}
        assert {i: n for i, n in due.items() if n} == _official_rl_schedule(spe, 300), spe
        assert not any(arch_updates_after(official, s, spe) for s in range(1, spe + 1))  # warm-up: none
    hand = sorted(_official_rl_schedule(1000, 300))  # 100 segments of 4 steps, then 200 of 3
    assert len(hand) == 300 and hand[:3] == [3, 7, 11] and hand[99:102] == [399, 402, 405] and hand[-1] == 999
    # The project's schedule, and the gradient algorithm under any preset, follow update_every on arch.batch_size.
    project = config_from_dict({**base, "fidelity": "project"})
    assert [s for s in range(11, 21) if arch_updates_after(project, s, 10)] == [13, 16, 19]
    assert project.arch.holdout_batch == (256, "arch.batch_size")
    grad = config_from_dict({**base, "fidelity": "official", "arch": {**base["arch"], "algo": "grad"}},
                            ["arch.skip_first_search_epoch=false"])
    assert [s for s in range(11, 21) if arch_updates_after(grad, s, 10)] == [13, 16, 19]
    assert grad.arch.holdout_batch == (256, "arch.batch_size")


def test_reinforce_per_epoch_search_takes_its_updates_on_its_batch():
    base = {"space": "tiny", "hardware": "flops", "target": 0.1, "epochs": 3, "warmup_epochs": 1, "seed": 0,
            "weight": {"batch_size": 64}, "fidelity": "official",
            "arch": {"regularizer": "add#linear", "algo": "rl", "rl_samples": 2, "rl_updates_per_epoch": 4,
                     "rl_batch_size": 40}}
    both = ["arch.skip_first_search_epoch=false"]
    cfg = config_from_dict(base, both)
    data = open_data(cfg)
    train, holdout = search_feeds(cfg, data)
    assert holdout.batch_size == 40
    result = run_search(config_from_dict({**base, "log_every": train.batches_per_epoch}, both), data)
    assert result.arch_steps == 4 * 2  # 4 per search epoch, 2 search epochs
    with pytest.raises(ValueError, match="^arch.rl_batch_size: each of 1 worker"):
        search_feeds(config_from_dict(base, [*both, "arch.rl_batch_size=65536"]), data)


def test_no_arch_step_in_the_first_search_epoch_when_switched_on():
    base = {"space": "tiny", "hardware": "flops", "target": 0.1, "epochs": 3, "warmup_epochs": 1, "seed": 0,
            "weight": {"batch_size": 64},
            "arch": {"regularizer": "add#linear", "update_every": 4, "batch_size": 32, "skip_first_search_epoch": True}}
    data = open_data(config_from_dict(base))
    spe = len(data.train) // 64
    c = config_from_dict({**base, "log_every": spe})
    result = run_search(c, data)
    by_epoch = dict(zip(result.curves["epoch"], result.curves["arch_step"]))
    assert by_epoch[1.0] == 0 and by_epoch[2.0] == 0  # warm-up, then the first search epoch: no arch step
    assert by_epoch[3.0] == spe // 4 > 0  # the second search epoch: one after every 4th weight step
    assert result.arch_steps == spe // 4


# ---- the overlay ------------------------------------------------------------------------------------------

def test_each_preset_sets_every_switch():
    assert set(OFFICIAL) == set(PROJECT) == set(PRESETS["paper"])
    for name, values in PRESETS.items():
        cfg = config_from_dict({"space": "tiny", "target": 2.0, "fidelity": name})
        assert {k: _get(cfg, k) for k in values} == values, name
    assert PRESETS["paper"] == {**OFFICIAL, "arch.grad_mode": "two"}
    default = config_from_dict({"space": "tiny", "target": 2.0})
    assert {k: _get(default, k) for k in PROJECT} == PROJECT  # project = the dataclass defaults


def test_overlay_precedence():
    f = {"space": "tiny", "target": 2.0, "fidelity": "official", "arch": {"grad_mode": "full_v2", "lr": 0.01}}
    cfg = config_from_dict(f)
    assert cfg.arch.grad_mode == "full_v2" and cfg.arch.lr == 0.01  # a switch at the preset's own value is fine
    assert cfg.init.linear == "uniform" and cfg.arch.skip_first_search_epoch  # the rest is official
    cfg = config_from_dict({**f, "arch": {"lr": 0.01}}, ["fidelity=project"])  # --set fidelity: every switch
    assert cfg.arch.grad_mode == "two" and cfg.init.linear == "normal" and cfg.arch.lr == 0.01
    with pytest.raises(ValueError, match=r"^arch.grad_mode: set to 'two' beside fidelity: official"):
        config_from_dict({**f, "arch": {"grad_mode": "two"}}, ["fidelity=project"])  # the file contradicts itself
    cfg = config_from_dict({"space": "tiny", "target": 2.0, "arch": {"grad_mode": "two"}},
                           ["arch.rl_baseline=after", "fidelity=official"])
    assert cfg.arch.grad_mode == "full_v2" and cfg.arch.rl_baseline == "after"  # --set keys win over --set fidelity
    assert config_from_dict(cfg.to_dict()) == cfg  # the typed config carries the resolved switches
    with pytest.raises(ValueError, match="fidelity: unknown preset 'exact'"):
        config_from_dict({"space": "tiny", "target": 2.0}, ["fidelity=exact"])


def test_a_file_naming_a_preset_and_another_value_of_its_switch_is_refused(tmp_path, capsys):
    """``fidelity: official`` beside ``arch.rl_baseline_decay: 0.99`` once ran with 0.99, neither the official 0.01
    nor the project's combination; now the file is refused with one line naming the key, before anything runs."""
    path = tmp_path / "search.yaml"
    path.write_text("space: tiny\nhardware: flops\ntarget: 2.0\nfidelity: official\n"
                    "arch:\n  regularizer: add#linear\n  rl_baseline_decay: 0.99\n")
    with pytest.raises(ValueError) as e:
        load_config(path)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{path}: arch.rl_baseline_decay: set to 0.99 ")
    assert "fidelity: official, which sets 0.01" in str(e.value)
    proc = run_nas_inprocess(capsys, "search", "--config", str(path), "--out", str(tmp_path / "out"))
    assert_one_line_error(proc, "arch.rl_baseline_decay", "fidelity: official")
    assert not (tmp_path / "out").exists()
    # The same value as the preset's is no conflict; --set overrides either way.
    path.write_text(path.read_text().replace("0.99", "0.01"))
    assert load_config(path).arch.rl_baseline_decay == 0.01
    assert load_config(path, ["arch.rl_baseline_decay=0.5"]).arch.rl_baseline_decay == 0.5
    # The shipped ImageNet configs name fidelity: project and the project's own values, so they load; --set
    # fidelity=official then gives the official decay, as before.
    mobile = ROOT / "configs" / "imagenet-mobile.yaml"
    assert load_config(mobile).arch.rl_baseline_decay == 0.99
    assert load_config(mobile, ["fidelity=official"]).arch.rl_baseline_decay == 0.01


@pytest.mark.parametrize("override, key", [
    ("arch.grad_mode=full", "arch.grad_mode"), ("arch.latency_probs=all", "arch.latency_probs"),
    ("arch.rl_baseline=during", "arch.rl_baseline"), ("init.linear=xavier", "init.linear"),
    ("data.color_jitter=wild", "data.color_jitter"), ("arch.skip_first_search_epoch=1", "arch.skip_first_search_epoch"),
    # issue 23's switches: the unit of mul#log, the REINFORCE schedule and batch, the per-block Adam
    ("arch.mul_log_unit=mac", "arch.mul_log_unit"), ("arch.rl_schedule=per_step", "arch.rl_schedule"),
    ("arch.rl_updates_per_epoch=0", "arch.rl_updates_per_epoch"),
    ("arch.rl_updates_per_epoch=1000001", "arch.rl_updates_per_epoch"),
    ("arch.rl_batch_size=0", "arch.rl_batch_size"), ("arch.rl_batch_size=65537", "arch.rl_batch_size"),
    ("arch.skip_zero_active=1", "arch.skip_zero_active"), ("arch.rl_baseline_decay=1.0", "arch.rl_baseline_decay"),
])
def test_bad_switch_values_name_their_key(override, key):
    with pytest.raises(ValueError, match=rf"^{key}: ") as e:
        config_from_dict({"space": "tiny", "target": 2.0}, [override])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="arch.skip_first_search_epoch: with 1 search epoch"):
        config_from_dict({"space": "tiny", "target": 2.0, "epochs": 2, "warmup_epochs": 1},
                         ["arch.skip_first_search_epoch=true"])


# ---- initialisation and colour distortion ----------------------------------------------------------------------

def test_init_switches():
    official = Supernet(SPACE, linear_init="uniform", zero_last_gamma=False)
    project = Supernet(SPACE)
    w = official.head.classifier.weight
    bound = w.shape[1] ** -0.5
    assert w.abs().max() <= bound and w.std() > 0.8 * bound / 3 ** 0.5  # U(±1/sqrt(fan_in)), not N(0, 0.01)
    assert project.head.classifier.weight.std() < 0.02
    gammas = lambda net: [m.project[1].weight for blk in net.blocks if blk.shortcut  # noqa: E731
                          for m in blk.candidates.values()]
    assert all(torch.all(g == 1) for g in gammas(official))
    assert gammas(project) and all(torch.all(g == 0) for g in gammas(project))


def test_color_jitter_uses_the_official_values():
    def jitter(tf):
        found = [t for t in tf.transforms if isinstance(t, v2.ColorJitter)]
        return found[0] if found else None

    assert jitter(train_transform(32)) is None and jitter(train_transform(32, "none")) is None
    normal, strong = jitter(train_transform(32, "normal")), jitter(train_transform(32, "strong"))
    assert normal.brightness == pytest.approx((1 - 32 / 255, 1 + 32 / 255)) and normal.saturation == (0.5, 1.5)
    assert normal.contrast is None and normal.hue is None
    assert strong.brightness == strong.contrast == strong.saturation == pytest.approx((0.6, 1.4))
    assert strong.hue == pytest.approx((-0.1, 0.1))
    image = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    torch.manual_seed(0)
    a = train_transform(32, "strong")(image)
    torch.manual_seed(0)
    b = train_transform(32, "none")(image)
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)
    with pytest.raises(ValueError, match="color_jitter"):
        train_transform(32, "vivid")
