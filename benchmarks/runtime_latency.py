"""Benchmark: latency tables in each deployment runtime available here, built on this node and fitted from a kit.

For each runtime (torch; onnxruntime; openvino and litert where installed: litert needs the TFLite converter,
``pip install 'orchestrator[tflite]'``), on ``proxyless-imagenet`` at 224 px, batch 1, one thread:

- **build**: the table ``nas latency build --runtime R --local`` makes (torch: entries timed part by part and
  calibrated; a deployment runtime: whole networks exported and timed in it, entries fitted);
- **kit**: ``nas latency kit`` networks measured by the kit's own runner (``run_kit.py``, a subprocess) and
  imported as ``nas latency import --kit`` does (torch has no runner: its kit row fits the same networks' fastest
  whole passes in torch, the same fit as a kit import);
- both scored on the same 30 held-out whole networks run by that runtime (a stream neither drew from), with the
  held-out measurement's noise floor (its two halves of rounds), build time and the whole-network measurements
  each needed. Also: how a torch table predicts each other runtime, and kit accuracy against its size.

Prints the figures and writes ``benchmarks/out/runtime_latency.json``.

    .venv/bin/python -m benchmarks.runtime_latency [--space proxyless-imagenet --kit-networks 50 --samples 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from orchestrator.latency import calibrate, kit_runner
from orchestrator.latency.calibrate import CalibrationConfig
from orchestrator.latency.fit import fit_whole_networks, score_networks
from orchestrator.latency.hardware import default_profile
from orchestrator.latency.kit import import_kit, read_results, write_kit
from orchestrator.latency.measure import default_config
from orchestrator.latency.runner import build_table, measure_group_chunk, measure_runtime_chunk
from orchestrator.latency.table import LatencyTable, Provenance
from orchestrator.spaces import get_space

OUT = Path(__file__).resolve().parent / "out"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="proxyless-imagenet")
    ap.add_argument("--runtimes", default="torch,onnxruntime,openvino,litert")
    ap.add_argument("--build-networks", type=int, default=60, help="Calibration networks of each build.")
    ap.add_argument("--build-validate", type=int, default=30, help="Held-out networks of each build's own record.")
    ap.add_argument("--kit-networks", type=int, default=50, help="Calibration networks of each kit.")
    ap.add_argument("--kit-validate", type=int, default=30, help="Held-out networks inside each kit.")
    ap.add_argument("--samples", type=int, default=30, help="Held-out networks every table is scored on.")
    ap.add_argument("--sizes", default="10,20,30,40,50", help="Kit sizes (calibration networks) to score.")
    return ap.parse_args()


def available(runtime: str) -> str | None:
    """Why ``runtime`` cannot run here, or None."""
    if runtime == "torch":
        return None
    try:
        kit_runner.runtime_version(runtime)
    except ValueError as e:
        return str(e)
    if kit_runner.FORMATS[runtime] == "tflite":
        try:
            import litert_torch  # noqa: F401
        except ImportError:
            return "no TFLite converter here (pip install 'orchestrator[tflite]')"
    return None


def held_out(space, runtime: str, archs: list[str]) -> dict:
    """The held-out networks timed by ``runtime``: latency and two halves each (whole networks)."""
    cfg = default_config("cpu", runtime=runtime)
    if runtime == "torch":
        g = measure_group_chunk(space.name, archs, cfg, seed=7).group
        by = {t.arch: t for t in g.networks}
        return {"ms": [by[a].latency_ms for a in archs], "halves": [by[a].halves_ms for a in archs],
                "whole_pass_ms": [by[a].whole_min_ms for a in archs], "reference_ms": g.reference.latency_ms}
    r = measure_runtime_chunk(space.name, archs, cfg, seed=7)
    return {"ms": [r.whole[a]["ms"] for a in archs], "halves": [r.whole[a]["halves"] for a in archs],
            "reference_ms": r.whole["reference"]["ms"]}


def scored(table_or_fit, space, archs, measured) -> dict:
    model, plain = table_or_fit
    s = score_networks(model, plain, archs, measured["ms"], measured["halves"])
    return {k: s[k] for k in ("within_10pct", "spearman", "mape", "mean_error", "noise_floor", "samples")}


def kit_fits(space, cal_archs, cal_ms, sizes, archs, measured) -> dict:
    """Fits from the first n calibration networks of the kit (evenly thinned), scored on the held-out set."""
    out = {}
    for n in sizes:
        idx = np.linspace(0, len(cal_archs) - 1, n).round().astype(int)
        fit = fit_whole_networks(space, [cal_archs[i] for i in idx], [cal_ms[i] for i in idx])
        t = LatencyTable(_provenance_stub(space), fit.entries)
        out[n] = scored((t.to_model(space), t.to_model(space, plain=True)), space, archs, measured)
    return out


def _provenance_stub(space):
    return Provenance(hardware="kit-size-check", hardware_kind="device", space=space.name,
                      space_fingerprint=space.fingerprint(), resolution=space.resolution, batch_size=1,
                      dtype="float32", threads=1, device="cpu", device_name="", torch_version=None, cuda_version=None,
                      created="", body_fingerprint=space.body_fingerprint(), head_classes=space.num_classes)


def line(name: str, s: dict) -> str:
    nf = s["noise_floor"]
    return (f"  {name:<28} within ±10% {s['within_10pct']:>4.0%}  Spearman {s['spearman']:.3f}  MAPE {s['mape']:5.1%}"
            f"  mean error {s['mean_error']:+.1%}" + (f"  (noise floor {nf['median_gap']:.1%})" if nf else ""))


def main() -> None:
    args = parse_args()
    space = get_space(args.space)
    profile = default_profile("cpu")
    sizes = [int(n) for n in args.sizes.split(",") if int(n) <= args.kit_networks]
    report: dict = {"args": vars(args), "space": space.name, "machine": profile.name, "cores": os.cpu_count(),
                    "runtimes": {},
                    "loadavg_start": os.getloadavg()[0]}
    work = Path(tempfile.mkdtemp(prefix="runtime-latency-"))
    torch_tables: dict[str, LatencyTable] = {}
    try:
        for runtime in args.runtimes.split(","):
            why = available(runtime)
            if why:
                print(f"{runtime}: not run: {why}", flush=True)
                report["runtimes"][runtime] = {"not_run": why}
                continue
            print(f"=== {runtime}", flush=True)
            r: dict = {"version": None if runtime == "torch" else kit_runner.runtime_version(runtime)}
            t0 = time.time()
            built = build_table(space, profile, default_config("cpu", runtime=runtime), use_ray=False,
                                calibration=CalibrationConfig(networks=args.build_networks,
                                                              validate=args.build_validate))
            r["build_seconds"] = time.time() - t0
            cal = built.provenance.calibration
            r["build_measurements"] = cal.get("measurements") or cal["networks"] + args.build_validate
            if runtime == "torch":
                torch_tables["torch"] = built
            # the kit: written, measured by its runner (torch: fitted from whole passes of the same networks)
            t0 = time.time()
            kit_dir = work / f"kit-{runtime}"
            fmt = "onnx" if runtime == "torch" else kit_runner.FORMATS[runtime]
            manifest = write_kit(space, fmt, kit_dir, args.kit_networks, args.kit_validate)
            r["kit_write_seconds"] = time.time() - t0
            cal_archs = [n["arch"] for n in manifest["networks"] if n["set"] == "calibration"]
            t0 = time.time()
            if runtime == "torch":
                g = measure_group_chunk(space.name, cal_archs, default_config("cpu"), seed=3).group
                by = {t.arch: t.whole_min_ms for t in g.networks}
                cal_ms = [by[a] for a in cal_archs]
                fit = fit_whole_networks(space, cal_archs, cal_ms)
                kit_table = LatencyTable(_provenance_stub(space), fit.entries)
                r["kit_measurements"] = len(cal_archs)
            else:
                proc = subprocess.run([sys.executable, str(kit_dir / "run_kit.py"), "--runtime", runtime],
                                      capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(f"{runtime} runner failed: {proc.stderr.strip().splitlines()[-1]}")
                kit_table = import_kit(kit_dir, str(kit_dir / "results.csv"), f"bench-{runtime}", runtime)
                kit_cal = kit_table.provenance.calibration
                cal_ms = None
                r["kit_measurements"] = kit_cal["measurements"] // 2  # the runner writes each file twice
                r["kit_own_validation"] = {k: kit_table.provenance.validation[k]
                                           for k in ("within_10pct", "spearman", "mape", "samples")}
            r["kit_measure_seconds"] = time.time() - t0
            # the held-out set: neither the build's nor the kit's networks
            exclude = [*cal["archs"], *(n["arch"] for n in manifest["networks"])]
            archs = [a.encode() for a in calibrate.spread_archs(space, args.samples, 2, calibrate.VALIDATION,
                                                                exclude=exclude)]
            measured = held_out(space, runtime, archs)
            r["held_out_range_ms"] = [min(measured["ms"]), max(measured["ms"])]
            r["build"] = scored((built.to_model(space), built.to_model(space, plain=True)), space, archs, measured)
            r["kit"] = scored((kit_table.to_model(space), kit_table.to_model(space, plain=True)), space, archs,
                              measured)
            if runtime != "torch":  # the runner's figures, as the import read them
                results = read_results(manifest, (kit_dir / "results.csv").read_text(), "results.csv").ms
                file_of = {n["arch"]: n["file"] for n in manifest["networks"]}
                cal_ms = [min(results[file_of[a]]) for a in cal_archs]
            r["kit_sizes"] = kit_fits(space, cal_archs, cal_ms, sizes, archs, measured)
            if "torch" in torch_tables and runtime != "torch":
                t = torch_tables["torch"]
                r["torch_table"] = scored((t.to_model(space), t.to_model(space, plain=True)), space, archs,
                                          measured)
            print(f"  build {r['build_seconds']:.0f} s, {r['build_measurements']} whole networks; kit "
                  f"{r['kit_measurements']} networks, written in {r['kit_write_seconds']:.0f} s, measured in "
                  f"{r['kit_measure_seconds']:.0f} s; held-out {r['held_out_range_ms'][0]:.1f}-"
                  f"{r['held_out_range_ms'][1]:.1f} ms")
            print(line("build table", r["build"]))
            print(line("kit table", r["kit"]))
            if "torch_table" in r:
                print(line("torch table, this runtime", r["torch_table"]))
            for n, s in r["kit_sizes"].items():
                print(line(f"kit of {n} calibration nets", s))
            report["runtimes"][runtime] = r
            shutil.rmtree(kit_dir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["loadavg_end"] = os.getloadavg()[0]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "runtime_latency.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"wrote {OUT / 'runtime_latency.json'}")


if __name__ == "__main__":
    main()
