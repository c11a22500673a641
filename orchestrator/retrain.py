"""Retraining a derived architecture from scratch, on the same data the search ran on, reporting top-1 accuracy.

A searched architecture is judged by training it alone (its supernet weights are shared and biased), so every
point of a sweep's Pareto front is a retrained net. Retraining runs on the search's training core
(``train.core``: device, precision, one SGD step, distributed evaluation, per-rank state) and data pipeline
(``data.source``/``data.feed``): in one process (``nas retrain``), or data-parallel on Ray Train
(``nas retrain --workers N``), where every rank reads its share of each global batch and gradients are averaged.
It trains on the weight-training and held-out images of the data spec and validates on its validation split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from orchestrator.config import load, to_dict
from orchestrator.data.source import DataSpec, Splits, open_splits

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "retrain_state.pt"


@dataclass(frozen=True)
class RetrainConfig:
    """How a net is retrained: SGD with (Nesterov) momentum, a cosine schedule to 0, label smoothing, and the
    data (the same ``data:`` section as a search's)."""

    epochs: int = 5
    lr: float = 0.1  # at batch_size; the official ImageNet recipe: 0.05 at 256
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    no_decay_bn: bool = True  # BN weights without weight decay (official retraining: no_decay_keys='bn')
    label_smoothing: float = 0.1
    batch_size: int = 64  # the global batch, split evenly among the ranks
    seed: int = 0  # the net's initialisation
    precision: str = "fp32"  # fp32 | bf16 autocast
    channels_last: bool = False
    data: DataSpec = field(default_factory=DataSpec)

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
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"retrain.precision: must be fp32 or bf16, got {self.precision!r}")

    def to_dict(self) -> dict:
        return to_dict(self)

    def replace(self, **changes: Any) -> "RetrainConfig":
        return dataclasses.replace(self, **changes)


def retrain_config_from_dict(data: Mapping[str, Any] | None, overrides: Sequence[str] = ()) -> RetrainConfig:
    """A retrain config from a mapping (``retrain.<key>`` named in errors)."""
    from orchestrator.config import apply_overrides, build

    try:
        return build(RetrainConfig, apply_overrides(dict(data or {}), list(overrides)))
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith("retrain.") else f"retrain.{msg}") from None


def load_retrain_config(path: str | Path, overrides: Sequence[str] = ()) -> RetrainConfig:
    """A retrain config from YAML (at top level or under ``retrain:``) plus ``--set`` pairs."""
    try:
        return load(RetrainConfig, path, overrides, section="retrain")
    except ValueError as e:
        head, _, rest = str(e).partition(": ")
        msg = rest if rest.startswith("retrain.") else f"retrain.{rest}"
        raise ValueError(f"{head}: {msg}") from None


def retrain_data(arch_space, cfg: RetrainConfig) -> Splits:
    """The splits a net of ``arch_space`` retrains on; a net whose classes (or nothing of) the data fits is
    refused here, before any compute (an ImageNet net on the digits, say)."""
    return open_splits(cfg.data, arch_space.resolution, arch_space.num_classes, "retrain",
                       f"the net's space {arch_space.name!r}")


# ---------------------------------------------------------------------------------------------- the training
@dataclass
class RetrainState:
    net: torch.nn.Module
    trainer: Any
    steps_per_epoch: int
    step: int = 0
    history: list[dict] = field(default_factory=list)
    seconds: dict = field(default_factory=lambda: {"train": 0.0, "eval": 0.0})


