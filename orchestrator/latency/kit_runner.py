"""Time whole networks in a deployment runtime: the runner of a latency kit, and the timing core of
``nas latency build --runtime R``.

This file imports only the standard library, numpy and the runtime it is asked for, never torch or the rest of
this package: ``nas latency kit`` copies it into every kit as ``run_kit.py``, to run on any machine with Python
and the runtime (a phone under Termux, an edge board, a server)::

    python run_kit.py --runtime onnxruntime            # or openvino, litert, tensorrt; writes results.csv

Networks are timed round-robin in groups: every round runs each network of the group once, in a fresh shuffled
order, so no network always follows the same one and a slow moment of the host spreads over all of them. A
network's latency is the minimum over the rounds (on a shared host a neighbour only ever adds time). The rounds
are split into two halves (even and odd); the runner writes each half's minimum as its own row, so the results
repeat every file once and the importer reads the measurement's noise floor from them. Rounds go on, in steps of
5 from ``--min-rounds``, until the halves agree to ``--target-floor`` (median over the group) or
``--max-rounds``.

With one thread the default clock is the process's CPU time, which ignores time a busy host takes away (ONNX
Runtime and LiteRT run on the calling thread; OpenVINO on its own, which the process clock counts too). With
more threads, or on an accelerator, it is the wall clock.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np

__all__ = ["RUNTIMES", "FORMATS", "KIT_FORMATS", "DEFAULT_CALIBRATION", "DEFAULT_VALIDATION", "load_network",
           "runtime_version", "time_networks", "write_results", "main"]

RUNTIMES = ("onnxruntime", "openvino", "litert", "tensorrt")
# The file format each runtime reads (``tensorrt`` here is ONNX Runtime's TensorRT execution provider).
FORMATS = {"onnxruntime": "onnx", "openvino": "onnx", "tensorrt": "onnx", "litert": "tflite"}
KIT_FORMATS = ("onnx", "tflite")
# A kit's default size, chosen by measurement (README, "Latency in deployment runtimes"): on this project's CPU the
# held-out figures stopped improving by 20 to 40 calibration networks in ONNX Runtime, OpenVINO and LiteRT; 50
# leaves a margin for a noisier device. The user pays for every network measured on the device.
DEFAULT_CALIBRATION, DEFAULT_VALIDATION = 50, 30
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
RESULT_COLUMNS = ("file", "ms", "half", "rounds", "runtime", "runtime_version", "provider", "threads", "clock",
                  "device")


def runtime_version(runtime: str) -> str:
    """The installed version of ``runtime``'s Python package (ValueError when it is not installed)."""
    module = {"onnxruntime": "onnxruntime", "tensorrt": "onnxruntime", "openvino": "openvino",
              "litert": "ai_edge_litert"}.get(runtime)
    if module is None:
        raise ValueError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    try:
        mod = __import__(module)
    except ImportError:
        package = {"ai_edge_litert": "ai-edge-litert"}.get(module, module)
        raise ValueError(f"runtime {runtime!r} is not installed here (pip install {package})") from None
    if module == "ai_edge_litert":
        return version("ai-edge-litert")
    return str(mod.__version__)


def default_provider(runtime: str) -> str | None:
    """The execution provider (ONNX Runtime) or device (OpenVINO) a runtime uses when none is named."""
    return {"onnxruntime": "CPUExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
            "openvino": "CPU"}.get(runtime)


def _input(shape: Sequence, dtype=np.float32) -> np.ndarray:
    # a dynamic batch axis (None, a name, -1) runs at batch 1; LiteRT gives its shape as numpy integers
    dims = [int(d) if isinstance(d, (int, np.integer)) and d > 0 else 1 for d in shape]
    return np.random.default_rng(0).standard_normal(dims).astype(dtype)


def load_network(path: str | Path, runtime: str, threads: int | None = 1,
                 provider: str | None = None) -> Callable[[], object]:
    """A callable that runs the network in ``path`` once on a fixed random input, in ``runtime``."""
    path = str(path)
    provider = provider or default_provider(runtime)
    if runtime in ("onnxruntime", "tensorrt"):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # BN folded, activations fused
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads would count as work
        if provider not in ort.get_available_providers():
            raise ValueError(f"ONNX Runtime here has no {provider} (available: "
                             f"{', '.join(ort.get_available_providers())})")
        sess = ort.InferenceSession(path, so, providers=[provider])
        inp = sess.get_inputs()[0]
        feed = {inp.name: _input(inp.shape)}
        return lambda: sess.run(None, feed)
    if runtime == "openvino":
        import openvino as ov

        core = ov.Core()
        model = core.read_model(path)
        shape = [d.get_length() if d.is_static else 1 for d in model.inputs[0].get_partial_shape()]
        model.reshape(shape)
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if provider == "CPU":
            config["INFERENCE_PRECISION_HINT"] = "f32"
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
        compiled = core.compile_model(model, provider, config)
        request = compiled.create_infer_request()
        x = _input(shape)
        return lambda: request.infer({0: x})
    if runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=path, num_threads=threads or None)  # XNNPACK, as on Android
        interp.allocate_tensors()
        detail = interp.get_input_details()[0]
        interp.set_tensor(detail["index"], _input(detail["shape"], detail["dtype"]))
        return interp.invoke
    raise ValueError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")


