"""Latency kits: whole networks of a space, exported for a device that is not a cluster node, and the table fitted
from what that device measured.

``write_kit`` exports calibration and held-out validation networks, drawn across the space's latency range as a
table build draws them, in the format the device's runtime reads (ONNX, or TFLite for LiteRT), and writes
``manifest.json``, a results template and the runner (``run_kit.py``, numpy and the runtime only). Every file
name carries the kit's fingerprint, so results of another kit cannot be mistaken for this one's.

``import_kit`` reads a results CSV (columns ``file,ms``; extra columns and repeated rows allowed: the runner
writes two rows per file, one per half of its rounds, and other tools' figures drop in as they are), refuses it
with one line if it misses kit files, names others or holds a value that is not a positive number, fits the
table on the calibration networks (``fit.fit_whole_networks``) and validates it on the held-out ones.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

import torch

from orchestrator import storage
from orchestrator.arch import Arch
from orchestrator.blocks import init_weights
from orchestrator.export import export_onnx
from orchestrator.latency import calibrate, kit_runner
from orchestrator.latency.fit import DEFAULT_RIDGE, fit_whole_networks, score_networks
from orchestrator.latency.hardware import device_profile
from orchestrator.latency.table import LatencyTable, Provenance, preview_keys, utc_now
from orchestrator.network import build_net
from orchestrator.spaces import SearchSpace, get_space

__all__ = ["KitFormat", "KIT_FORMATS", "write_kit", "read_results", "import_kit", "export_network",
           "DEFAULT_CALIBRATION", "DEFAULT_VALIDATION", "GOAL_WITHIN", "GOAL_SPEARMAN"]

log = logging.getLogger(__name__)

KitFormat = Literal["onnx", "tflite"]
KIT_FORMATS = kit_runner.KIT_FORMATS
KIT_VERSION = 1
DEFAULT_CALIBRATION, DEFAULT_VALIDATION = kit_runner.DEFAULT_CALIBRATION, kit_runner.DEFAULT_VALIDATION
MAX_CALIBRATION, MAX_NETWORKS = 100, 130  # the user pays for every measurement on the device
GOAL_WITHIN, GOAL_SPEARMAN = 0.95, 0.95
RUNNER_NAME = "run_kit.py"


def kit_archs(space: SearchSpace, networks: int, validate: int, seed: int = 0,
              validation_seed: int = 1) -> tuple[list[Arch], list[Arch]]:
    """Calibration and held-out networks spread across the latency range, from their own streams (as a build)."""
    cal = calibrate.spread_archs(space, networks, seed, calibrate.CALIBRATION)
    val = calibrate.spread_archs(space, validate, validation_seed, calibrate.VALIDATION,
                                 exclude=[a.encode() for a in cal])
    return cal, val


def export_network(arch: Arch, path: Path, fmt: str) -> list[int]:
    """Export the standalone network of ``arch`` (random weights, eval mode) to ``path``; returns its input shape."""
    seed = int(hashlib.sha256(arch.encode().encode()).hexdigest()[:8], 16)
    with torch.random.fork_rng(devices=[]):  # the same weights for the same arch, the caller's RNG untouched
        torch.manual_seed(seed)
        net = build_net(arch)
        # The training init zeroes the last BN gamma of residual branches: such a block then adds exactly 0, and
        # a converter folds it away (TFLite did, silently). Time networks in which every block computes.
        init_weights(net, zero_last_gamma=False)
    net.eval()
    space = net.space
    shape = [1, space.in_channels, space.resolution, space.resolution]
    if fmt == "onnx":
        export_onnx(net, path)
    elif fmt == "tflite":
        if importlib.util.find_spec("litert_torch") is None:
            raise ValueError("the tflite format needs the LiteRT converter: pip install 'orchestrator[tflite]'")
        with _converter_output() as log_file:  # hundreds of lines from its import and run (Python and C++)
            import litert_torch

            try:
                litert_torch.convert(net, (torch.zeros(shape),)).export(str(path))
            except Exception as e:  # the converter's own exception types; its log names the cause
                raise ValueError(f"TFLite conversion of {arch.encode()} failed: {e} (converter log: "
                                 f"{log_file})") from None
    else:
        raise ValueError(f"unknown kit format {fmt!r} (known: {', '.join(KIT_FORMATS)})")
    return shape


@contextlib.contextmanager
def _converter_output() -> Iterator[str]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so C++ logging too) to a log file while
    a converter runs; the file is removed when the conversion succeeds."""
    fd, name = tempfile.mkstemp(prefix="nas-tflite-", suffix=".log")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    ok = False
    try:
        yield name
        ok = True
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)
        if ok:
            os.unlink(name)


