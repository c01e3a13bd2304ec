"""The scoreboard: one shared, mmapped file of fixed-size worker slots (layer 2).

Invariants:
- The file is created by a master (`Scoreboard.create`, atomically: a fresh inode renamed
  into place) and mapped MAP_SHARED before any fork, so every worker writes its own slot
  through the inherited mapping and `forkproxy status` (or a new master after USR2) reads
  the same bytes by opening the file by name.
- Only the master allocates and frees slots; it keeps the free list in its own memory,
  never in the file. A worker writes only its own slot: `Slot.publish` (one
  `struct.pack_into`, at most once per timer tick and at each state change), and
  `Slot.set_load` whenever its connection or tunnel count changes. Workers read their
  siblings' slots (`Siblings`) to balance accepts.
- A reserved slot has pid -1 until the master learns the child's pid; a free slot has
  pid 0. Readers skip both. Writes are not atomic: a reader may see a torn slot, which
  only ever costs one stale status line.
- Heartbeats are CLOCK_MONOTONIC seconds (one clock for every process of the machine).
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
import time
from dataclasses import dataclass

STARTING = 1
READY = 2
DRAINING = 3
EXITING = 4

STATE_NAMES = {STARTING: "starting", READY: "ready", DRAINING: "draining", EXITING: "exiting"}

# Master states stored in the header.
MASTER_RUNNING = 1
MASTER_STOPPING = 2
MASTER_IDLE = 3  # WINCH: no workers until the next reload

MASTER_STATE_NAMES = {MASTER_RUNNING: "running", MASTER_STOPPING: "stopping", MASTER_IDLE: "idle"}

_MAGIC = b"FPSB"
_VERSION = 1
# magic, version, nslots, master pid, generation, master state, started (wall clock)
_HEADER = struct.Struct("<4sIIiiid")
_HEADER_SIZE = 64
# pid, generation, index, state, connections, tunnels, requests, heartbeat, started
_SLOT = struct.Struct("<iiiiiiqdd")
_SLOT_SIZE = 64
_SLOT_HEAD = struct.Struct("<iiii")  # a slot's pid, generation, index and state
_PID_FIELD = struct.Struct("<i")
_LOAD = struct.Struct("<ii")  # connections, tunnels
_LOAD_AT = 16  # their offset in a slot

DEFAULT_SLOTS = 1024


@dataclass(frozen=True, slots=True)
class SlotInfo:
    """One worker's slot as a reader sees it."""

    slot: int
    pid: int
    generation: int
    index: int
    state: int
    connections: int
    tunnels: int
    requests: int
    heartbeat: float  # CLOCK_MONOTONIC
    started: float  # wall clock

    @property
    def state_name(self) -> str:
        return STATE_NAMES.get(self.state, "unknown")


@dataclass(frozen=True, slots=True)
class MasterInfo:
    pid: int
    generation: int
    state: int
    started: float

    @property
    def state_name(self) -> str:
        return MASTER_STATE_NAMES.get(self.state, "unknown")


class Slot:
    """A worker's handle on its own slot (created in the child after fork)."""

    __slots__ = ("_map", "_offset", "_started", "generation", "index", "pid")

    def __init__(self, buf: mmap.mmap, number: int, pid: int, generation: int, index: int) -> None:
        self._map = buf
        self._offset = _HEADER_SIZE + number * _SLOT_SIZE
        self.pid = pid
        self.generation = generation
        self.index = index
        self._started = time.time()

    def publish(self, *, state: int, connections: int, tunnels: int, requests: int) -> None:
        """Write the whole slot and stamp the heartbeat (cheap: one pack_into)."""
        _SLOT.pack_into(self._map, self._offset, self.pid, self.generation, self.index, state,
                        connections, tunnels, requests, time.monotonic(), self._started)

    def set_load(self, connections: int, tunnels: int) -> None:
        """Update only the counts (whenever they change; siblings balance accepts on them)."""
        _LOAD.pack_into(self._map, self._offset + _LOAD_AT, connections, tunnels)

    def siblings(self) -> Siblings:
        return Siblings(self._map, self.pid, self.generation)


