"""Calibration of a table on whole networks, and its held-out validation.

The plain table times each (block, candidate) once, inside a network that has that candidate on every block. In
a real network the same block runs after other blocks, with other activations and weights in the caches, so a
plain sum misprices whole networks. Calibration times random networks of the space part by part
(``measure.time_network_group``) and prices each entry as the mean of what that part cost across those networks,
shrunk towards the plain entry (scaled to the calibration's level) where it was seen rarely. The model stays a
sum of per-block entries, so the search's expected latency stays exact and linear in each block's probabilities.

Terms between neighbouring blocks were looked at and left out: in an exploratory run on ``proxyless-imagenet`` a
block's cost moved by 1-2% with its predecessor, and the sum of calibrated entries already validates within the
measurement's noise floor (see the README's latency benchmark).

Networks are drawn to spread across the latency range: each draw tilts every block's choice towards small or
large candidates (by multiply-accumulates) by its own random amount, and a pool four times the size is thinned
to the draws nearest evenly spaced MAC values. Calibration and validation draw from streams named by role and seed, so a
validation never reuses the calibration's networks; both seeds and all networks go into the table's provenance.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from orchestrator.arch import Arch, Op
from orchestrator.latency.measure import GroupTiming
from orchestrator.latency.model import LatencyModel
from orchestrator.latency.table import EntryStats
from orchestrator.spaces import BlockSpec, SearchSpace

CALIBRATION, VALIDATION = "calibration", "validation"


@dataclass(frozen=True)
class CalibrationConfig:
    """How many networks calibrate a table and validate it afterwards, and how strongly the plain entry counts.

    ``prior_weight`` is the number of whole-network observations the plain entry is worth."""

    networks: int = 60
    group_size: int = 30
    seed: int = 0
    prior_weight: float = 1.0
    validate: int = 30
    validation_seed: int = 1

    def __post_init__(self) -> None:
        if self.networks < 0 or self.validate < 0:
            raise ValueError(f"networks and validate must be >= 0, got {self.networks} and {self.validate}")
        if self.validate and self.validate < 3:
            raise ValueError(f"validation needs at least 3 networks, got {self.validate}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be at least 1, got {self.group_size}")
        if self.prior_weight < 0:
            raise ValueError(f"prior_weight must be non-negative, got {self.prior_weight}")
        if self.validate and self.validation_seed == self.seed:
            raise ValueError(f"the validation seed must differ from the calibration seed ({self.seed})")


# ---- drawing networks -------------------------------------------------------------------------------------------
def op_macs(spec: BlockSpec, op: Op) -> float:
    """Multiply-accumulates of ``op`` on block ``spec`` at batch 1 (expand, depthwise, project), for spreading draws."""
    if op.is_zero:
        return 0.0
    mid = spec.in_channels * op.expand
    expand = spec.in_channels * mid * spec.in_resolution ** 2 if op.expand != 1 else 0
    return float(expand + mid * op.kernel ** 2 * spec.out_resolution ** 2 + mid * spec.out_channels
                 * spec.out_resolution ** 2)


def arch_macs(space: SearchSpace, arch: Arch) -> float:
    return sum(op_macs(spec, op) for spec, op in zip(space.blocks(), arch.ops))


def _tilted_arch(space: SearchSpace, rng: random.Random, tilt: float) -> Arch:
    idx = []
    for spec, allowed in zip(space.blocks(), space.allowed_mask()):
        cols = [c for c, ok in enumerate(allowed) if ok]
        macs = np.array([op_macs(spec, space.candidates[c]) for c in cols])
        z = np.log(macs + macs[macs > 0].min() / 2)
        z = (z - z.mean()) / (z.std() or 1.0)
        w = np.exp(tilt * z)
        idx.append(cols[min(int(np.searchsorted(np.cumsum(w / w.sum()), rng.random())), len(cols) - 1)])
    return space.arch_from_indices(idx)


def spread_archs(space: SearchSpace, n: int, seed: int, role: str, exclude: Sequence[str] = (),
                 tilt: float = 3.0) -> list[Arch]:
    """``n`` distinct networks spread over the space's latency range, from the stream named ``role:seed``.

    Each candidate draw has its own tilt in [-tilt, tilt] towards small or large ops; from a pool of 4n, the
    draws nearest n evenly spaced MAC values between the pool's extremes are kept. Networks in ``exclude`` (architecture strings) are never drawn. ``tilt=0``
    draws uniformly instead: every allowed candidate equally likely, the first n distinct draws (the narrow
    middle of the range, where a search starts)."""
    if n < 1:
        return []
    rng = random.Random(f"{role}:{seed}" if tilt else f"{role}-uniform:{seed}")
    skip = set(exclude)
    pool: dict[str, Arch] = {}
    attempts = 0
    while len(pool) < 4 * n and attempts < 40 * n:
        attempts += 1
        arch = _tilted_arch(space, rng, rng.uniform(-tilt, tilt)) if tilt else space.random_arch(rng)
        key = arch.encode()
        if key not in skip:
            pool.setdefault(key, arch)
    if len(pool) < n:
        raise ValueError(f"space {space.name!r} has too few distinct networks for {n} {role} samples")
    if not tilt:
        return list(pool.values())[:n]
    ranked = sorted(pool.values(), key=lambda a: (arch_macs(space, a), a.encode()))
    macs = np.array([arch_macs(space, a) for a in ranked])
    free = np.ones(len(ranked), bool)
    picks = []
    for target in np.linspace(macs[0], macs[-1], n):  # evenly spaced MAC values, each nearest unused draw
        i = int(np.argmin(np.where(free, np.abs(macs - target), np.inf)))
        free[i] = False
        picks.append(i)
    return [ranked[i] for i in sorted(picks)]


def groups_of(items: Sequence, size: int) -> list[list]:
    """``items`` in consecutive groups of at most ``size``, as even in size as possible."""
    if not items:
        return []
    k = math.ceil(len(items) / size)
    bounds = np.linspace(0, len(items), k + 1).round().astype(int)
    return [list(items[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


# ---- fitting ------------------------------------------------------------------------------------------------------
def reference_level(groups: Sequence[GroupTiming]) -> float:
    """The reference network's latency over a set of groups (median): the level a table's entries are at."""
    return float(np.median([g.reference.latency_ms for g in groups]))


def normalized_parts(groups: Sequence[GroupTiming], level: float) -> list[dict[str, float]]:
    """Every network's part minima, each group scaled so that its reference network sits at ``level``."""
    out = []
    for g in groups:
        f = level / g.reference.latency_ms
        out += [{k: v * f for k, v in t.parts_ms.items()} for t in g.networks]
    return out


