"""The master's lifecycle with real processes and real signals (no request needed)."""

from __future__ import annotations

import os
import signal
import socket
import time

import psutil
import pytest
from harness import Proxy, pids_alive, title, wait_until


def test_start_and_term_leave_nothing_behind(proxy: Proxy) -> None:
    assert proxy.port > 0
    workers = proxy.wait_workers(2, generation=1)
    assert title(proxy.pid).startswith("forkproxy: master gen 1 -c ")
    assert proxy.pidfile.read_text().strip() == str(proxy.pid)
    assert {"forkproxy.pid", "forkproxy.pid.sock", "forkproxy.pid.scoreboard"} <= set(proxy.files_left())
    assert proxy.stop(signal.SIGTERM) == 0
    assert not pids_alive(workers)
    assert proxy.files_left() == []


def test_int_and_quit_stop_too(make_proxy) -> None:  # type: ignore[no-untyped-def]
    for sig in (signal.SIGINT, signal.SIGQUIT):
        p = make_proxy()
        workers = p.wait_workers(2)
        assert p.stop(sig) == 0
        assert not pids_alive(workers)
        assert p.files_left() == []


def test_killed_worker_is_replaced(proxy: Proxy) -> None:
    before = proxy.wait_workers(2)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    after = wait_until(lambda: (w := proxy.worker_pids(1, draining=False)) and len(w) == 2
                       and victim not in w and w, 10, "a replacement worker")
    assert len(after & before) == 1
    proxy.wait_log(r"killed by SIGKILL; respawning now")


def test_crash_loop_is_throttled(proxy: Proxy) -> None:
    seen: set[int] = set()
    deadline = time.monotonic() + 6.0
    while time.monotonic() < deadline:
        for pid in proxy.worker_pids():
            if pid not in seen:
                seen.add(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.01)
    # without back-off this would be hundreds of forks; with it, a handful per index
    assert 4 <= len(seen) <= 24, len(seen)
    assert "respawning in" in proxy.log()
    assert proxy.alive()


def test_workers_exit_when_the_master_dies(proxy: Proxy) -> None:
    workers = proxy.wait_workers(2)
    os.kill(proxy.pid, signal.SIGKILL)
    wait_until(lambda: not pids_alive(workers), 10, "orphaned workers to exit")


def test_workers_ignore_int_hup_winch_sent_to_them(proxy: Proxy) -> None:
    workers = proxy.wait_workers(2)
    for pid in workers:
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGWINCH):
            os.kill(pid, sig)
    time.sleep(0.5)
    assert pids_alive(workers) == workers


def test_ttin_and_ttou_change_the_worker_count(proxy: Proxy) -> None:
    proxy.wait_workers(2)
    proxy.send_signal(signal.SIGTTIN)
    three = proxy.wait_workers(3, generation=1)
    proxy.send_signal(signal.SIGTTOU)
    proxy.wait_workers(2, generation=1)  # signals of one kind do not queue: one at a time
    proxy.send_signal(signal.SIGTTOU)
    one = proxy.wait_workers(1, generation=1)
    assert one < three
    wait_until(lambda: len(proxy.workers()) == 1, 10, "retired workers to exit")
    proxy.send_signal(signal.SIGTTOU)  # never below one worker
    time.sleep(0.3)
    assert proxy.worker_pids() == one


def test_usr1_reopens_the_error_log(proxy: Proxy) -> None:
    proxy.wait_workers(2)
    moved = proxy.error_log.with_name("error.log.1")
    os.rename(proxy.error_log, moved)
    proxy.send_signal(signal.SIGUSR1)
    wait_until(proxy.error_log.exists, 10, "a new error log")
    proxy.send_signal(signal.SIGTTIN)  # something that logs
    wait_until(lambda: "TTIN" in proxy.error_log.read_text(), 10, "a line in the new log")
    assert "reopened the logs" in proxy.error_log.read_text() + moved.read_text()


def test_second_master_on_the_same_pidfile_refuses(proxy: Proxy) -> None:
    r = proxy.cli()  # `python -m forkproxy -c FILE` again
    assert r.returncode == 1
    assert f"already running as pid {proxy.pid}" in r.stderr
    assert proxy.alive() and proxy.pidfile.read_text().strip() == str(proxy.pid)


def test_stale_pidfile_and_socket_are_replaced(make_proxy) -> None:  # type: ignore[no-untyped-def]
    p = make_proxy(start=False)
    p.pidfile.write_text(f"{os.getpid()}\n")  # alive, but not a forkproxy master
    p.start()
    assert p.pidfile.read_text().strip() == str(p.pid)
    assert p.stop() == 0


