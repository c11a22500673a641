"""``nas arch``: info and export as a user runs them, and one-line errors for bad input."""

from __future__ import annotations

import json

import onnx  # noqa: TID253
import pytest

from tests.conftest import assert_one_line_error, net_config_counts, run_nas, run_nas_inprocess

GPU_ARCH = ("proxyless-imagenet@40,24,32,56,112,128,256,432,1728:k5e3.zero.zero.zero/k7e3.zero.zero.k3e3/"
            "k7e6.zero.zero.k5e3/k5e6.zero.k3e3.k5e3/k7e6.k7e6.k7e6.k5e6/k7e6")


def test_arch_info_json_for_a_net_config_and_its_string(reference_dir):
    from_file = run_nas("arch", "info", str(reference_dir / "proxyless_gpu.config"), "--json")
    assert from_file.returncode == 0, from_file.stderr
    d = json.loads(from_file.stdout)
    assert d["arch"] == GPU_ARCH
    params, macs = net_config_counts(json.loads((reference_dir / "proxyless_gpu.config").read_text()))  # by hand
    assert (params, macs) == (7_119_848, 465_260_160)
    assert (d["space"], d["params"], d["macs"], d["resolution"]) == ("proxyless-imagenet", params, macs, 224)
    from_string = run_nas("arch", "info", GPU_ARCH, "--json")
    assert json.loads(from_string.stdout) == d


def test_arch_export_net_config_and_onnx(tmp_path, reference_dir):
    cfg = tmp_path / "out" / "net.config"
    proc = run_nas("arch", "export", GPU_ARCH, "--format", "net-config", "--out", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(cfg.read_text()) == json.loads((reference_dir / "proxyless_gpu.config").read_text())
    model = tmp_path / "net.onnx"
    proc = run_nas("arch", "export", "tiny:k3e3.zero/k5e6.k7e3", "--format", "onnx", "--out", str(model))
    assert proc.returncode == 0, proc.stderr
    onnx.checker.check_model(onnx.load(str(model)))


@pytest.mark.parametrize(
    "arch, fragment",
    [
        ("tiny:k3e3.zero/k5e6.k9e3", "'k9e3' is not a candidate"),
        ("tiny:k3e3.zero/k5e6.bogus", "unknown op token 'bogus'"),
        ("nosuch:k3e3", "unknown search space 'nosuch'"),
        ("tiny:k3e3.zero/k5e6", "has 2 blocks, architecture gives 1"),
        ("tiny:zero.k3e3/k5e6.k3e3", "cannot be 'zero'"),
    ],
)
def test_bad_architecture_strings(arch, fragment, tmp_path, capsys):
    out = tmp_path / "x.config"
    assert_one_line_error(run_nas_inprocess(capsys, "arch", "info", arch), fragment)
    assert_one_line_error(run_nas_inprocess(capsys, "arch", "export", arch, "--format", "net-config", "--out", str(out)),
                          fragment)
    assert not out.exists()


def test_bad_net_config_files(tmp_path, reference_dir, capsys):
    broken = tmp_path / "broken.config"
    broken.write_text('{"name": "ProxylessNASNets", "blocks": [')
    assert_one_line_error(run_nas("arch", "info", str(broken)), "not valid JSON", "broken.config")

    other = tmp_path / "other.config"
    other.write_text(json.dumps({"name": "ResNet", "layers": [3, 4, 6, 3]}))
    assert_one_line_error(run_nas_inprocess(capsys, "arch", "info", str(other)), "unknown schema")

    cfg = json.loads((reference_dir / "proxyless_gpu.config").read_text())
    cfg["blocks"] = cfg["blocks"][:-1]
    short = tmp_path / "short.config"
    short.write_text(json.dumps(cfg))
    assert_one_line_error(run_nas_inprocess(capsys, "arch", "info", str(short)), "matches no registered search space")

    missing = tmp_path / "missing.config"
    assert_one_line_error(run_nas_inprocess(capsys, "arch", "info", str(missing)), "not found")
