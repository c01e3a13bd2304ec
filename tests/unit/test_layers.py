"""The layer rules of STYLE.md, enforced by walking every module's imports with `ast`.

A module imports only from its own layer or the layers below it; on top of that:
http/* imports only L0 and its own package (and no socket, select, selectors or time
from the stdlib: it is sans-I/O); L2 (loop, netio, pipes, scoreboard) imports only L0;
the worker never imports the HTTP layer. A module missing from LAYERS but declaring
"(layer N)" in its opening comment or docstring is held to that layer; any other
module is unchecked until it is added.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "forkproxy"

# STYLE.md's module map, plus the helpers the L1 modules were split into.
LAYERS: dict[str, int] = {
    "errors": 0,
    "log": 0,
    "http.grammar": 1,
    "http.headers": 1,
    "http.parser": 1,
    "http.chunked": 1,
    "http.writer": 1,
    "config": 1,
    "confmodel": 1,
    "confcheck": 1,
    "confbuild": 1,
    "confvalues": 1,
    "units": 1,
    "uri": 1,
    "template": 1,
    "routes": 1,
    "loop": 2,
    "netio": 2,
    "pipes": 2,
    "scoreboard": 2,
    "upstream": 3,
    "tunnel": 3,
    "conn": 3,
    "worker": 4,
    "master": 5,
    "status": 5,
    "cli": 5,
    "__main__": 5,
    "control": 5,
}
L2_ONLY_L0 = {"loop", "netio", "pipes", "scoreboard"}
HTTP_FORBIDDEN_STDLIB = {"socket", "select", "selectors", "time", "ssl"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def declared_layer(source: str) -> int | None:
    """The "(layer N)" a module states in its first lines, if any."""
    opening = "\n".join(source.splitlines()[:12])
    match = re.search(r"\(layer (\d)\b", opening) or re.search(r"\blayer (\d)\b", opening)
    return int(match.group(1)) if match else None


def imports(tree: ast.AST, module: str, known: set[str]) -> list[tuple[int, str, bool]]:
    """(line, target, internal) for every import; internal targets are relative to the
    package ("http.parser"), external ones are top-level stdlib/third-party names."""
    package = module.rsplit(".", 1)[0] if "." in module else ""
    found: list[tuple[int, str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                if name == "forkproxy" or name.startswith("forkproxy."):
                    found.append((node.lineno, name[len("forkproxy."):], True))
                else:
                    found.append((node.lineno, name.split(".")[0], False))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            elif node.module == "forkproxy" or (node.module or "").startswith("forkproxy."):
                base = (node.module or "")[len("forkproxy."):]
            else:
                found.append((node.lineno, (node.module or "").split(".")[0], False))
                continue
            for alias in node.names:
                child = f"{base}.{alias.name}" if base else alias.name
                found.append((node.lineno, child if child in known else base, True))
    return found


def violations(sources: dict[str, str]) -> list[str]:
    """Every broken rule in `sources` (module name -> source text)."""
    known = set(sources)
    layers = dict(LAYERS)
    for name, source in sources.items():
        if name not in layers:
            declared = declared_layer(source)
            if declared is not None:
                layers[name] = declared
    problems: list[str] = []
    for module, source in sorted(sources.items()):
        if module not in layers:
            continue
        level = layers[module]
        for line, target, internal in imports(ast.parse(source), module, known):
            where = f"forkproxy/{module.replace('.', '/')}.py:{line}"
            if not internal:
                if module.startswith("http.") and target in HTTP_FORBIDDEN_STDLIB:
                    problems.append(f"{where}: http layer imports {target} (it is sans-I/O)")
                continue
            if target in ("", "http"):
                continue  # the packages themselves
            if module.startswith("http.") and not target.startswith("http.") and layers.get(target, 0) > 0:
                problems.append(f"{where}: http layer imports {target} (only L0 and http.*)")
            if module in L2_ONLY_L0 and layers.get(target, 0) > 0:
                problems.append(f"{where}: L2 module imports {target} (L{layers[target]}; only L0)")
            if module == "worker" and target.startswith("http."):
                problems.append(f"{where}: the worker imports {target} (it never parses HTTP)")
            if target in layers and layers[target] > level:
                problems.append(f"{where}: L{level} {module} imports L{layers[target]} {target}")
    return problems


def package_sources() -> dict[str, str]:
    return {module_name(p, PACKAGE): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_package_respects_the_layers() -> None:
    sources = package_sources()
    assert "routes" in sources and "http.parser" in sources
    assert violations(sources) == []


def test_the_map_names_real_modules_only_where_they_exist() -> None:
    sources = package_sources()
    for module, level in LAYERS.items():
        declared = declared_layer(sources[module]) if module in sources else None
        assert declared in (None, level), f"{module} declares layer {declared}, STYLE.md says {level}"


@pytest.mark.parametrize("module, source, expected", [
    ("http.parser", "from forkproxy.config import Config\n", "http layer imports config"),
    ("http.parser", "from ..routes import Route\n", "http layer imports routes"),
    ("http.parser", "import socket\n", "http layer imports socket"),
    ("http.parser", "import time as t\n", "http layer imports time"),
    ("loop", "from .http.parser import Head\n", "L2 module imports http.parser"),
    ("netio", "from forkproxy import config\n", "L2 module imports config"),
    ("config", "from . import worker\n", "L1 config imports L4 worker"),
    ("routes", "import forkproxy.conn\n", "L1 routes imports L3 conn"),
    ("worker", "from .http import parser\n", "the worker imports http.parser"),
    ("tunnel", "def f():\n    from .master import Master\n", "L3 tunnel imports L5 master"),
    ("newthing", '"""New (layer 2)."""\nfrom .conn import x\n', "L2 newthing imports L3 conn"),
])
def test_violations_are_found(module: str, source: str, expected: str) -> None:
    sources = {name: "" for name in LAYERS}
    sources[module] = source
    found = violations(sources)
    assert any(expected in problem for problem in found), found


@pytest.mark.parametrize("module, source", [
    ("http.parser", "import re\nfrom forkproxy.errors import BadRequest\nfrom . import grammar\n"),
    ("routes", "from forkproxy.http.headers import end_to_end\nfrom .config import Config\n"),
    ("conn", "from . import netio\nfrom .routes import Route\nfrom .tunnel import Tunnel\n"),
    ("unmapped", "from .master import Master\n"),  # not in the map: unchecked until added
])
def test_allowed_imports_pass(module: str, source: str) -> None:
    sources = {name: "" for name in LAYERS}
    sources[module] = source
    assert violations(sources) == []
