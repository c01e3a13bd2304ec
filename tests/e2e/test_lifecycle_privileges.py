"""Workers drop to user/group; the master keeps root to bind privileged ports."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys

import psutil
import pytest
from harness import DEFAULT_BODY, wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"),
    reason="needs root, unshare and nsenter (a private network namespace)")

# a new network namespace with loopback up, so a fixed privileged port is ours alone
NETNS = ["unshare", "--net", "sh", "-c", 'ip link set lo up 2>/dev/null; exec "$@"', "sh"]


def _in_netns(pid: int, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", "--target", str(pid), "--net", sys.executable, "-c", code],
                          capture_output=True, text=True, check=False, timeout=30)


def test_workers_run_as_nobody_on_port_80(make_proxy) -> None:  # type: ignore[no-untyped-def]
    nobody = pwd.getpwnam("nobody")
    body = DEFAULT_BODY.replace('"127.0.0.1:0"', '"127.0.0.1:80"')
    p = make_proxy(body, master={"user": "nobody"}, wrapper=NETNS)
    assert p.port == 80
    workers = p.wait_workers(2)
    assert psutil.Process(p.pid).uids().effective == 0
    for pid in workers:
        uids, gids = psutil.Process(pid).uids(), psutil.Process(pid).gids()
        assert (uids.real, uids.effective, uids.saved) == (nobody.pw_uid,) * 3
        assert gids.effective == nobody.pw_gid
    get = ("import http.client as h; c = h.HTTPConnection('127.0.0.1', 80, timeout=5); "
           "c.request('GET', '/'); print(c.getresponse().status)")
    r = _in_netns(p.pid, get)
    assert r.stdout.strip() == "502", r.stderr + p.log()  # served by a worker (dead upstream)
    # the master keeps its privileges: a reload still binds a new privileged port
    p.write_config(body=body.replace('"127.0.0.1:80"', '"127.0.0.1:80", "127.0.0.1:81"'),
                   master={"user": "nobody"})
    r = p.cli("reload")
    assert r.returncode == 0, r.stderr
    p.wait_log(r"listening on 127\.0\.0\.1:81")
    new = p.wait_workers(2, generation=2)
    assert all(psutil.Process(pid).uids().effective == nobody.pw_uid for pid in new)
    # a worker killed by the master's death still goes (PDEATHSIG survives the uid change)
    os.kill(p.pid, signal.SIGKILL)
    wait_until(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                               for pid in new), 10, "workers to exit after the master died")
