"""The user's own task, end to end: a K-class folder of real JPEG files (K != 10), searched with a space instantiated
for K classes, and the derived architecture string passed straight to retraining on the same data. Nothing here
reads the digits.

- one process, through the CLI: ``nas search ... --set num_classes=K`` then ``nas retrain --arch <result.json arch>``;
- on Ray Train: the folder prepared into shards on a real S3 server (moto), 2 workers on 2 nodes for the search and
  for the retrain, recorded in MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import binom  # noqa: TID253

from orchestrator.data.prepare import PrepareOptions, prepare_shards
from orchestrator.ray_train import ClusterSpec
from orchestrator.retrain import retrain_config_from_dict
from orchestrator.retrain.jobs import run_retrain
from orchestrator.search import load_config
from orchestrator.search.jobs import run_distributed_search
from tests.conftest import ROOT, assert_one_line_error, run_nas, run_nas_inprocess
from tests.servers import local_two_node_cluster

COLOURS = ((220, 40, 40), (40, 200, 40), (40, 60, 220))  # K = 3 classes, told apart by colour
K = len(COLOURS)


def colour_tree(root: Path, per_class: int, seed: int) -> Path:
    """An ImageFolder of real JPEG files: class c is noisy colour c, at sizes between 20 and 40 px."""
    rng = np.random.default_rng(seed)
    for c, rgb in enumerate(COLOURS):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(20, 40, 2))
            img = np.clip(np.array(rgb, np.float32) + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"img{i:03d}.jpg", format="JPEG", quality=90)
    return root


def beats_chance(accuracy: float, n: int, p_value: float = 1e-6) -> bool:
    """Accuracy a guesser (1/K) reaches with probability below ``p_value``: a clear binomial margin."""
    return binom.sf(round(accuracy * n) - 1, n, 1 / K) < p_value


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("task")
    return colour_tree(root / "train", 52, 0), colour_tree(root / "val", 10, 1)


def test_search_then_retrain_through_the_one_process_cli(folders, tmp_path):
    train, val = folders
    data = ["--set", "data.kind=imagefolder", "--set", f"data.uri={train}", "--set", f"data.valid_uri={val}"]
    out = tmp_path / "search"
    proc = run_nas("search", "--config", str(ROOT / "configs" / "tiny.yaml"), *data, "--set", f"num_classes={K}",
                   "--out", str(out), "--quiet", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    arch = result["arch"]
    assert arch.startswith(f"tiny[c{K}]:") and result["val_images"] == K * 10 and result["device"] == "cpu"
    rout = tmp_path / "retrain"
    proc = run_nas("retrain", "--arch", arch, "--config", str(ROOT / "configs" / "retrain-imagenet.yaml"), *data,
                   "--set", "epochs=1", "--set", "batch_size=16", "--set", "data.workers=1", "--out", str(rout),
                   "--quiet")
    assert proc.returncode == 0, proc.stderr
    rt = json.loads((rout / "retrain.json").read_text())
    assert rt["arch"] == arch and rt["val_images"] == K * 10 and rt["epochs"] == 1
    assert {p.name for p in rout.iterdir()} == {"retrain.json", "net.pt", "net.onnx"}
    assert f"on {K * 10} images" in proc.stdout


def test_a_net_that_does_not_fit_the_data_is_refused_before_any_compute(folders, tmp_path, capsys):
    train, val = folders
    data = ["--set", "data.kind=imagefolder", "--set", f"data.uri={train}", "--set", f"data.valid_uri={val}"]
    # a 10-class space on 3-class data
    proc = run_nas_inprocess(capsys, "search", "--config", str(ROOT / "configs" / "tiny.yaml"), *data,
                             "--out", str(tmp_path / "s"))
    assert_one_line_error(proc, "has 3 classes, but space 'tiny' expects 10")
    # an ImageNet net with the digits recipe, and a 3-class net on the digits
    imagenet = "proxyless-imagenet:" + "/".join(".".join(["k3e3"] * d) for d in (4, 4, 4, 4, 4, 1))
    digits = str(ROOT / "configs" / "retrain-digits.yaml")
    proc = run_nas_inprocess(capsys, "retrain", "--arch", imagenet, "--config", digits, "--out", str(tmp_path / "r"))
    assert_one_line_error(proc, "digits has 10 classes, but the net's space 'proxyless-imagenet' expects 1000")
    proc = run_nas_inprocess(capsys, "retrain", "--arch", f"tiny[c{K}]:k3e3.zero/k3e3.zero", "--config", digits,
                             "--out", str(tmp_path / "r"))
    assert_one_line_error(proc, f"digits has 10 classes, but the net's space 'tiny[c{K}]' expects {K}")
    assert not (tmp_path / "s").exists() and not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------- on Ray
@pytest.fixture(scope="module")
def two_nodes(s3_server):
    """Head and one more node, one CPU each, with the S3 server's environment (workers reach it)."""
    with local_two_node_cluster(s3_server.env()) as cluster:  # raylets and workers reach the S3 server
        yield cluster


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_search_then_retrain_on_shards_in_s3_with_two_train_workers(folders, two_nodes, s3_server, tmp_path):
    from mlflow import MlflowClient

    train, val = folders
    bucket = s3_server.new_bucket()
    uri, vuri = f"s3://{bucket}/task/train", f"s3://{bucket}/task/val"
    prepare_shards(train, uri, PrepareOptions(shard_size=64, row_group_size=16))
    prepare_shards(val, vuri, PrepareOptions(shard_size=64, row_group_size=16))
    data = {"kind": "shards", "uri": uri, "valid_uri": vuri, "holdout_per_class": 12}
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"num_classes={K}", f"data={json.dumps(data)}",
                                                         "epochs=3", "weight.batch_size=24", "arch.batch_size=12"])
    search = run_distributed_search(cfg, ClusterSpec(num_workers=2, storage_path=f"s3://{bucket}/runs", name="task",
                                                     tracking_uri=tracking, experiment="task", max_failures=0))
    arch = search.search["arch"]
    assert arch.startswith(f"tiny[c{K}]:") and search.search["rank_archs"] == [arch, arch]
    assert search.search["val_images"] == K * 10 and search.search["world_size"] == 2

    recipe = retrain_config_from_dict({"epochs": 8, "lr": 0.1, "batch_size": 24, "data": {**data, "color_jitter":
                                                                                           "normal"}})
    rt = run_retrain(arch, recipe, ClusterSpec(num_workers=2, storage_path=f"s3://{bucket}/runs", name="task-rt",
                                               tracking_uri=tracking, experiment="task", max_failures=0,
                                               parent_run_id=search.run_id), onnx_dir=tmp_path)
    assert rt.arch == arch and rt.val_images == K * 10  # every validation image once, across the two ranks
    assert beats_chance(rt.val_accuracy, rt.val_images), rt.val_accuracy

    client = MlflowClient(tracking_uri=tracking)
    run = client.get_run(rt.run_id)
    assert run.data.metrics["val_images"] == K * 10 and run.data.metrics["val_accuracy"] == rt.val_accuracy
    assert run.data.tags["nas.data"] == uri and run.data.tags["nas.space"] == f"tiny[c{K}]"
    assert client.get_run(search.run_id).data.tags["nas.data"] == uri
