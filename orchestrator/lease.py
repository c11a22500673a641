"""One live run per folder: a lease on a run's folder (a one-process run's ``--out``, a Ray run's or a sweep's
storage folder), and the checks on run names and on fresh runs over earlier checkpoints.

A lease is the file ``nas-lease.json`` in the folder: the holder's host, pid (and the pid's start time, so that a
reused pid is not taken for the holder), when it started and its last heartbeat, which a thread of the holder
renews every quarter of the timeout. A second run on the folder is refused with one line naming the holder. A
stale lease is taken over, and the take-over is logged and kept in the new lease record (``taken_over``), so the
run can record it too: at once when the holder's pid is dead on this host (a killed run resumes straight away),
else once its heartbeat is older than the timeout (``NAS_LEASE_TIMEOUT_S``, default 60 s; hosts' clocks are
assumed to agree to well within it).

Taking, renewing and releasing a lease is a compare-and-swap: locally under an exclusive ``flock`` on the lease
file itself (every reader and writer takes it, and checks that the file it locked is still the one at the path);
on S3 with conditional requests (``put_object`` with ``IfNoneMatch='*'`` to take a free lease, ``IfMatch=<etag>``
to renew or take over a stale one, ``delete_object`` with ``IfMatch`` to release it).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from orchestrator import storage as st

__all__ = ["LEASE_FILE", "LeaseHeld", "Lease", "acquire_lease", "lease_timeout", "check_run_name",
           "takeover_line", "refuse_fresh_over_checkpoint", "check_run_flags", "clear_for_fresh_run"]

log = logging.getLogger(__name__)

LEASE_FILE = "nas-lease.json"
TIMEOUT_ENV = "NAS_LEASE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 60.0


class LeaseHeld(RuntimeError):
    """The folder is leased by a live run (the message names its host and pid)."""


def check_run_name(name: str, what: str = "--name") -> str:
    """``name`` if it is one safe path segment (it becomes a folder under the storage), else ``ValueError``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what}: must be one folder name, not empty")
    bad = [c for c in name if ord(c) < 32 or ord(c) == 127]
    if "/" in name or "\\" in name or bad or name.startswith(".") or name != name.strip():
        raise ValueError(f"{what} {name!r}: must be one folder name (no '/', '\\', control characters, leading dot "
                         f"or surrounding spaces)")
    return name


def lease_timeout() -> float:
    """Seconds without a heartbeat after which another host's lease is stale (``NAS_LEASE_TIMEOUT_S``)."""
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected a positive, finite number of seconds")
    return value


def _pid_start(pid: int) -> int | None:
    """The pid's start time in clock ticks since boot (``/proc/<pid>/stat``), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _pid_alive(pid: int, start: int | None) -> bool:
    """Whether ``pid`` runs on this host and is the same process (its start time) and not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True  # no /proc: the pid exists
    if fields[0] in ("Z", "X"):
        return False
    return start is None or _pid_start(pid) in (None, start)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def holder_line(rec: dict, now: float | None = None) -> str:
    age = (now or time.time()) - float(rec.get("heartbeat", 0))
    return (f"pid {rec.get('pid')} on {rec.get('host')} (started {rec.get('started_at', '?')}, "
            f"last heartbeat {max(age, 0):.0f} s ago)")


def takeover_line(takeover: dict) -> str:
    """One line about a take-over, for logs and the MLflow tag ``nas.lease_takeover``."""
    return f"took over the lease of pid {takeover['pid']} on {takeover['host']}: {takeover['reason']}"


def _stale_reason(rec: dict, timeout: float, now: float) -> str | None:
    """Why the lease ``rec`` may be taken over, or None while its holder lives."""
    try:
        host, pid, beat = str(rec["host"]), int(rec["pid"]), float(rec["heartbeat"])
    except (KeyError, TypeError, ValueError):
        return "the lease record is unreadable"
    if host == socket.gethostname():
        if not _pid_alive(pid, rec.get("pid_start")):
            return f"pid {pid} is no longer running on {host}"
        return None
    age = now - beat
    if age > timeout:
        return f"its last heartbeat is {age:.0f} s old (timeout {timeout:g} s)"
    return None