def retrain_state_dict(state: RetrainState, cfg: RetrainConfig, arch: str) -> dict:
    """Everything to continue exactly (loads with ``weights_only=True``); collective across ranks."""
    from orchestrator.arch import Arch
    from orchestrator.provenance import provenance
    from orchestrator.search.state import _cpu
    from orchestrator.spaces import get_space
    from orchestrator.train.core import CHECKPOINT_VERSION
    from orchestrator.train.runtime import average_bn_stats, rng_state

    rt = state.trainer.rt
    average_bn_stats(state.net, rt.comm)
    rngs = rt.comm.gather(_cpu(rng_state(rt.device)))
    space = get_space(Arch.parse(arch).space)
    return {"version": CHECKPOINT_VERSION, "kind": "retrain", "config": cfg.to_dict(), "arch": arch,
            "space": space.name, "space_fingerprint": space.fingerprint(), "steps_per_epoch": state.steps_per_epoch,
            "world_size": rt.world, "net": _cpu(state.net.state_dict()), "opt": _cpu(state.trainer.opt.state_dict()),
            "step": state.step, "history": [dict(h) for h in state.history], "seconds": dict(state.seconds),
            "rng": rngs, "provenance": provenance()}


def _load_retrain_state(state: RetrainState, saved: dict, cfg: RetrainConfig, arch: str) -> None:
    from orchestrator.search.state import _config_diff
    from orchestrator.train.core import CHECKPOINT_VERSION
    from orchestrator.train.runtime import set_rng_state

    if saved.get("version") != CHECKPOINT_VERSION or saved.get("kind") != "retrain":
        raise ValueError(f"checkpoint is not a retrain state of format {CHECKPOINT_VERSION}")
    if saved["arch"] != arch:
        raise ValueError(f"checkpoint is of architecture {saved['arch']}, not {arch}")
    diff = _config_diff(cfg.to_dict(), saved["config"])
    if diff:
        raise ValueError(f"checkpoint was written with another retrain config (differs in {', '.join(diff)})")
    if saved["steps_per_epoch"] != state.steps_per_epoch:
        raise ValueError(f"checkpoint has {saved['steps_per_epoch']} steps per epoch, data and workers give "
                         f"{state.steps_per_epoch}")
    rt = state.trainer.rt
    state.net.load_state_dict(saved["net"])
    state.trainer.opt.load_state_dict(saved["opt"])
    state.step, state.history = saved["step"], [dict(h) for h in saved["history"]]
    state.seconds = dict(saved["seconds"])
    if len(saved["rng"]) == rt.world:
        set_rng_state(saved["rng"][rt.rank], rt.device)


def train_net(arch: str, cfg: RetrainConfig, *, rt=None, data: Splits | None = None,
              on_epoch: Callable[[RetrainState, dict], None] | None = None, resume: dict | None = None,
              progress: bool | Callable[..., Any] = False) -> tuple[torch.nn.Module, RetrainState]:
    """Train ``arch`` from scratch with ``cfg`` on this rank of ``rt``; ``on_epoch(state, row)`` after each epoch's
    evaluation. The net's initialisation and every batch are functions of the seeds only, so every rank builds the
    same net, and resuming from ``resume`` (a ``retrain_state_dict``) continues exactly."""
    from orchestrator.network import build_net
    from orchestrator.search.driver import local_batch, progress_bar
    from orchestrator.train.core import Trainer, cosine_lr, evaluate, metrics_window, read_window, sgd
    from orchestrator.train.runtime import Precision, Runtime, average_bn_stats

    rt = rt or Runtime(precision=Precision(cfg.precision, cfg.channels_last))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = build_net(arch)
    data = data or retrain_data(net.space, cfg)
    net = rt.module(net)
    trainer = Trainer(net, sgd(net, cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay, cfg.no_decay_bn), rt,
                      cfg.label_smoothing)
    bs = local_batch(cfg.batch_size, rt.world, "batch_size")
    train = cfg.data.feed(data.train, batch_size=bs, rank=rt.rank, world=rt.world, stream="retrain",
                          pin_memory=rt.on_gpu)
    valid = cfg.data.feed(data.valid, batch_size=bs, rank=rt.rank, world=rt.world, shuffle=False, stream="valid",
                          pin_memory=rt.on_gpu)
    spe = train.batches_per_epoch
    if spe < 1:
        raise ValueError(f"batch_size: {cfg.batch_size} is more than the {len(data.train)} training images on "
                         f"{rt.world} worker(s)")
    state = RetrainState(net, trainer, spe)
    if resume is not None:
        _load_retrain_state(state, resume, cfg, arch)
    total = cfg.epochs * spe
    stream = train.stream(state.step)
    bar = progress_bar(progress, total, state.step, "retrain")
    window: dict = {}
    t0 = time.perf_counter()
    while state.step < total:
        x, y = rt.batch(*next(stream))
        metrics_window(window, trainer.step(x, y, cosine_lr(cfg.lr, state.step, total)))
        state.step += 1
        bar.update(1)
        if state.step % spe == 0:
            state.seconds["train"] += _lap(rt, t0)
            t0 = time.perf_counter()
            average_bn_stats(net, rt.comm)
            correct, n = evaluate(net, valid.epoch(0), rt)
            state.seconds["eval"] += _lap(rt, t0)
            row = {"epoch": state.step // spe, "train_loss": read_window(window).get("loss", float("nan")),
                   "val_accuracy": correct / max(1, n), "val_images": n,
                   "lr": cosine_lr(cfg.lr, state.step, total)}
            window = {}
            state.history.append(row)
            bar.set_postfix(val=f"{row['val_accuracy']:.3f}")
            if on_epoch is not None:
                on_epoch(state, row)
            t0 = time.perf_counter()
    bar.close()
    return net, state


