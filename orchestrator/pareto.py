"""Pareto fronts of latency against error: the non-dominated set, its hypervolume, and a plot per hardware."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Point:
    latency: float  # on the point's hardware, in its unit (ms, or MMAC for the flops proxy)
    error: float  # top-1 error in [0, 1]
    label: str = ""  # architecture string or run name
    meta: dict = field(default_factory=dict, compare=False)


# Published ProxylessNAS results (Cai et al., ICLR 2019, and the official model zoo), as (latency ms, top-1 error)
# on the hardware where they were measured; drawn as reference points where a front's hardware matches.
PUBLISHED_REFERENCE: dict[str, list[Point]] = {
    "pixel1": [Point(78.0, 0.254, "ProxylessNAS-Mobile"), Point(124.0, 0.249, "ProxylessNAS-GPU"),
               Point(116.0, 0.247, "ProxylessNAS-CPU")],
    "v100": [Point(5.1, 0.249, "ProxylessNAS-GPU"), Point(7.2, 0.254, "ProxylessNAS-Mobile")],
}


def dominates(a: Point, b: Point) -> bool:
    return a.latency <= b.latency and a.error <= b.error and (a.latency < b.latency or a.error < b.error)


def pareto_front(points: Iterable[Point]) -> list[Point]:
    """The non-dominated points (lower latency and lower error are better), sorted by latency."""
    pts = sorted(points, key=lambda p: (p.latency, p.error))
    front: list[Point] = []
    best_error = float("inf")
    for p in pts:
        if p.error < best_error:
            front.append(p)
            best_error = p.error
    return front


def hypervolume(front: Sequence[Point], ref_latency: float, ref_error: float = 1.0) -> float:
    """Area dominated by the front and bounded by the reference point (larger is better)."""
    if ref_latency <= 0:
        raise ValueError(f"reference latency must be positive, got {ref_latency}")
    area, prev_error = 0.0, ref_error
    for p in sorted(pareto_front(front), key=lambda q: q.latency):
        if p.latency >= ref_latency or p.error >= prev_error:
            continue
        area += (ref_latency - p.latency) * (prev_error - p.error)
        prev_error = p.error
    return area


def plot_fronts(fronts: dict[str, list[Point]], out: str | Path, title: str, unit: str = "ms",
                reference: Sequence[Point] = ()) -> Path:
    """Scatter every series with its front as a step line; published reference points as stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for i, (name, pts) in enumerate(sorted(fronts.items())):
        if not pts:
            continue
        color = f"C{i % 10}"  # matplotlib's default colour cycle, one colour per series
        searched = [p for p in pts if p.meta.get("point", "search") != "front"]
        derived = [p for p in pts if p.meta.get("point", "search") == "front"]
        ax.scatter([p.latency for p in searched], [100 * p.error for p in searched], s=18, alpha=0.6,
                   label=f"{name} searched", color=color)
        if derived:  # extra budgets derived from a search's α, told apart from per-target searches
            ax.scatter([p.latency for p in derived], [100 * p.error for p in derived], s=22, alpha=0.8, marker="x",
                       color=color, label=f"{name} derived (front)")
        front = pareto_front(pts)
        ax.step([p.latency for p in front], [100 * p.error for p in front], where="post",
                color=color, label=f"{name} front")
    for ref in reference:
        ax.scatter([ref.latency], [100 * ref.error], marker="*", s=120, color="black")
        ax.annotate(ref.label, (ref.latency, 100 * ref.error), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(f"latency ({unit})")
    ax.set_ylabel("top-1 error (%)")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def reference_latency(points: Iterable[Point], margin: float = 1.1) -> float:
    """A hypervolume reference latency for comparable fronts: ``margin`` x the slowest point of all series."""
    worst = max((p.latency for p in points), default=0.0)
    if worst <= 0:
        raise ValueError("no point with a positive latency to set the hypervolume reference")
    return worst * margin


def summarize_front(points: Sequence[Point], ref_latency: float, ref_error: float = 1.0) -> dict:
    """The JSON-ready summary of one series: its points, non-dominated set and hypervolume at the reference."""
    as_dict = lambda p: {"latency": p.latency, "error": p.error, "label": p.label, **p.meta}  # noqa: E731
    front = pareto_front(points)
    return {"points": [as_dict(p) for p in points], "front": [as_dict(p) for p in front],
            "hypervolume": hypervolume(front, ref_latency, ref_error), "ref_latency": ref_latency,
            "ref_error": ref_error}
