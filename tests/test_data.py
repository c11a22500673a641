"""Data: embedded digits, ImageFolder trees, and Parquet shards on a local folder or a real S3 server (moto)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa  # noqa: TID253
import pyarrow.parquet as pq  # noqa: TID253
import pytest
import torch
from PIL import Image

from orchestrator.cli import main
from orchestrator.data.digits import load_digits_tensors, split_indices
from orchestrator.data.manifest import MANIFEST, load_manifest
from orchestrator.data.prepare import PrepareOptions, prepare_shards
from orchestrator.data.source import DataSpec, open_splits
from orchestrator.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    normalize_images,
    train_transform,
)
from orchestrator.storage import resolve

ROOT = Path(__file__).resolve().parents[1]
NAS = str(ROOT / ".venv" / "bin" / "nas")
CLASSES = ("ant", "bee", "cat")


# ---- helpers ----------------------------------------------------------------------------------------------------
def make_tree(root: Path, classes: tuple[str, ...] = CLASSES, per_class: int = 6, seed: int = 0) -> Path:
    """An ImageFolder of real JPEG files of varied sizes, written with PIL."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = 24 + int(rng.integers(0, 24)), 24 + int(rng.integers(0, 24))
            base = np.zeros((h, w, 3), np.float32) + np.array([80 * c, 40, 200 - 60 * c])
            img = np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"img{i:03d}.jpg", format="JPEG", quality=85)
    return root


def corrupt(path: Path) -> None:
    """Keep the JPEG header, cut the data: a truncated file as found in real crawls."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


SPLITS = ("train", "holdout", "valid")


def shard_spec(uri: str, **kw) -> DataSpec:
    return DataSpec(**{**dict(kind="shards", uri=uri, holdout_per_class=2, valid_fraction=0.2), **kw})


def feeds(spec: DataSpec, rank: int = 0, world: int = 1, batch: int = 1, num_classes: int | None = None) -> dict:
    """This rank's feeds of the three splits: shuffled full batches for train and held-out, every image once
    for validation."""
    s = open_splits(spec, 16, num_classes)
    return {name: spec.feed(getattr(s, name), batch_size=batch, rank=rank, world=world, shuffle=name != "valid",
                            stream=name) for name in SPLITS}


def read_ids(feed, epoch: int = 0) -> list[int]:
    """The ids of one epoch, checked against what was really read: each batch's labels are those of its ids."""
    ids = feed.ids(epoch).tolist()
    labels = [int(v) for _, y in feed.epoch(epoch) for v in y]
    assert len(labels) == len(ids)
    by_id = dict(zip(feed.rows.ids(np.arange(len(feed.rows))).tolist(), feed.rows.labels.tolist()))
    assert labels == [by_id[i] for i in ids]
    return ids


def all_ids(spec: DataSpec, **kw) -> list[int]:
    return [i for f in feeds(spec, **kw).values() for i in read_ids(f)]


def run_cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {}), "OMP_NUM_THREADS": "1"}
    return subprocess.run([NAS, *args], capture_output=True, text=True, env=full_env, timeout=120)


def run_main(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code, capsys.readouterr().err


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], err


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "tree")


@pytest.fixture
def prepared(tree, tmp_path) -> Path:
    out = tmp_path / "shards"
    prepare_shards(tree, str(out), PrepareOptions(shard_size=4, row_group_size=3, workers=2))
    return out


# ---- the embedded default and transforms ------------------------------------------------------------------------
def test_digits_default_splits_and_feeds_per_rank():
    train_index, holdout_index, valid_index = split_indices(load_digits_tensors(16)[1].numpy(), 20, 0.2, seed=0)
    assert len(train_index) + len(holdout_index) + len(valid_index) == 1797
    seen = {}
    for rank in (0, 1):
        f = feeds(DataSpec(holdout_per_class=20), rank, 2, batch=32)
        x, y = next(f["train"].epoch(0))
        assert x.shape == (32, 3, 16, 16) and y.dtype == torch.int64
        seen[rank] = {name: set(read_ids(feed)) for name, feed in f.items()}
    holdout = seen[0]["holdout"] | seen[1]["holdout"]
    assert holdout <= set(holdout_index) and not seen[0]["holdout"] & seen[1]["holdout"]
    assert not (seen[0]["train"] | seen[1]["train"]) & holdout
    assert seen[0]["valid"] | seen[1]["valid"] == set(valid_index)  # every validation image, once


