"""Issue 22: every numeric config value is finite and bounded. NaN passes every range comparison and ±inf fails only
deep inside a run, so the loaders refuse both for every numeric key of every config (search, retrain, sweep),
naming the key, before anything is created; values that would exhaust the machine have upper bounds."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import types
import typing
from dataclasses import dataclass, field

import pytest
import yaml  # noqa: TID253

from orchestrator.config import build, check_limits
from orchestrator.data.digits import load_digits_tensors
from orchestrator.data.source import DataSpec
from orchestrator.retrain import RetrainConfig, retrain_config_from_dict
from orchestrator.search.config import SearchConfig, config_from_dict
from orchestrator.sweep.config import HardwareGrid, SweepConfig, load_sweep
from tests.conftest import ROOT, assert_one_line_error, run_nas_inprocess

BAD = {".nan": "nan", ".inf": "inf", "-.inf": "-inf"}
BAD_FLOATS = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
TINY = ROOT / "configs" / "tiny.yaml"


def _numeric(hint) -> tuple[str, type | None] | None:
    """('scalar'|'list', dataclass or None) for a numeric field's hint, ('dataclass', cls) for a nested one."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if dataclasses.is_dataclass(hint):
        return "dataclass", hint
    if hint in (int, float):
        return "scalar", None
    if typing.get_origin(hint) is tuple and typing.get_args(hint) and \
            all(a in (int, float, Ellipsis) for a in typing.get_args(hint)):
        return "list", None
    return None


