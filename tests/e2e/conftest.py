"""Fixtures for end-to-end tests: real masters in temp dirs, never leaked."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The e2e helpers (harness, client, backends) import as top-level modules whatever
# pytest's import mode; the repository root makes `bench` importable too.
for _path in (Path(__file__).resolve().parent, Path(__file__).resolve().parents[2]):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from harness import DEFAULT_BODY, Proxy  # noqa: E402

ProxyFactory = Callable[..., Proxy]


@pytest.fixture
def make_proxy(tmp_path: Path) -> Iterator[ProxyFactory]:
    """`make_proxy(body=..., workers=2, master={...}, start=True)` -> a running Proxy.

    Every proxy made here is SIGKILLed (its whole process group) when the test ends,
    whatever happened in it.
    """
    made: list[Proxy] = []

    def make(body: str = DEFAULT_BODY, *, start: bool = True, **kwargs: Any) -> Proxy:
        proxy = Proxy(tmp_path / f"proxy{len(made)}", body, **kwargs)
        made.append(proxy)
        if start:
            proxy.start()
        return proxy

    yield make
    for proxy in made:
        proxy.kill_all()
    for proxy in made:  # a bug a worker survived (or did not) still fails the test
        bugs = [line for line in proxy.log().splitlines() if "internal error" in line or " crashed" in line]
        assert not bugs, bugs[:5]


@pytest.fixture
def proxy(make_proxy: ProxyFactory) -> Proxy:
    """A running master with 2 workers and the default (backend-less) config."""
    return make_proxy()
