"""Traffic for the timeout sweep: sessions as scripts of idle gaps, and a driver that plays them.

A session is a list of gaps (seconds, unscaled): connect, send a message, then for each gap
stay idle that long and send a message, then close. Application pings every `ping`
seconds (the `websockets` library's default is 20 s) split each gap: the proxy sees a
byte at least that often. Everything runs `scale` times faster than written: a 10-minute
gap at scale 60 lasts 10 s. The driver plays the sessions over one epoll loop, at most
`concurrency` at a time, and records for each whether the proxy cut it (EOF or reset from
the proxy before its script ended) and when.

Invariants: pure generators of scripts (seeded), one driver process, every wait bounded by
the script's own length plus a grace, and no session outlives `deadline`.
"""

from __future__ import annotations

import heapq
import math
import random
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .wsload import handshake, masked_frame

MESSAGE = masked_frame(b"x" * 16)
PING = bytes((0x89, 0x80)) + b"\x00\x00\x00\x00"  # a masked, empty ping frame


@dataclass(frozen=True)
class GapModel:
    """Where the idle gaps of a session come from."""

    kind: str                       # exp, lognormal, fixed, file, replay
    a: float = 0.0                  # exp: mean; lognormal: median; fixed: value
    b: float = 0.0                  # lognormal: sigma
    values: tuple[float, ...] = ()  # file: gaps to sample; replay: one max_idle per session

    def describe(self) -> str:
        return {"exp": f"exponential, mean {self.a:g}s", "lognormal": f"log-normal, median {self.a:g}s, sigma {self.b:g}",
                "fixed": f"fixed {self.a:g}s", "file": f"sampled from {len(self.values)} gaps in a file",
                "replay": f"replayed from {len(self.values)} tunnel-log sessions"}[self.kind]

    def cdf(self, t: float) -> float:
        """P(one gap <= t), for the analytic checks and the expected cut share."""
        if self.kind == "exp":
            return 1.0 - math.exp(-t / self.a)
        if self.kind == "lognormal":
            if t <= 0:
                return 0.0
            return 0.5 * (1.0 + math.erf(math.log(t / self.a) / (self.b * math.sqrt(2.0))))
        if self.kind == "fixed":
            return 1.0 if t >= self.a else 0.0
        return sum(1 for v in self.values if v <= t) / len(self.values)


def parse_model(text: str) -> GapModel:
    """`exp:MEAN`, `lognormal:MEDIAN:SIGMA`, `fixed:VALUE` or `file:PATH` (one gap in seconds a line)."""
    kind, _, rest = text.partition(":")
    parts = rest.split(":") if rest else []
    if kind == "exp" and len(parts) == 1:
        return GapModel("exp", a=float(parts[0]))
    if kind == "lognormal" and len(parts) == 2:
        return GapModel("lognormal", a=float(parts[0]), b=float(parts[1]))
    if kind == "fixed" and len(parts) == 1:
        return GapModel("fixed", a=float(parts[0]))
    if kind == "file" and rest:
        with open(rest) as f:
            vals = tuple(float(x) for x in f.read().split())
        if not vals:
            raise ValueError(f"no gaps in {rest}")
        return GapModel("file", values=vals)
    raise ValueError(f"bad gap model {text!r}: exp:MEAN, lognormal:MEDIAN:SIGMA, fixed:VALUE or file:PATH")


def scripts(model: GapModel, sessions: int, gaps: int, seed: int = 1) -> list[list[float]]:
    """`sessions` scripts of `gaps` gaps each (replay: one session per logged record)."""
    rng = random.Random(seed)
    if model.kind == "replay":
        vals = list(model.values)
        rng.shuffle(vals)
        return [[v] for v in vals[:sessions]]

    def draw() -> float:
        if model.kind == "exp":
            return rng.expovariate(1.0 / model.a)
        if model.kind == "lognormal":
            return rng.lognormvariate(math.log(model.a), model.b)
        if model.kind == "fixed":
            return model.a
        return rng.choice(model.values)
    return [[draw() for _ in range(gaps)] for _ in range(sessions)]