def _lap(rt, t0: float) -> float:
    if rt.on_gpu:
        torch.cuda.synchronize(rt.device)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- one process
@dataclass(frozen=True)
class RetrainResult:
    arch: str
    val_accuracy: float
    val_images: int
    epochs: int
    device: str
    run_id: str | None
    tracking_uri: str | None
    worker_seconds: float
    gpu_seconds: float
    wall_seconds: float
    onnx_path: str | None  # a local copy (also an artifact of the run)
    history: tuple[dict, ...] = ()


def retrain_here(arch: str, cfg: RetrainConfig, out_dir: str | Path, rt=None, progress: bool = False) -> RetrainResult:
    """Retrain in this process (``nas retrain`` without ``--workers``) and write ``retrain.json``, the weights
    (``net.pt``, a plain state dict) and ``net.onnx`` to ``out_dir``, each atomically."""
    from orchestrator.export import atomic_write_bytes, export_onnx
    from orchestrator.state_io import state_bytes

    out = Path(out_dir)
    t0 = time.time()
    net, state = train_net(arch, cfg, rt=rt, progress=progress)
    wall = time.time() - t0
    last = state.history[-1]
    device = str(state.trainer.rt.device)
    result = RetrainResult(arch, last["val_accuracy"], last["val_images"], cfg.epochs, device, None, None, wall,
                           wall if device.startswith("cuda") else 0.0, wall, str(out / "net.onnx"),
                           tuple(state.history))
    export_onnx(net.to("cpu").float(), out / "net.onnx")
    atomic_write_bytes(out / "net.pt", state_bytes({k: v.detach().cpu() for k, v in net.state_dict().items()}))
    atomic_write_bytes(out / "retrain.json", json.dumps({**asdict(result), "config": cfg.to_dict(),
                                                         "seconds": state.seconds}, indent=1).encode())
    return result


# ---------------------------------------------------------------------------------------------- on Ray Train
@dataclass(frozen=True)
class RetrainSpec:
    """Where a retrain runs and is recorded (the config says how it trains)."""

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
    allow_autoscale: bool = False
    progress: bool = True  # rank 0's progress bar on the driver's console (a sweep's trials draw none)

    def __post_init__(self) -> None:
        from orchestrator.cluster_checks import check_worker_shape

        check_worker_shape(self.num_workers, self.cpus_per_worker)