# ---------------------------------------------------------------------------------------------------- backends
class _LocalStore:
    """The lease file in a local (or NFS) folder, guarded by ``flock`` on the file itself."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LEASE_FILE
        self.created: list[Path] = []  # folders this lease created (removed again on release when empty)

    def _open_locked(self, create: bool) -> int | None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
            except FileNotFoundError:
                return None
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:  # the file locked must still be the one at the path (a release unlinks it under the lock)
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)
            if not create:
                return None

    @staticmethod
    def _read(fd: int) -> dict | None:
        data = b""
        while chunk := os.pread(fd, 65536, len(data)):
            data += chunk
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except ValueError:
            return {}

    @staticmethod
    def _write(fd: int, rec: dict) -> None:
        data = json.dumps(rec, indent=1).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)

    def make_folder(self) -> None:
        missing = []
        p = self.folder
        while not p.exists():
            missing.append(p)
            p = p.parent
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create {self.folder}: {e.strerror or e}") from None
        self.created = missing  # deepest first

    def take(self, rec: dict, decide) -> dict | None:
        """Write ``rec`` if the lease is free or ``decide(current)`` says it may be taken over (it returns the
        take-over record) and return that record (or {}); raise ``LeaseHeld`` from ``decide`` otherwise."""
        self.make_folder()
        try:
            fd = self._open_locked(create=True)
        except OSError as e:
            raise OSError(f"cannot take the lease {self.path}: {e.strerror or e}") from None
        try:
            cur = self._read(fd)
            took = decide(cur) if cur is not None else {}
            if took:
                rec["taken_over"] = took
            self._write(fd, rec)
            return took
        finally:
            os.close(fd)

    def renew(self, rec: dict) -> bool:
        fd = self._open_locked(create=False)
        if fd is None:
            return False
        try:
            cur = self._read(fd)
            if not cur or cur.get("token") != rec["token"]:
                return False
            self._write(fd, rec)
            return True
        finally:
            os.close(fd)

    def release(self, rec: dict) -> None:
        fd = self._open_locked(create=False)
        if fd is not None:
            try:
                cur = self._read(fd)
                if cur and cur.get("token") == rec["token"]:
                    self.path.unlink()
            finally:
                os.close(fd)
        for p in self.created:  # a run refused before it wrote anything leaves no folder behind
            try:
                p.rmdir()
            except OSError:
                break


class _S3Store:
    """The lease object under an ``s3://`` folder, taken and renewed with conditional puts."""

    def __init__(self, folder: str) -> None:
        import boto3

        loc = st.resolve(folder)
        self.bucket, _, prefix = loc.root.partition("/")
        self.key = f"{prefix}/{LEASE_FILE}" if prefix else LEASE_FILE
        self.uri = f"s3://{self.bucket}/{self.key}"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        endpoint = st.endpoint_from_env()
        if endpoint and "://" not in endpoint:
            endpoint = f"https://{endpoint}"
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name=region)
        self.etag: str | None = None

    def _error(self, e: Exception) -> OSError:
        return st.storage_error(e, f"lease {self.uri}")

    @staticmethod
    def _code(e: Exception) -> str:
        return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))

    def _put(self, rec: dict, **cond: str) -> bool:
        try:
            r = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=json.dumps(rec, indent=1).encode(),
                                       ContentType="application/json", **cond)
        except Exception as e:  # botocore's ClientError, imported with boto3
            if self._code(e) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return False
            raise self._error(e) from None
        self.etag = r["ETag"]
        return True

    def _get(self) -> tuple[dict, str] | None:
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as e:
            if self._code(e) in ("NoSuchKey", "404"):
                return None
            raise self._error(e) from None
        try:
            rec = json.loads(r["Body"].read())
        except ValueError:
            rec = {}
        return rec, r["ETag"]

    def make_folder(self) -> None:
        pass

    def take(self, rec: dict, decide) -> dict | None:
        for _ in range(5):
            if self._put(rec, IfNoneMatch="*"):
                return {}
            got = self._get()
            if got is None:  # released meanwhile: try again
                continue
            cur, etag = got
            took = decide(cur)
            if self._put({**rec, "taken_over": took}, IfMatch=etag):
                rec["taken_over"] = took
                return took
            # another run changed it first (renewed, or took it over): look again
        raise LeaseHeld(f"the lease {self.uri} keeps changing: another run is taking it; try again")

    def renew(self, rec: dict) -> bool:
        return self._put(rec, IfMatch=self.etag) if self.etag else False

    def release(self, rec: dict) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except Exception as e:
            if self._code(e) not in ("PreconditionFailed", "NoSuchKey", "404", "412"):
                log.warning("could not release the lease %s: %s", self.uri, self._error(e))


