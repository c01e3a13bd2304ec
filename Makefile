# The two commands of the README: `make run` and `make test`. Each creates the
# virtualenv under .venv on first use and installs what it needs.
# The distribution's python3 when it is 3.11 or newer (on the bench machine Debian's build
# runs forkproxy 13 % faster than a pyenv build of 3.11.7: bench/RESULTS.md); else the first
# python3 on PATH. `make PYTHON=...` chooses another (remove .venv first).
PYTHON ?= $(shell /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
            && echo /usr/bin/python3 || echo python3)
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test bench bench-quick lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(PY) -m bench.demo -c forkproxy.toml

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench run

bench-quick: $(VENV)/.installed
	$(PY) -m bench run --quick

lint: $(VENV)/.installed
	$(PY) -m pip install -q mypy ruff types-psutil types-toml
	$(PY) -m ruff check forkproxy tests bench
	$(PY) -m mypy --strict forkproxy

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