def train_loop_per_worker(config: dict) -> dict:
    """Runs on every Train worker: restore or start, train on this rank's device with averaged gradients,
    evaluate once across ranks and report a checkpoint every epoch."""
    from orchestrator import tracking
    from orchestrator.distributed import (
        RankZeroBar,
        report_checkpoint,
        restored_state,
        seed_rank_rng,
        worker_runtime,
    )
    from orchestrator.state_io import state_bytes

    cfg = retrain_config_from_dict(config["retrain"])
    rt = worker_runtime(config["use_gpu"], cfg.precision, cfg.channels_last, int(config["threads"]))
    resume = restored_state(CHECKPOINT_FILE, "retrain checkpoint")
    if resume is None:
        seed_rank_rng(cfg.seed, rt.rank)  # each rank its own dropout draws; a resume restores them instead
    sink = tracking.MetricSink(config["tracking_uri"], config["run_id"]) if rt.rank == 0 else None

    def on_epoch(state: RetrainState, row: dict) -> None:
        saved = retrain_state_dict(state, cfg, config["arch"])  # collective
        if sink is not None:
            sink.log(row, step=row["epoch"])
        report_checkpoint(row, {CHECKPOINT_FILE: saved} if rt.rank == 0 else None)

    net, state = train_net(config["arch"], cfg, rt=rt, on_epoch=on_epoch, resume=resume,
                           progress=RankZeroBar if rt.rank == 0 and config.get("progress", True) else False)
    if sink is not None:
        sink.flush(force=True)
    # Train refuses tensors in a return value: the weights travel as torch.save bytes
    return {"history": state.history, "seconds": state.seconds, "device": str(rt.device),
            "state_bytes": state_bytes({k: v.detach().cpu() for k, v in net.state_dict().items()}),
            "resumed_from_epoch": resume["step"] // resume["steps_per_epoch"] if resume else None,
            "tracking": sink.summary() if sink is not None else None}


def run_retrain(arch: str, cfg: RetrainConfig, spec: RetrainSpec, *, callbacks: Sequence[Any] = (),
                extra_metrics: Mapping[str, float] | None = None, extra_files: Mapping[str, str | bytes] | None = None,
                extra_tags: Mapping[str, str] | None = None, onnx_dir: str | Path | None = None,
                cost_before: Any = None) -> RetrainResult:
    """Retrain ``arch`` on ``spec.num_workers`` Ray Train workers and record it in MLflow (nested under
    ``spec.parent_run_id``): curves, final top-1 and the number of images it was measured on, cost, net.config,
    ONNX. ``extra_metrics``/``extra_files`` (e.g. the measured latency and its table reference) go into the same
    run, so one run is one Pareto point; ``cost_before`` (a ``cost.Cost``: the search, its share of the warm-up and
    the measurement) is added to the retraining's own cost in the run's ``cost.*`` metrics. Everything checkable is
    checked before any worker starts."""
    from orchestrator import tracking
    from orchestrator.arch import Arch
    from orchestrator.cluster_checks import check_storage
    from orchestrator.ray_session import ray_session
    from orchestrator.spaces import get_space

    a = Arch.parse(arch) if isinstance(arch, str) else arch
    space = get_space(a.space)
    space.validate(a)  # a bad architecture fails here, before any worker starts
    arch = a.encode()
    splits = retrain_data(space, cfg)  # a class mismatch or missing data fails here too
    uri = tracking.resolve_tracking_uri(spec.tracking_uri)
    tracking.check_tracking_uri(uri)
    storage = check_storage(spec.storage_path)
    # a stable default name (str hashes differ per process), so that the same command resumes the run
    name = spec.name or f"retrain-{hashlib.sha256(arch.encode()).hexdigest()[:8]}"
    with ray_session():
        return _fit_retrain(arch, a, space, splits, cfg, spec, uri, storage, name, callbacks, extra_metrics,
                            extra_files, extra_tags, onnx_dir, cost_before)


