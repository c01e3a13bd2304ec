"""The timeout sweep driving a real forkproxy for a few short values (about 15 s)."""

from __future__ import annotations

import math

import pytest

from bench import dropper, tune


def test_sweep_cuts_exactly_the_sessions_whose_gaps_reach_the_timeout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    dead = 0 if dropper.unavailable() else 1
    args = tune.parse(["--gaps", "fixed:2", "--gaps-per-session", "1", "--sessions", "8", "--concurrency", "8",
                       "--timeouts", "1s,4s", "--scale", "1", "--dead-peers", str(dead), "--dead-max", "1s",
                       "--toml", str(tmp_path / "t.toml")])
    model, rows, why = tune.run_sweep(args)
    assert model is not None
    by = {r["timeout"]: r for r in rows}
    assert by[1.0]["cut"] == 1.0 and by[1.0]["expected"] == 1.0   # a 2 s gap meets a 1 s timeout
    assert by[4.0]["cut"] == 0.0 and by[4.0]["expected"] == 0.0   # and never a 4 s one
    assert by[4.0]["errors"] == 0
    assert by[4.0]["tunnels_max"] >= 1
    if dead:
        # the dead peer's tunnel goes when its idle timeout runs out (ticks are 0.1 s)
        assert by[1.0]["dead_linger"] == pytest.approx(1.0 - 0.3, abs=0.5)
        assert math.isnan(by[4.0]["dead_linger"])  # above --dead-max: not measured
    assert tune._sweep_report(args, model, rows, why) == 0
    assert 'tunnel_timeout = "4s"' in (tmp_path / "t.toml").read_text()


def test_pings_keep_long_gaps_alive(tmp_path) -> None:  # type: ignore[no-untyped-def]
    args = tune.parse(["--gaps", "fixed:3", "--gaps-per-session", "1", "--sessions", "4", "--concurrency", "4",
                       "--timeouts", "2s", "--ping", "1s", "--dead-peers", "0", "--toml", str(tmp_path / "t.toml")])
    _, rows, _ = tune.run_sweep(args)
    assert rows[0]["cut"] == 0.0 and rows[0]["expected"] == 0.0