def test_winch_drains_workers_and_hup_brings_them_back(proxy: Proxy) -> None:
    # the harness starts the master in a new session: no terminal, so WINCH counts
    workers = proxy.wait_workers(2, generation=1)
    proxy.send_signal(signal.SIGWINCH)
    wait_until(lambda: not pids_alive(workers), 10, "workers to drain after WINCH")
    assert proxy.alive()
    proxy.send_signal(signal.SIGHUP)
    proxy.wait_workers(2, generation=2)


def test_master_title_and_worker_titles(proxy: Proxy) -> None:
    proxy.wait_workers(2)
    titles = sorted(title(p.pid) for p in proxy.workers())
    assert titles == ["forkproxy: worker 0 gen 1", "forkproxy: worker 1 gen 1"]
    assert psutil.Process(proxy.pid).cmdline()[0].startswith("forkproxy: master gen 1")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGQUIT])
def test_nothing_respawns_during_a_stop(make_proxy, sig: int) -> None:  # type: ignore[no-untyped-def]
    p = make_proxy()
    p.wait_workers(2)
    p.send_signal(sig)
    assert p.stop(sig) == 0
    assert "respawning" not in p.log()


def test_a_stop_signal_repeated_until_exit_keeps_exit_code_0(make_proxy) -> None:  # type: ignore[no-untyped-def]
    # Python restores default signal actions while it finalises: a TERM then must not kill
    p = make_proxy()
    p.wait_workers(2)
    assert p.proc is not None
    deadline = time.monotonic() + 20
    while p.proc.poll() is None and time.monotonic() < deadline:
        p.proc.send_signal(signal.SIGTERM)
        time.sleep(0.001)
    assert p.stop() == 0


def test_systemd_notify_protocol(make_proxy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    try:
        p = make_proxy(env={"NOTIFY_SOCKET": path})
        first = sock.recv(4096).decode().split("\n")
        assert "READY=1" in first and f"MAINPID={p.pid}" in first
        assert p.cli("reload").returncode == 0
        assert "RELOADING=1" in sock.recv(4096).decode().split("\n")
        again = sock.recv(4096).decode().split("\n")
        assert "READY=1" in again and "STATUS=generation 2 serving" in again
        p.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in sock.recv(4096).decode().split("\n")
        assert p.stop() == 0
    finally:
        sock.close()


def test_a_hung_worker_is_aborted_then_killed_and_replaced(proxy: Proxy) -> None:
    workers = proxy.wait_workers(2)
    victim = min(workers)
    os.kill(victim, signal.SIGSTOP)  # its heartbeat stops; SIGABRT waits, SIGKILL does not
    wait_until(lambda: not pids_alive([victim]), 50, "the hung worker to be killed")
    replaced = proxy.wait_workers(2)
    assert victim not in replaced
    log = proxy.log()
    assert f"(pid {victim}) silent for" in log and f"(pid {victim}) still alive past its deadline: SIGKILL" in log


def test_rlimit_nofile_is_raised_to_fit_worker_connections(make_proxy) -> None:  # type: ignore[no-untyped-def]
    p = make_proxy(master={"worker_connections": 2000}, wrapper=["prlimit", "--nofile=1024:20000"])
    for pid in [p.pid, *p.wait_workers(2)]:
        soft, _ = psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE)
        assert soft >= 2000 * 3, soft


def test_rlimit_nofile_beyond_the_hard_limit_is_raised_or_reported(make_proxy) -> None:  # type: ignore[no-untyped-def]
    p = make_proxy(master={"worker_connections": 2000}, wrapper=["prlimit", "--nofile=1024:4096"])
    for pid in p.wait_workers(2):
        soft, hard = psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE)
        # root with CAP_SYS_RESOURCE raises the hard limit too; without it, the most it may
        assert soft >= 2000 * 3 or (soft == hard == 4096 and "below the 6128" in p.log()), (soft, hard)


def test_winch_is_ignored_in_the_foreground_of_a_terminal(make_proxy) -> None:  # type: ignore[no-untyped-def]
    p = make_proxy(start=False)
    p.start(terminal=True)
    workers = p.wait_workers(2)
    p.send_signal(signal.SIGWINCH)  # what a terminal resize sends
    os.killpg(p.pgid, signal.SIGWINCH)  # ... to the whole foreground group
    p.wait_log("WINCH ignored")
    time.sleep(0.5)
    assert pids_alive(workers) == workers
    os.killpg(p.pgid, signal.SIGINT)  # Ctrl-C: the master stops, workers follow it only
    assert p.stop(signal.SIGINT) == 0
    assert "fast stop" in p.log()
