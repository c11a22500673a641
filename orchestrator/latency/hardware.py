"""Hardware profiles: names for the targets a latency table is about, and how Ray finds a node that has one.

A measured profile is named after its device (``cpu-amd-epyc``, ``cuda-nvidia-h100-80gb-hbm3``) and a node
offers it as the Ray custom resource ``hw:<name>``; table builds and validations request that resource, so
they run where the hardware is. ``flops`` (analytic) and ``pixel1`` (the official imported table) need no node.
Any other name (``pixel7-litert``, ``jetson-orin-trt``) is a kit device: a device that is no cluster node,
whose table is fitted from a latency kit it measured (``latency.kit``); its latency is only ever predicted.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass

import torch

RESOURCE_PREFIX = "hw:"
ANALYTIC = ("flops",)
IMPORTED = ("pixel1",)
MEASURED_KINDS = ("cpu", "cuda")
DEVICE = "device"  # a kit device: measured by its user with a latency kit, never a cluster node
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class HardwareProfile:
    """A named latency target; ``kind`` is ``cpu`` or ``cuda`` (measured on a cluster node), ``analytic``,
    ``imported`` or ``device`` (a kit device)."""

    name: str
    kind: str

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"malformed hardware name {self.name!r}: use lower-case letters, digits, '.', '_', '-'")
        if self.kind not in (*MEASURED_KINDS, "analytic", "imported", DEVICE):
            raise ValueError(f"unknown hardware kind {self.kind!r}")

    @property
    def measured(self) -> bool:
        return self.kind in MEASURED_KINDS

    @property
    def resource(self) -> str:
        """The Ray custom resource a node advertises when it has this hardware."""
        return RESOURCE_PREFIX + self.name

    @property
    def device(self) -> str:
        """The torch device a measurement of this profile runs on by default."""
        return "cuda" if self.kind == "cuda" else "cpu"


def slug(text: str) -> str:
    """A device's marketing name as a hardware-name fragment: lower case, runs of other characters as '-'."""
    s = re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")
    if not s:
        raise ValueError(f"cannot make a hardware name from {text!r}")
    return s


def cpu_model_name() -> str:
    """The CPU's model name as the OS reports it (``/proc/cpuinfo`` on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cuda_device_name(device: str = "cuda") -> str:
    if not torch.cuda.is_available():
        raise ValueError("no CUDA device is visible on this node")
    return torch.cuda.get_device_name(torch.device(device))


def device_name(device: str) -> str:
    """The hardware's own name for a torch device string (``cpu``, ``cuda``, ``cuda:1``)."""
    return cuda_device_name(device) if device.startswith("cuda") else cpu_model_name()


def default_profile(device: str = "cpu") -> HardwareProfile:
    """The profile this node's ``device`` is known by: ``cpu-<model>`` or ``cuda-<model>``."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return HardwareProfile(f"{kind}-{slug(device_name(device))}", kind)


def parse_profile(name: str) -> HardwareProfile:
    """A profile from its name; a measured profile's kind is its prefix (``cpu-...`` or ``cuda-...``)."""
    if name in ANALYTIC:
        return HardwareProfile(name, "analytic")
    if name in IMPORTED:
        return HardwareProfile(name, "imported")
    kind = name.split("-", 1)[0]
    if kind in MEASURED_KINDS and "-" in name:
        return HardwareProfile(name, kind)
    if not _NAME_RE.match(name or ""):
        raise ValueError(f"unknown hardware {name!r} (known: {known_hardware()})")
    return HardwareProfile(name, DEVICE)


def device_profile(name: str) -> HardwareProfile:
    """The profile of a kit device; names of cluster-node profiles and of the built-in tables are refused."""
    if not _NAME_RE.match(name or ""):
        raise ValueError(f"malformed hardware name {name!r}: use lower-case letters, digits, '.', '_', '-' "
                         f"(for example pixel7-litert)")
    profile = parse_profile(name)
    if profile.kind != DEVICE:
        raise ValueError(f"hardware name {name!r} is reserved ({profile.kind}): a kit device's latency is never a "
                         f"cluster node's or a built-in table's; name it after the device, e.g. pixel7-litert")
    return profile


def known_hardware() -> str:
    """The names ``parse_profile`` accepts, for error messages."""
    return ", ".join([*ANALYTIC, *IMPORTED, "cpu-<device> or cuda-<device> (measured, with a table)",
                      "any other lower-case name (a kit device, with its table)"])


def local_profiles() -> tuple[HardwareProfile, ...]:
    """Every measured profile this node has: its CPU and each distinct visible CUDA device."""
    profiles = [default_profile("cpu")]
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        p = default_profile(f"cuda:{i}")
        if p not in profiles:
            profiles.append(p)
    return tuple(profiles)


def node_resources(profiles: tuple[HardwareProfile, ...] | None = None) -> dict[str, float]:
    """Ray custom resources a node should start with (``ray start --resources``) to offer its hardware."""
    return {p.resource: 1.0 for p in (profiles if profiles is not None else local_profiles())}


def cluster_profiles(resources: dict[str, float]) -> tuple[HardwareProfile, ...]:
    """The measured profiles a Ray cluster offers, read from its resources (``ray.cluster_resources()``)."""
    names = sorted(k[len(RESOURCE_PREFIX):] for k in resources if k.startswith(RESOURCE_PREFIX))
    return tuple(parse_profile(n) for n in names)