def fit_entries(plain: dict[str, EntryStats], groups: Sequence[GroupTiming], level: float,
                prior_weight: float = 1.0) -> tuple[dict[str, EntryStats], float]:
    """Calibrated entries: per key, the mean part cost over the calibration networks (scaled to ``level``), with
    the plain entry times the median calibrated/plain ratio worth ``prior_weight`` networks. Returns the entries
    and that ratio (the plain table's scale)."""
    seen: dict[str, list[float]] = {}
    for parts in normalized_parts(groups, level):
        for k, v in parts.items():
            seen.setdefault(k, []).append(v)
    ratios = [np.mean(seen[k]) / e.latency_ms for k, e in plain.items() if k in seen and e.latency_ms > 1e-3]
    scale = float(np.median(ratios)) if ratios else 1.0
    out = {}
    for key, e in plain.items():
        vals = np.asarray(seen.get(key, []), float)
        prior = scale * e.latency_ms
        value = (vals.sum() + prior_weight * prior) / (len(vals) + prior_weight) if len(vals) or prior_weight else prior
        if len(vals) >= 2:
            q1, med, q3 = np.percentile(vals, [25, 50, 75])
            stats = dict(median_ms=float(med), mean_ms=float(vals.mean()), std_ms=float(vals.std(ddof=1)),
                         q1_ms=float(q1), q3_ms=float(q3), min_ms=float(vals.min()), max_ms=float(vals.max()))
        else:
            stats = {}
        out[key] = EntryStats(latency_ms=float(value), count=int(len(vals)), plain_ms=e.latency_ms,
                              source_key=e.source_key, **stats)
    return out, scale