def numeric_keys(cls: type, prefix: str = "") -> list[tuple[str, str]]:
    """Every numeric key of a config dataclass, nested sections walked: (dotted key, 'scalar' or 'list')."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _numeric(hints[f.name])
        if kind is None:
            continue
        if kind[0] == "dataclass":
            out += numeric_keys(kind[1], f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, kind[0]))
    return out


SEARCH_KEYS = numeric_keys(SearchConfig)
RETRAIN_KEYS = numeric_keys(RetrainConfig)


def _override(key: str, kind: str, raw: str) -> str:
    return f"{key}={raw}" if kind == "scalar" else f"{key}=[{raw}, {raw}]"


def _refused(e: pytest.ExceptionInfo, key: str, shown: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert msg.startswith(key) and f"must be a finite number, got {shown}" in msg, msg


def test_the_walk_finds_the_keys_that_matter():
    """The walk is what the tests below cover: it must reach nested sections and every kind of number."""
    keys = dict(SEARCH_KEYS)
    for k in ("target", "resolution", "width_mult", "weight.lr", "arch.reg_beta", "data.valid_fraction",
              "data.workers", "weight.batch_size"):
        assert k in keys, k
    assert keys["arch.betas"] == "list"
    assert {"lr", "batch_size", "data.workers"} <= dict(RETRAIN_KEYS).keys()
    assert len(SEARCH_KEYS) > 30


@pytest.mark.parametrize("raw", BAD)
@pytest.mark.parametrize("key,kind", SEARCH_KEYS, ids=[k for k, _ in SEARCH_KEYS])
def test_search_config_refuses_non_finite(key, kind, raw):
    with pytest.raises(ValueError) as e:
        config_from_dict(yaml.safe_load(TINY.read_text()), [_override(key, kind, raw)])
    _refused(e, key, BAD[raw])


@pytest.mark.parametrize("raw", BAD)
@pytest.mark.parametrize("key,kind", RETRAIN_KEYS, ids=[k for k, _ in RETRAIN_KEYS])
def test_retrain_config_refuses_non_finite(key, kind, raw):
    with pytest.raises(ValueError) as e:
        retrain_config_from_dict({"epochs": 1}, [_override(key, kind, raw)])
    _refused(e, f"retrain.{key}", BAD[raw])


def _sweep_cases() -> list[tuple[str, typing.Callable[[dict, float], None], str]]:
    """(field, how to put a bad number there in a sweep YAML, the YAML key the message must name), for every
    numeric field of the sweep config, its hardware grid and its retrain section."""
    cases = []
    for key, kind in numeric_keys(SweepConfig):
        if key.startswith("retrain."):
            sub = key.removeprefix("retrain.")

            def put(d, v, sub=sub):
                node = d.setdefault("retrain", {})
                *parents, last = sub.split(".")
                for p in parents:
                    node = node.setdefault(p, {})
                node[last] = v
            cases.append((key, put, key))
        elif kind == "scalar":
            cases.append((key, lambda d, v, k=key: d.__setitem__(k, v), key))
        else:  # seeds
            cases.append((key, lambda d, v, k=key: d.__setitem__(k, [v]), f"{key}[0]"))
    grid_fields = {k for k, _ in numeric_keys(HardwareGrid)}
    grid = {  # the YAML forms of a hardware entry's numbers
        "targets": (lambda g, v: g.__setitem__("targets", [1.0, v]), "grid[0].targets[1]"),
        "relative": (lambda g, v: (g.pop("targets"), g.__setitem__("relative", [v])), "grid[0].relative[0]"),
        "front": (lambda g, v: g.__setitem__("front", [v]), "grid[0].front[0]"),
        "front_relative": (lambda g, v: g.__setitem__("front_relative", [v]), "grid[0].front_relative[0]"),
        "low": (lambda g, v: g.__setitem__("targets", {"uniform": [v, 2.0], "samples": 2}),
                "grid[0].targets.uniform[0]"),
        "high": (lambda g, v: g.__setitem__("targets", {"uniform": [0.5, v], "samples": 2}),
                 "grid[0].targets.uniform[1]"),
        "samples": (lambda g, v: g.__setitem__("targets", {"uniform": [0.5, 2.0], "samples": v}),
                    "grid[0].targets.samples"),
    }
    assert grid_fields == set(grid), f"a numeric grid field without a case: {grid_fields ^ set(grid)}"
    for name, (put, shown) in grid.items():
        cases.append((f"grid.{name}", lambda d, v, put=put: put(d["grid"][0], v), shown))
    return cases


SWEEP_CASES = _sweep_cases()


@pytest.mark.parametrize("raw", BAD)
@pytest.mark.parametrize("key,put,shown", SWEEP_CASES, ids=[c[0] for c in SWEEP_CASES])
def test_sweep_config_refuses_non_finite(tmp_path, key, put, shown, raw):
    data = {"name": "t", "search": str(TINY), "grid": [{"hardware": "flops", "targets": [1.0]}],
            "retrain": {"epochs": 1}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    load_sweep(path)  # the file is good as it is
    put(data, BAD_FLOATS[BAD[raw]])
    path.write_text(yaml.safe_dump(data))
    assert raw in path.read_text()  # written as YAML writes it
    with pytest.raises(ValueError) as e:
        load_sweep(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: {shown}: must be a finite number, got {BAD[raw]}"), msg


def test_typed_build_refuses_non_finite_and_huge_numbers_without_the_loader():
    """``build`` checks on its own, for code that builds a config from a dict it made."""
    with pytest.raises(ValueError, match=r"^target: must be a finite number, got nan$"):
        build(SearchConfig, {"target": float("nan")})
    with pytest.raises(ValueError, match=r"^weight.lr: must be a finite number, got inf$"):
        build(SearchConfig, {"weight": {"lr": float("inf")}})
    with pytest.raises(ValueError, match=r"^target: must be a finite number, got an integer beyond"):
        build(SearchConfig, {"target": 10**400})
    with pytest.raises(ValueError, match=r"^seed: must fit in 64 bits"):
        build(SearchConfig, {"seed": 2**64})
    assert build(SearchConfig, {"seed": 2**63 - 1, "target": 10**6}).target == 1e6


def test_upper_bounds_from_field_metadata():
    @dataclass(frozen=True)
    class Job:
        procs: int = field(default=1, metadata={"max": 8})
        scale: float | None = field(default=None, metadata={"max": 2.5, "min": 0.5})

        def __post_init__(self) -> None:
            check_limits(self)

    assert build(Job, {"procs": 8, "scale": 2.5}).procs == 8
    with pytest.raises(ValueError, match=r"^job.procs: must be at most 8, got 9$"):
        build(Job, {"procs": 9}, "job.")
    with pytest.raises(ValueError, match=r"^scale: must be at least 0.5, got 0.1$"):
        Job(scale=0.1)
    assert Job().scale is None


@pytest.mark.parametrize("key,limit", [("workers", 64), ("prefetch", 64)])
def test_data_loader_counts_are_bounded(key, limit):
    assert getattr(DataSpec(**{key: limit}), key) == limit
    with pytest.raises(ValueError, match=rf"^{key}: must be at most {limit}, got {limit + 1}$"):
        DataSpec(**{key: limit + 1})
    with pytest.raises(ValueError, match=rf"^data.{key}: must be at most {limit}"):
        config_from_dict(yaml.safe_load(TINY.read_text()), [f"data.{key}={limit + 1}"])
    with pytest.raises(ValueError, match=rf"^retrain.data.{key}: must be at most {limit}"):
        retrain_config_from_dict({}, [f"data.{key}=100000"])


def test_digits_refuse_a_resolution_that_would_not_fit_in_memory():
    with pytest.raises(ValueError, match=r"^resolution: the embedded digits at 1024 px would take 21.1 GiB"):
        load_digits_tensors(1024)


# ---- the CLI: exit 2, one line, nothing created ------------------------------------------------------------------
def _nas(*args: str) -> subprocess.CompletedProcess:
    """``nas`` of this checkout, in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                             "OMP_NUM_THREADS": "1"})


def test_cli_search_refuses_a_nan_target_before_creating_its_output(tmp_path):
    out = tmp_path / "X"
    proc = _nas("search", "--config", str(ROOT / "configs" / "demo.yaml"), "--set", "target=.nan", "--out", str(out))
    assert proc.returncode == 2
    assert_one_line_error(proc, "target: must be a finite number, got nan")
    assert not out.exists()


def test_cli_retrain_and_sweep_refuse_non_finite_values(tmp_path, capsys):
    out = tmp_path / "X"
    proc = run_nas_inprocess(capsys, "retrain", "--arch", "tiny:k3e3.zero/k5e6.k7e3", "--config",
                             str(ROOT / "configs" / "retrain-digits.yaml"), "--set", "lr=.inf", "--out", str(out))
    assert proc.returncode == 2
    assert_one_line_error(proc, "retrain.lr: must be a finite number, got inf")
    assert not out.exists()
    proc = run_nas_inprocess(capsys, "sweep", "--config", str(ROOT / "configs" / "sweep-tiny.yaml"),
                             "--set", "cpus_per_worker=-.inf")
    assert proc.returncode == 2
    assert_one_line_error(proc, "cpus_per_worker: must be a finite number, got -inf")
