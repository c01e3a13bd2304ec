"""What one worker shares among its connections (layer 3).

Invariants: one WorkerContext per worker process, created after fork; it owns the
single scratch receive buffer (no per-connection buffer while a connection is idle),
the upstream keep-alive pools, the splice pipe pool and the record logs. Connections
and tunnels register themselves in `live` so a drain or a stop can reach them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from .log import RecordLog
from .loop import EventLoop

if TYPE_CHECKING:
    from .config import Config
    from .pipes import PipePool
    from .routes import Router
    from .upstream import UpstreamPools

SCRATCH_SIZE = 256 * 1024


class Closable(Protocol):
    """A live connection or tunnel, as the worker sees it when it drains or stops."""

    def drain(self) -> None:
        """Stop taking new work; finish what is in flight."""

    def shutdown(self, reason: str) -> None:
        """End now (tunnels: reason goes to the tunnel record)."""


class Stats:
    __slots__ = ("connections", "tunnels", "requests")

    def __init__(self) -> None:
        self.connections = 0
        self.tunnels = 0
        self.requests = 0


class WorkerContext:
    __slots__ = ("loop", "config", "router", "pools", "pipes", "scratch", "scratch_view",
                 "access_log", "tunnel_log", "stats", "live", "draining", "index", "generation")

    def __init__(self, loop: EventLoop, config: Config, router: Router, pools: UpstreamPools,
                 pipes: PipePool | None, access_log: RecordLog | None, tunnel_log: RecordLog | None,
                 index: int = 0, generation: int = 0) -> None:
        self.loop = loop
        self.config = config
        self.router = router
        self.pools = pools
        self.pipes = pipes
        self.scratch = bytearray(SCRATCH_SIZE)
        self.scratch_view = memoryview(self.scratch)
        self.access_log = access_log
        self.tunnel_log = tunnel_log
        self.stats = Stats()
        self.live: set[Closable] = set()
        self.draining = False
        self.index = index
        self.generation = generation