# ---- scoring --------------------------------------------------------------------------------------------------------
def compare(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """MAPE, Spearman rank correlation, share within ±10% and mean signed error of predictions."""
    from scipy.stats import spearmanr

    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    if len(p) < 3 or len(p) != len(m):
        raise ValueError(f"need at least 3 paired samples to compare, got {len(p)} and {len(m)}")
    rel = (p - m) / m
    return {"mape": float(np.abs(rel).mean()), "spearman": float(spearmanr(p, m).statistic),
            "within_10pct": float((np.abs(rel) <= 0.10).mean()), "mean_error": float(rel.mean())}


def noise_floor(first: Sequence[float], second: Sequence[float]) -> dict[str, float]:
    """How well two independent halves of one measurement agree: the best any model can be scored against it."""
    from scipy.stats import spearmanr

    a, b = np.asarray(first, float), np.asarray(second, float)
    gap = np.abs(a / b - 1.0)
    return {"median_gap": float(np.median(gap)), "max_gap": float(gap.max()),
            "within_10pct": float((gap <= 0.10).mean()), "spearman": float(spearmanr(a, b).statistic)}


def score(model: LatencyModel, plain: LatencyModel, groups: Sequence[GroupTiming], level: float,
          space: SearchSpace) -> dict:
    """Validation figures of ``model`` and of the plain table on networks timed in ``groups``.

    The measured latency of each network is scaled by its group's reference network to ``level`` (the
    reference's latency when the table was built), so a host that is slower or faster now than then does not
    count as model error; the unscaled figures and that drift are reported beside them. ``whole_pass`` scores
    against the fastest single pass instead of the sum of part minima (a noisier measure on a busy host)."""
    archs, measured, raw, whole, first, second, whole_first, whole_second = [], [], [], [], [], [], [], []
    for g in groups:
        f = level / g.reference.latency_ms
        for t in g.networks:
            archs.append(t.arch)
            raw.append(t.latency_ms)
            measured.append(t.latency_ms * f)
            whole.append(t.whole_min_ms * f)
            first.append(t.halves_ms[0] * f)
            second.append(t.halves_ms[1] * f)
            whole_first.append(t.whole_halves_ms[0] * f)
            whole_second.append(t.whole_halves_ms[1] * f)
    parsed = [space.parse(a) for a in archs]
    predicted = [model.exact(a) for a in parsed]
    plain_pred = [plain.exact(a) for a in parsed]
    drift = float(np.median([g.reference.latency_ms for g in groups]) / level - 1.0)
    return {
        **compare(predicted, measured),
        "samples": len(archs),
        "noise_floor": noise_floor(first, second),
        "plain": compare(plain_pred, measured),
        "unscaled": compare(predicted, raw),
        "whole_pass": compare(predicted, whole),
        "plain_whole_pass": compare(plain_pred, whole),
        "whole_pass_noise_floor": noise_floor(whole_first, whole_second),
        "drift": drift,
        "rounds": [g.rounds for g in groups],
        "archs": archs,
        "measured_ms": measured,
        "predicted_ms": predicted,
        "plain_ms": plain_pred,
    }


def validation_metrics(provenance: Mapping) -> dict[str, float]:
    """The headline figures of a table's last validation, flat, for logging beside every search that uses it.

    ``provenance`` is ``LatencyModel.provenance`` (or a table's provenance as a dict); empty when the table was
    never validated (imported tables, ``--validate 0``)."""
    v = provenance.get("validation") or {}
    cal = provenance.get("calibration") or {}
    if not v:
        return {}
    floor = v.get("noise_floor") or {}  # a kit's results may not repeat any file: no noise floor, no drift
    out = {"latency_model_within_10pct": v["within_10pct"], "latency_model_spearman": v["spearman"],
           "latency_model_mape": v["mape"], "latency_model_noise_floor": floor.get("median_gap"),
           "latency_model_samples": v["samples"], "latency_model_drift": v.get("drift"),
           "latency_plain_within_10pct": v["plain"]["within_10pct"], "latency_plain_spearman": v["plain"]["spearman"],
           "latency_calibration_networks": cal.get("networks", 0)}
    return {k: float(x) for k, x in out.items() if x is not None}