def _halves_gap(samples: np.ndarray) -> np.ndarray:
    even, odd = samples[0::2].min(axis=0), samples[1::2].min(axis=0)
    return np.abs(even / odd - 1.0)


def time_networks(paths: Sequence[str | Path], runtime: str, threads: int | None = 1, provider: str | None = None,
                  clock: str | None = None, min_rounds: int = 10, max_rounds: int = 40, target_floor: float = 0.01,
                  group_size: int = 30, warmup: int = 3, seed: int = 0,
                  progress: Callable[[int], None] | None = None) -> dict[str, dict]:
    """Time each network file round-robin in groups; returns, per path as given, its latency (the minimum over
    the rounds, ms), the two halves' minima and the number of rounds."""
    if not 2 <= min_rounds <= max_rounds:
        raise ValueError(f"need 2 <= min_rounds <= max_rounds, got {min_rounds} and {max_rounds}")
    clock = clock or ("cpu" if threads == 1 and runtime != "tensorrt" else "wall")
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r} (known: {', '.join(CLOCKS)})")
    tick = CLOCKS[clock]
    paths = [str(p) for p in paths]
    out: dict[str, dict] = {}
    rng = random.Random(seed)
    for start in range(0, len(paths), group_size):
        group = paths[start:start + group_size]
        runs = [load_network(p, runtime, threads, provider) for p in group]
        for run in runs:
            for _ in range(warmup):
                run()
        samples = np.empty((max_rounds, len(group)))
        order = list(range(len(group)))
        rounds = 0
        while rounds < max_rounds:
            rng.shuffle(order)
            for i in order:
                t0 = tick()
                runs[i]()
                samples[rounds, i] = (tick() - t0) * 1e3
            rounds += 1
            if rounds >= min_rounds and (rounds - min_rounds) % 5 == 0:
                if float(np.median(_halves_gap(samples[:rounds]))) <= target_floor:
                    break
        s = samples[:rounds]
        for i, p in enumerate(group):
            out[p] = {"ms": float(s[:, i].min()), "halves": (float(s[0::2, i].min()), float(s[1::2, i].min())),
                      "rounds": rounds}
        del runs
        if progress:
            progress(len(group))
    return out


def write_results(path: str | Path, timings: dict[str, dict], runtime: str, threads: int | None,
                  provider: str | None, clock: str, device: str) -> None:
    """The results CSV: two rows per file (the minimum of the even rounds, then of the odd rounds)."""
    version = runtime_version(runtime)
    tmp = Path(f"{path}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(RESULT_COLUMNS)
        for name, t in timings.items():
            for half, ms in zip(("even", "odd"), t["halves"]):
                w.writerow([Path(name).name, f"{ms:.6f}", half, t["rounds"], runtime, version,
                            provider or default_provider(runtime) or "", threads or "", clock, device])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _device_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("model name", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() or "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Time every network of a latency kit in one runtime; write results.csv.")
    p.add_argument("--kit", default=str(Path(__file__).resolve().parent), help="Kit folder [default: this file's].")
    p.add_argument("--runtime", required=True, choices=RUNTIMES)
    p.add_argument("--provider", default=None,
                   help="ONNX Runtime execution provider or OpenVINO device [default: the runtime's CPU one].")
    p.add_argument("--threads", type=int, default=1, help="Threads per inference [default: 1].")
    p.add_argument("--clock", choices=tuple(CLOCKS), default=None,
                   help="cpu (process CPU time) or wall [default: cpu with 1 thread, else wall].")
    p.add_argument("--min-rounds", type=int, default=10)
    p.add_argument("--max-rounds", type=int, default=40)
    p.add_argument("--group-size", type=int, default=30, help="Networks loaded and timed together.")
    p.add_argument("--out", default=None, help="Results CSV [default: KIT/results.csv].")
    args = p.parse_args(argv)
    kit = Path(args.kit)
    try:
        manifest = json.loads((kit / "manifest.json").read_text(encoding="utf-8"))
        files = [n["file"] for n in manifest["networks"]]
        fmt = manifest["format"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: {kit} is not a latency kit (manifest.json: {e})", file=sys.stderr)
        return 2
    if FORMATS[args.runtime] != fmt:
        print(f"error: runtime {args.runtime} reads {FORMATS[args.runtime]} files, but this kit holds {fmt} files",
              file=sys.stderr)
        return 2
    if args.threads < 1:
        print(f"error: --threads must be at least 1, got {args.threads}", file=sys.stderr)
        return 2
    clock = args.clock or ("cpu" if args.threads == 1 and args.runtime != "tensorrt" else "wall")
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        print(f"{done[0]}/{len(files)} networks timed", file=sys.stderr, flush=True)

    try:
        runtime_version(args.runtime)
        timings = time_networks([kit / f for f in files], args.runtime, args.threads, args.provider, clock,
                                args.min_rounds, args.max_rounds, group_size=args.group_size, progress=progress)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else kit / "results.csv"
    write_results(out, timings, args.runtime, args.threads, args.provider, clock, _device_name())
    print(f"{out}: {len(files)} networks, {args.runtime} {runtime_version(args.runtime)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
