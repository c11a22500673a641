"""A table fitted from whole-network latencies alone: how kits and deployment runtimes get their entries.

A runtime such as ONNX Runtime, OpenVINO, LiteRT or TensorRT folds BatchNorm, fuses activations and picks its own
kernels for the graph it is given, so a block costs what it costs inside that graph, and a phone cannot be asked
for per-block timings at all. What can be measured everywhere is whole networks. The model stays the search's:
one entry per (block, candidate) plus a fixed part, so E[latency] keeps its exact gradient in α. With fewer
networks than entries the fit needs a prior, built in two steps, both non-negative:

1. **Prior.** Each entry is a non-negative combination of a few features of its shape: the expand and project
   multiply-accumulates, the depthwise ones for each kernel size separately (runtimes run 3x3, 5x5 and 7x7
   depthwise kernels at very different speeds), the activation elements the block reads and writes, and one
   per-block constant. Their weights and the fixed part are fitted by non-negative least squares in relative
   error over the calibration networks (a handful of unknowns).
2. **Entries.** Each entry is the prior plus a correction, fitted in relative error with a ridge penalty on the
   correction relative to the prior (``ridge``), every entry kept non-negative.

A skipped block (``zero``) costs nothing: the exported graph has no op there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from orchestrator.arch import Op
from orchestrator.latency.calibrate import compare, noise_floor
from orchestrator.latency.model import LatencyModel
from orchestrator.latency.table import HEAD, STEM, EntryStats, block_key
from orchestrator.spaces import BlockSpec, SearchSpace

__all__ = ["FitResult", "fit_whole_networks", "score_networks", "DEFAULT_RIDGE"]

DEFAULT_RIDGE = 0.1


def features(space: SearchSpace, spec: BlockSpec, op: Op) -> list[float]:
    """The prior's features of candidate ``op`` on block ``spec``, in millions (see the module docstring)."""
    mid = spec.in_channels * op.expand
    expand = spec.in_channels * mid * spec.in_resolution ** 2 if op.expand != 1 else 0
    depthwise = mid * op.kernel ** 2 * spec.out_resolution ** 2
    project = mid * spec.out_channels * spec.out_resolution ** 2
    memory = mid * (spec.in_resolution ** 2 + spec.out_resolution ** 2)
    return [expand / 1e6, project / 1e6, memory / 1e6, 1.0,
            *(depthwise / 1e6 if op.kernel == k else 0.0 for k in sorted(space.kernels))]


def feature_names(space: SearchSpace) -> list[str]:
    return ["expand_mmac", "project_mmac", "activation_melems", "per_block",
            *(f"depthwise_k{k}_mmac" for k in sorted(space.kernels))]


@dataclass(frozen=True)
class FitResult:
    """Fitted entries (``plain_ms`` holds the prior), and how the fit went."""

    entries: dict[str, EntryStats]
    info: dict


def _columns(space: SearchSpace) -> list[tuple[int, int]]:
    return [(b, c) for b, (spec, allowed) in enumerate(zip(space.blocks(), space.allowed_mask()))
            for c, ok in enumerate(allowed) if ok and not space.candidates[c].is_zero]


def _design(space: SearchSpace, archs: Sequence[str], columns: list[tuple[int, int]]) -> np.ndarray:
    index = {k: i for i, k in enumerate(columns)}
    a = np.zeros((len(archs), len(columns)))
    for n, text in enumerate(archs):
        for b, c in enumerate(space.indices(space.parse(text))):
            if not space.candidates[c].is_zero:
                a[n, index[(b, c)]] = 1.0
    return a