def test_resume_mid_epoch_and_any_number_of_loader_workers_give_the_same_batches(prepared):
    """The batch sequence is a function of the seed alone: resuming at a batch, or decoding in 2 processes,
    yields the same pixels as one uninterrupted pass in this process (augmentation included)."""
    spec = shard_spec(str(prepared), valid_fraction=0.1)
    rows = open_splits(spec, 16).train
    base = spec.feed(rows, batch_size=2, stream="train")
    full = [b for _, b in zip(range(9), base.stream(0))]  # crosses an epoch boundary (4 batches an epoch)
    resumed = [b for _, b in zip(range(4), base.stream(5))]
    two = DataSpec(**{**spec.to_dict(), "workers": 2}).feed(rows, batch_size=2, stream="train")
    forked = [b for _, b in zip(range(9), two.stream(0))]
    for got, want in [*zip(resumed, full[5:]), *zip(forked, full)]:
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert not torch.equal(full[0][0], full[4][0])  # epochs differ

def test_transforms_give_uint8_at_the_resolution_and_the_device_side_imagenet_normalisation(tree):
    img = Image.open(next((tree / "ant").iterdir()))
    for tf in (train_transform(20), eval_transform(20)):
        x = tf(img)
        assert x.shape == (3, 20, 20) and x.dtype == torch.uint8  # 1 byte a pixel to the device
        z = normalize_images(x)
        assert z.dtype == torch.float32 and z.min() < 0 < z.max()
        assert torch.allclose(z * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1),
                              x / 255.0, atol=1e-6)
    assert torch.equal(eval_transform(20)(img), eval_transform(20)(img))  # deterministic for α steps and eval
    with pytest.raises(ValueError, match="expected uint8 images, got torch.float32"):
        normalize_images(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 3, H, W\) images, got shape \(1, 4, 4\)"):
        normalize_images(torch.zeros(1, 4, 4, dtype=torch.uint8))


# ---- preparing and reading shards -------------------------------------------------------------------------------
def test_prepare_writes_shards_index_and_manifest_last(prepared, tree):
    m = load_manifest(resolve(str(prepared)))
    assert m.classes == CLASSES and m.counts == (6, 6, 6) and m.num_samples == 18
    assert [s.rows for s in m.shards] == [4, 4, 4, 4, 2]
    assert all(s.row_groups in ((3, 1), (2,)) for s in m.shards)
    assert m.provenance["source"] == str(tree) and m.provenance["shard_size"] == 4 and not m.skipped
    run = m.index.split("/")[0]
    files = listing(prepared)
    assert files == sorted([MANIFEST, run, m.index, *(s.path for s in m.shards)])  # no marker, no temp files
    t = pq.read_table(prepared / m.shards[0].path)
    assert t.column_names == ["id", "label", "image", "path"] and t.column("image")[0].as_py()[:2] == b"\xff\xd8"
    assert json.loads((prepared / MANIFEST).read_text())["num_samples"] == 18


def test_every_image_once_per_epoch_on_each_rank_and_epochs_differ(prepared):
    per_rank = [feeds(shard_spec(str(prepared)), r, 3) for r in range(3)]
    orders = {}
    for epoch in (0, 1):
        ids = [i for f in per_rank for i in read_ids(f["train"], epoch)]
        assert len(ids) == len(set(ids)) == 9  # 9 train images, 3 ranks with 3 each
        orders[epoch] = ids
        valid = [i for f in per_rank for i in read_ids(f["valid"], epoch)]
        assert len(valid) == len(set(valid)) == 3  # validation: every image once, in order
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1]


def test_splits_are_disjoint_seeded_and_equal_to_imagefolder_splits(prepared, tree):
    def splits(kind: str, uri: str, seed: int) -> dict[str, set[int]]:
        f = feeds(DataSpec(kind=kind, uri=uri, holdout_per_class=2, valid_fraction=0.2, seed=seed))
        return {name: set(read_ids(feed, 3)) for name, feed in f.items()}

    s = splits("shards", str(prepared), 0)
    assert not s["train"] & s["holdout"] and not s["train"] & s["valid"] and not s["holdout"] & s["valid"]
    assert s["train"] | s["holdout"] | s["valid"] == set(range(18))
    assert len(s["holdout"]) == 2 * 3
    assert splits("imagefolder", str(tree), 0) == s  # same ids and seeded split from the folder
    assert splits("shards", str(prepared), 0) == s and splits("shards", str(prepared), 1)["holdout"] != s["holdout"]