def fingerprint(space: SearchSpace, fmt: str, cal: list[Arch], val: list[Arch]) -> str:
    blob = json.dumps({"space": space.fingerprint(), "format": fmt, "calibration": [a.encode() for a in cal],
                       "validation": [a.encode() for a in val]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _check_sizes(networks: int, validate: int) -> None:
    if not 3 <= networks <= MAX_CALIBRATION:
        raise ValueError(f"--networks must be between 3 and {MAX_CALIBRATION} calibration networks, got {networks}")
    if validate < 3:
        raise ValueError(f"--validate must be at least 3 held-out networks, got {validate}")
    if networks + validate > MAX_NETWORKS:
        raise ValueError(f"a kit holds at most {MAX_NETWORKS} networks, got {networks} + {validate}")


def write_kit(space: SearchSpace, fmt: str, out: str | Path, networks: int = DEFAULT_CALIBRATION,
              validate: int = DEFAULT_VALIDATION, seed: int = 0, validation_seed: int = 1,
              progress: Callable[[int], None] | None = None) -> dict:
    """Write a kit into the new folder ``out`` (built beside it and renamed, so a failure leaves nothing);
    returns the manifest."""
    if fmt not in KIT_FORMATS:
        raise ValueError(f"unknown kit format {fmt!r} (known: {', '.join(KIT_FORMATS)})")
    _check_sizes(networks, validate)
    if seed == validation_seed:
        raise ValueError(f"the validation seed must differ from the calibration seed ({seed})")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder: a kit is written into a new one")
    cal, val = kit_archs(space, networks, validate, seed, validation_seed)
    fp = fingerprint(space, fmt, cal, val)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        entries = []
        for role, archs in (("calibration", cal), ("validation", val)):
            for i, arch in enumerate(archs):
                name = f"{fp}-{role[:3]}-{i:03d}.{fmt}"
                shape = export_network(arch, tmp / name, fmt)
                entries.append({"file": name, "arch": arch.encode(), "input_shape": shape, "set": role})
                if progress:
                    progress(1)
        manifest = {
            "kit_version": KIT_VERSION, "fingerprint": fp, "space": space.name,
            "space_fingerprint": space.fingerprint(), "body_fingerprint": space.body_fingerprint(), "format": fmt,
            "input": {"dtype": "float32", "layout": "NCHW", "batch": 1}, "seed": seed,
            "validation_seed": validation_seed, "created": utc_now(), "versions": _versions(),
            "networks": entries,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        template = "file,ms\n" + "".join(f"{e['file']},\n" for e in entries)
        (tmp / "results-template.csv").write_text(template, encoding="utf-8")
        shutil.copyfile(kit_runner.__file__, tmp / RUNNER_NAME)
        (tmp / "README.txt").write_text(_readme(manifest), encoding="utf-8")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _versions() -> dict:
    out = {"torch": torch.__version__}
    for pkg in ("orchestrator", "onnx", "litert-torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _readme(m: dict) -> str:
    runtimes = [r for r, f in kit_runner.FORMATS.items() if f == m["format"]]
    return (f"Latency kit {m['fingerprint']}: {len(m['networks'])} networks of space {m['space']} ({m['format']}).\n"
            f"Measure on the device with Python, numpy and the runtime:\n"
            f"    python {RUNNER_NAME} --runtime {runtimes[0]}      # runtimes for this format: {', '.join(runtimes)}\n"
            f"or fill results-template.csv (columns file,ms) from another tool, then on your workstation:\n"
            f"    nas latency import --kit KIT --results results.csv --hardware NAME --out table.parquet\n")


def load_manifest(kit: str | Path) -> dict:
    path = Path(kit) / "manifest.json"
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(m, dict) or m.get("kit_version") != KIT_VERSION:
            raise ValueError(f"kit_version {m.get('kit_version') if isinstance(m, dict) else None!r}")
        m["networks"], m["fingerprint"], m["format"], m["space"]  # noqa: B018  (must exist)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{kit} is not a latency kit ({path.name}: {e})") from None
    return m


@dataclass(frozen=True)
class KitResults:
    """A kit's results: every kit file's repeated measurements, and what the columns say of how they were made."""

    ms: dict[str, list[float]]
    meta: dict[str, str]


def _positive_ms(text: str, where: str) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: ms {text!r} is not a number") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{where}: ms {text!r} is not a positive number")
    return v


def read_results(manifest: dict, text: str, where: str) -> KitResults:
    """Parse a results CSV against a kit's manifest; every refusal is one line that names the problem."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise ValueError(f"{where} is empty: expected a CSV with columns file,ms")
    header = [h.strip().lower() for h in rows[0]]
    if "file" not in header or "ms" not in header:
        raise ValueError(f"{where} has no 'file' and 'ms' columns (header: {','.join(rows[0])[:80]})")
    col = {h: i for i, h in enumerate(header)}
    known = {n["file"] for n in manifest["networks"]}
    ms: dict[str, list[float]] = {}
    meta: dict[str, set[str]] = {}
    strangers: list[str] = []
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise ValueError(f"{where} line {n}: {len(row)} columns, the header has {len(header)}")
        name = Path(row[col["file"]].strip()).name  # a tool may print the path it ran the file from
        if name not in known:
            strangers.append(name)
            continue
        ms.setdefault(name, []).append(_positive_ms(row[col["ms"]].strip(), f"{where} line {n} ({name})"))
        for key in ("runtime", "runtime_version", "provider", "threads", "clock", "device"):
            if key in col and row[col[key]].strip():
                meta.setdefault(key, set()).add(row[col[key]].strip())
    if strangers:
        raise ValueError(f"{where} names {len(strangers)} files that are not in kit {manifest['fingerprint']}'s "
                         f"manifest: {preview_keys(sorted(set(strangers)), 3)} (results of another kit?)")
    missing = sorted(known - ms.keys())
    if missing:
        raise ValueError(f"{where} lacks {len(missing)} of the kit's {len(known)} files: {preview_keys(missing, 3)}")
    mixed = [k for k, v in meta.items() if len(v) > 1]
    if mixed:
        raise ValueError(f"{where} mixes several values of {mixed[0]!r}: {', '.join(sorted(meta[mixed[0]]))}")
    return KitResults(ms, {k: next(iter(v)) for k, v in meta.items()})


def import_kit(kit: str | Path, results_uri: str, hardware: str, runtime: str | None = None,
               ridge: float = DEFAULT_RIDGE, endpoint: str | None = None) -> LatencyTable:
    """The table of device ``hardware`` fitted from a kit's results (nothing is written here; see ``save``)."""
    profile = device_profile(hardware)
    manifest = load_manifest(kit)
    space = get_space(manifest["space"])
    if space.fingerprint() != manifest.get("space_fingerprint"):
        raise ValueError(f"kit {manifest['fingerprint']} was made for another version of space {space.name!r}")
    try:
        text = storage.read_uri(results_uri, endpoint).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{results_uri} is not a text CSV file") from None
    res = read_results(manifest, text, results_uri)
    named = res.meta.get("runtime")
    if runtime and named and runtime != named:
        raise ValueError(f"--runtime {runtime} but {results_uri} was measured in {named}")
    runtime = runtime or named
    readers = [r for r, f in kit_runner.FORMATS.items() if f == manifest["format"]]
    if not runtime and len(readers) == 1:  # one runtime reads this format (TFLite: LiteRT): no other could have
        runtime = readers[0]
    if not runtime:
        raise ValueError(f"{results_uri} does not say which runtime measured it: give --runtime "
                         f"({', '.join(kit_runner.RUNTIMES)})")
    if runtime not in kit_runner.RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r} (known: {', '.join(kit_runner.RUNTIMES)})")
    if kit_runner.FORMATS[runtime] != manifest["format"]:
        raise ValueError(f"runtime {runtime} reads {kit_runner.FORMATS[runtime]} files, but kit "
                         f"{manifest['fingerprint']} holds {manifest['format']} files")
    by_set: dict[str, list[tuple[str, list[float]]]] = {}
    for n in manifest["networks"]:
        by_set.setdefault(n["set"], []).append((n["arch"], res.ms[n["file"]]))
    cal, val = by_set.get("calibration", []), by_set.get("validation", [])
    fit = fit_whole_networks(space, [a for a, _ in cal], [min(v) for _, v in cal], ridge)
    repeated = all(len(v) >= 2 for _, v in val)
    threads = res.meta.get("threads")
    prov = Provenance(
        hardware=profile.name, hardware_kind=profile.kind, space=space.name, space_fingerprint=space.fingerprint(),
        resolution=space.resolution, batch_size=1, dtype="float32", threads=int(threads) if threads else None,
        device="device", device_name=res.meta.get("device", profile.name), torch_version=None, cuda_version=None,
        created=utc_now(), statistic="min", clock=res.meta.get("clock", "unknown"), method="whole-network fit",
        source=f"kit:{manifest['fingerprint']}", body_fingerprint=space.body_fingerprint(),
        head_classes=space.num_classes, head_ms_per_class=None,
        calibration={**fit.info, "kit": manifest["fingerprint"], "format": manifest["format"],
                     "seed": manifest.get("seed"), "stream": f"{calibrate.CALIBRATION}:{manifest.get('seed')}",
                     "archs": [a for a, _ in cal], "results": results_uri,
                     "measurements": sum(len(v) for _, v in cal + val)},
        runtime=runtime, runtime_version=res.meta.get("runtime_version"), provider=res.meta.get("provider"),
    )
    table = LatencyTable(prov, fit.entries)
    if len(val) >= 3:
        halves = [_halves(v) for _, v in val] if repeated else None
        record = score_networks(table.to_model(space), table.to_model(space, plain=True), [a for a, _ in val],
                                [min(v) for _, v in val], halves)
        table = table.with_provenance(validation={"created": utc_now(), "seed": manifest.get("validation_seed"),
                                                  "stream": f"{calibrate.VALIDATION}:{manifest.get('validation_seed')}",
                                                  "sampling": "spread", **record})
    return table


def _halves(values: list[float]) -> tuple[float, float]:
    """Two independent estimates of one network from its repeated rows: the minimum of alternate rows."""
    return min(values[0::2]), min(values[1::2])


def below_goal(table: LatencyTable) -> str | None:
    """A warning naming the figures when a fitted table's validation misses the goal (None when it meets it)."""
    v = table.provenance.validation
    if not v:
        return "no held-out networks validated this table"
    misses = [f"within ±10% {v['within_10pct']:.0%} < {GOAL_WITHIN:.0%}"] if v["within_10pct"] < GOAL_WITHIN else []
    if not v["spearman"] >= GOAL_SPEARMAN:  # (NaN when every held-out network measured the same)
        misses.append(f"Spearman {v['spearman']:.3f} < {GOAL_SPEARMAN}")
    if not misses:
        return None
    return (f"the fit misses the goal on {v['samples']} held-out networks ({', '.join(misses)}; MAPE "
            f"{v['mape']:.1%}); the table imports, but check the device's measurements")

