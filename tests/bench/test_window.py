"""`bench.run.measure` reads CPU over a scenario's measured window, not its warm-up (real processes, about 2 s)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bench.procs import Service, tree_cpu
from bench.run import measure
from bench.scenarios import Ctx, Measure, Scenario, Window, run_window

WARM, WINDOW = 0.8, 0.4
BURN = "import sys, time\nend = float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\ntime.sleep(30)\n"


class FakeProxy:
    """A contender whose one process burns CPU until a given time, then sleeps."""

    name = "fake"
    is_proxy = True

    def __init__(self, tmp: Path, until: float) -> None:
        self.service = Service("burner", [sys.executable, "-c", BURN, str(until)], log_path=tmp / "burner.log")

    def cpu(self) -> float:
        return tree_cpu([self.service])


class NoBackends:
    def cpu(self) -> float:
        return 0.0


def _burn(start: float, end: float) -> dict[str, float]:
    """A generator busy through its warm-up and its window."""
    while time.monotonic() < end:
        pass
    return {"seconds": end - start}


def _scenario(ctx: Ctx, c: FakeProxy, w: Window) -> Measure:
    (res,), _ = run_window(ctx, w, [(_burn, ())])
    assert not isinstance(res, Exception), res
    return Measure({"n": 1.0}, work=1.0)


def test_cpu_covers_the_window_not_the_warm_up(tmp_path: Path) -> None:
    ctx = Ctx(quick=True, duration=WINDOW, warm=WARM, gen_cpus=None, idle_tunnels=0, reloads=0)
    proxy = FakeProxy(tmp_path, time.monotonic() + WARM - 0.3)  # busy in the warm-up only
    sc = Scenario("fake", "fake", (), "request", _scenario)  # type: ignore[arg-type]
    try:
        rec = measure(ctx, sc, proxy, NoBackends(), 0)  # type: ignore[arg-type]
        burnt = proxy.cpu()
    finally:
        proxy.service.stop()
    assert not rec.get("error"), rec.get("error")
    cpu = rec["cpu"]
    assert WINDOW - 0.15 <= cpu["wall"] <= WINDOW + 0.2, cpu
    assert burnt > 0.05, f"the fake proxy got no CPU in its warm-up ({burnt:.2f} s): nothing was tested"
    assert cpu["proxy"] < 0.05, cpu  # its warm-up burn is left out
    # the generator burns through the warm-up and the window: only the window's part counts, read live
    assert 0.05 < cpu["generators"] <= cpu["wall"] + 0.05, cpu