def _fit_retrain(arch, a, space, splits, cfg, spec, uri, storage, name, callbacks, extra_metrics, extra_files,
                 extra_tags, onnx_dir, cost_before) -> RetrainResult:
    from orchestrator import tracking
    from orchestrator.cost import Cost, retrain_cost
    from orchestrator.cluster_checks import check_resources, per_worker_resources
    from orchestrator.distributed import fit_tracked, log_tracking_summary, tracked_run
    from orchestrator.export import export_onnx
    from orchestrator.netconfig import to_net_config
    from orchestrator.network import build_net
    from orchestrator.provenance import provenance
    from orchestrator.state_io import load_state

    check_resources(spec.num_workers, per_worker_resources(spec.cpus_per_worker, spec.use_gpu), spec.allow_autoscale)
    tags = {"nas.kind": "retrain", "nas.arch": arch, "nas.space": a.space, "nas.space_fingerprint":
            space.fingerprint(), "nas.run_name": name, "nas.data": splits.where, **dict(spec.tags),
            **dict(extra_tags or {})}
    run_id, _ = tracked_run(storage, name, uri, spec.experiment, lambda: tracking.create_run(
        uri, spec.experiment, name, tags=tags, parent_run_id=spec.parent_run_id,
        params={"arch": arch, "retrain": cfg.to_dict(), "provenance": provenance(),
                "run": {"num_workers": spec.num_workers, "use_gpu": spec.use_gpu,
                        "cpus_per_worker": spec.cpus_per_worker}}))
    result, wall = fit_tracked(
        "retrain", name, train_loop_per_worker,
        {"arch": arch, "retrain": cfg.to_dict(), "run_id": run_id, "tracking_uri": uri, "use_gpu": spec.use_gpu,
         "threads": max(1, int(spec.cpus_per_worker)), "progress": spec.progress},
        num_workers=spec.num_workers, use_gpu=spec.use_gpu,
        per_worker=per_worker_resources(spec.cpus_per_worker, spec.use_gpu), storage=storage,
        max_failures=spec.max_failures, keep=1, callbacks=callbacks, uri=uri, run_id=run_id)
    out = result.return_value
    net = build_net(arch)
    net.load_state_dict(load_state(out["state_bytes"], "retrained weights"))
    onnx_dir = Path(onnx_dir) if onnx_dir else Path(tempfile.mkdtemp(prefix="retrain-onnx-"))
    onnx_path = onnx_dir / f"{name}.onnx"
    export_onnx(net, onnx_path)
    last = out["history"][-1]
    worker_seconds = wall * spec.num_workers
    on_gpu = out["device"].startswith("cuda")
    cost = {"worker_seconds": worker_seconds, "gpu_seconds": worker_seconds if on_gpu else 0.0,
            "wall_seconds": wall, **{f"{k}_seconds": v for k, v in out["seconds"].items()}}
    gap = log_tracking_summary(uri, run_id, out.get("tracking"))
    tracking.log_artifact_files(uri, run_id, {
        "arch.txt": arch + "\n", "net.config": json.dumps(to_net_config(a), indent=4),
        "net.onnx": onnx_path.read_bytes(),
        "retrain.json": json.dumps({"arch": arch, "config": cfg.to_dict(), "history": out["history"],
                                    "device": out["device"], "resumed_from_epoch": out["resumed_from_epoch"],
                                    **cost}, indent=1),
        **dict(extra_files or {}),
    })
    total = (cost_before or Cost()) + retrain_cost(worker_seconds, on_gpu)
    tracking.log_metrics(uri, run_id, {"val_accuracy": last["val_accuracy"], "val_error": 1 - last["val_accuracy"],
                                       "val_images": last["val_images"], **cost, **gap, **total.metrics(),
                                       "point_worker_seconds": total.total_worker,
                                       "point_gpu_seconds": total.total_gpu, **dict(extra_metrics or {})},
                         step=cfg.epochs)
    tracking.end_run(uri, run_id)
    log.info("retrained %s: top-1 %.3f on %d images in %.0f s", arch, last["val_accuracy"], last["val_images"], wall)
    return RetrainResult(arch, last["val_accuracy"], last["val_images"], cfg.epochs, out["device"], run_id, uri,
                         worker_seconds, cost["gpu_seconds"], wall, str(onnx_path), tuple(out["history"]))
