"""The one-process training core runs with PyTorch, torchvision, numpy and Pillow alone (plus onnx to export).

That is what a bare GPU machine has (no Ray, MLflow, pyarrow, boto3, PyYAML, tqdm, click or scikit-learn), and it
is where GPU step times and GPU latency tables are measured. A child process hides every other package behind an
import hook, then searches on a folder of JPEG files, checkpoints, resumes, retrains the derived net and exports it.
The same child first checks that the hook really hides the packages (a negative control).
"""

from __future__ import annotations

import json
import subprocess
import sys

import yaml  # noqa: TID253

from tests.conftest import ROOT
from tests.test_search_imagefolder import write_imagefolder

HIDDEN = ("pyarrow", "boto3", "botocore", "yaml", "tqdm", "click", "sklearn", "mlflow", "ray", "pandas", "scipy",
          "moto")  # not onnx: the retrained net's ONNX export needs it (torch.onnx does), as on the lent GPU machine

# An import hook that makes every HIDDEN package look absent: importing one raises ModuleNotFoundError, as on a
# machine without it. (It returns a spec rather than raising in find_spec, because torch probes optional packages
# with importlib.util.find_spec and expects an answer.)
HOOK = f"""
import importlib.abc, importlib.machinery, sys
HIDDEN = {HIDDEN!r}
class _Absent(importlib.abc.Loader):
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {{spec.name!r}}", name=spec.name)
    def exec_module(self, module):
        pass
class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in HIDDEN:
            return importlib.machinery.ModuleSpec(name, _Absent())
sys.meta_path.insert(0, _Hide())
"""

RUN = """
import json, sys
from pathlib import Path

for name in HIDDEN:  # negative control: the hook hides each package
    try:
        __import__(name)
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit(f"{name} was importable: the hook does not work")

import benchmarks.search_cost  # the GPU step-time benchmark
from orchestrator.retrain import retrain_config_from_dict, retrain_here
from orchestrator.search import config_from_dict, load_checkpoint, open_data, run_search, save_checkpoint

search_cfg, retrain_cfg, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
cfg = config_from_dict(search_cfg)
data = open_data(cfg)
ckpt = out / "checkpoint.pt"
first = run_search(cfg, data, checkpoint=lambda state: save_checkpoint(state, ckpt))
again = run_search(cfg, data, resume=load_checkpoint(ckpt))
net = retrain_here(first.arch, retrain_config_from_dict(retrain_cfg), out / "net")
loaded = sorted(n for n in sys.modules if n.split(".")[0] in HIDDEN)
print(json.dumps({"arch": first.arch, "steps": first.steps, "resumed_arch": again.arch,
                  "val_accuracy": net.val_accuracy, "loaded": loaded}))
"""


def test_one_process_search_resume_and_retrain_need_only_torch(tmp_path):
    write_imagefolder(tmp_path / "train", classes=10, per_class=8)
    data = {"kind": "imagefolder", "uri": str(tmp_path / "train"), "holdout_per_class": 2, "valid_fraction": 0.25}
    search = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    search.update(epochs=2, warmup_epochs=1, data={**search.get("data", {}), **data})
    search["weight"] = {**search.get("weight", {}), "batch_size": 8}
    search["arch"] = {**search.get("arch", {}), "batch_size": 8}
    retrain = {"epochs": 1, "batch_size": 8, "data": data}
    proc = subprocess.run([sys.executable, "-c", HOOK + RUN, json.dumps(search), json.dumps(retrain), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == [], f"hidden packages were imported: {out['loaded']}"
    assert out["arch"].startswith("tiny:") and out["steps"] == 10
    assert out["resumed_arch"] == out["arch"]  # resumed at the end: nothing left to run, the same result
    assert 0.0 <= out["val_accuracy"] <= 1.0
    assert (tmp_path / "net" / "net.pt").stat().st_size > 0 and (tmp_path / "net" / "net.onnx").stat().st_size > 0
