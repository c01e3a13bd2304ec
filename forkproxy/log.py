"""Logs: the error log (stdlib logging), the access log and the tunnel log (layer 0).

Invariants: nothing here runs inside a signal handler; access and tunnel records are
appended to a buffer and written by `flush_logs()`, which the worker calls once per
timer tick and before it exits, so a request costs one string format and one append.
`reopen_logs()` (USR1) reopens every file by name, for log rotation.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

_FORMAT = "%(asctime)s %(levelname)s [%(process)d %(role)s] %(message)s"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "notice": logging.INFO,
           "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR,
           "crit": logging.CRITICAL}

log = logging.getLogger("forkproxy")


class _RoleFilter(logging.Filter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        return True


class _ReopenableHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler writing to stderr or to a file that USR1 can reopen."""

    def __init__(self, target: str) -> None:
        self.target = target
        super().__init__(self._open())

    def _open(self) -> TextIO:
        if self.target in ("stderr", ""):
            return sys.stderr
        if self.target == "stdout":
            return sys.stdout
        return open(self.target, "a", buffering=1, encoding="utf-8")

    def reopen(self) -> None:
        if self.target in ("stderr", "stdout", ""):
            return
        self.acquire()
        try:
            old = self.stream
            self.stream = self._open()
            old.close()
        finally:
            self.release()


_handler: _ReopenableHandler | None = None


def setup_error_log(target: str, level: str, role: str) -> None:
    """Send the `forkproxy` logger to `target` ("stderr", "stdout" or a path)."""
    global _handler
    if _handler is not None:
        log.removeHandler(_handler)
        if _handler.target not in ("stderr", "stdout", ""):
            _handler.close()
    _handler = _ReopenableHandler(target)
    _handler.setFormatter(logging.Formatter(_FORMAT))
    _handler.addFilter(_RoleFilter(role))
    log.addHandler(_handler)
    log.setLevel(_LEVELS.get(level, logging.INFO))
    log.propagate = False


def set_role(role: str) -> None:
    """Rename the process in error-log lines (a worker after fork)."""
    if _handler is not None:
        for f in _handler.filters:
            if isinstance(f, _RoleFilter):
                f.role = role


class RecordLog:
    """An append-only file of records (access or tunnel log), buffered until flush()."""

    __slots__ = ("path", "_file", "_pending")

    def __init__(self, path: str) -> None:
        self.path = path
        self._pending: list[str] = []
        self._file: TextIO = self._open()

    def _open(self) -> TextIO:
        if self.path == "stderr":
            return sys.stderr
        if self.path == "stdout":
            return sys.stdout
        return open(self.path, "a", encoding="utf-8")

    def write(self, line: str) -> None:
        self._pending.append(line)

    def write_json(self, record: dict[str, Any]) -> None:
        self._pending.append(json.dumps(record, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        if self._pending:
            data = "".join(self._pending)
            self._pending.clear()
            try:
                self._file.write(data)
                self._file.flush()
            except (OSError, ValueError):
                pass  # a full disk must not take the worker down

    def reopen(self) -> None:
        self.flush()
        if self.path in ("stderr", "stdout"):
            return
        old, self._file = self._file, self._open()
        old.close()

    def close(self) -> None:
        self.flush()
        if self.path not in ("stderr", "stdout"):
            self._file.close()


_records: list[RecordLog] = []


def open_record_log(path: str) -> RecordLog | None:
    """A record log for `path`, or None when it is "off" (then callers skip the work)."""
    if not path or path == "off":
        return None
    rl = RecordLog(path)
    _records.append(rl)
    return rl


def flush_logs() -> None:
    """Write pending records and flush the error log (before fork, each tick, at exit)."""
    for rl in _records:
        rl.flush()
    if _handler is not None:
        _handler.flush()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def reopen_logs() -> None:
    """USR1: reopen the error log and every record log by name."""
    if _handler is not None:
        _handler.reopen()
    for rl in _records:
        rl.reopen()


def close_record_logs() -> None:
    for rl in _records:
        rl.close()
    _records.clear()


_time_cache: list[Any] = [0, ""]


def time_local() -> str:
    """nginx's $time_local, formatted once per second."""
    now = int(time.time())
    if now != _time_cache[0]:
        _time_cache[0] = now
        _time_cache[1] = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(now))
    return str(_time_cache[1])

