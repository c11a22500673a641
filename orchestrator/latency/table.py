"""Latency lookup tables: per-entry statistics plus provenance, stored as Parquet on a local path or S3.

Entry keys reuse the architecture grammar so a key can be read (and pasted) anywhere: ``stem`` (stem conv and
the fixed first block), ``head`` (feature mix, pool, classifier) and ``bNN:OP`` per searchable block, e.g.
``b03:k5e6``. A ``bNN:zero`` entry is optional (a skipped block costs nothing unless measured). Provenance
travels in the Parquet schema metadata, so a table is one self-describing object.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from functools import cache
from typing import TYPE_CHECKING

from orchestrator.arch import Arch, Op
from orchestrator import storage
from orchestrator.latency.model import LatencyModel
from orchestrator.spaces import SearchSpace, get_space

if TYPE_CHECKING:  # pyarrow is imported where a table is read or written: the one-process core runs without it
    import pyarrow as pa

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # v3: the runtime a table was measured in (older tables: torch)
META_KEY = b"nas.latency.provenance"
STEM, HEAD = "stem", "head"


def utc_now() -> str:
    """The table date: UTC, to the second, ISO 8601."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def block_key(index: int, op: Op) -> str:
    """The entry key of candidate ``op`` on searchable block ``index``, e.g. ``b03:k5e6``."""
    return f"b{index:02d}:{op.encode()}"


def required_keys(space: SearchSpace) -> list[str]:
    """Every key a table needs to price all architectures of ``space`` (``zero`` entries are optional)."""
    keys = [STEM]
    for spec in space.blocks():
        keys += [block_key(spec.index, op) for op in space.candidates if not op.is_zero]
    return keys + [HEAD]


def preview_keys(keys: list[str], n: int = 8) -> str:
    more = f", ... ({len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


@dataclass(frozen=True)
class EntryStats:
    """One entry: ``latency_ms`` is the value the estimator sums; the rest describe its distribution."""

    latency_ms: float
    count: int
    median_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    q1_ms: float | None = None
    q3_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    source_key: str | None = None  # the entry's key in the format it was imported from
    plain_ms: float | None = None  # the plain per-entry measurement, where ``latency_ms`` was calibrated

    def __post_init__(self) -> None:
        if not (math.isfinite(self.latency_ms) and self.latency_ms >= 0):
            raise ValueError(f"entry latency must be a finite non-negative number, got {self.latency_ms}")


@dataclass(frozen=True)
class Provenance:
    """Where and how a table was measured (or imported from), enough to refuse it where it does not apply."""

    hardware: str
    hardware_kind: str
    space: str
    space_fingerprint: str
    resolution: int
    batch_size: int
    dtype: str
    threads: int | None
    device: str
    device_name: str
    torch_version: str | None
    cuda_version: str | None
    created: str
    warmup: int | None = None
    repeats: int | None = None
    min_repeat_ms: float | None = None
    statistic: str = "median"
    clock: str = "wall"
    method: str = "isolated"
    call_overhead_ms: float = 0.0
    source: str = "measured"
    node_id: str | None = None
    hostname: str | None = None
    unit: str = "ms"
    format_version: int = FORMAT_VERSION
    # v2: the body the table prices (see ``SearchSpace.body_fingerprint``), and the head's cost per class, so a
    # K-class variant of the space reuses the table with its own head cost
    body_fingerprint: str | None = None
    head_classes: int | None = None
    head_ms_per_class: float | None = None
    allocator: str | None = None  # how the C allocator was set while measuring (see ``measure.pin_allocator``)
    calibration: dict | None = None  # how ``latency_ms`` was calibrated on whole networks (seed, archs, fit)
    validation: dict | None = None  # the last held-out validation (figures, noise floor, plain table beside it)
    # v3: what ran the networks: ``torch`` (eager), or a deployment runtime (``runtime_version``, and its execution
    # provider or device); a table of one runtime prices nothing for another (``LatencyTable.check_runtime``)
    runtime: str = "torch"
    runtime_version: str | None = None
    provider: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "Provenance":
        if not isinstance(d, dict):
            raise ValueError("latency table provenance is not a JSON object")
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in d]
        if missing:
            raise ValueError(f"latency table provenance lacks {', '.join(missing)}")
        if d.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ValueError(f"latency table format {d['format_version']} is newer than this code's {FORMAT_VERSION}")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@cache
