"""Latency in deployment runtimes: kits measured by their own runner (numpy and the runtime only) with ONNX Runtime
and OpenVINO, imported and validated; tables built in a runtime on this node; the refusals of tables, results and
names that would put one device's or runtime's latency under another's label. Real runtimes, nothing mocked."""

from __future__ import annotations

import csv
import json
import random
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnxruntime  # noqa: TID253
import openvino  # noqa: TID253
import pytest

from orchestrator.cli import main
from orchestrator.latency import kit_runner
from orchestrator.latency.kit import export_network, write_kit
from orchestrator.latency.profiles import latency_model
from orchestrator.latency.table import LatencyTable
from orchestrator.spaces import PROXYLESS_IMAGENET, TINY
from orchestrator.sweep.config import hardware_info, sweep_from_dict
from orchestrator.sweep.measure import measure_latency
from tests.conftest import assert_one_line_error, run_nas_inprocess

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = {"onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__}

# The runner runs where only numpy and the runtime exist: torch and this project are made unimportable.
NO_TORCH = """
import runpy, sys
for name in ("torch", "orchestrator", "scipy", "pyarrow", "yaml"):
    sys.modules[name] = None
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
loaded = sorted(m for m in ("torch", "orchestrator") if sys.modules.get(m) is not None)
assert not loaded, loaded
"""


@pytest.fixture(scope="module")
def onnx_kit(tmp_path_factory) -> Path:
    """A small ONNX kit of ``tiny``: 12 calibration and 6 held-out networks."""
    out = tmp_path_factory.mktemp("kit") / "tiny-onnx"
    write_kit(TINY, "onnx", out, networks=12, validate=6)
    return out


def run_kit(kit: Path, runtime: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, str(kit / "run_kit.py"), "--runtime", runtime,
                           "--out", str(out), "--min-rounds", "6", "--max-rounds", "10", *extra],
                          capture_output=True, text=True, timeout=300)


def test_kit_holds_what_a_device_needs(onnx_kit):
    m = json.loads((onnx_kit / "manifest.json").read_text())
    assert m["format"] == "onnx" and m["space"] == "tiny" and m["space_fingerprint"] == TINY.fingerprint()
    sets = [n["set"] for n in m["networks"]]
    assert sets.count("calibration") == 12 and sets.count("validation") == 6
    cal = {n["arch"] for n in m["networks"] if n["set"] == "calibration"}
    assert not cal & {n["arch"] for n in m["networks"] if n["set"] == "validation"}  # held out for real
    for n in m["networks"]:
        assert n["file"].startswith(m["fingerprint"]) and (onnx_kit / n["file"]).is_file()
        assert n["input_shape"] == [1, 3, 16, 16]
    template = list(csv.reader((onnx_kit / "results-template.csv").open()))
    assert template[0] == ["file", "ms"] and {r[0] for r in template[1:]} == {n["file"] for n in m["networks"]}
    assert (onnx_kit / "run_kit.py").is_file() and (onnx_kit / "README.txt").is_file()


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_kit_measured_by_runner_without_torch_imports_and_validates(onnx_kit, runtime, tmp_path, capsys):
    results = tmp_path / "results.csv"
    proc = run_kit(onnx_kit, runtime, results)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(results.open()))
    assert len(rows) == 2 * 18 and {r["runtime"] for r in rows} == {runtime}  # each file twice: two halves
    assert {r["runtime_version"] for r in rows} == {VERSIONS[runtime]}
    uri = str(tmp_path / "t.parquet")
    proc = run_nas_inprocess(capsys, "latency", "import", "--kit", str(onnx_kit), "--results", str(results),
                             "--hardware", f"mybox-{runtime}", "--out", uri)
    assert proc.returncode == 0, proc.stderr
    table = LatencyTable.load(uri)
    p = table.provenance
    assert (p.hardware, p.hardware_kind, p.runtime, p.runtime_version) == (f"mybox-{runtime}", "device", runtime,
                                                                           VERSIONS[runtime])
    assert p.source == f"kit:{json.loads((onnx_kit / 'manifest.json').read_text())['fingerprint']}"
    assert p.calibration["networks"] == 12 and p.calibration["measurements"] == 36
    v = p.validation
    assert v["samples"] == 6 and v["noise_floor"] is not None and 0 <= v["within_10pct"] <= 1
    assert "held-out networks" in proc.stdout
    # the fitted model prices whole networks by its entries, and predict says so for any arch of the space
    arch = v["archs"][0]
    proc = run_nas_inprocess(capsys, "latency", "predict", "--table", uri, arch, "--json")
    out = json.loads(proc.stdout)
    assert out["runtime"] == runtime and out["latency_ms"] == pytest.approx(v["predicted_ms"][0])
    model = latency_model(f"mybox-{runtime}", TINY, uri, runtime)
    assert model.exact(TINY.parse(arch)) == pytest.approx(v["predicted_ms"][0])
    # a sweep's derived net on a kit device: the table's prediction, said to be one, never a node's timing
    lat = measure_latency(arch, f"mybox-{runtime}", uri, runtime=runtime)
    assert (lat.source, lat.method, lat.node) == ("predicted", "table-estimate", {})
    assert lat.value == pytest.approx(v["predicted_ms"][0]) and json.loads(lat.to_json())["latency_source"] == \
        "predicted"
    with pytest.raises(ValueError, match=f"measured in runtime '{runtime}', not 'torch'"):
        measure_latency(arch, f"mybox-{runtime}", uri)


