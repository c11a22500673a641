"""Import of the official ProxylessNAS latency table (``mobile_trim.yaml``, Pixel 1) as a ``pixel1`` table.

Official keys name layer shapes (``expanded_conv-input:56x56x24-output:28x28x40-expand:3-kernel:5-stride:2-
idskip:0``); each block and candidate of the space is mapped to its shape key, and the stem (first conv plus
the fixed first block) and head (feature mix plus logits) are sums of their official entries. Values are
``{count, mean, var}`` in ms; the mean is the latency. The original key stays in each entry's ``source_key``.
The table prices the space's body; a K-class variant reuses it with the logits layer scaled by K/1000 (the
official table has no other class count, and the layer's cost is its K x 1280 weights).
"""

from __future__ import annotations

import math

from orchestrator import storage
from orchestrator.latency.hardware import HardwareProfile
from orchestrator.latency.table import (
    HEAD,
    STEM,
    EntryStats,
    LatencyTable,
    Provenance,
    block_key,
    preview_keys,
    utc_now,
)
from orchestrator.spaces import PROXYLESS_IMAGENET, SearchSpace

FORMAT = "proxyless-yaml"
OFFICIAL_HARDWARE = "pixel1"
OFFICIAL_RUNTIME = "litert"  # TFLite, LiteRT's former name, as the paper measured it on the phone


def _hw(r: int, c: int) -> str:
    return f"{r}x{r}x{c}"


def mbconv_key(res_in: int, cin: int, res_out: int, cout: int, expand: int, kernel: int, stride: int,
               idskip: bool) -> str:
    return (f"expanded_conv-input:{_hw(res_in, cin)}-output:{_hw(res_out, cout)}-expand:{expand}-kernel:{kernel}"
            f"-stride:{stride}-idskip:{int(idskip)}")


def official_keys(space: SearchSpace) -> dict[str, tuple[str, ...]]:
    """For each table key of ``space``, the official keys whose latencies add up to it (zero ops excluded)."""
    w = space.widths()
    stem_res = space.stem_resolution()
    specs = space.blocks()
    last = specs[-1]
    out = {STEM: (f"Conv-input:{_hw(space.resolution, space.in_channels)}-output:{_hw(stem_res, w.stem)}",
                  mbconv_key(stem_res, w.stem, stem_res, w.first, 1, 3, 1, False))}
    for spec in specs:
        for op in space.candidates:
            if not op.is_zero:
                out[block_key(spec.index, op)] = (mbconv_key(
                    spec.in_resolution, spec.in_channels, spec.out_resolution, spec.out_channels, op.expand,
                    op.kernel, spec.stride, spec.has_shortcut),)
    r = last.out_resolution
    out[HEAD] = (f"Conv_1-input:{_hw(r, last.out_channels)}-output:{_hw(r, w.head)}",
                 f"Logits-input:{_hw(r, w.head)}-output:{space.num_classes}")
    return out


def _entry(raw: dict, key: str, where: str) -> tuple[float, float, int]:
    v = raw[key]
    try:
        mean, var, count = float(v["mean"]), float(v.get("var", math.nan)), int(v.get("count", 0))
    except (TypeError, KeyError, ValueError):
        raise ValueError(f"{where}: entry {key!r} is not a mapping with a numeric 'mean'") from None
    if not (math.isfinite(mean) and mean >= 0):
        raise ValueError(f"{where}: entry {key!r} has latency {mean}")
    return mean, var, count


def parse_yaml(text: str, where: str) -> dict:
    import yaml  # not at the top: the one-process core imports without PyYAML

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{where} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{where} is not an official latency table (expected a mapping of layer keys)")
    return raw


def import_proxyless_yaml(uri: str, hardware: str = "pixel1", space: SearchSpace = PROXYLESS_IMAGENET,
                          endpoint: str | None = None) -> LatencyTable:
    """Read an official YAML table and convert it to a table of ``space``; every entry the space needs must exist.

    The official table was measured with TFLite on a Pixel 1: it is ``pixel1`` in runtime ``litert``, and no other
    hardware name is given to it."""
    if hardware != OFFICIAL_HARDWARE:
        raise ValueError(f"the official ProxylessNAS table was measured on a Pixel 1 (TFLite): its hardware is "
                         f"{OFFICIAL_HARDWARE!r}, not {hardware!r}")
    profile = HardwareProfile(hardware, "imported")
    try:
        text = storage.read_uri(uri, endpoint).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{uri} is not a text YAML file") from None
    raw = parse_yaml(text, uri)
    mapping = official_keys(space)
    missing = sorted({k for keys in mapping.values() for k in keys if k not in raw})
    if missing:
        raise ValueError(f"{uri} lacks {len(missing)} entries of space {space.name!r}: {preview_keys(missing, 3)}")
    entries = {}
    for key, sources in mapping.items():
        parts = [_entry(raw, s, uri) for s in sources]
        mean = sum(p[0] for p in parts)
        var = sum(p[1] for p in parts)
        entries[key] = EntryStats(latency_ms=mean, count=min(p[2] for p in parts), mean_ms=mean,
                                  std_ms=math.sqrt(var) if math.isfinite(var) and var >= 0 else None,
                                  source_key="+".join(sources))
    logits = _entry(raw, mapping[HEAD][-1], uri)[0]
    prov = Provenance(
        hardware=profile.name, hardware_kind=profile.kind, space=space.name, space_fingerprint=space.fingerprint(),
        resolution=space.resolution, batch_size=1, dtype="float32", threads=None, device="mobile",
        device_name="Google Pixel 1 (official ProxylessNAS table)", torch_version=None, cuda_version=None,
        created=utc_now(), statistic="mean", source=f"{FORMAT}:{uri}",
        body_fingerprint=space.body_fingerprint(), head_classes=space.num_classes,
        # the official table prices only the 1000-class logits: other class counts scale that layer linearly
        head_ms_per_class=logits / space.num_classes,
        runtime=OFFICIAL_RUNTIME, runtime_version="TFLite (2018, the paper's measurement)",
    )
    return LatencyTable(prov, entries)
