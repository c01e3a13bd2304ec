"""The command line against a real master: check, control verbs, status."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from harness import REPO, Proxy, pids_alive, wait_until


def _forkproxy(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "forkproxy", *args], capture_output=True, text=True, check=False,
                          timeout=60, env=env)


def test_check_good_bad_and_dump(tmp_path: Path) -> None:
    good = Proxy(tmp_path / "good")
    r = _forkproxy("check", "-c", str(good.config_path))
    assert r.returncode == 0
    assert r.stdout.strip() == f"forkproxy: the configuration file {good.config_path} syntax is ok"
    r = _forkproxy("check", "-c", str(good.config_path), "--dump")
    assert r.returncode == 0 and "[master]" in r.stdout and "shutdown_timeout" in r.stdout
    dumped = tmp_path / "dumped.toml"
    dumped.write_text(r.stdout)
    assert _forkproxy("check", "-c", str(dumped)).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(good.config_text().replace('"http://app"', '"http://ap"'))
    r = _forkproxy("check", "-c", str(bad))
    assert r.returncode == 1
    assert 'server[0].location[0].proxy_pass: unknown upstream "ap"' in r.stderr
    r = _forkproxy("-c", str(bad))  # running refuses too, before binding anything
    assert r.returncode == 1 and "unknown upstream" in r.stderr
    assert not list((tmp_path / "good").glob("forkproxy.pid*"))


def test_console_script_is_installed(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("forkproxy")
    if not script.exists():
        return  # not installed in this interpreter's environment
    p = Proxy(tmp_path)
    r = subprocess.run([str(script), "check", "-c", str(p.config_path)], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "syntax is ok" in r.stdout


def test_verbs_without_a_master(tmp_path: Path) -> None:
    p = Proxy(tmp_path)
    for verb in ("reload", "stop", "quit", "reopen", "upgrade"):
        r = p.cli(verb)
        assert r.returncode == 1 and "no master runs" in r.stderr, (verb, r.stderr)
    r = p.cli("status")
    assert r.returncode == 1 and "no master running" in r.stderr


def test_stop_verb_waits_for_the_master(proxy: Proxy) -> None:
    workers = proxy.wait_workers(2)
    r = proxy.cli("stop")
    assert r.returncode == 0, r.stderr
    assert "stopping" in r.stdout
    assert proxy.proc is not None and proxy.proc.wait(5) == 0
    assert not pids_alive(workers) and proxy.files_left() == []


def test_quit_and_reopen_verbs(proxy: Proxy) -> None:
    proxy.wait_workers(2)
    r = proxy.cli("reopen")
    assert r.returncode == 0 and "logs reopened" in r.stdout
    r = proxy.cli("quit")
    assert r.returncode == 0 and "quitting" in r.stdout
    assert proxy.proc is not None and proxy.proc.wait(15) == 0
    assert proxy.files_left() == []


def test_verb_falls_back_to_a_signal_without_the_control_socket(proxy: Proxy) -> None:
    proxy.wait_workers(2)
    os.unlink(proxy.dir / "forkproxy.pid.sock")
    r = proxy.cli("reload")
    assert r.returncode == 0 and "sent SIGHUP" in r.stdout
    proxy.wait_workers(2, generation=2)


def test_reload_verb_reaches_the_master_even_with_a_broken_config(proxy: Proxy) -> None:
    proxy.wait_workers(2)
    proxy.write_config(raw=proxy.config_text().replace("workers = 2", "workers = -3"))
    r = proxy.cli("reload")
    assert r.returncode == 1 and "master.workers" in r.stderr, r.stderr


def test_status_json_matches_the_processes(proxy: Proxy) -> None:
    workers = proxy.wait_workers(2)
    socks = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(3)]
    try:
        def counted() -> dict | None:  # type: ignore[type-arg]
            r = proxy.cli("status", "--json")
            assert r.returncode == 0, r.stderr
            doc = json.loads(r.stdout)
            (m,) = doc["masters"]
            total = sum(w.get("connections", 0) for w in m["workers"])
            return m if total == 3 else None
        m = wait_until(counted, 10, "status to count 3 connections")
    finally:
        for s in socks:
            s.close()
    assert m["pid"] == proxy.pid and m["role"] == "master" and m["state"] == "running"
    assert m["generation"] == 1 and m["rss"] > 0
    assert {w["pid"] for w in m["workers"]} == workers
    for w in m["workers"]:
        assert w["generation"] == 1 and w["state"] == "ready" and w["rss"] > 0
        assert w["heartbeat_age"] < 5 and w["tunnels"] == 0 and "requests" in w
    r = proxy.cli("status")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["PID", "ROLE", "GEN", "STATE"]
    assert any(line.split()[0] == str(proxy.pid) and "master" in line for line in lines)
    assert sum(1 for line in lines if " worker " in f" {line} ") == 2


def test_status_after_reload_shows_the_new_generation(proxy: Proxy) -> None:
    proxy.wait_workers(2)
    assert proxy.cli("reload").returncode == 0
    new = proxy.wait_workers(2, generation=2)

    def only_new() -> bool:
        doc = json.loads(proxy.cli("status", "--json").stdout)
        ws = doc["masters"][0]["workers"]
        return {w["pid"] for w in ws} == new and all(w["generation"] == 2 for w in ws)
    wait_until(only_new, 10, "status to show generation 2 only")
    time.sleep(0.1)
    proxy.send_signal(signal.SIGTERM)