class Siblings:
    """The other ready workers of a worker's generation and their published connection counts.

    `refresh()` rescans the board (once per tick); `least()` rereads only the slots found,
    and skips one that changed hands, left READY or stopped its heartbeat since."""

    __slots__ = ("_map", "_pid", "_generation", "_slots")

    def __init__(self, buf: mmap.mmap, pid: int, generation: int) -> None:
        self._map = buf
        self._pid = pid
        self._generation = generation
        self._slots: list[tuple[int, int]] = []  # (offset, pid)

    def refresh(self) -> None:
        buf = self._map
        nslots = _HEADER.unpack_from(buf, 0)[2]
        with memoryview(buf) as view:  # the pids, one int per slot, read in C
            pids = view[_HEADER_SIZE:_HEADER_SIZE + nslots * _SLOT_SIZE].cast("i")[::_SLOT_SIZE // 4].tolist()
        found = []
        for n, pid in enumerate(pids):
            if pid > 0 and pid != self._pid:
                off = _HEADER_SIZE + n * _SLOT_SIZE
                _, generation, _, state = _SLOT_HEAD.unpack_from(buf, off)
                if generation == self._generation and state == READY:
                    found.append((off, pid))
        self._slots = found

    def __bool__(self) -> bool:
        return bool(self._slots)

    def ignore(self, pid: int) -> None:
        """Leave a sibling out until the next refresh (it did not answer a kick)."""
        self._slots = [(off, p) for off, p in self._slots if p != pid]

    def load_of(self, pid: int) -> int | None:
        for off, p in self._slots:
            fields = _SLOT.unpack_from(self._map, off)
            if fields[0] == p == pid:
                return int(fields[4] + fields[5])
        return None

    def least(self, now: float, stale_after: float) -> tuple[int, int] | None:
        """(connections + tunnels, pid) of the least-loaded live sibling, or None."""
        best: tuple[int, int] | None = None
        buf = self._map
        for off, pid in self._slots:
            fields = _SLOT.unpack_from(buf, off)
            if fields[0] != pid or fields[3] != READY or now - fields[7] > stale_after:
                continue
            load = fields[4] + fields[5]
            if best is None or load < best[0]:
                best = (load, pid)
        return best


class Scoreboard:
    """The master's (or a reader's) view of the whole file."""

    __slots__ = ("_free", "_map", "_writable", "nslots", "path")

    def __init__(self, path: str, buf: mmap.mmap, nslots: int, writable: bool) -> None:
        self.path = path
        self.nslots = nslots
        self._map = buf
        self._writable = writable
        self._free = list(range(nslots - 1, -1, -1)) if writable else []

    # -- master side --------------------------------------------------------------

    @classmethod
    def create(cls, path: str, nslots: int = DEFAULT_SLOTS) -> Scoreboard:
        """A new zeroed file at `path` (replacing any old one atomically), mapped shared."""
        size = _HEADER_SIZE + nslots * _SLOT_SIZE
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, size)
            buf = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            os.replace(tmp, path)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        os.close(fd)
        board = cls(path, buf, nslots, writable=True)
        _HEADER.pack_into(buf, 0, _MAGIC, _VERSION, nslots, os.getpid(), 0, MASTER_RUNNING, time.time())
        return board

    def set_master(self, *, generation: int, state: int) -> None:
        _HEADER.pack_into(self._map, 0, _MAGIC, _VERSION, self.nslots, os.getpid(), generation, state,
                          self.master().started)

    def reserve(self, generation: int, index: int) -> int:
        """Take a free slot for a worker about to be forked; raises if the board is full."""
        if not self._free:
            raise OSError(errno.ENOSPC, f"scoreboard {self.path} is full ({self.nslots} slots)")
        number = self._free.pop()
        _SLOT.pack_into(self._map, _HEADER_SIZE + number * _SLOT_SIZE, -1, generation, index, STARTING,
                        0, 0, 0, time.monotonic(), time.time())
        return number

    def set_pid(self, number: int, pid: int) -> None:
        """Record the child's pid (the child writes the same value in its first publish)."""
        _PID_FIELD.pack_into(self._map, _HEADER_SIZE + number * _SLOT_SIZE, pid)

    def release(self, number: int) -> None:
        """The worker in this slot was reaped: zero the slot and free it."""
        off = _HEADER_SIZE + number * _SLOT_SIZE
        self._map[off:off + _SLOT_SIZE] = bytes(_SLOT_SIZE)
        self._free.append(number)

    def slot(self, number: int, generation: int, index: int) -> Slot:
        """The child's handle on the slot the master reserved for it (call after fork)."""
        return Slot(self._map, number, os.getpid(), generation, index)

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def rename(self, path: str) -> None:
        """Move the file (USR2: the old master's board follows its pidfile to .oldbin)."""
        os.replace(self.path, path)
        self.path = path

    # -- reader side ------------------------------------------------------------

    @classmethod
    def open(cls, path: str) -> Scoreboard:
        """Map an existing board read-only; raises OSError or ValueError."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size < _HEADER_SIZE:
                raise ValueError(f"{path}: not a forkproxy scoreboard")
            buf = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        magic, version, nslots = _HEADER.unpack_from(buf, 0)[:3]
        if magic != _MAGIC or version != _VERSION or size < _HEADER_SIZE + nslots * _SLOT_SIZE:
            buf.close()
            raise ValueError(f"{path}: not a forkproxy scoreboard")
        return cls(path, buf, nslots, writable=False)

    def master(self) -> MasterInfo:
        _, _, _, pid, generation, state, started = _HEADER.unpack_from(self._map, 0)
        return MasterInfo(pid, generation, state, started)

    def read(self, number: int) -> SlotInfo | None:
        fields = _SLOT.unpack_from(self._map, _HEADER_SIZE + number * _SLOT_SIZE)
        if fields[0] <= 0:
            return None
        return SlotInfo(number, *fields)

    def entries(self) -> list[SlotInfo]:
        """Every occupied slot with a known pid."""
        out = []
        for n in range(self.nslots):
            info = self.read(n)
            if info is not None:
                out.append(info)
        return out

    def state_of(self, number: int) -> int:
        """The state field of one slot (the master polls it while a generation starts)."""
        return int(_SLOT.unpack_from(self._map, _HEADER_SIZE + number * _SLOT_SIZE)[3])

    def close(self) -> None:
        self._map.close()
