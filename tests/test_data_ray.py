"""Shards streamed to 2 Ray Train workers, from a local folder and from a real S3 server: each image once per epoch.

One ``fit()`` (about 35 s here): both workers read both shard sets for two epochs and gather the ids they saw.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.distributed as dist

from orchestrator.data.prepare import PrepareOptions, prepare_shards
from orchestrator.data.source import DataSpec
from tests.servers import free_port
from tests.test_data import feeds, make_tree, read_ids

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("a", "b", "c", "d")
PER_CLASS = 10


def _worker(config: dict) -> dict | None:
    """Runs on every Train worker: read this rank's share of each split, gather every rank's ids on rank 0."""
    import ray.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seen: dict[str, list[int]] = {}
    for name, uri in config["uris"].items():
        spec = DataSpec(kind="shards", uri=uri, holdout_per_class=2, valid_fraction=0.2, endpoint=config["endpoint"])
        f = feeds(spec, rank, world)
        for epoch in (0, 1):
            for split, feed in f.items():
                seen[f"{name}/{epoch}/{split}"] = read_ids(feed, epoch)  # ids checked against the labels read
    everyone: list = [None] * world
    dist.all_gather_object(everyone, {"rank": rank, "seen": seen})
    ray.train.report({"rank": rank, "images": sum(len(v) for v in seen.values())})
    return everyone if rank == 0 else None


def test_two_train_workers_see_each_image_once_per_epoch(tmp_path, s3_env):
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tree = make_tree(tmp_path / "tree", CLASSES, PER_CLASS)
    bucket = s3_env.new_bucket()
    uris = {"local": str(tmp_path / "shards"), "s3": f"s3://{bucket}/train"}
    for uri in uris.values():
        prepare_shards(tree, uri, PrepareOptions(shard_size=7, row_group_size=3, workers=2))

    env = {**s3_env.env(), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # address="local": a private Ray, never a cluster another `ray start` on this machine left in
    # /tmp/ray/ray_current_cluster (ray.init() with no address joins that one). Its own dashboard on a free port:
    # Ray Train's placement-group cleaner asks the State API whether the run's controller lives, and without a
    # dashboard of its own that question reached another local cluster's (port 8265), which answered "dead", and
    # the cleaner removed the run's workers (seen once, with a second test run beside this one)
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=free_port(), runtime_env={"env_vars": env}, log_to_driver=False)
    try:
        trainer = TorchTrainer(
            _worker, train_loop_config={"uris": uris, "endpoint": s3_env.url},
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
            run_config=RunConfig(name="data-ray", storage_path=str(tmp_path / "ray")),
        )
        result = trainer.fit()
    finally:
        ray.shutdown()

    ranks = {r["rank"]: r["seen"] for r in result.return_value}
    assert sorted(ranks) == [0, 1]
    n = len(CLASSES) * PER_CLASS
    for name in uris:
        splits = {}
        for epoch in (0, 1):
            for split in ("train", "holdout", "valid"):
                per_rank = [ranks[r][f"{name}/{epoch}/{split}"] for r in (0, 1)]
                both = per_rank[0] + per_rank[1]
                assert len(both) == len(set(both)), f"{name} epoch {epoch} {split}: an image seen twice"
                assert all(per_rank) and len(per_rank[0]) == len(per_rank[1]) or split == "valid", \
                    f"{name} epoch {epoch} {split}: ranks got unequal shares"
                splits.setdefault(split, set(both))
                assert set(both) == splits[split], f"{name} {split}: epochs cover different images"
        assert not splits["train"] & splits["holdout"] and not splits["holdout"] & splits["valid"]
        assert not splits["train"] & splits["valid"]
        assert splits["train"] | splits["holdout"] | splits["valid"] == set(range(n)), f"{name}: images missing"
        assert len(splits["holdout"]) == 2 * len(CLASSES)
        assert ranks[0][f"{name}/0/train"] != ranks[0][f"{name}/1/train"]  # a new shuffle each epoch
    assert ranks[0]["local/0/holdout"] == ranks[0]["s3/0/holdout"]  # same ids, same split, wherever stored