def test_separate_validation_set_and_class_count_check(prepared, tree, tmp_path):
    val = tmp_path / "val"
    prepare_shards(make_tree(tmp_path / "valtree", per_class=2, seed=1), str(val), PrepareOptions(shard_size=5))
    f = feeds(shard_spec(str(prepared), valid_uri=str(val)))
    assert sorted(read_ids(f["valid"])) == list(range(6))
    assert len(f["train"].rows) + len(f["holdout"].rows) == 18
    with pytest.raises(ValueError, match="has 3 classes, but the net expects 1000"):
        feeds(shard_spec(str(prepared)), num_classes=1000)
    with pytest.raises(ValueError, match="has 3 classes, but the net expects 10"):
        feeds(DataSpec(kind="imagefolder", uri=str(tree)), num_classes=10)


def test_retrain_trains_on_the_weight_and_held_out_images(prepared):
    search, retrain = open_splits(shard_spec(str(prepared)), 16), open_splits(shard_spec(str(prepared)), 16,
                                                                              role="retrain")
    ids = lambda rows: set(rows.ids(np.arange(len(rows))).tolist())  # noqa: E731
    assert ids(retrain.train) == ids(search.train) | ids(search.holdout) and len(retrain.holdout) == 0
    assert ids(retrain.valid) == ids(search.valid)


def test_prepare_and_stream_from_s3(tree, s3_env, monkeypatch):
    bucket = s3_env.new_bucket()
    m = prepare_shards(tree, f"s3://{bucket}/imnet", PrepareOptions(shard_size=5, row_group_size=2, workers=2))
    keys = sorted(o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert "imnet/manifest.json" in keys and not [k for k in keys if "_INCOMPLETE" in k or ".tmp" in k]
    assert {f"imnet/{s.path}" for s in m.shards} <= set(keys)
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):  # the explicit option, not the environment
        monkeypatch.delenv(var)
    spec = shard_spec(f"s3://{bucket}/imnet", endpoint=s3_env.url, holdout_per_class=1)
    assert sorted(all_ids(spec)) == list(range(18))
    x, y = next(feeds(spec)["train"].epoch(0))
    assert x.shape == (1, 3, 16, 16)
    forked = DataSpec(**{**spec.to_dict(), "workers": 2})  # 2 DataLoader processes
    assert sorted(all_ids(forked)) == list(range(18))


def test_overwrite_needs_a_flag_and_drops_the_replaced_set(prepared, tree):
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        prepare_shards(tree, str(prepared))
    old = load_manifest(resolve(str(prepared))).index.split("/")[0]
    prepare_shards(tree, str(prepared), PrepareOptions(overwrite=True))
    assert not (prepared / old).exists() and len(load_manifest(resolve(str(prepared))).shards) == 1


# ---- bad input: one clear line, nothing half-written ------------------------------------------------------------
def test_corrupt_jpeg_refused_leaves_nothing_and_cli_prints_one_line(tree, tmp_path):
    corrupt(tree / "bee" / "img002.jpg")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"bee/img002.jpg: corrupt image .*--on-corrupt skip"):
        prepare_shards(tree, str(out), PrepareOptions(shard_size=4))
    assert not out.exists()
    r = run_cli(["data", "prepare", "--imagefolder", str(tree), "--out", str(out), "--shard-size", "4"])
    assert r.returncode == 2
    assert_one_line_error(r.stderr, "img002.jpg", "corrupt image")
    assert not out.exists()


def test_corrupt_jpeg_skipped_and_counted_with_progress_bar(tree, tmp_path):
    corrupt(tree / "bee" / "img002.jpg")
    out = tmp_path / "out"
    r = run_cli(["data", "prepare", "--imagefolder", str(tree), "--out", str(out), "--shard-size", "4",
                 "--on-corrupt", "skip", "--progress"])
    assert r.returncode == 0, r.stderr
    assert "17 images, 3 classes" in r.stdout and "1 corrupt skipped" in r.stdout
    assert "img/s" in r.stderr or "18/18" in r.stderr  # tqdm's bar
    m = load_manifest(resolve(str(out)))
    assert m.counts == (6, 5, 6) and m.skipped == ("bee/img002.jpg",)
    ids = all_ids(shard_spec(str(out), holdout_per_class=1))
    assert sorted(ids) == [i for i in range(18) if i != 8]  # bee's third image is id 6 + 2


