from __future__ import annotations

import itertools
import random

import pytest

from orchestrator.pareto import Point, dominates, hypervolume, pareto_front, plot_fronts


def test_front_is_exactly_the_non_dominated_set():
    rng = random.Random(0)
    pts = [Point(rng.uniform(1, 10), rng.uniform(0, 1), str(i)) for i in range(200)]
    front = pareto_front(pts)
    brute = [p for p in pts if not any(dominates(q, p) for q in pts)]
    assert sorted(front, key=lambda p: p.label) == sorted(brute, key=lambda p: p.label)
    for a, b in itertools.pairwise(front):
        assert a.latency <= b.latency and a.error > b.error


def test_hypervolume_of_known_fronts():
    assert hypervolume([Point(1, 0.5)], ref_latency=3, ref_error=1.0) == pytest.approx(1.0)
    # two steps: (1,0.5) and (2,0.2) against (3,1): 2*0.5 + 1*0.3
    assert hypervolume([Point(2, 0.2), Point(1, 0.5), Point(2.5, 0.6)], 3, 1.0) == pytest.approx(1.3)
    assert hypervolume([], 3) == 0.0
    with pytest.raises(ValueError, match="reference latency"):
        hypervolume([Point(1, 0.5)], 0)


def test_plot_is_written(tmp_path):
    out = plot_fronts({"cpu": [Point(1, 0.3), Point(2, 0.2)]}, tmp_path / "f.png", "cpu", reference=[Point(1.5, 0.25, "ref")])
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"