def _results(kit: Path, rows: list[tuple[str, str]], header: str = "file,ms") -> str:
    return header + "\n" + "".join(f"{f},{ms}\n" for f, ms in rows)


def test_plain_two_column_results_import_with_runtime_named(onnx_kit, tmp_path, capsys):
    files = [n["file"] for n in json.loads((onnx_kit / "manifest.json").read_text())["networks"]]
    res = tmp_path / "plain.csv"  # as benchmark_model or onnxruntime_perf_test figures would be typed in
    res.write_text(_results(onnx_kit, [(f, 1.0 + i / 10) for i, f in enumerate(files)]))
    out = tmp_path / "t.parquet"
    proc = run_nas_inprocess(capsys, "latency", "import", "--kit", str(onnx_kit), "--results", str(res),
                             "--hardware", "edge-box", "--out", str(out))
    assert_one_line_error(proc, "does not say which runtime", "--runtime")
    assert not out.exists()
    proc = run_nas_inprocess(capsys, "latency", "import", "--kit", str(onnx_kit), "--results", str(res),
                             "--hardware", "edge-box", "--runtime", "tensorrt", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    p = LatencyTable.load(str(out)).provenance
    assert p.runtime == "tensorrt" and p.validation["noise_floor"] is None  # no file repeated: no noise floor


@pytest.mark.parametrize("case, needle", [
    ("missing", "lacks 1 of the kit's 18 files"),
    ("stranger", "not in kit"),
    ("negative", "is not a positive number"),
    ("zero", "is not a positive number"),
    ("nan", "is not a positive number"),
    ("text", "is not a number"),
    ("no-columns", "no 'file' and 'ms' columns"),
    ("other-runtime", "--runtime openvino but"),
    ("tflite-runtime", "runtime litert reads tflite files"),
    ("reserved-cpu", "is reserved"),
    ("reserved-pixel1", "is reserved"),
])
def test_bad_results_and_names_are_refused_in_one_line_with_nothing_written(onnx_kit, tmp_path, capsys, case,
                                                                            needle):
    files = [n["file"] for n in json.loads((onnx_kit / "manifest.json").read_text())["networks"]]
    rows = [(f, "2.5") for f in files]
    header, hardware, extra = "file,ms", "edge-box", ["--runtime", "onnxruntime"]
    if case == "missing":
        rows = rows[1:]
    elif case == "stranger":
        rows.append(("0123456789ab-cal-000.onnx", "2.0"))
    elif case in ("negative", "zero", "nan", "text"):
        rows[3] = (files[3], {"negative": "-1", "zero": "0", "nan": "nan", "text": "fast"}[case])
    elif case == "no-columns":
        header = "name,latency"
    elif case == "other-runtime":
        header, rows = "file,ms,runtime", [(f, "2.5,onnxruntime") for f in files]
        extra = ["--runtime", "openvino"]
    elif case == "tflite-runtime":
        extra = ["--runtime", "litert"]
    elif case == "reserved-cpu":
        hardware = "cpu-amd-epyc"
    elif case == "reserved-pixel1":
        hardware = "pixel1"
    res = tmp_path / "r.csv"
    res.write_text(_results(onnx_kit, rows, header))
    out = tmp_path / "t.parquet"
    proc = run_nas_inprocess(capsys, "latency", "import", "--kit", str(onnx_kit), "--results", str(res),
                             "--hardware", hardware, *extra, "--out", str(out))
    assert_one_line_error(proc, needle)
    assert not out.exists()


def test_kit_refuses_bad_sizes_and_an_existing_folder(tmp_path, capsys):
    for args, needle in [(["--networks", "101"], "between 3 and 100"),
                         (["--networks", "100", "--validate", "31"], "at most 130 networks"),
                         (["--validate", "2"], "at least 3 held-out")]:
        out = tmp_path / "k"
        proc = run_nas_inprocess(capsys, "latency", "kit", "--space", "tiny", "--format", "onnx", *args,
                                 "--out", str(out))
        assert_one_line_error(proc, needle)
        assert not out.exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    proc = run_nas_inprocess(capsys, "latency", "kit", "--space", "tiny", "--format", "onnx", "--out",
                             str(tmp_path / "full"))
    assert_one_line_error(proc, "not an empty folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no half-written kit beside it


def test_runner_refuses_a_runtime_that_reads_another_format(onnx_kit, tmp_path):
    proc = run_kit(onnx_kit, "litert", tmp_path / "r.csv")
    assert proc.returncode == 2 and "reads tflite files" in proc.stderr and not (tmp_path / "r.csv").exists()


@pytest.fixture(scope="module")
def ort_table(tmp_path_factory) -> str:
    """``nas latency build --runtime onnxruntime --local`` of tiny on this node, under a cpu- profile."""
    uri = str(tmp_path_factory.mktemp("ort") / "cpu-ort.parquet")
    with pytest.raises(SystemExit) as exc:
        main(["latency", "build", "--hardware", "cpu-here", "--space", "tiny", "--runtime", "onnxruntime",
              "--calibrate", "12", "--validate", "6", "--min-rounds", "6", "--max-rounds", "10", "--local",
              "--out", uri])
    assert exc.value.code == 0
    return uri


def test_build_in_a_runtime_records_it_and_validates_whole_networks(ort_table):
    p = LatencyTable.load(ort_table).provenance
    assert (p.hardware, p.hardware_kind, p.runtime, p.runtime_version) == ("cpu-here", "cpu", "onnxruntime",
                                                                           onnxruntime.__version__)
    assert p.provider == "CPUExecutionProvider" and p.threads == 1 and p.source == "measured"
    assert p.method == "whole-network fit" and p.calibration["networks"] == 12
    assert p.validation["samples"] == 6 and p.validation["noise_floor"]["median_gap"] >= 0
    assert p.calibration["reference_ms"] > 0


def test_a_table_is_refused_for_another_runtime_or_hardware(ort_table, tmp_path, capsys):
    with pytest.raises(ValueError, match="measured in runtime 'onnxruntime', not 'torch'"):
        latency_model("cpu-here", TINY, ort_table)
    with pytest.raises(ValueError, match="is for hardware 'cpu-here', not 'cpu-there'"):
        latency_model("cpu-here".replace("here", "there"), TINY, ort_table, "onnxruntime")
    out = tmp_path / "out"
    proc = run_nas_inprocess(capsys, "search", "--config", str(ROOT / "configs" / "tiny.yaml"),
                             "--set", "hardware=cpu-here", "--set", f"latency_table={ort_table}",
                             "--set", "target=1.0", "--set", "arch.regularizer=add#linear", "--out", str(out))
    assert_one_line_error(proc, "runtime 'onnxruntime', not 'torch'")
    assert not out.exists()


def test_search_and_derived_latency_in_a_runtime(ort_table, tmp_path, capsys):
    """A search priced in ONNX Runtime runs and records its runtime; the derived net measured on this node is timed
    in ONNX Runtime (the table's own way), a kit device's only predicted."""
    lo, hi = latency_model("cpu-here", TINY, ort_table, "onnxruntime").bounds()
    out = tmp_path / "s"
    proc = run_nas_inprocess(capsys, "search", "--config", str(ROOT / "configs" / "tiny.yaml"),
                             "--set", "hardware=cpu-here", "--set", "runtime=onnxruntime",
                             "--set", f"latency_table={ort_table}", "--set", f"target={(lo + hi) / 2:.6f}",
                             "--set", "arch.regularizer=add#linear", "--set", "epochs=2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["runtime"] == "onnxruntime" and result["hardware"] == "cpu-here"


def test_official_table_answers_only_to_pixel1(reference_dir, tmp_path, capsys):
    yaml_path = str(reference_dir / "mobile_trim.yaml")
    with pytest.raises(ValueError, match="its hardware is 'pixel1', not 'cuda-nvidia-h100'"):
        latency_model("cuda-nvidia-h100", TINY, yaml_path, "litert")
    out = tmp_path / "t.parquet"
    proc = run_nas_inprocess(capsys, "latency", "import", yaml_path, "--format", "proxyless-yaml", "--hardware",
                             "cuda-nvidia-h100", "--out", str(out))
    assert_one_line_error(proc, "'pixel1'")
    assert not out.exists()
    with pytest.raises(ValueError, match="measured in runtime 'litert', not 'torch'"):
        latency_model("pixel1", PROXYLESS_IMAGENET)
    assert latency_model("pixel1", PROXYLESS_IMAGENET, runtime="litert").provenance["runtime"] == "litert"


def test_exported_networks_compute_in_every_block_and_are_reproducible(tmp_path):
    """A network is exported with non-zero weights everywhere (the training init's zero BN gammas make a residual
    block add exactly 0, and TFLite's converter folded such blocks away), and the same arch gives the same file."""
    import onnx
    from onnx import numpy_helper

    arch = TINY.parse("tiny:k7e6.k5e6/k7e6.k7e6")  # every block has a shortcut but the stride-2 firsts
    export_network(arch, tmp_path / "a.onnx", "onnx")
    export_network(arch, tmp_path / "b.onnx", "onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    model = onnx.load(str(tmp_path / "a.onnx"))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    scales = [weights[n.input[1]] for n in model.graph.node if n.op_type == "BatchNormalization"]
    convs = [weights[n.input[1]] for n in model.graph.node if n.op_type == "Conv"]
    assert scales or convs
    assert all(np.abs(w).max() > 0 for w in scales + convs)


def test_sweep_grid_names_a_runtime_and_a_kit_device(onnx_kit, tmp_path, capsys):
    """A grid entry may put a kit device in its runtime; its range comes from its own table, and a runtime the table
    was not measured in is refused before any compute, as is an unknown runtime."""
    results = tmp_path / "r.csv"
    assert run_kit(onnx_kit, "onnxruntime", results).returncode == 0
    uri = str(tmp_path / "edge.parquet")
    assert run_nas_inprocess(capsys, "latency", "import", "--kit", str(onnx_kit), "--results", str(results),
                             "--hardware", "edge-ort", "--out", uri).returncode == 0
    base = {"name": "s", "search": str(ROOT / "configs" / "tiny.yaml")}
    entry = {"hardware": "edge-ort", "runtime": "onnxruntime", "table": uri, "relative": [0.5]}
    info = hardware_info(sweep_from_dict({**base, "grid": [entry, {"hardware": "flops", "targets": [0.1]}]}))
    assert info["edge-ort"].runtime == "onnxruntime" and info["flops"].runtime == "torch"
    lo, hi = info["edge-ort"].bounds
    assert 0 < lo < hi and (lo, hi) == latency_model("edge-ort", TINY, uri, "onnxruntime").bounds()
    with pytest.raises(ValueError, match="measured in runtime 'onnxruntime', not 'openvino'"):
        hardware_info(sweep_from_dict({**base, "grid": [{**entry, "runtime": "openvino"}]}))
    with pytest.raises(ValueError, match=r"grid\[0\].runtime: unknown value 'tvm'"):
        sweep_from_dict({**base, "grid": [{**entry, "runtime": "tvm"}]})


TFLITE_KIT = ROOT / "tests" / "data" / "kit-tiny-tflite"  # written by `nas latency kit --space tiny --format tflite
# --networks 12 --validate 6` with litert-torch 0.10.0 (the converter is not in the test environment: README), its
# run_kit.py left out: the test runs the runner of this checkout


def test_tflite_kit_measured_by_litert_without_torch_imports_and_validates(tmp_path, capsys):
    """LiteRT (XNNPACK, as on Android) runs a TFLite kit through the kit's runner alone; the import fits and
    validates it. The files hold every block of their networks (none folded away)."""
    from ai_edge_litert.interpreter import Interpreter

    manifest = json.loads((TFLITE_KIT / "manifest.json").read_text())
    for n in manifest["networks"]:
        it = Interpreter(model_path=str(TFLITE_KIT / n["file"]))
        ops = [o["op_name"] for o in it._get_ops_details()]
        assert ops.count("DEPTHWISE_CONV_2D") == 1 + sum(not op.is_zero for op in TINY.parse(n["arch"]).ops), n
    kit = tmp_path / "kit"
    shutil.copytree(TFLITE_KIT, kit)
    shutil.copyfile(kit_runner.__file__, kit / "run_kit.py")  # the shipped kit holds no runner: this checkout's
    results = tmp_path / "results.csv"
    proc = run_kit(kit, "litert", results)
    assert proc.returncode == 0, proc.stderr
    uri = str(tmp_path / "t.parquet")
    proc = run_nas_inprocess(capsys, "latency", "import", "--kit", str(kit), "--results", str(results),
                             "--hardware", "mybox-litert", "--out", uri)
    assert proc.returncode == 0, proc.stderr
    p = LatencyTable.load(uri).provenance
    assert (p.runtime, p.hardware_kind, p.calibration["format"]) == ("litert", "device", "tflite")
    assert p.runtime_version == version("ai-edge-litert")
    assert p.validation["samples"] == 6 and p.validation["noise_floor"] is not None


def test_a_fit_below_the_goal_imports_with_a_warning_naming_its_figures(onnx_kit, tmp_path, capsys):
    """Results that no sum of entries explains (random figures) still import, with the warning on stderr."""
    rng = random.Random(0)
    files = [n["file"] for n in json.loads((onnx_kit / "manifest.json").read_text())["networks"]]
    res = tmp_path / "random.csv"
    res.write_text(_results(onnx_kit, [(f, f"{rng.uniform(1, 100):.3f}") for f in files]))
    out = tmp_path / "t.parquet"
    proc = run_nas_inprocess(capsys, "latency", "import", "--kit", str(onnx_kit), "--results", str(res),
                             "--hardware", "noisy-box", "--runtime", "onnxruntime", "--out", str(out))
    assert proc.returncode == 0 and out.exists()
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "misses the goal" in warning[0] and "within ±10%" in warning[0], proc.stderr


def test_validate_a_runtime_table_on_new_held_out_networks(ort_table, capsys):
    """`nas latency validate` times new held-out networks in the table's runtime and scores its entries."""
    proc = run_nas_inprocess(capsys, "latency", "validate", "--table", ort_table, "--samples", "4", "--seed", "5",
                             "--local", "--json")
    assert proc.returncode == 0, proc.stderr
    v = json.loads(proc.stdout)
    assert v["samples"] == 4 and v["seed"] == 5 and v["drift"] is not None and v["noise_floor"] is not None
    assert not set(v["archs"]) & set(LatencyTable.load(ort_table).provenance.calibration["archs"])


def test_plain_results_of_a_tflite_kit_need_no_runtime(tmp_path, capsys):
    """Only LiteRT reads TFLite files, so a plain `file,ms` CSV of a TFLite kit (benchmark_model's figures typed
    in) imports as litert without --runtime."""
    files = [n["file"] for n in json.loads((TFLITE_KIT / "manifest.json").read_text())["networks"]]
    res = tmp_path / "bm.csv"
    res.write_text(_results(TFLITE_KIT, [(f, 3.0 + i / 7) for i, f in enumerate(files)]))
    out = tmp_path / "t.parquet"
    proc = run_nas_inprocess(capsys, "latency", "import", "--kit", str(TFLITE_KIT), "--results", str(res),
                             "--hardware", "pixel7-litert", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert LatencyTable.load(str(out)).provenance.runtime == "litert"