def test_empty_class_folder_and_missing_tree(tree, tmp_path, capsys):
    (tree / "dog").mkdir()
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"tree/dog: empty class folder"):
        prepare_shards(tree, str(out))
    code, err = run_main(["data", "prepare", "--imagefolder", str(tree), "--out", str(out)], capsys)
    assert code == 2
    assert_one_line_error(err, "dog: empty class folder")
    code, err = run_main(["data", "prepare", "--imagefolder", str(tmp_path / "nope"), "--out", str(out)], capsys)
    assert code == 2
    assert_one_line_error(err, "nope: ImageFolder directory not found")
    assert not out.exists()


def test_missing_shard_named_by_loaders_and_cli(prepared, capsys):
    m = load_manifest(resolve(str(prepared)))
    (prepared / m.shards[2].path).unlink()
    with pytest.raises(FileNotFoundError, match=r"part-00002.parquet: shard listed in the manifest is missing"):
        feeds(shard_spec(str(prepared)))
    code, err = run_main(["data", "info", str(prepared)], capsys)
    assert code == 2
    assert_one_line_error(err, "part-00002.parquet", "missing")


def test_unreadable_shard_named_when_read(prepared):
    m = load_manifest(resolve(str(prepared)))
    path = prepared / m.shards[1].path
    path.write_bytes(b"\0" * path.stat().st_size)  # same size: only reading can tell
    f = feeds(shard_spec(str(prepared)))
    with pytest.raises(ValueError, match=r"part-00001.parquet: not a readable shard"):
        [b for feed in f.values() for b in feed.epoch(0)]


def test_label_out_of_range_in_a_shard_or_the_index(prepared):
    m = load_manifest(resolve(str(prepared)))
    shard = prepared / m.shards[0].path
    t = pq.read_table(shard)
    pq.write_table(t.set_column(1, "label", pa.array(t.column("label").to_numpy() * 0 + 99)), shard, row_group_size=3)
    manifest = json.loads((prepared / MANIFEST).read_text())
    manifest["shards"][0]["bytes"] = shard.stat().st_size  # a producer that wrote a consistent manifest
    (prepared / MANIFEST).write_text(json.dumps(manifest))
    f = feeds(shard_spec(str(prepared)))
    with pytest.raises(ValueError, match=r"part-00000.parquet: image id \d+ has label 99, out of range for 3"):
        [b for feed in f.values() for b in feed.epoch(0)]
    index = pq.read_table(prepared / m.index)
    pq.write_table(index.set_column(1, "label", pa.array(index.column("label").to_numpy() * 0 + 7)), prepared / m.index)
    with pytest.raises(ValueError, match=r"index.parquet: image id \d+ has label 7, out of range for 3 classes"):
        feeds(shard_spec(str(prepared)))


def test_wrong_s3_credentials_refused_in_one_line_and_nothing_written(tree, s3_env, monkeypatch):
    from moto.core.authorization import enable_iam_authentication

    bucket = s3_env.new_bucket()
    good = f"s3://{bucket}/good"
    prepare_shards(tree, good, PrepareOptions(shard_size=9))
    wrong = {"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG0", "AWS_SECRET_ACCESS_KEY": "wrong"}
    for k, v in wrong.items():
        monkeypatch.setenv(k, v)
    with enable_iam_authentication():  # the real server now checks the keys
        with pytest.raises(PermissionError, match=rf"s3://{bucket}/new.*check AWS credentials"):
            prepare_shards(tree, f"s3://{bucket}/new")
        with pytest.raises(PermissionError, match=rf"s3://{bucket}/good/manifest.json.*check AWS credentials"):
            feeds(shard_spec(good))
        r = run_cli(["data", "prepare", "--imagefolder", str(tree), "--out", f"s3://{bucket}/new"],
                    env={**s3_env.env(), **wrong})
    assert r.returncode == 2
    assert_one_line_error(r.stderr, f"s3://{bucket}/new", "check AWS credentials")
    keys = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys and all(k.startswith("good/") for k in keys)


def test_config_and_option_errors_are_value_errors():
    for kw, msg in [(dict(kind="tar"), "kind: must be one of"), (dict(kind="shards"), "needs the location"),
                    (dict(valid_fraction=0.0), "no validation data"), (dict(workers=-1), "workers: must be"),
                    (dict(color_jitter="wild"), "color_jitter: must be one of"),
                    (dict(kind="imagefolder", uri="s3://bucket/train"), "imagefolder kind reads a local or NFS")]:
        with pytest.raises(ValueError, match=msg):
            DataSpec(**kw)
    with pytest.raises(ValueError, match="shard size must be at least 1"):
        PrepareOptions(shard_size=0)
    with pytest.raises(ValueError, match="rank must be in"):
        feeds(DataSpec(), rank=2, world=2)
