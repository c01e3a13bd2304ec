# Durations and sizes in nginx's notation (layer 1, pure).
#
# Invariants:
# - parse_duration returns float seconds >= 0; parse_size returns int bytes >= 0.
# - format_duration/format_size are inverses: parse(format(x)) == x for every value the
#   parsers return (durations are formatted in whole milliseconds when they are whole
#   milliseconds, otherwise as a bare float of seconds).
# - Parsers raise ValueError (TypeError for a value of the wrong TOML type) with a message
#   meant to follow a key path; the caller wraps it in a ConfigError. No I/O, no state.
"""Parse and format durations ("1h30m", "500ms", 60) and sizes ("8k", "10m", 1024)."""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal, InvalidOperation

# Milliseconds per unit, longest first: nginx's units (ms s m h d w M y, with M = 30d
# and y = 365d), each used at most once and in decreasing order ("1h30m", not "30m1h").
_DURATION_MS: dict[str, int] = {
    "y": 365 * 86_400_000,
    "M": 30 * 86_400_000,
    "w": 7 * 86_400_000,
    "d": 86_400_000,
    "h": 3_600_000,
    "m": 60_000,
    "s": 1_000,
    "ms": 1,
}
_DURATION_ORDER = {unit: rank for rank, unit in enumerate(_DURATION_MS)}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|[yMwdhms])")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

_SIZE_UNITS: dict[str, int] = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_SIZE = re.compile(r"(\d+)([kKmMgG]?)")

DURATION_HINT = 'a duration such as "60s", "5m", "1h30m", "500ms" or a number of seconds'
SIZE_HINT = 'a size such as "8k", "10m", "1g" or a number of bytes'


def show(value: object) -> str:
    """A TOML value as TOML writes it, for error messages: "x", true, [1, 2]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {show(v)}" for k, v in value.items()) + " }"
    return repr(value)


def parse_duration(value: object) -> float:
    """Seconds for a TOML value: a non-negative number, or a string of unit parts."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"expected {DURATION_HINT}, got {show(value)}")
    if isinstance(value, (int, float)):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"expected {DURATION_HINT}, got {show(value)}")
        return float(value)
    text = value.strip()
    if _NUMBER.fullmatch(text):
        return float(text)
    total = Decimal(0)
    pos = 0
    last_rank = -1
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(f"expected {DURATION_HINT}, got {show(value)}")
        unit = match.group(2)
        rank = _DURATION_ORDER[unit]
        if rank <= last_rank:
            raise ValueError(
                f"units must appear once each, largest first (as in \"1h30m\"), got {show(value)}"
            )
        last_rank = rank
        try:
            total += Decimal(match.group(1)) * _DURATION_MS[unit]
        except InvalidOperation:  # pragma: no cover - the regex admits only numbers
            raise ValueError(f"expected {DURATION_HINT}, got {show(value)}") from None
        pos = match.end()
    if pos == 0:
        raise ValueError(f"expected {DURATION_HINT}, got {show(value)}")
    return float(total / 1000)


def format_duration(seconds: float) -> str | float:
    """The shortest unit string for whole milliseconds, else the float itself."""
    ms = round(seconds * 1000)
    if ms / 1000 != seconds or ms < 0:
        return float(seconds)
    if ms == 0:
        return "0s"
    # One unit, the largest that divides exactly, as nginx's docs write them ("60s",
    # "75s", "10m", "1h", "90m"); below two minutes seconds read better than "1m15s".
    for unit in ("d", "h", "m", "s", "ms"):
        size = _DURATION_MS[unit]
        if ms % size == 0 and not (unit in ("m", "h") and ms < 120_000):
            return f"{ms // size}{unit}"
    return f"{ms}ms"  # pragma: no cover - "ms" always divides


def parse_size(value: object) -> int:
    """Bytes for a TOML value: a non-negative integer, or digits with k, m or g."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"expected {SIZE_HINT}, got {show(value)}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected {SIZE_HINT}, got {show(value)}")
        return value
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"expected {SIZE_HINT}, got {show(value)}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def format_size(size: int) -> str | int:
    """The largest unit that divides the size exactly ("64k"), or the bare int."""
    for unit in ("g", "m", "k"):
        scale = _SIZE_UNITS[unit]
        if size and size % scale == 0:
            return f"{size // scale}{unit}"
    return size
