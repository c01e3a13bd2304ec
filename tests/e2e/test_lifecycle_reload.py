"""Reload: generations, verdicts, listeners kept, added and removed (real master)."""

from __future__ import annotations

import re
import signal
import time

from harness import (
    DEFAULT_BODY,
    Proxy,
    can_connect,
    http_get,
    pids_alive,
    title,
    wait_until,
)

TWO_LISTENERS = DEFAULT_BODY.replace('listen = ["127.0.0.1:0"]', 'listen = ["127.0.0.1:0", "127.0.0.2:0"]')


def test_reload_forks_a_new_generation_then_drains_the_old(proxy: Proxy) -> None:
    old = proxy.wait_workers(2, generation=1)
    r = proxy.reload()
    assert r is not None and r.returncode == 0, r.stderr
    assert "generation 2 ready: 2 workers serving" in r.stdout
    new = proxy.wait_workers(2, generation=2)
    assert not new & old
    wait_until(lambda: not pids_alive(old), 10, "generation 1 to exit")
    assert title(proxy.pid).startswith("forkproxy: master gen 2 ")
    log = proxy.log()
    assert log.index("generation 2 ready") < log.index("generation 1 draining")
    assert http_get(proxy.port)[0] == 502  # served (the upstream is a closed port)


def test_hup_reloads(proxy: Proxy) -> None:
    proxy.wait_workers(2, generation=1)
    proxy.reload(via="signal")
    proxy.wait_workers(2, generation=2)
    proxy.wait_log("generation 1 finished")


def test_broken_config_keeps_the_old_workers_and_says_why(proxy: Proxy) -> None:
    old = proxy.wait_workers(2, generation=1)
    proxy.write_config(body=DEFAULT_BODY.replace('"http://app"', '"http://ap"'))
    r = proxy.reload()
    assert r is not None and r.returncode == 1
    assert 'server[0].location[0].proxy_pass: unknown upstream "ap"' in r.stderr
    proxy.reload(via="signal")
    proxy.wait_log("reload failed: server", count=2)
    time.sleep(0.3)
    assert proxy.worker_pids() == old
    assert http_get(proxy.port)[0] == 502


def test_toml_syntax_error_is_reported_too(proxy: Proxy) -> None:
    old = proxy.wait_workers(2)
    proxy.write_config(raw=proxy.config_text() + "\n[[server]\n")
    r = proxy.reload()
    assert r is not None and r.returncode == 1 and "TOML syntax error" in r.stderr
    assert proxy.worker_pids() == old


def test_workers_that_cannot_start_fail_the_reload(proxy: Proxy) -> None:
    old = proxy.wait_workers(2, generation=1)
    proxy.write_config(master={"access_log": str(proxy.dir / "missing" / "access.log")})
    r = proxy.reload()
    assert r is not None and r.returncode == 1
    assert "reload failed: generation 2" in r.stderr and "before it was ready" in r.stderr
    wait_until(lambda: proxy.worker_pids() == old, 10, "failed generation to be gone")
    assert http_get(proxy.port)[0] == 502
    proxy.write_config()
    r = proxy.reload()
    assert r is not None and r.returncode == 0 and "generation 3 ready" in r.stdout


def test_workers_not_ready_in_time_fail_the_reload(proxy: Proxy) -> None:
    old = proxy.wait_workers(2, generation=1)
    proxy.write_config(master={"ready_timeout": "1ms"})
    r = proxy.reload()
    assert r is not None and r.returncode == 1
    assert "not ready after" in r.stderr, r.stderr
    wait_until(lambda: proxy.worker_pids() == old, 10, "the failed generation to be killed")


def test_port_zero_keeps_its_socket_across_reloads(proxy: Proxy) -> None:
    port = proxy.port
    for gen in (2, 3):
        r = proxy.reload()
        assert r is not None and r.returncode == 0, r.stderr
        proxy.wait_workers(2, generation=gen)
    assert proxy.log().count("listening on") == 1
    assert http_get(port)[0] == 502


def test_reload_adds_and_removes_listen_addresses(proxy: Proxy) -> None:
    first = proxy.port
    proxy.write_config(body=TWO_LISTENERS)
    r = proxy.reload()
    assert r is not None and r.returncode == 0, r.stderr
    (m,) = proxy.wait_log(r"listening on 127\.0\.0\.2:(\d+)")
    second = int(m.group(1))
    assert http_get(second, host="127.0.0.2")[0] == 502
    assert http_get(first)[0] == 502
    proxy.write_config()  # back to one address: the second closes once generation 2 is gone
    r = proxy.reload()
    assert r is not None and r.returncode == 0, r.stderr
    proxy.wait_log("generation 2 finished")
    wait_until(lambda: not can_connect(second, "127.0.0.2"), 10, "the removed listener to close")
    assert http_get(first)[0] == 502


def test_an_address_that_cannot_be_bound_fails_the_reload(proxy: Proxy) -> None:
    old = proxy.wait_workers(2)
    taken = proxy.port
    # the same port on another host of 127/8 while the first is ours: bind it twice in config
    proxy.write_config(body=DEFAULT_BODY.replace('"127.0.0.1:0"', f'"127.0.0.1:0", "0.0.0.0:{taken}"'))
    r = proxy.reload()
    assert r is not None and r.returncode == 1
    assert f"cannot listen on 0.0.0.0:{taken}" in r.stderr
    assert proxy.worker_pids() == old


def test_a_burst_of_hups_ends_with_one_serving_generation(proxy: Proxy) -> None:
    proxy.wait_workers(2, generation=1)
    for _ in range(5):
        proxy.send_signal(signal.SIGHUP)
        time.sleep(0.02)
    def settled() -> bool:
        log = proxy.log()
        return (log.count("reloading ") == log.count("reload: starting generation")
                and log.count("reload: starting generation") == len(re.findall(r"generation \d+ ready", log)) - 1
                and len(proxy.workers()) == 2 and not proxy.worker_pids(draining=True))
    wait_until(settled, 15, "the reloads to settle with one generation left")
    assert 2 <= proxy.log().count("reloading ") <= 5  # coalesced: never more reloads than HUPs
    assert len(proxy.worker_pids(draining=False)) == 2
    assert http_get(proxy.port)[0] == 502


def test_reload_changes_the_worker_count(proxy: Proxy) -> None:
    proxy.wait_workers(2, generation=1)
    proxy.write_config(master={"workers": 3})
    r = proxy.reload()
    assert r is not None and r.returncode == 0 and "3 workers" in r.stdout
    proxy.wait_workers(3, generation=2)
