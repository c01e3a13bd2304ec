"""Offline timeout analysis: tunnel-log records -> idle-gap survival -> a recommendation.

Per session the quantity that decides a cut is its longest idle gap M (no byte either way):
a tunnel with idle timeout T is cut iff M >= T. So the share cut by T is S(T) = P(M >= T).

Invariants:
- Sessions that something other than their own peers ended are right-censored: an `end`
  of "timeout" means M >= the timeout in force (logged as `max_idle`), and "shutdown"
  means the session was cut short, so its true M >= the logged `max_idle`. Ends "client",
  "upstream", "fin_timeout" and "error" are the session's own end: M is observed.
- S is the Kaplan–Meier product-limit estimate (events before censorings at ties). It is
  known only up to the largest observation; beyond the current timeout the log says
  nothing, so a longer answer is an *extrapolation*: an exponential tail fitted (censored
  maximum likelihood) above the KM median, and it is always labelled as such.
- Pure: no I/O beyond `read_log`, no clocks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

OBSERVED_ENDS = frozenset(("client", "upstream", "fin_timeout", "error"))
CENSORED_ENDS = frozenset(("timeout", "shutdown"))
END_VALUES = OBSERVED_ENDS | CENSORED_ENDS
FIELDS = ("time", "location", "client", "upstream", "protocol", "start", "duration", "bytes_up", "bytes_down",
          "spliced_up", "spliced_down", "copied_up", "copied_down", "max_idle", "end", "reset", "error")

# Timeouts a recommendation is chosen from (seconds): values people write in configs.
NICE = (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1200, 1800, 2700, 3600,
        7200, 14400, 28800, 43200, 86400)


@dataclass(frozen=True, slots=True)
class Session:
    location: str
    duration: float
    max_idle: float
    end: str
    bytes_up: int = 0
    bytes_down: int = 0

    @property
    def censored(self) -> bool:
        return self.end in CENSORED_ENDS


@dataclass
class ParseResult:
    sessions: list[Session] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line number, why)


def parse_lines(lines: Iterable[str]) -> ParseResult:
    """Tunnel-log JSON lines to sessions; a line that is not a valid record is listed, not fatal."""
    out = ParseResult()
    for no, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            r = json.loads(line)
        except ValueError as e:
            out.bad.append((no, f"not JSON: {e}"))
            continue
        if not isinstance(r, dict):
            out.bad.append((no, "not an object"))
            continue
        try:
            end = str(r["end"])
            if end not in END_VALUES:
                raise ValueError(f"unknown end {end!r}")
            s = Session(location=str(r.get("location", "")), duration=float(r["duration"]),
                        max_idle=float(r["max_idle"]), end=end,
                        bytes_up=int(r.get("bytes_up", 0)), bytes_down=int(r.get("bytes_down", 0)))
            if s.duration < 0 or s.max_idle < 0 or math.isnan(s.max_idle):
                raise ValueError("negative or NaN time")
        except (KeyError, TypeError, ValueError) as e:
            out.bad.append((no, f"bad record: {e}"))
            continue
        out.sessions.append(s)
    return out


def read_log(path: str) -> ParseResult:
    with open(path, encoding="utf-8", errors="replace") as f:
        return parse_lines(f)


def by_location(sessions: Iterable[Session]) -> dict[str, list[Session]]:
    out: dict[str, list[Session]] = {}
    for s in sessions:
        out.setdefault(s.location, []).append(s)
    return out


class KaplanMeier:
    """S(t) = P(M > t) for right-censored observations, as a step function."""

    def __init__(self, observations: Sequence[tuple[float, bool]]) -> None:
        """`observations`: (value, observed) pairs; observed=False means M >= value (censored)."""
        self.n = len(observations)
        self.times: list[float] = []
        self.surv: list[float] = []
        self.max_time = max((t for t, _ in observations), default=0.0)
        self.max_event = max((t for t, e in observations if e), default=0.0)
        data = sorted(observations, key=lambda te: (te[0], not te[1]))
        at_risk = len(data)
        s = 1.0
        i = 0
        while i < len(data):
            t = data[i][0]
            deaths = censored = 0
            while i < len(data) and data[i][0] == t:
                if data[i][1]:
                    deaths += 1
                else:
                    censored += 1
                i += 1
            if deaths:
                s *= 1.0 - deaths / at_risk
                self.times.append(t)
                self.surv.append(s)
            at_risk -= deaths + censored

    def survival(self, t: float) -> float:
        """P(M > t); NaN past the largest observation unless the estimate already reached 0."""
        if t < self.max_time:
            return self._at(t)
        if self.surv and self.surv[-1] == 0.0:
            return 0.0
        return self._at(t) if t == self.max_time else math.nan

    def _at(self, t: float) -> float:
        s = 1.0
        for ti, si in zip(self.times, self.surv):
            if ti <= t:
                s = si
            else:
                break
        return s

    def cut_share(self, timeout: float) -> float:
        """P(M >= timeout): the share of sessions a timeout of `timeout` would cut."""
        return self.survival(math.nextafter(timeout, -math.inf))

    def quantile(self, q: float) -> float:
        """The smallest t with P(M <= t) >= q; NaN when the data stop short of it."""
        for ti, si in zip(self.times, self.surv):
            if 1.0 - si >= q - 1e-12:
                return ti
        return math.nan


@dataclass(frozen=True)
class Tail:
    """An exponential tail S(t) = s_u * exp(-(t - u) / theta) for t >= u (censored MLE)."""

    u: float
    s_u: float
    theta: float
    events: int

    def survival(self, t: float) -> float:
        return self.s_u * math.exp(-(t - self.u) / self.theta) if t >= self.u else math.nan

    def solve(self, target: float) -> float:
        """The t >= u where the tail falls to `target`."""
        if target >= self.s_u:
            return self.u
        return self.u + self.theta * math.log(self.s_u / target)


def fit_tail(obs: Sequence[tuple[float, bool]], km: KaplanMeier) -> Tail | None:
    """Exponential excess over u = the KM median: theta = exposure above u / events above u."""
    u = km.quantile(0.5)
    if math.isnan(u):
        u = min((t for t, e in obs if e), default=math.nan)
        if math.isnan(u):
            return None
    above = [(t - u, e) for t, e in obs if t > u]
    events = sum(1 for _, e in above if e)
    if events == 0:
        return None
    theta = sum(x for x, _ in above) / events
    return Tail(u=u, s_u=km._at(u), theta=theta, events=events)


@dataclass
class Recommendation:
    location: str
    sessions: int
    censored: int
    current_timeout: float | None
    target: float
    timeout: float | None
    basis: str                                   # "measured", "extrapolated" or "unknown"
    reasoning: list[str]
    percentiles: dict[str, float]
    cut_table: list[tuple[float, float, str]]    # (timeout, share cut, "km"/"tail")


def nice_at_least(t: float) -> float:
    for v in NICE:
        if v >= t:
            return float(v)
    return float(math.ceil(t / 3600.0) * 3600)


def recommend(sessions: Sequence[Session], target: float, location: str = "", ping: float | None = None,
              candidates: Sequence[float] = NICE) -> Recommendation:
    """The smallest candidate timeout whose cut share is <= `target`, with the reasoning."""
    obs = [(s.max_idle, not s.censored) for s in sessions]
    km = KaplanMeier(obs)
    cens = [s.max_idle for s in sessions if s.censored and s.end == "timeout"]
    current = max(cens) if cens else None
    why: list[str] = [f"{len(sessions)} sessions, {sum(1 for s in sessions if s.censored)} right-censored "
                      f"(ended by a timeout or shutdown: their longest gap is at least the one logged)"]
    if current is not None:
        why.append(f"sessions cut by the timeout in force show it as about {current:g}s: beyond it the log "
                   f"says nothing")
    pct = {f"p{int(q * 100)}": km.quantile(q) for q in (0.5, 0.9, 0.95, 0.99)}
    tail = fit_tail(obs, km)
    table: list[tuple[float, float, str]] = []
    chosen: float | None = None
    basis = "unknown"
    for c in candidates:
        share = km.cut_share(c)
        kind = "km"
        if math.isnan(share) and tail is not None:
            share, kind = tail.survival(c), "tail"
        table.append((float(c), share, kind))
        if chosen is None and not math.isnan(share) and share <= target:
            chosen, basis = float(c), ("measured" if kind == "km" else "extrapolated")
    if chosen is not None and basis == "measured":
        why.append(f"Kaplan–Meier: a timeout of {chosen:g}s cuts {km.cut_share(chosen):.2%} of sessions "
                   f"(target {target:.2%}); the next smaller candidate cuts more")
    elif chosen is not None:
        assert tail is not None
        why.append(f"no timeout within the observed range meets {target:.2%}: EXTRAPOLATED from an exponential "
                   f"tail (mean excess {tail.theta:.3g}s over {tail.u:.3g}s, {tail.events} gaps above it) — "
                   f"confirm by running with a longer timeout")
    else:
        why.append(f"no candidate meets {target:.2%} within the data and no tail could be fitted: "
                   f"measure with a longer timeout")
    if ping:
        why.append(f"application pings every {ping:g}s bound live gaps: any timeout above about "
                   f"{1.5 * ping:g}s cuts no live session; it only decides how long dead peers linger")
    return Recommendation(location, len(sessions), sum(1 for s in sessions if s.censored), current, target,
                          chosen, basis, why, pct, table)


def toml_snippet(recs: Sequence[Recommendation]) -> str:
    """The recommended keys as TOML (the `toml` package), one [[server.location]] per location."""
    import toml

    locs = []
    for r in recs:
        if r.timeout is None:
            continue
        locs.append({"path": r.location or "/", "tunnel_timeout": fmt_duration(r.timeout),
                     "proxy_read_timeout": "60s"})
    head = ("# Recommended by `python -m bench tune`: merge these keys into the [[server.location]]\n"
            "# with the same path. proxy_read_timeout then bounds only the wait for the 101.\n")
    return head + toml.dumps({"server": [{"location": locs}]})


def fmt_duration(seconds: float) -> str:
    s = round(seconds * 1000)
    for unit, ms in (("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if s % ms == 0 and s >= ms:
            return f"{s // ms}{unit}"
    return f"{s}ms"
