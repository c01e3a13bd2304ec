"""USR2: a new master inherits the listening sockets; the old one keeps serving if it fails."""

from __future__ import annotations

import json
import os
import signal

from harness import (
    DEFAULT_BODY,
    Proxy,
    can_connect,
    group_members,
    pids_alive,
    title,
    wait_until,
)


def _pid(path: object) -> int:
    """The pid in a pidfile; -1 while it is missing (it changes hands during an upgrade)."""
    try:
        with open(str(path)) as f:
            return int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return -1


def test_upgrade_then_winch_and_quit_the_old_master(proxy: Proxy) -> None:
    old_workers = proxy.wait_workers(2, generation=1)
    old = proxy.pid
    r = proxy.cli("upgrade")
    assert r.returncode == 0, r.stderr + proxy.log()
    new = _pid(proxy.pidfile)
    assert new != old and f"new master pid {new} is serving" in r.stdout
    assert _pid(proxy.dir / "forkproxy.pid.oldbin") == old
    assert (proxy.dir / "forkproxy.pid.sock.oldbin").exists()
    assert (proxy.dir / "forkproxy.pid.scoreboard.oldbin").exists()
    assert title(old).startswith("forkproxy: master (old) gen 1")
    assert title(new).startswith("forkproxy: master gen 2 -c ")
    new_workers = proxy.wait_workers(2, generation=2, master=new)
    proxy.wait_log(rf"\[{new} master\] listening on 127\.0\.0\.1:{proxy.port} \(inherited\)")
    status = json.loads(proxy.cli("status", "--json").stdout)
    assert [(m["pid"], m["oldbin"]) for m in status["masters"]] == [(new, False), (old, True)]

    proxy.send_signal(signal.SIGWINCH)  # the old master's workers drain; it stays for a rollback
    wait_until(lambda: not pids_alive(old_workers), 10, "old workers to exit after WINCH")
    assert can_connect(proxy.port)
    proxy.send_signal(signal.SIGQUIT)
    assert proxy.proc is not None and proxy.proc.wait(15) == 0
    assert not (proxy.dir / "forkproxy.pid.oldbin").exists()
    assert not (proxy.dir / "forkproxy.pid.sock.oldbin").exists()
    assert not (proxy.dir / "forkproxy.pid.scoreboard.oldbin").exists()
    assert pids_alive(new_workers) == new_workers and can_connect(proxy.port)

    r = proxy.cli("stop")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: not group_members(proxy.pgid), 10, "the new master and its workers to exit")
    assert proxy.files_left() == []


def test_a_failing_new_master_leaves_the_old_one_serving(proxy: Proxy) -> None:
    workers = proxy.wait_workers(2)
    proxy.write_config(body=DEFAULT_BODY.replace('"http://app"', '"http://nowhere"'))
    r = proxy.cli("upgrade")
    assert r.returncode == 1
    assert "upgrade failed: new master pid" in r.stderr and "before it was serving" in r.stderr
    assert _pid(proxy.pidfile) == proxy.pid
    assert not (proxy.dir / "forkproxy.pid.oldbin").exists()
    assert (proxy.dir / "forkproxy.pid.sock").exists()
    assert title(proxy.pid).startswith("forkproxy: master gen 1")
    assert proxy.worker_pids() == workers and can_connect(proxy.port)
    proxy.write_config()
    r = proxy.cli("reload")  # the control socket answers under its own name again
    assert r.returncode == 0, r.stderr


def test_old_master_takes_its_names_back_when_the_new_one_exits(proxy: Proxy) -> None:
    proxy.wait_workers(2)
    assert proxy.cli("upgrade").returncode == 0
    new = _pid(proxy.pidfile)
    proxy.wait_workers(2, master=new)
    os.kill(new, signal.SIGTERM)
    wait_until(lambda: proxy.pidfile.exists() and _pid(proxy.pidfile) == proxy.pid, 15,
               "the old master to take the pidfile back")
    assert title(proxy.pid).startswith("forkproxy: master gen 1")
    assert proxy.cli("reload").returncode == 0


def test_upgrade_refused_while_one_is_running_or_on_an_old_master(proxy: Proxy) -> None:
    proxy.wait_workers(2)
    assert proxy.cli("upgrade").returncode == 0
    proxy.send_signal(signal.SIGUSR2)  # to the old master
    proxy.wait_log("upgrade refused: this master is already an old master")
    new = _pid(proxy.pidfile)
    os.kill(new, signal.SIGTERM)
    wait_until(lambda: proxy.pidfile.exists() and _pid(proxy.pidfile) == proxy.pid, 15,
               "rollback of the names")