def fit_whole_networks(space: SearchSpace, archs: Sequence[str], measured_ms: Sequence[float],
                       ridge: float = DEFAULT_RIDGE) -> FitResult:
    """Entries of ``space`` from the latencies of whole networks ``archs`` (architecture strings)."""
    from scipy.optimize import lsq_linear, nnls

    y = np.asarray(measured_ms, float)
    if len(archs) != len(y):
        raise ValueError(f"{len(archs)} networks but {len(y)} latencies")
    if len(y) < 3:
        raise ValueError(f"a fit needs at least 3 whole networks, got {len(y)}")
    if not (np.isfinite(y).all() and (y > 0).all()):
        raise ValueError("every whole-network latency must be a positive number")
    if ridge <= 0 or not np.isfinite(ridge):
        raise ValueError(f"ridge must be a positive number, got {ridge}")
    specs = space.blocks()
    columns = _columns(space)
    feats = np.array([features(space, specs[b], space.candidates[c]) for b, c in columns])
    a = _design(space, archs, columns)
    w = 1.0 / y  # every row in relative error: a 1 ms net counts as much as a 30 ms one
    prior_x = np.hstack([np.ones((len(y), 1)), a @ feats])
    coef, _ = nnls(prior_x * w[:, None], y * w)
    fixed0, prior = float(coef[0]), feats @ coef[1:]
    prior = np.maximum(prior, 1e-6 * y.min())  # a zero prior would forbid any correction of that entry
    base = np.hstack([np.ones((len(y), 1)), a])
    resid = y - base @ np.concatenate([[fixed0], prior])
    penalty = np.hstack([np.zeros((len(prior), 1)), np.diag(np.sqrt(ridge) / prior)])
    system = np.vstack([base * w[:, None], penalty])
    target = np.concatenate([resid * w, np.zeros(len(prior))])
    lower = np.concatenate([[-fixed0], -prior])  # entries and the fixed part stay non-negative
    sol = lsq_linear(system, target, bounds=(lower, np.full(len(lower), np.inf))).x
    fixed, values = fixed0 + float(sol[0]), prior + sol[1:]
    counts = a.sum(axis=0)
    entries = {STEM: EntryStats(latency_ms=max(0.0, fixed), count=len(y), plain_ms=max(0.0, fixed0)),
               HEAD: EntryStats(latency_ms=0.0, count=len(y), plain_ms=0.0)}
    for (b, c), v, p, n in zip(columns, values, prior, counts):
        entries[block_key(b, space.candidates[c])] = EntryStats(latency_ms=max(0.0, float(v)), count=int(n),
                                                                plain_ms=float(p))
    order = {k: i for i, k in enumerate([STEM, *(block_key(b, space.candidates[c]) for b, c in columns), HEAD])}
    pred = base @ np.concatenate([[fixed], values])
    info = {"method": "whole-network fit: non-negative feature prior, ridge-corrected entries",
            "networks": len(y), "ridge": ridge, "fixed_ms": fixed, "prior_fixed_ms": fixed0,
            "features": dict(zip(feature_names(space), map(float, coef[1:]))),
            "fit_mape": float(np.mean(np.abs(pred - y) / y)),
            "fixed_part": "the stem entry holds stem and head together; the head entry is 0"}
    return FitResult(dict(sorted(entries.items(), key=lambda kv: order[kv[0]])), info)


def score_networks(model: LatencyModel, plain: LatencyModel, archs: Sequence[str], measured_ms: Sequence[float],
                   halves: Sequence[tuple[float, float]] | None = None) -> dict:
    """Validation figures of a fitted model (and of its prior, ``plain``) on held-out whole networks.

    ``halves`` are two independent estimates of each network (the results repeat the file); their agreement is
    the noise floor, the best any model can be scored against this measurement. None when nothing repeats."""
    if len(archs) < 3:
        raise ValueError(f"validation needs at least 3 networks, got {len(archs)}")
    m = np.asarray(measured_ms, float)
    parsed = [model.space.parse(a) for a in archs]
    pred = np.array([model.exact(a) for a in parsed])
    plain_pred = np.array([plain.exact(a) for a in parsed])
    floor = None if halves is None else noise_floor([h[0] for h in halves], [h[1] for h in halves])
    return {**compare(pred, m), "samples": len(archs), "noise_floor": floor, "plain": compare(plain_pred, m),
            "drift": None, "archs": list(archs), "measured_ms": m.tolist(), "predicted_ms": pred.tolist(),
            "plain_ms": plain_pred.tolist()}
