"""What a forkproxy tunnel log says about a bench window: the share of bytes spliced.

Reads only the records appended since a given file offset; a missing or unreadable log
gives None. Records are the JSON lines forkproxy writes when a tunnel ends.
"""

from __future__ import annotations

import json
from pathlib import Path


def splice_share(path: Path | None, offset: int) -> float | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return None
    spliced = total = 0
    for line in data.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        spliced += int(r.get("spliced_up", 0)) + int(r.get("spliced_down", 0))
        total += int(r.get("bytes_up", 0)) + int(r.get("bytes_down", 0))
    return spliced / total if total else None
