"""Credentials never written down: one function that masks them in any text, and a logging filter that applies it.

A tracking URI may carry credentials (``http://user:pass@host``, ``postgresql://user:pass@host/db``, a token in
its query, a presigned S3 URL's ``X-Amz-Signature``). The project keeps such a URI in memory, where MLflow needs
it, and passes everything it writes or prints through ``redact``: MLflow parameters, tags and text artifacts, run
metadata in storage, log records (its own and MLflow's, through ``install``) and error lines.
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["MASK", "redact", "redact_obj", "has_credentials", "strip_credentials", "RedactingFilter", "install"]

MASK = "***"

# user:password@ (or a bare token@) after a scheme: the userinfo of a URL. The password part may hold '@' when a
# user did not percent-encode it: the greedy match runs to the last '@' before the host.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s:/@?#]*)(?::(?P<pw>[^\s/?#]*))?@")
# key=value pairs whose key names a secret, in a query string (?token=, &X-Amz-Signature=) or a libpq / ODBC style
# connection string (password=...; pwd=...).
_SECRET_KEY = r"[\w.-]*(?:token|passw(?:or)?d|pwd|secret|signature|credentials?|api[-_]?key|access[-_]?key|sig|auth)"
_KEY_VALUE = re.compile(rf"(?P<key>(?:^|(?<=[?&;\s,\"'{{(]))(?i:{_SECRET_KEY})\s*=\s*)"
                        rf"(?P<value>\"[^\"]*\"|'[^']*'|[^\s&;,\"'}})]+)")
# HTTP authorisation values.
_AUTH_HEADER = re.compile(r"\b(?P<kind>Basic|Bearer)\s+(?P<value>[A-Za-z0-9._~+/=-]{8,})")


def _userinfo(m: re.Match) -> str:
    if m.group("pw") is None:  # a bare token before '@' (https://TOKEN@host); an empty one is left alone
        return f"{m.group('scheme')}{MASK}@" if m.group("user") else m.group(0)
    return f"{m.group('scheme')}{m.group('user')}:{MASK}@"


def redact(text: str) -> str:
    """``text`` with every credential masked: URL userinfo (``user:***@``), secret-named key=value pairs
    (``?token=***``, ``password=***``) and HTTP authorisation values."""
    if not text:
        return text
    text = _USERINFO.sub(_userinfo, text)
    text = _KEY_VALUE.sub(lambda m: m.group("key") + MASK, text)
    return _AUTH_HEADER.sub(lambda m: f"{m.group('kind')} {MASK}", text)


def redact_obj(obj: Any) -> Any:
    """``redact`` applied to every string in nested dicts, lists and tuples (keys included)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact_obj(k): redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_obj(v) for v in obj)
    return obj


def has_credentials(uri: str | None) -> bool:
    """Whether ``uri`` carries anything ``redact`` would mask."""
    return bool(uri) and redact(uri) != uri


def strip_credentials(uri: str) -> tuple[str, tuple[str, str] | None]:
    """(``uri`` without its userinfo, (user, password) or None): for clients that send credentials in a header."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri, None
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc)), (unquote(parts.username or ""), unquote(parts.password or ""))


def _scrub(record: logging.LogRecord) -> None:
    """Mask credentials in a log record's message, exception and stack text (in place)."""
    try:
        msg = record.getMessage()
    except Exception:  # noqa: BLE001 (a malformed record is logging's to report, as it would be without us)
        return
    clean = redact(msg)
    if clean != msg:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        clean = redact(text)
        if clean != text:
            record.exc_text = clean  # the formatter prints exc_text as it is once set
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactingFilter(logging.Filter):
    """A logging filter that masks credentials in every record it sees (it never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _scrub(record)
        return True


_FILTER = RedactingFilter()
_installed = False


def install() -> None:
    """Mask credentials in every log record of this process, whichever logger or handler it goes through: the
    project's, MLflow's, Ray's. Records are scrubbed where they are made (a log-record factory), and the filter is
    also attached to the project's and MLflow's loggers and to the root logger's current handlers. (MLflow's
    "View run ... at: <URL>" lines go to stdout, not through logging: ``tracking.client`` turns them off for a URI
    with credentials.) Idempotent; call it in every process that may log a credential (the CLI,
    Ray Train workers, Tune trials)."""
    global _installed
    for name in ("orchestrator", "mlflow", ""):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for h in logger.handlers:
            if _FILTER not in h.filters:
                h.addFilter(_FILTER)
    if _installed:
        return
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        _scrub(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
