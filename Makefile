# Two entry points for a fresh Debian machine (run as root for the apt step):
#   make demo   set up, then run the main job on sample-logs/ → out/report.{html,md,txt}
#   make test   set up, then run the test suite against real SoftHSM2 + pkcs11-spy
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup system-deps demo test bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

system-deps:
	bash scripts/install-system-deps.sh

setup: system-deps $(VENV)/.installed

demo: setup
	$(VENV)/bin/p11lens run sample-logs/*.log -o out

test: setup
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) out .pytest_cache