def expected_cut(script_gaps: Sequence[Sequence[float]], timeout: float, ping: float | None) -> float:
    """The share of these scripts a timeout cuts, if timing were exact: any gap >= timeout."""
    def seen(g: float) -> float:
        return min(g, ping) if ping else g
    cut = sum(1 for s in script_gaps if any(seen(g) >= timeout for g in s))
    return cut / len(script_gaps) if script_gaps else 0.0


@dataclass
class Outcome:
    cut: bool
    at: float          # seconds (scaled clock) from connect to the cut or to the end
    error: str = ""


def drive(port: int, path: str, plays: Sequence[Sequence[float]], scale: float, ping: float | None,
          concurrency: int, deadline: float, interval: float = 0.0) -> list[Outcome]:
    """Play every script through the proxy; returns one Outcome per script, in order.

    Session i starts at i * interval (scaled) or later if `concurrency` sessions are live."""
    ep = select.epoll()
    out: list[Outcome | None] = [None] * len(plays)
    live: dict[int, tuple[int, socket.socket, float]] = {}  # fd -> (index, sock, started)
    timers: list[tuple[float, int, int, int]] = []          # (when, seq, index, gap position)
    state: dict[int, tuple[int, float]] = {}                # index -> (gap position, time left in gap)
    nxt = 0
    seq = 0
    t_start = time.monotonic()
    end_by = t_start + deadline

    def start(i: int) -> None:
        nonlocal seq
        try:
            s = handshake(port, path)
        except OSError as e:
            out[i] = Outcome(True, 0.0, f"handshake: {e}")
            return
        s.setblocking(False)
        s.send(MESSAGE)
        live[s.fileno()] = (i, s, time.monotonic())
        ep.register(s.fileno(), select.EPOLLIN)
        _arm(i, 0, plays[i][0] if plays[i] else 0.0)

    def _arm(i: int, pos: int, left: float) -> None:
        nonlocal seq
        step = min(left, ping) if ping else left
        state[i] = (pos, left - step)
        seq += 1
        heapq.heappush(timers, (time.monotonic() + step / scale, seq, i, pos))

    def finish(i: int, cut: bool, error: str = "") -> None:
        for fd, (j, s, t0) in list(live.items()):
            if j == i:
                ep.unregister(fd)
                s.close()
                del live[fd]
                out[i] = Outcome(cut, (time.monotonic() - t0) * scale, error)
                return

    def sock_of(i: int) -> socket.socket | None:
        for j, s, _ in live.values():
            if j == i:
                return s
        return None

    while (nxt < len(plays) or live) and time.monotonic() < end_by:
        while nxt < len(plays) and len(live) < concurrency and \
                time.monotonic() >= t_start + nxt * interval / scale:
            start(nxt)
            nxt += 1
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, i, pos = heapq.heappop(timers)
            s = sock_of(i)
            if s is None or out[i] is not None:
                continue
            cur, left = state[i]
            try:
                if left > 1e-9:        # a ping inside a long gap
                    s.send(PING)
                    _arm(i, cur, left)
                    continue
                s.send(MESSAGE)
            except OSError as e:
                finish(i, True, f"send: {e}")
                continue
            if cur + 1 < len(plays[i]):
                _arm(i, cur + 1, plays[i][cur + 1])
            else:
                finish(i, False)
        timeout = max(0.0, min(timers[0][0] - time.monotonic(), 0.05)) if timers else 0.05
        for fd, _ in ep.poll(timeout):
            if fd not in live:
                continue
            i, s, _ = live[fd]
            try:
                data = s.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                finish(i, True)
    for i, s, t0 in list(live.values()):
        s.close()
        out[i] = Outcome(False, (time.monotonic() - t0) * scale, "deadline")
    ep.close()
    return [o if o is not None else Outcome(False, 0.0, "not started") for o in out]
