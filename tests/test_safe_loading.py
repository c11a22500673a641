"""Stored state never runs code: every loader of checkpoints and warm-ups refuses a tampered file with one line.

The tampered files carry a payload that writes a sentinel file when unpickled. A positive control unpickles each
file the unsafe way and sees the sentinel appear, so a missing sentinel after the real loaders means something.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from orchestrator.ray_train import load_state_uri
from orchestrator.search import load_checkpoint
from orchestrator.state_io import load_state, save_state
from tests.conftest import ROOT, assert_one_line_error, run_nas, run_nas_inprocess

TINY = ROOT / "configs" / "tiny.yaml"


class Payload:
    """Unpickling this runs ``exec``: it writes the sentinel file."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (exec, (f"open({str(self.sentinel)!r}, 'w').write('pwned')",))


def _tampered(path: Path, sentinel: Path, fmt: str) -> Path:
    """A checkpoint-looking file with the payload inside: torch's zip format, or a bare pickle."""
    state = {"version": 1, "step": 3, "alpha": torch.zeros(2, 3), "evil": Payload(sentinel)}
    if fmt == "torch":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state))
    return path


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_the_payload_runs_when_loaded_unsafely(tmp_path, fmt):
    """Positive control: the sentinel works."""
    sentinel = tmp_path / "sentinel"
    f = _tampered(tmp_path / "checkpoint.pt", sentinel, fmt)
    if fmt == "torch":
        torch.load(f, weights_only=False)
    else:
        pickle.loads(f.read_bytes())
    assert sentinel.read_text() == "pwned"


def _loaders(s3_server):
    """Every function that loads stored state, as (name, load(path) -> None)."""
    def via_s3(path: Path) -> None:
        bucket = s3_server.new_bucket()
        s3_server.client().put_object(Bucket=bucket, Key="warm/search_state.pt", Body=path.read_bytes())
        load_state_uri(f"s3://{bucket}/warm/search_state.pt")

    return [("one-process checkpoint", load_checkpoint), ("warm-up state, local", lambda p: load_state_uri(str(p))),
            ("warm-up state, s3", via_s3), ("state bytes", lambda p: load_state(p.read_bytes(), name=str(p)))]


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_every_loader_refuses_a_tampered_file(tmp_path, s3_env, fmt):
    for name, load in _loaders(s3_env):
        sentinel = tmp_path / f"sentinel-{name.replace(' ', '_')}"
        f = _tampered(tmp_path / "checkpoint.pt", sentinel, fmt)
        with pytest.raises(ValueError) as err:
            load(f)
        msg = str(err.value)
        assert "\n" not in msg and "refused" in msg, (name, msg)
        assert not sentinel.exists(), f"{name}: the payload ran"


def test_a_plain_state_still_loads(tmp_path):
    save_state({"step": 3, "alpha": torch.ones(2), "history": [{"loss": 1.0, "phase": "warmup"}]}, tmp_path / "s.pt")
    got = load_state(tmp_path / "s.pt")
    assert got["step"] == 3 and torch.equal(got["alpha"], torch.ones(2))


def test_resume_from_a_tampered_checkpoint_is_refused_by_the_cli(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    sentinel = tmp_path / "sentinel"
    _tampered(out / "checkpoint.pt", sentinel, "torch")
    before = sorted(p.name for p in out.iterdir())
    proc = run_nas_inprocess(capsys, "search", "--config", str(TINY), "--out", str(out), "--resume", "--quiet")
    assert_one_line_error(proc, "checkpoint", "refused")
    assert not sentinel.exists()
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written


def test_resume_from_a_tampered_checkpoint_installed_command(tmp_path):
    """The same through the installed ``nas`` command, in its own process."""
    out = tmp_path / "out"
    out.mkdir()
    sentinel = tmp_path / "sentinel"
    _tampered(out / "checkpoint.pt", sentinel, "pickle")
    proc = run_nas("search", "--config", str(TINY), "--out", str(out), "--resume", "--quiet")
    assert_one_line_error(proc, "checkpoint", "refused")
    assert not sentinel.exists()