# ---------------------------------------------------------------------------------------------------- the lease
class Lease:
    """A held lease on a folder; renewed by a daemon thread until ``release`` (a context manager)."""

    def __init__(self, folder: str, what: str, timeout: float) -> None:
        self.folder, self.what, self.timeout = folder, what, timeout
        self.store: Any = _S3Store(folder) if folder.startswith("s3://") else _LocalStore(folder)
        now = time.time()
        self.record: dict = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _pid_start(os.getpid()),
                             "started": now, "started_at": _iso(now), "heartbeat": now, "heartbeat_at": _iso(now),
                             "what": what, "token": uuid.uuid4().hex}
        self.takeover: dict | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _decide(self, cur: dict) -> dict:
        now = time.time()
        reason = _stale_reason(cur, self.timeout, now)
        if reason is None:
            raise LeaseHeld(f"{self.folder} is in use by another run: {holder_line(cur, now)}; refusing to start a "
                            f"second {self.what} on it")
        return {"host": cur.get("host"), "pid": cur.get("pid"), "started_at": cur.get("started_at"),
                "heartbeat_at": cur.get("heartbeat_at"), "reason": reason, "at": _iso(now)}

    def acquire(self) -> "Lease":
        took = self.store.take(self.record, self._decide)
        if took:
            self.takeover = took
            log.warning("%s: %s", self.folder, takeover_line(took))
        self._thread = threading.Thread(target=self._beat, name="nas-lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        interval = max(0.1, self.timeout / 4)
        while not self._stop.wait(interval):
            with self._lock:
                if self._stop.is_set():
                    return
                now = time.time()
                self.record.update(heartbeat=now, heartbeat_at=_iso(now))
                try:
                    ok = self.store.renew(self.record)
                except OSError as e:
                    log.warning("could not renew the lease on %s: %s", self.folder, e)
                    continue
            if not ok:
                self.lost = True
                log.error("the lease on %s was taken by another run: this run no longer holds its folder",
                          self.folder)
                return

    def release(self) -> None:
        self._stop.set()
        with self._lock:
            if self._thread is not None:
                try:
                    self.store.release(self.record)
                except OSError as e:
                    log.warning("could not release the lease on %s: %s", self.folder, e)
                self._thread = None

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_lease(folder: str, what: str, timeout: float | None = None) -> Lease:
    """Take the lease on ``folder`` (a local path or ``s3://bucket/prefix``) for a ``what`` run (search, retrain,
    sweep), taking over a stale one; ``LeaseHeld`` (one line naming the holder) while a live run holds it. A local
    folder is created when missing (and removed again on release while empty)."""
    folder = folder.rstrip("/") if folder.startswith("s3://") else str(Path(folder).resolve())
    return Lease(folder, what, lease_timeout() if timeout is None else timeout).acquire()


def refuse_fresh_over_checkpoint(where: str, what: str) -> None:
    """The one-line refusal of a fresh run on a folder that holds a checkpoint."""
    raise ValueError(f"{where} holds the checkpoint of an earlier {what}: give --resume to continue it or "
                     f"--overwrite to start afresh")


def check_run_flags(name: str | None, resume: bool, overwrite: bool) -> None:
    """A run's --name (one safe path segment) and its --resume / --overwrite, which exclude each other."""
    if name is not None:
        check_run_name(name)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")


def clear_for_fresh_run(out: Path, checkpoint: str, what: str, resume: bool, overwrite: bool,
                        also: tuple[str, ...] = ()) -> None:
    """A one-process run folder before the run: kept for ``resume``; a fresh run refuses a checkpoint there unless
    ``overwrite``, which removes it and ``also`` (files written from it)."""
    ckpt = out / checkpoint
    if resume or not ckpt.exists():
        return
    if not overwrite:
        refuse_fresh_over_checkpoint(str(out), what)
    ckpt.unlink()
    for f in also:
        (out / f).unlink(missing_ok=True)
