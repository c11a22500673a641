"""Retraining a derived architecture from scratch on Ray Train, with a standard recipe, reporting top-1 accuracy.

A searched architecture is judged by training it alone (its supernet weights are shared and biased), so every
point of a sweep's Pareto front is a retrained net. Data-parallel as the search: every rank draws the same
global batch order from the seed, takes its slice ``rank::world`` and all-reduces the gradients, so the update
equals the global batch's. Rank 0 logs the curves; the driver logs the ONNX, net.config and result.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "retrain_state.pt"


@dataclass(frozen=True)
class RetrainRecipe:
    """The standard recipe: SGD with Nesterov momentum, a cosine schedule to 0, label smoothing."""

    epochs: int = 5
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    batch_size: int = 64
    seed: int = 0
    data_seed: int = 0  # the digits split; the search's held-out part is trained on, its validation part is not
    valid_fraction: float = 0.2

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"retrain.{key}: must be at least 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ValueError(f"retrain.lr: must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"retrain.momentum: must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("retrain.nesterov: Nesterov momentum needs retrain.momentum > 0")
        if self.weight_decay < 0:
            raise ValueError(f"retrain.weight_decay: must be non-negative, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"retrain.label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if not 0 < self.valid_fraction < 1:
            raise ValueError(f"retrain.valid_fraction: must be in (0, 1), got {self.valid_fraction}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "RetrainRecipe":
        data = dict(data or {})
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"retrain.{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
        for k, v in data.items():
            want = names[k].type
            if want == "bool" and not isinstance(v, bool):
                raise ValueError(f"retrain.{k}: expected true or false, got {v!r}")
            if want == "int" and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"retrain.{k}: expected an integer, got {v!r}")
            if want == "float":
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ValueError(f"retrain.{k}: expected a number, got {v!r}")
                data[k] = float(v)
        return cls(**data)


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> RetrainRecipe:
    """A recipe from YAML (the file may hold the recipe at top level or under ``retrain:``) plus ``--set`` pairs."""
    from orchestrator.search.config import apply_overrides, read_yaml

    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a retrain recipe must be a mapping")
    data = data.get("retrain", data)
    try:
        return RetrainRecipe.from_dict(apply_overrides(data, list(overrides)))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


@dataclass(frozen=True)
class RetrainSpec:
    """Where a retrain runs and is recorded (the recipe says how it trains)."""

    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    storage_path: str = "runs"
    name: str | None = None  # the run's folder under storage_path; the same name resumes it
    max_failures: int = 1
    tracking_uri: str | None = None
    experiment: str = "nas-retrain"
    parent_run_id: str | None = None  # the search run this net came from
    tags: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        from orchestrator.cluster_checks import check_worker_shape

        check_worker_shape(self.num_workers, self.cpus_per_worker)


@dataclass(frozen=True)
class RetrainResult:
    arch: str
    val_accuracy: float
    epochs: int
    run_id: str
    tracking_uri: str
    worker_seconds: float
    gpu_seconds: float
    wall_seconds: float
    onnx_path: str | None  # a local copy (also an artifact of the run)


def cosine_lr(recipe: RetrainRecipe, step: int, total: int) -> float:
    return 0.5 * recipe.lr * (1 + math.cos(math.pi * step / max(1, total)))


def retrain_data(space_name: str, recipe: RetrainRecipe):
    """Train on everything but the validation split (the search's held-out images included); validate on it."""
    from orchestrator.data.digits import digits_splits
    from orchestrator.spaces import get_space

    space = get_space(space_name)
    s = digits_splits(space.resolution, seed=recipe.data_seed, valid_fraction=recipe.valid_fraction)
    x = torch.cat([s.train.tensors[0], s.holdout.tensors[0]])
    y = torch.cat([s.train.tensors[1], s.holdout.tensors[1]])
    return (x, y), s.valid.tensors


@torch.no_grad()
def top1(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    net.eval()
    correct = sum(int((net(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / max(1, len(x))


def train_net(arch: str, recipe: RetrainRecipe, *, shard: tuple[int, int] = (0, 1), sync=None, on_epoch=None,
              resume: dict | None = None) -> tuple[torch.nn.Module, list[dict]]:
    """Train ``arch`` from scratch with ``recipe`` (one rank of ``shard``); ``on_epoch(state, row)`` after each epoch.

    Init and batch order are functions of the seed only, so every rank builds the same net and draws the same
    batches; resuming from ``resume`` (a state saved by ``on_epoch``) continues exactly."""
    import torch.nn.functional as F

    from orchestrator.network import build_net
    from orchestrator.search.sampling import generator

    rank, world = shard
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        net = build_net(arch)
    (x, y), (vx, vy) = retrain_data(net.space.name, recipe)
    opt = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                          weight_decay=recipe.weight_decay)
    spe = len(x) // recipe.batch_size
    if spe < 1 or world > recipe.batch_size:
        raise ValueError(f"retrain.batch_size {recipe.batch_size} does not fit {len(x)} images on {world} workers")
    total, start, history = recipe.epochs * spe, 0, []
    if resume is not None:
        net.load_state_dict(resume["net"])
        opt.load_state_dict(resume["opt"])
        start, history = resume["epoch"], list(resume["history"])
    for epoch in range(start, recipe.epochs):
        perm = torch.randperm(len(x), generator=generator(recipe.seed, "retrain-data", epoch))
        net.train()
        loss_sum = 0.0
        for i in range(spe):
            idx = perm[i * recipe.batch_size:(i + 1) * recipe.batch_size][rank::world]
            for group in opt.param_groups:
                group["lr"] = cosine_lr(recipe, epoch * spe + i, total)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x[idx]), y[idx], label_smoothing=recipe.label_smoothing)
            loss.backward()
            if sync is not None:
                sync([p.grad for p in net.parameters() if p.grad is not None])
            opt.step()
            loss_sum += loss.item()
        row = {"epoch": epoch + 1, "train_loss": loss_sum / spe, "val_accuracy": top1(net, vx, vy),
               "lr": opt.param_groups[0]["lr"]}
        history.append(row)
        if on_epoch is not None:
            on_epoch({"net": net.state_dict(), "opt": opt.state_dict(), "epoch": epoch + 1, "history": history}, row)
    return net, history


def train_loop_per_worker(config: dict) -> dict:
    """Runs on every Train worker: restore or start, train with all-reduced gradients, report every epoch."""
    import ray.train

    from orchestrator import tracking
    from orchestrator.distributed import allreduce_mean, report_checkpoint
    from orchestrator.state_io import load_state

    torch.set_num_threads(max(1, int(config["threads"])))
    recipe = RetrainRecipe(**config["recipe"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    resume = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = load_state(Path(d) / CHECKPOINT_FILE, "retrain checkpoint")

    def on_epoch(state: dict, row: dict) -> None:
        if rank == 0:
            tracking.log_metrics(config["tracking_uri"], config["run_id"], row, step=row["epoch"])
        report_checkpoint(row, {CHECKPOINT_FILE: state} if rank == 0 else None)

    net, history = train_net(config["arch"], recipe, shard=(rank, world), sync=allreduce_mean, on_epoch=on_epoch,
                             resume=resume)
    buf = io.BytesIO()  # Train refuses tensors in a return value: the weights travel as torch.save bytes
    torch.save(net.state_dict(), buf)
    return {"history": history, "state_bytes": buf.getvalue(),
            "resumed_from_epoch": resume["epoch"] if resume else None}


def run_retrain(arch: str, recipe: RetrainRecipe, spec: RetrainSpec, *, callbacks: Sequence[Any] = (),
                extra_metrics: Mapping[str, float] | None = None, extra_files: Mapping[str, str | bytes] | None = None,
                onnx_dir: str | Path | None = None) -> RetrainResult:
    """Retrain ``arch`` on ``spec.num_workers`` Ray Train workers and record it in MLflow (nested under
    ``spec.parent_run_id``): curves, final top-1, cost, net.config, ONNX. ``extra_metrics``/``extra_files`` (e.g.
    the measured latency and its table reference) go into the same run, so one run is one Pareto point."""
    import ray
    from orchestrator import tracking
    from orchestrator.arch import Arch
    from orchestrator.cluster_checks import check_resources, check_storage, per_worker_resources
    from orchestrator.distributed import fit_tracked
    from orchestrator.export import export_onnx
    from orchestrator.netconfig import to_net_config
    from orchestrator.network import build_net

    from orchestrator.spaces import get_space

    a = Arch.parse(arch) if isinstance(arch, str) else arch
    get_space(a.space).validate(a)  # a bad architecture fails here, before any worker starts
    arch = a.encode()
    uri = tracking.resolve_tracking_uri(spec.tracking_uri)
    tracking.check_tracking_uri(uri)
    storage = check_storage(spec.storage_path)
    name = spec.name or f"retrain-{abs(hash(arch)) % 10**8:08d}"
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", log_to_driver=True)
    per_worker = per_worker_resources(spec.cpus_per_worker, spec.use_gpu)
    check_resources(spec.num_workers, per_worker)
    tags = {"nas.kind": "retrain", "nas.arch": arch, "nas.space": a.space, "nas.run_name": name, **dict(spec.tags)}
    run_id = tracking.create_run(uri, spec.experiment, name, tags=tags, parent_run_id=spec.parent_run_id,
                                 params={"arch": arch, "retrain": asdict(recipe),
                                         "run": {"num_workers": spec.num_workers,
                                                 "cpus_per_worker": spec.cpus_per_worker, "use_gpu": spec.use_gpu}})
    result, wall = fit_tracked(
        "retrain", name, train_loop_per_worker,
        {"arch": arch, "recipe": asdict(recipe), "run_id": run_id, "tracking_uri": uri,
         "threads": max(1, int(spec.cpus_per_worker))},
        num_workers=spec.num_workers, use_gpu=spec.use_gpu, per_worker=per_worker, storage=storage,
        max_failures=spec.max_failures, keep=1, callbacks=callbacks, uri=uri, run_id=run_id)
    out = result.return_value
    net = build_net(arch)
    net.load_state_dict(torch.load(io.BytesIO(out["state_bytes"]), map_location="cpu", weights_only=True))
    onnx_dir = Path(onnx_dir) if onnx_dir else Path(tempfile.mkdtemp(prefix="retrain-onnx-"))
    onnx_path = onnx_dir / f"{name}.onnx"
    export_onnx(net, onnx_path)
    acc = out["history"][-1]["val_accuracy"]
    worker_seconds = wall * spec.num_workers
    cost = {"worker_seconds": worker_seconds, "gpu_seconds": worker_seconds if spec.use_gpu else 0.0,
            "wall_seconds": wall}
    tracking.log_artifact_files(uri, run_id, {
        "arch.txt": arch + "\n", "net.config": json.dumps(to_net_config(a), indent=4),
        "net.onnx": onnx_path.read_bytes(),
        "retrain.json": json.dumps({"arch": arch, "recipe": asdict(recipe), "history": out["history"],
                                    "resumed_from_epoch": out["resumed_from_epoch"], **cost}, indent=1),
        **dict(extra_files or {}),
    })
    tracking.log_metrics(uri, run_id, {"val_accuracy": acc, "val_error": 1 - acc, **cost, **dict(extra_metrics or {})},
                         step=recipe.epochs)
    tracking.end_run(uri, run_id)
    log.info("retrained %s: top-1 %.3f in %.0f s", arch, acc, wall)
    return RetrainResult(arch, acc, recipe.epochs, run_id, uri, worker_seconds, cost["gpu_seconds"], wall,
                         str(onnx_path))
