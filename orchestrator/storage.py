"""Where data, tables and checkpoints live: a local folder or an ``s3://bucket/prefix`` (AWS or any S3-compatible
endpoint). The one place the project turns a URI into a ``pyarrow.fs`` filesystem.

Everything goes through ``pyarrow.fs`` so that Parquet shards are read by range requests (row group by row group)
and never copied whole. The S3 endpoint comes from an explicit option, else ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``; credentials come from the usual AWS chain (environment, profile, instance role).
Storage errors are re-raised as one-line ``OSError``s that name the object and say what to check.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from orchestrator.durable import fsync_dir, fsync_file

if TYPE_CHECKING:  # imported where a filesystem is made: the one-process core runs without pyarrow
    import pyarrow.fs as pafs

_AUTH_MARKERS = ("ACCESS_DENIED", "InvalidAccessKeyId", "SignatureDoesNotMatch", "HTTP status 403",
                 "AccessDenied", "Forbidden", "INVALID_ACCESS_KEY", "UNRECOGNIZED_CLIENT", "security token")


@dataclass(frozen=True)
class Location:
    """A dataset root: the filesystem, the root's path inside it, and the URI the user wrote (for messages)."""

    uri: str
    fs: pafs.FileSystem
    root: str

    def path(self, rel: str) -> str:
        """Filesystem path of ``rel`` (a '/'-separated path relative to the root)."""
        return posixpath.join(self.root, rel) if rel else self.root

    def uri_of(self, rel: str) -> str:
        """The URI of ``rel``, for messages."""
        return self.uri.rstrip("/") + "/" + rel if rel else self.uri

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")


def endpoint_from_env() -> str | None:
    """The S3 endpoint the AWS tools would use: ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_filesystem(endpoint: str | None = None) -> pafs.S3FileSystem:
    """An S3 filesystem for AWS or for an S3-compatible ``endpoint`` (``http://host:port`` or ``host:port``)."""
    import pyarrow.fs as pafs

    endpoint = endpoint or endpoint_from_env()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    kw: dict = {"connect_timeout": 10, "request_timeout": 60,
                "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3)}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"S3 endpoint {endpoint!r} is not of the form http(s)://host[:port]")
        kw.update(endpoint_override=parsed.netloc, scheme=parsed.scheme, region=region or "us-east-1")
    elif region:
        kw["region"] = region
    return pafs.S3FileSystem(**kw)


def resolve(uri: str, endpoint: str | None = None) -> Location:
    """Turn ``uri`` (local path, ``file://``, ``s3://bucket/prefix`` or another pyarrow URI) into a ``Location``."""
    import pyarrow.fs as pafs

    if not uri:
        raise ValueError("empty dataset URI")
    if uri.startswith("s3://"):
        root = uri[len("s3://"):].strip("/")
        if not root or len(root.split("/")[0]) < 3:
            raise ValueError(f"{uri}: an S3 URI needs a bucket name (s3://bucket/prefix)")
        return Location(uri.rstrip("/"), s3_filesystem(endpoint), root)
    if uri.startswith("file://") or "://" not in uri:
        local = os.path.abspath(os.path.expanduser(uri[len("file://"):] if uri.startswith("file://") else uri))
        return Location(local, pafs.LocalFileSystem(), local)
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as e:
        raise ValueError(f"{uri}: unsupported dataset URI ({one_line(e)})") from None
    return Location(uri.rstrip("/"), fs, root.rstrip("/"))


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (pyarrow's can run to several)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def storage_error(e: BaseException, what: str) -> OSError:
    """A one-line ``OSError`` about ``what`` (an object's URI), with a hint when credentials were refused."""
    msg = one_line(e)
    if any(m in msg for m in _AUTH_MARKERS):
        return PermissionError(f"{what}: access refused by the S3 server, check AWS credentials ({msg})")
    if isinstance(e, FileNotFoundError):
        return FileNotFoundError(f"{what}: not found")
    return OSError(f"{what}: {msg}")


def exists(loc: Location, rel: str) -> bool:
    import pyarrow.fs as pafs

    try:
        return loc.fs.get_file_info(loc.path(rel)).type != pafs.FileType.NotFound
    except OSError as e:
        raise storage_error(e, loc.uri_of(rel)) from None


def read_bytes(loc: Location, rel: str) -> bytes:
    try:
        with loc.fs.open_input_stream(loc.path(rel)) as f:
            return f.read()
    except OSError as e:
        raise storage_error(e, loc.uri_of(rel)) from None


def write_bytes(loc: Location, rel: str, data: bytes) -> None:
    """Write one object (a single PUT on S3)."""
    try:
        parent = posixpath.dirname(loc.path(rel))
        if not loc.is_s3:
            loc.fs.create_dir(parent, recursive=True)
        with loc.fs.open_output_stream(loc.path(rel)) as f:
            f.write(data)
    except OSError as e:
        raise storage_error(e, loc.uri_of(rel)) from None


def publish_bytes(loc: Location, rel: str, data: bytes) -> None:
    """Make ``rel`` appear whole or not at all: a temp name then a move (a rename locally, durable: the file is
    fsync'ed before it and the folder after it; one PUT on S3)."""
    if loc.is_s3:
        write_bytes(loc, rel, data)
        return
    tmp = f"{rel}.tmp-{os.getpid()}"
    write_bytes(loc, tmp, data)
    try:
        fsync_file(loc.path(tmp))
        loc.fs.move(loc.path(tmp), loc.path(rel))
        fsync_dir(posixpath.dirname(loc.path(rel)))
    except OSError as e:
        remove_quietly(loc, tmp)
        raise storage_error(e, loc.uri_of(rel)) from None


def remove_quietly(loc: Location, rel: str, is_dir: bool = False) -> None:
    """Best-effort clean-up after a failure: never masks the error being handled. Never removes a bucket."""
    if loc.is_s3 and "/" not in loc.path(rel).strip("/"):
        return
    try:
        if is_dir:
            loc.fs.delete_dir(loc.path(rel))
        else:
            loc.fs.delete_file(loc.path(rel))
    except OSError:
        pass


def split_uri(uri: str, endpoint: str | None = None) -> tuple[Location, str]:
    """A whole-object URI as (location of its folder, name), for the ``*_uri`` helpers below."""
    if uri.startswith("s3://"):
        rest = uri[len("s3://"):].strip("/")
        if "/" not in rest:
            raise ValueError(f"malformed S3 URI {uri!r}: expected s3://bucket/key")
    parent, name = posixpath.split(uri.rstrip("/"))
    if not name:
        raise ValueError(f"{uri!r} names no object")
    return resolve(parent or ".", endpoint), name


def read_uri(uri: str, endpoint: str | None = None) -> bytes:
    """The whole object at ``uri`` (a local path or ``s3://``); one-line ``OSError`` naming it when unreadable."""
    loc, name = split_uri(uri, endpoint)
    return read_bytes(loc, name)


def write_uri(uri: str, data: bytes, endpoint: str | None = None) -> None:
    """Write ``data`` as the whole object at ``uri``, appearing whole or not at all."""
    loc, name = split_uri(uri, endpoint)
    publish_bytes(loc, name, data)
