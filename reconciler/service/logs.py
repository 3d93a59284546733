"""Structured logs of the service: one JSON object (or key=value line) per event on stderr,
which systemd sends to the journal. Callers pass counts, commit ids and reasons only; no
field ever carries a key."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def without_credentials(url: str) -> str:
    """A repo URL fit for a log: `https://user:token@host/x` keeps only `https://host/x`.
    scp-like `git@host:path` and local paths carry no secret and stay as they are."""
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    if parts.scheme in ("ssh", "git+ssh") and parts.username and not parts.password:
        return url  # ssh://git@host/x: a user name, not a credential
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [f"level={record.levelname.lower()}", f"event={_kv(record.getMessage())}"]
        parts += [f"{k}={_kv(v)}" for k, v in _fields(record).items()]
        return " ".join(parts)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}


def _kv(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if (not text or any(c in text for c in ' "=\n')) else text


def configure(fmt: str = "json", level: int = logging.INFO) -> None:
    """Send the package's logs to stderr in `fmt` ("json" or "kv")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger("tunnelctl")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    exc_info = bool(fields.pop("exc_info", False))
    # Field names that clash with LogRecord attributes get a trailing underscore.
    extra = {(k + "_" if k in _RESERVED else k): v for k, v in fields.items() if v is not None}
    logger.log(level, name, extra=extra, exc_info=exc_info)
