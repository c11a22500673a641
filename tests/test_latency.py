"""Latency tables: official import, estimator gradients, Parquet storage (local and S3), measurement, CLI errors."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml  # noqa: TID253

from orchestrator.cli import main
from orchestrator.latency.calibrate import (
    CALIBRATION,
    VALIDATION,
    CalibrationConfig,
    arch_macs,
    spread_archs,
    validation_metrics,
)
from orchestrator.latency.hardware import parse_profile
from orchestrator.latency.measure import MeasureConfig, default_config
from orchestrator.latency.official import import_proxyless_yaml
from orchestrator.latency.profiles import latency_model
from orchestrator.latency.runner import (
    build_table,
    compare,
    config_of,
    measure_archs_chunk,
    reference_factor,
    validate_table,
)
from orchestrator.latency.table import EntryStats, LatencyTable, Provenance, required_keys
from orchestrator.spaces import PROXYLESS_IMAGENET, TINY, get_space
from orchestrator.supernet import ArchLogits

ROOT = Path(__file__).resolve().parents[1]


def synthetic_table(space=TINY, seed: int = 0, drop: tuple[str, ...] = (), v1: bool = False) -> LatencyTable:
    """A complete table with random entries, for tests that need no measurement (``v1``: as written before
    tables named their body and head cost per class)."""
    rng = random.Random(seed)
    entries = {k: EntryStats(latency_ms=rng.uniform(0.1, 2.0), count=5, median_ms=1.0, std_ms=0.1)
               for k in required_keys(space) if k not in drop}
    v2 = {} if v1 else dict(body_fingerprint=space.body_fingerprint(), head_classes=space.num_classes,
                            head_ms_per_class=0.01)
    prov = Provenance(hardware="cpu-test", hardware_kind="cpu", space=space.name,
                      space_fingerprint=space.fingerprint(), resolution=space.resolution, batch_size=1,
                      dtype="float32", threads=1, device="cpu", device_name="test cpu", torch_version=torch.__version__,
                      cuda_version=None, created="2025-01-01T00:00:00+00:00", warmup=1, repeats=5, **v2)
    return LatencyTable(prov, entries)


# A calibrated tiny table, measured once per test session (a few seconds): few networks and rounds, since the
# tests check what is recorded and how, not the figures.
CHEAP = dict(repeats=5, warmup=1, min_rounds=4, max_rounds=6)


@pytest.fixture(scope="module")
def calibrated_tiny() -> LatencyTable:
    cal = CalibrationConfig(networks=8, group_size=4, seed=3, validate=6, validation_seed=4)
    return build_table(TINY, parse_profile("cpu-test"), default_config("cpu", **CHEAP), use_ray=False,
                       calibration=cal)


# ---- official table ---------------------------------------------------------------------------------------------
def _hand_sum(raw: dict, ops: list[tuple[int, int] | None]) -> float:
    """The official table's latency of a proxyless-imagenet arch, keys written out from the paper's layout."""
    mean = lambda k: raw[k]["mean"]  # noqa: E731
    total = mean("Conv-input:224x224x3-output:112x112x32")
    total += mean("expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:3-stride:1-idskip:0")
    stages = [(24, 4, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1)]
    res, cin, i = 112, 16, 0
    for cout, depth, first_stride in stages:
        for d in range(depth):
            stride = first_stride if d == 0 else 1
            rout = res // stride
            op = ops[i]
            if op is not None:
                k, e = op
                skip = int(stride == 1 and cin == cout)
                total += mean(f"expanded_conv-input:{res}x{res}x{cin}-output:{rout}x{rout}x{cout}"
                              f"-expand:{e}-kernel:{k}-stride:{stride}-idskip:{skip}")
            res, cin, i = rout, cout, i + 1
    total += mean("Conv_1-input:7x7x320-output:7x7x1280") + mean("Logits-input:7x7x1280-output:1000")
    return total


def test_imported_official_table_reproduces_hand_sums(reference_dir):
    path = reference_dir / "mobile_trim.yaml"
    raw = yaml.safe_load(path.read_text())
    model = import_proxyless_yaml(str(path)).to_model()
    space = PROXYLESS_IMAGENET
    rng = random.Random(3)
    archs = [space.largest_arch(), space.arch_from_indices([0] * space.num_blocks)]
    archs += [space.random_arch(rng) for _ in range(4)]
    for arch in archs:
        ops = [None if op.is_zero else (op.kernel, op.expand) for op in arch.ops]
        assert model.exact(arch) == pytest.approx(_hand_sum(raw, ops), rel=1e-12), arch.encode()
    assert latency_model("pixel1", space, runtime="litert").exact(archs[2]) == pytest.approx(model.exact(archs[2]))
    assert model.bounds()[0] < model.exact(archs[2]) < model.bounds()[1]


# ---- estimator ----------------------------------------------------------------------------------------------------
def test_expected_latency_gradient_matches_finite_differences():
    model = synthetic_table(TINY).to_model()
    logits = ArchLogits(TINY).double()
    with torch.no_grad():
        logits.alpha.copy_(torch.randn(logits.alpha.shape, generator=torch.Generator().manual_seed(0)))
    model.expected(logits.probs()).backward()
    grad = logits.alpha.grad.clone()
    eps = 1e-6
    fd = torch.zeros_like(grad)
    for b in range(grad.shape[0]):
        for c in range(grad.shape[1]):
            with torch.no_grad():
                logits.alpha[b, c] += eps
                hi = model.expected(logits.probs()).item()
                logits.alpha[b, c] -= 2 * eps
                lo = model.expected(logits.probs()).item()
                logits.alpha[b, c] += eps
            fd[b, c] = (hi - lo) / (2 * eps)
    fd[~logits.mask] = 0.0
    assert torch.allclose(grad, fd, atol=1e-7, rtol=1e-5)
    assert grad.abs().sum() > 0


def test_compare_scores_predictions():
    s = compare([1.0, 2.18, 3.0, 3.9], [1.0, 2.0, 3.0, 4.0])
    assert s["within_10pct"] == 1.0 and s["spearman"] == pytest.approx(1.0)
    assert s["mape"] == pytest.approx((0.09 + 0.025) / 4)


# ---- storage ------------------------------------------------------------------------------------------------------
def test_table_round_trips_through_local_parquet(tmp_path):
    table = synthetic_table()
    uri = str(tmp_path / "sub" / "t.parquet")
    table.save(uri)
    back = LatencyTable.load(uri)
    assert back.provenance == table.provenance and back.entries == table.entries
    assert back.to_model().costs == table.to_model().costs
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["t.parquet"]  # no temp files left


def test_table_round_trips_through_s3_server(s3_env):
    bucket = s3_env.new_bucket()
    table = synthetic_table(seed=4)
    uri = f"s3://{bucket}/tables/tiny.parquet"
    table.save(uri)
    back = LatencyTable.load(uri)
    assert back.provenance == table.provenance and back.entries == table.entries
    keys = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["tables/tiny.parquet"]


def test_cli_import_to_s3_and_predict(s3_env, reference_dir, capsys):
    bucket = s3_env.new_bucket()
    uri = f"s3://{bucket}/pixel1.parquet"
    run_cli(["latency", "import", str(reference_dir / "mobile_trim.yaml"), "--format", "proxyless-yaml",
             "--hardware", "pixel1", "--out", uri], capsys)
    arch = PROXYLESS_IMAGENET.largest_arch()
    rc, out, _ = run_cli(["latency", "predict", "--table", uri, arch.encode()], capsys)
    expected = latency_model("pixel1", PROXYLESS_IMAGENET, table=uri, runtime="litert").exact(arch)
    assert rc == 0 and out.strip() == f"{expected:.3f} ms"


# ---- measurement --------------------------------------------------------------------------------------------------
def test_build_and_validate_tiny_table_locally():
    cfg = MeasureConfig(warmup=1, repeats=3, min_repeat_ms=0.0, min_rounds=4, max_rounds=4)
    table = build_table(TINY, parse_profile("cpu-test"), cfg, use_ray=False, calibration=None)
    p = table.provenance
    assert (p.space, p.space_fingerprint, p.body_fingerprint, p.resolution, p.batch_size, p.threads) == (
        "tiny", TINY.fingerprint(), TINY.body_fingerprint(), 16, 1, 1)
    assert p.torch_version == torch.__version__ and p.created and p.device_name and p.head_ms_per_class >= 0
    assert p.calibration["networks"] == 0 and p.calibration["reference_ms"] > 0 and p.validation is None
    assert set(required_keys(TINY)) <= set(table.entries)
    assert all(e.count == 3 and e.median_ms is not None and e.q3_ms >= e.q1_ms for e in table.entries.values())
    v = validate_table(table, samples=3, seed=1, use_ray=False)
    assert v["samples"] == 3 and 0 <= v["within_10pct"] <= 1 and v["mape"] >= 0 and len(v["measured_ms"]) == 3
    assert v["noise_floor"]["median_gap"] >= 0 and v["plain"]["within_10pct"] == v["within_10pct"]
    # one network timed later, as a sweep times a derived net, with the reference to put it at the table's level
    arch = TINY.largest_arch().encode()
    r = measure_archs_chunk("tiny", [arch], config_of(table))
    assert set(r.entries) == {arch, "reference"} and r.entries[arch].count >= 4
    assert 0.5 < reference_factor(table, r) < 2.0


def test_calibrated_table_round_trips_with_provenance(calibrated_tiny, tmp_path):
    t = calibrated_tiny
    cal, val = t.provenance.calibration, t.provenance.validation
    assert cal["networks"] == 8 and len(cal["archs"]) == 8 and cal["seed"] == 3 and cal["stream"] == "calibration:3"
    assert val["samples"] == 6 and val["seed"] == 4 and len(val["archs"]) == len(val["measured_ms"]) == 6
    for key in ("within_10pct", "spearman", "mape", "drift"):
        assert math.isfinite(val[key]), key
    assert {"median_gap", "within_10pct", "spearman"} <= set(val["noise_floor"]) and "plain" in val
    assert {"whole_pass", "whole_pass_noise_floor", "plain_whole_pass", "unscaled"} <= set(val)
    # every entry keeps its plain measurement beside the calibrated value; the two models differ
    assert all(e.plain_ms is not None for e in t.entries.values())
    assert t.to_model().costs != t.to_model(plain=True).costs
    back = LatencyTable.load(t.save(str(tmp_path / "cal.parquet")))
    assert back.provenance == t.provenance and back.entries == t.entries
    assert back.to_model().costs == t.to_model().costs and back.to_model().provenance["validation"] == val
    assert back.to_model(plain=True).fixed == t.to_model(plain=True).fixed
    # what a search logs beside its results
    metrics = validation_metrics(back.to_model().provenance)
    assert metrics["latency_model_samples"] == 6 and metrics["latency_calibration_networks"] == 8
    assert metrics["latency_model_within_10pct"] == val["within_10pct"] and "latency_plain_spearman" in metrics


def test_held_out_networks_are_disjoint_logged_and_spread(calibrated_tiny):
    t = calibrated_tiny
    cal, val = t.provenance.calibration, t.provenance.validation
    assert not set(cal["archs"]) & set(val["archs"]) and val["stream"] != cal["stream"]
    # the same seed number names different streams for the two roles, and drawing is deterministic
    space = get_space("digits-32")
    a = [x.encode() for x in spread_archs(space, 30, 0, CALIBRATION)]
    b = [x.encode() for x in spread_archs(space, 30, 0, VALIDATION, exclude=a)]
    assert len(set(a)) == len(set(b)) == 30 and not set(a) & set(b)
    assert a == [x.encode() for x in spread_archs(space, 30, 0, CALIBRATION)]
    # spread: the draws reach close to both ends of the space's MAC range, and fill its middle
    macs = sorted(arch_macs(space, space.parse(x)) for x in b)
    lo = arch_macs(space, space.arch_from_indices([0 if not r[-1] else len(r) - 1 for r in space.allowed_mask()]))
    hi = arch_macs(space, space.largest_arch())
    assert macs[0] < lo + 0.25 * (hi - lo) and macs[-1] > lo + 0.75 * (hi - lo)
    assert max(np.diff(macs)) < 0.25 * (hi - lo)
    with pytest.raises(ValueError, match="calibration seed"):
        validate_table(t, samples=3, seed=3, use_ray=False)
    with pytest.raises(ValueError, match="must differ"):
        CalibrationConfig(seed=2, validation_seed=2)


def test_k_class_variant_reuses_the_body_table_with_its_own_head(calibrated_tiny, tmp_path, reference_dir):
    t = calibrated_tiny
    variant = get_space("tiny[c3]")
    base, own = t.to_model(), t.to_model(variant)
    assert own.space == variant and own.costs == base.costs
    per_class = t.provenance.head_ms_per_class
    assert own.fixed == pytest.approx(base.fixed + (3 - 10) * per_class)
    arch = variant.parse("tiny[c3]:k3e3.zero/k5e6.k7e3")
    assert t.predict(arch) == pytest.approx(own.exact(arch))
    uri = t.save(str(tmp_path / "t.parquet"))
    assert latency_model("cpu-test", variant, table=uri).exact(arch) == pytest.approx(own.exact(arch))
    # the official Pixel-1 table prices a 100-class ImageNet variant with its logits scaled to 100 classes
    yaml_path = str(reference_dir / "mobile_trim.yaml")
    full = latency_model("pixel1", PROXYLESS_IMAGENET, table=yaml_path, runtime="litert")
    c100 = latency_model("pixel1", get_space("proxyless-imagenet[c100]"), table=yaml_path, runtime="litert")
    raw = yaml.safe_load((reference_dir / "mobile_trim.yaml").read_text())
    logits = raw["Logits-input:7x7x1280-output:1000"]["mean"]
    assert c100.fixed == pytest.approx(full.fixed - logits * 0.9) and c100.costs == full.costs


def test_other_body_or_hardware_is_refused_with_one_line(calibrated_tiny, tmp_path, capsys):
    uri = calibrated_tiny.save(str(tmp_path / "t.parquet"))
    for space_name, fragment in (("tiny[r32]", "resolution 16"), ("tiny[w2]", "body"), ("digits-32", "'tiny'")):
        with pytest.raises(ValueError, match="table 'cpu-test'") as e:
            latency_model("cpu-test", get_space(space_name), table=uri)
        assert fragment in str(e.value) and "\n" not in str(e.value)
    arch = get_space("tiny[w2]").largest_arch().encode()
    rc, _, err = run_cli(["latency", "predict", "--table", uri, arch], capsys)
    assert_one_line_error(rc, err, "prices the body", "tiny[w2]")
    with pytest.raises(ValueError, match="is for hardware 'cpu-test', not 'cpu-other'"):
        latency_model("cpu-other", TINY, table=uri)
    rc, out, _ = run_cli(["latency", "predict", "--table", uri, "tiny[c3]:k3e3.zero/k5e6.k7e3", "--json"], capsys)
    assert rc == 0 and json.loads(out)["calibrated"] is True


def test_unknown_hardware_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown hardware 'tpu9'.*known: flops, pixel1"):
        latency_model("tpu9", TINY)
    with pytest.raises(ValueError, match="give its table URI"):
        latency_model("cpu-somewhere", TINY)
    assert latency_model("flops", TINY).hardware == "flops"


def test_measured_profile_resolves_from_table(tmp_path):
    uri = synthetic_table().save(str(tmp_path / "t.parquet"))
    assert latency_model("cpu-test", TINY, table=uri).costs == synthetic_table().to_model().costs
    with pytest.raises(ValueError, match="is for hardware 'cpu-test', not 'cpu-other'"):
        latency_model("cpu-other", TINY, table=uri)


# ---- CLI errors ---------------------------------------------------------------------------------------------------
def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def assert_one_line_error(rc: int, err: str, *fragments: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for f in fragments:
        assert f in lines[0], lines[0]


def test_cli_import_refuses_yaml_missing_entries(tmp_path, reference_dir, capsys):
    raw = yaml.safe_load((reference_dir / "mobile_trim.yaml").read_text())
    gone = "expanded_conv-input:28x28x40-output:14x14x80-expand:6-kernel:7-stride:2-idskip:0"
    del raw[gone]
    src, out = tmp_path / "cut.yaml", tmp_path / "out.parquet"
    src.write_text(yaml.safe_dump(raw))
    rc, _, err = run_cli(["latency", "import", str(src), "--format", "proxyless-yaml", "--out", str(out)], capsys)
    assert_one_line_error(rc, err, "lacks 1 entries", gone)
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_cli_import_refuses_malformed_yaml(tmp_path, capsys):
    src, out = tmp_path / "bad.yaml", tmp_path / "out.parquet"
    src.write_text("Conv-input: {mean: [1, 2\n  : :\n")
    rc, _, err = run_cli(["latency", "import", str(src), "--format", "proxyless-yaml", "--out", str(out)], capsys)
    assert_one_line_error(rc, err, "not valid YAML")
    assert not out.exists()


def test_cli_predict_refuses_table_missing_entries(tmp_path, capsys):
    uri = synthetic_table(drop=("b00:k3e3", "head")).save(str(tmp_path / "t.parquet"))
    rc, _, err = run_cli(["latency", "predict", "--table", uri, "tiny:k3e3.zero/k5e6.k7e3"], capsys)
    assert_one_line_error(rc, err, "lacks 2 entries", "b00:k3e3", "head")


def test_cli_predict_refuses_other_fingerprint_and_resolution(tmp_path, capsys):
    stale = synthetic_table(v1=True).with_provenance(space_fingerprint="0123456789abcdef")
    uri = stale.save(str(tmp_path / "stale.parquet"))
    rc, _, err = run_cli(["latency", "predict", "--table", uri, "tiny:k3e3.zero/k5e6.k7e3"], capsys)
    assert_one_line_error(rc, err, "fingerprint 0123456789abcdef", TINY.fingerprint())
    other = synthetic_table(v1=True).with_provenance(resolution=32)
    uri = other.save(str(tmp_path / "res.parquet"))
    rc, _, err = run_cli(["latency", "predict", "--table", uri, "tiny:k3e3.zero/k5e6.k7e3"], capsys)
    assert_one_line_error(rc, err, "resolution 32", "runs at 16")
    other = synthetic_table().with_provenance(body_fingerprint=TINY.variant(resolution=32).body_fingerprint(),
                                              resolution=32)
    uri = other.save(str(tmp_path / "res2.parquet"))
    rc, _, err = run_cli(["latency", "predict", "--table", uri, "tiny:k3e3.zero/k5e6.k7e3"], capsys)
    assert_one_line_error(rc, err, "resolution 32", "runs at 16")
    good = synthetic_table().save(str(tmp_path / "good.parquet"))
    digits = get_space("digits-32").largest_arch().encode()
    rc, _, err = run_cli(["latency", "predict", "--table", good, digits], capsys)
    assert_one_line_error(rc, err, "'digits-32'", "'tiny'")


def test_cli_predict_refuses_malformed_parquet(tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    rc, _, err = run_cli(["latency", "predict", "--table", str(bad), "tiny:k3e3.zero/k5e6.k7e3"], capsys)
    assert_one_line_error(rc, err, "not a readable Parquet file")
    import pyarrow as pa
    import pyarrow.parquet as pq

    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"x": [1]}), plain)
    rc, _, err = run_cli(["latency", "validate", "--table", str(plain), "--samples", "3", "--local"], capsys)
    assert_one_line_error(rc, err, "not a latency table")


def test_cli_build_refuses_unknown_hardware(tmp_path, capsys):
    out = tmp_path / "t.parquet"
    rc, _, err = run_cli(["latency", "build", "--hardware", "tpu9", "--space", "tiny", "--local",
                          "--out", str(out)], capsys)
    assert_one_line_error(rc, err, "unknown hardware 'tpu9'", "flops, pixel1")
    assert not out.exists()


def test_cli_build_calibrates_validates_and_records(tmp_path, capsys):
    out = str(tmp_path / "t.parquet")
    rc, text, _ = run_cli(["latency", "build", "--hardware", "cpu-test", "--space", "tiny", "--local",
                           "--calibrate", "4", "--validate", "3", "--group-size", "4", "--repeats", "5",
                           "--min-rounds", "4", "--max-rounds", "4", "--out", out], capsys)
    assert rc == 0 and "3 held-out networks" in text and "noise floor" in text and "plain table" in text
    p = LatencyTable.load(out).provenance
    assert p.calibration["networks"] == 4 and p.validation["seed"] == 1 and p.clock == "cpu" and p.statistic == "min"
    rc, text, _ = run_cli(["latency", "validate", "--table", out, "--samples", "3", "--seed", "5", "--local",
                           "--record", "--json"], capsys)
    assert rc == 0 and json.loads(text)["seed"] == 5
    assert LatencyTable.load(out).provenance.validation["seed"] == 5
    rc, _, err = run_cli(["latency", "validate", "--table", out, "--samples", "3", "--seed", "0", "--local"], capsys)
    assert_one_line_error(rc, err, "calibration seed")


def test_cli_predict_prints_table_sum(tmp_path, capsys):
    table = synthetic_table()
    uri = table.save(str(tmp_path / "t.parquet"))
    arch = "tiny:k3e3.zero/k5e6.k7e3"
    rc, out, _ = run_cli(["latency", "predict", "--table", uri, arch, "--json"], capsys)
    d = json.loads(out)
    assert rc == 0 and d["latency_ms"] == pytest.approx(table.to_model().exact(TINY.parse(arch)))


def test_console_script_exits_nonzero_without_traceback(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"garbage")
    nas = Path(sys.executable).parent / "nas"
    r = subprocess.run([str(nas), "latency", "predict", "--table", str(bad), "tiny:k3e3.zero/k5e6.k7e3"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1