def _schema() -> "pa.Schema":
    import pyarrow as pa

    return pa.schema(
        [("key", pa.string())]
        + [(f.name, {"count": pa.int64(), "source_key": pa.string()}.get(f.name, pa.float64()))
           for f in fields(EntryStats)]
    )


@dataclass(frozen=True)
class LatencyTable:
    """A lookup table: provenance and entries by key. Convert with ``to_model`` to search or estimate with it."""

    provenance: Provenance
    entries: dict[str, EntryStats] = field(hash=False)

    # ---- checks and conversion --------------------------------------------------------------------------------
    def body_fingerprint(self) -> str:
        """The body this table prices; tables written before v2 name it through their space's full fingerprint."""
        p = self.provenance
        if p.body_fingerprint:
            return p.body_fingerprint
        base = get_space(p.space)
        if p.space_fingerprint != base.fingerprint():
            raise ValueError(
                f"table {p.hardware!r} was built for space {p.space!r} with fingerprint {p.space_fingerprint}, "
                f"but the registered space has fingerprint {base.fingerprint()}: rebuild the table"
            )
        if p.resolution != base.resolution:  # v1 tables measured at another input side under the space's name
            return base.variant(resolution=p.resolution).body_fingerprint()
        return base.body_fingerprint()

    def check_space(self, space: SearchSpace) -> None:
        """Refuse a table of another space body (space, version, resolution, widths, candidates).

        A task variant that changes only the number of classes (``tiny[c3]``) shares the body and is accepted:
        ``to_model`` prices its head for its own classes."""
        p = self.provenance
        if get_space(p.space).base_name != space.base_name:
            raise ValueError(f"table {p.hardware!r} was built for space {p.space!r}, not {space.name!r}")
        body = self.body_fingerprint()
        if body == space.body_fingerprint():
            return
        if p.resolution != space.resolution:
            raise ValueError(
                f"table {p.hardware!r} was measured at resolution {p.resolution}, "
                f"but space {space.name!r} runs at {space.resolution}"
            )
        raise ValueError(
            f"table {p.hardware!r} prices the body {body} of space {p.space!r}, but space {space.name!r} has body "
            f"{space.body_fingerprint()} (other widths, stages or candidates): build a table for {space.name!r}"
        )

    def check_runtime(self, hardware: str, runtime: str) -> None:
        """Refuse a table measured on other hardware or in another runtime than a config names."""
        p = self.provenance
        if p.hardware != hardware:
            raise ValueError(f"the latency table is for hardware {p.hardware!r}, not {hardware!r}")
        if p.runtime != runtime:
            raise ValueError(f"the latency table of {p.hardware!r} was measured in runtime {p.runtime!r}, not "
                             f"{runtime!r}: set runtime: {p.runtime} or give a table built for {runtime}")

    def missing(self, space: SearchSpace) -> list[str]:
        return [k for k in required_keys(space) if k not in self.entries]

    def space(self) -> SearchSpace:
        return get_space(self.provenance.space)

    def head_ms(self, space: SearchSpace, plain: bool = False) -> float:
        """The head's cost for ``space``'s number of classes: the table's head plus the per-class cost of the rest."""
        p = self.provenance
        entry = self.entries[HEAD]
        head = entry.plain_ms if plain and entry.plain_ms is not None else entry.latency_ms
        classes = p.head_classes or self.space().num_classes
        if space.num_classes == classes:
            return head
        if p.head_ms_per_class is None:
            raise ValueError(f"table {p.hardware!r} priced the head for {classes} classes only and has no per-class "
                             f"cost for the {space.num_classes} classes of {space.name!r}: rebuild the table")
        return max(0.0, head + (space.num_classes - classes) * p.head_ms_per_class)

    def to_model(self, space: SearchSpace | None = None, plain: bool = False) -> LatencyModel:
        """The ``LatencyModel`` of this table for ``space`` (default: the space it names), checked complete.

        ``plain`` uses the per-entry measurements as they were before calibration on whole networks (the plain
        table, for comparison); a table without calibration is its own plain table."""
        space = space or self.space()
        self.check_space(space)
        missing = self.missing(space)
        if missing:
            raise ValueError(
                f"table {self.provenance.hardware!r} lacks {len(missing)} entries of space {space.name!r}: "
                f"{preview_keys(missing)}"
            )

        def value(stats: EntryStats) -> float:
            return stats.plain_ms if plain and stats.plain_ms is not None else stats.latency_ms

        e = self.entries
        costs = []
        for spec in space.blocks():
            row = []
            for op in space.candidates:
                if op.is_zero:
                    zero = e.get(block_key(spec.index, op))
                    row.append((value(zero) if zero else 0.0) if spec.zero_ok else math.nan)
                else:
                    row.append(value(e[block_key(spec.index, op)]))
            costs.append(tuple(row))
        fixed = value(e[STEM]) + self.head_ms(space, plain) + self.provenance.call_overhead_ms
        prov = asdict(self.provenance)
        if space.name != self.provenance.space:
            prov["priced_space"] = space.name
        if plain:
            prov["plain"] = True
        return LatencyModel(space, self.provenance.hardware, tuple(costs), fixed, unit=self.provenance.unit,
                            provenance=prov)

    def predict(self, arch: Arch, plain: bool = False) -> float:
        """Latency of ``arch`` in ms, for its own space (a variant of the table's body is priced with its head);
        refuses architectures with their own widths (the table priced the space's)."""
        space = get_space(arch.space)
        if arch.widths is not None and arch.widths != space.widths():
            raise ValueError(f"architecture has its own widths {arch.widths.encode()}; the table priced "
                             f"space {space.name!r} at {space.widths().encode()}")
        return self.to_model(space, plain).exact(arch)

    # ---- Parquet ----------------------------------------------------------------------------------------------
    def to_arrow(self) -> pa.Table:
        import pyarrow as pa

        schema = _schema()
        rows = {name: [] for name in schema.names}
        for key, stats in self.entries.items():
            rows["key"].append(key)
            for f in fields(EntryStats):
                rows[f.name].append(getattr(stats, f.name))
        meta = {META_KEY: json.dumps(asdict(self.provenance), sort_keys=True).encode()}
        return pa.Table.from_pydict(rows, schema=schema.with_metadata(meta))

    def to_parquet(self) -> bytes:
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(self.to_arrow(), sink)
        return sink.getvalue()

    @classmethod
    def from_arrow(cls, table: pa.Table, where: str = "table") -> "LatencyTable":
        meta = table.schema.metadata or {}
        if META_KEY not in meta:
            raise ValueError(f"{where} is Parquet but not a latency table (no {META_KEY.decode()} metadata)")
        try:
            prov = Provenance.from_dict(json.loads(meta[META_KEY]))
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{where} has malformed latency provenance: {e}") from None
        missing_cols = [n for n in ("key", "latency_ms", "count") if n not in table.column_names]
        if missing_cols:
            raise ValueError(f"{where} lacks columns {', '.join(missing_cols)}")
        names = [f.name for f in fields(EntryStats) if f.name in table.column_names]
        entries: dict[str, EntryStats] = {}
        for row in table.to_pylist():
            key = row["key"]
            if key in entries:
                raise ValueError(f"{where} has entry {key!r} twice")
            if row["latency_ms"] is None or row["count"] is None:
                raise ValueError(f"{where}: entry {key!r} has no latency")
            entries[key] = EntryStats(**{n: row[n] for n in names})
        return cls(prov, entries)

    @classmethod
    def from_parquet(cls, data: bytes, where: str = "table") -> "LatencyTable":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(pa.py_buffer(data))
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{where} is not a readable Parquet file: {str(e).splitlines()[0]}") from None
        return cls.from_arrow(table, where)

    def save(self, uri: str, endpoint: str | None = None) -> str:
        """Write the table to ``uri`` (local path or ``s3://``) as one whole object; returns ``uri``."""
        storage.write_uri(uri, self.to_parquet(), endpoint)
        log.info("wrote latency table %s (%d entries) to %s", self.provenance.hardware, len(self.entries), uri)
        return uri

    @classmethod
    def load(cls, uri: str, endpoint: str | None = None) -> "LatencyTable":
        return cls.from_parquet(storage.read_uri(uri, endpoint), where=uri)

    def with_provenance(self, **changes) -> "LatencyTable":
        return replace(self, provenance=replace(self.provenance, **changes))
