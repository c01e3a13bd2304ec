"""The command line and its machinery: argument parsing, locating a master from a config,
the pidfile rules, the control-socket protocol and the listener set (no master process)."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from forkproxy import cli, control, locate, master, pidfile
from forkproxy.config import loads
from forkproxy.listenset import ENV_FDS, ListenerSet

CONFIG = """
[master]
workers = 1
pidfile = "run/fp.pid"

[upstream.app]
servers = ["127.0.0.1:9"]

[[server]]
listen = ["127.0.0.1:0"]

[[server.location]]
path = "/"
proxy_pass = "http://app"
"""


def test_parser_accepts_c_before_or_after_the_command() -> None:
    p = cli._parser()
    a = p.parse_args(["-c", "x.toml", "reload"])
    b = p.parse_args(["reload", "-c", "x.toml", "--timeout", "5"])
    assert (a.command, a.config) == ("reload", "x.toml")
    assert (b.command, b.config, b.timeout) == ("reload", "x.toml", 5.0)
    assert p.parse_args(["status", "--json"]).json is True
    assert p.parse_args(["check", "--dump"]).dump is True
    assert p.parse_args([]).command is None


def test_verbs_and_signals_come_from_one_table() -> None:
    by_verb = {verb: sig for sig, _, verb in master.SIGNALS if verb}
    assert by_verb == cli.VERB_SIGNALS
    assert set(cli.VERB_HELP) == set(by_verb)
    for sig, method, _ in master.SIGNALS:
        assert callable(getattr(master.Master, method)), (sig, method)
    assert signal.SIGCHLD in {s for s, _, _ in master.SIGNALS}  # handled, never SIG_IGN


def test_locate_valid_config(tmp_path: Path) -> None:
    path = tmp_path / "fp.toml"
    path.write_text(CONFIG)
    where = locate.paths(str(path))
    assert where.pidfile == str(tmp_path / "run" / "fp.pid")
    assert where.control == where.pidfile + ".sock"
    assert where.config_error == ""
    assert where.oldbin().pidfile == where.pidfile + ".oldbin"


def test_locate_broken_config_still_finds_the_master(tmp_path: Path) -> None:
    path = tmp_path / "fp.toml"
    path.write_text(CONFIG.replace('"http://app"', '"http://nope"'))
    where = locate.paths(str(path))
    assert where.pidfile == str(tmp_path / "run" / "fp.pid") and "nope" in where.config_error
    path.write_text("[master\nthis is not toml")
    where = locate.paths(str(path))
    assert where.pidfile == str(tmp_path / "forkproxy.pid") and "TOML" in where.config_error
    path.write_text(CONFIG.replace('workers = 1', 'workers = 1\ncontrol_socket = "ctl"').replace("0\"]", "x\"]"))
    assert locate.paths(str(path)).control == str(tmp_path / "ctl")


def test_pidfile_is_trusted_only_for_a_forkproxy_master(tmp_path: Path) -> None:
    path = str(tmp_path / "p.pid")
    assert pidfile.read(path) is None
    pidfile.write(path, os.getpid())
    assert pidfile.read(path) == os.getpid()
    assert pidfile.running_master(path) is None  # pytest is not a forkproxy master
    code = ("import setproctitle, time; setproctitle.setproctitle('forkproxy: master gen 1'); "
            "print(flush=True); time.sleep(30)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline()
        pidfile.write(path, child.pid)
        assert pidfile.running_master(path) == child.pid
    finally:
        child.kill()
        child.wait()
    assert pidfile.running_master(path) is None  # dead (and reaped)
    pidfile.remove(path, os.getpid())  # not ours: kept
    assert os.path.exists(path)
    pidfile.remove(path, child.pid)
    assert not os.path.exists(path)
    Path(path).write_text("garbage\n")
    assert pidfile.read(path) is None


def _serve(server: control.ControlServer, sel: selectors.BaseSelector, stop: threading.Event) -> None:
    while not stop.is_set():
        for key, _ in sel.select(0.05):
            key.data()


def test_control_protocol_round_trip_and_late_answers(tmp_path: Path) -> None:
    sel = selectors.DefaultSelector()
    pending: list[control.Reply] = []

    def dispatch(verb: str, reply: control.Reply) -> None:
        if verb == "later":
            pending.append(reply)
        else:
            reply(verb == "ok", f"you said {verb}")

    path = str(tmp_path / "ctl.sock")
    server = control.ControlServer(path, sel, dispatch)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    stop = threading.Event()
    t = threading.Thread(target=_serve, args=(server, sel, stop), daemon=True)
    t.start()
    try:
        assert control.request(path, "ok", 5) == {"ok": True, "message": "you said ok"}
        assert control.request(path, "no", 5)["ok"] is False
        got: dict[str, object] = {}
        waiter = threading.Thread(target=lambda: got.update(control.request(path, "later", 5)))
        waiter.start()
        while not pending:
            time.sleep(0.01)
        pending[0](True, "done at last")
        waiter.join(5)
        assert got == {"ok": True, "message": "done at last"}
        with pytest.raises(control.ControlError):
            control.request(str(tmp_path / "missing.sock"), "ok", 1)
        with pytest.raises(OSError, match="in use by another master"):
            control.ControlServer(path, selectors.DefaultSelector(), dispatch)
    finally:
        stop.set()
        t.join(5)
        server.close()
    assert not os.path.exists(path)
    stale = socket.socket(socket.AF_UNIX)  # bound, never listening: stale, replaced
    stale.bind(path)
    again = control.ControlServer(path, selectors.DefaultSelector(), dispatch)
    again.close()
    stale.close()


def test_listener_set_keeps_adds_prunes_and_exports() -> None:
    one = loads(CONFIG)
    two = loads(CONFIG.replace('["127.0.0.1:0"]', '["127.0.0.1:0", "127.0.0.2:0"]'))
    ls = ListenerSet()
    first = ls.ensure(one)
    assert len(first) == 1 and first[0].address == ("127.0.0.1", 0) and first[0].bound[1] > 0
    both = ls.ensure(two)
    assert both[0] is first[0] and len(both) == 2  # the port-0 socket is kept, not re-bound
    ls.prune([two])
    assert len(ls.all()) == 2
    ls.prune([one])
    assert ls.all() == first
    text, fds = ls.export()
    assert fds == [first[0].sock.fileno()] and str(fds[0]) in text
    dup = os.dup(fds[0])
    (item,) = json.loads(text)
    env = {ENV_FDS: json.dumps([{**item, "fd": dup}])}  # not str.replace: fd 12 is in "127."
    adopted = ListenerSet()
    adopted.adopt_from_env(env)
    assert ENV_FDS not in env
    (inherited,) = adopted.ensure(one)
    assert inherited.bound == first[0].bound and inherited.sock.fileno() == dup
    adopted.close_all()
    ls.close_all()


def test_a_failed_bind_closes_only_what_that_call_bound() -> None:
    one = loads(CONFIG)
    ls = ListenerSet()
    (kept,) = ls.ensure(one)
    port = kept.bound[1]
    clash = loads(CONFIG.replace('["127.0.0.1:0"]', f'["127.0.0.1:0", "127.0.0.3:0", "0.0.0.0:{port}"]'))
    with pytest.raises(OSError, match=f"cannot listen on 0.0.0.0:{port}"):
        ls.ensure(clash)
    assert ls.all() == [kept]
    ls.close_all()
