"""Run load functions in forked processes and collect their results (bounded in time).

`parallel(calls, timeout, cpus)` forks one process per (function, args) pair, pins it to
`cpus` when given, and returns each result in order. A process that has not answered by
the deadline is killed and its result is an error string, so one stuck generator cannot
hang a run. The processes are reaped here, so RUSAGE_CHILDREN counts their CPU.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

_ctx = mp.get_context("fork")


def _child(fn: Callable[..., Any], args: tuple[Any, ...], conn: Any, cpus: Sequence[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, set(cpus))
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as e:  # the parent reports it; the child must not unwind further
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"))
    finally:
        conn.close()


def parallel(calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]], timeout: float,
             cpus: Sequence[int] | None = None) -> list[Any]:
    """Results of the calls, or an `Exception` in place of each one that failed or hung."""
    procs = []
    for fn, args in calls:
        parent, child = _ctx.Pipe(duplex=False)
        p = _ctx.Process(target=_child, args=(fn, args, child, cpus), daemon=True)
        p.start()
        child.close()
        procs.append((p, parent))
    deadline = time.monotonic() + timeout
    out: list[Any] = []
    for _p, conn in procs:
        left = max(0.0, deadline - time.monotonic())
        if conn.poll(left):
            try:
                status, value = conn.recv()
            except EOFError:
                status, value = "error", "generator exited without a result"
        else:
            status, value = "error", f"generator timed out after {timeout:g}s"
        out.append(value if status == "ok" else RuntimeError(value))
    for p, conn in procs:
        p.join(1.0)
        if p.is_alive():
            p.kill()
            p.join(2.0)
        conn.close()
    return out


def spawn(fn: Callable[..., Any], args: tuple[Any, ...], cpus: Sequence[int] | None = None) -> tuple[Any, Any]:
    """A long-lived helper process with a duplex pipe: (process, parent end)."""
    parent, child = _ctx.Pipe()
    p = _ctx.Process(target=_serve, args=(fn, args, child, cpus), daemon=True)
    p.start()
    return p, parent


def _serve(fn: Callable[..., Any], args: tuple[Any, ...], conn: Any, cpus: Sequence[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, set(cpus))
    fn(*args, conn)
