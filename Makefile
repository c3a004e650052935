# Two entry points for a fresh Debian machine (run as root for the apt step):
#   make demo   set up, then run the main job on sample-logs/ → out/report.{html,md,txt}
#   make test   set up, then run the test suite against real SoftHSM2 + pkcs11-spy
VENV ?= .venv
PY := $(VENV)/bin/python
CARGO_HOME ?= $(HOME)/.cargo
export PATH := $(CARGO_HOME)/bin:$(PATH)
NATIVE_SOURCES := $(shell find native -name '*.rs' -not -path '*/target/*' -o -name Cargo.toml -not -path '*/target/*')

.PHONY: setup system-deps demo test bench clean sample-logs wheel-check

# pip builds the native engine (native/, Rust) through maturin: a change there re-installs.
$(VENV)/.installed: pyproject.toml $(NATIVE_SOURCES)
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
	cargo test -q --manifest-path native/Cargo.toml -p p11lens-core
	$(VENV)/bin/pytest -q

# Remake the small driver traces in sample-logs/ (real SoftHSM2 through pkcs11-spy, fixed seeds).
sample-logs: setup
	$(VENV)/bin/p11lens drive --workload smoke --seed 1 -o sample-logs/smoke.log
	$(VENV)/bin/p11lens drive --workload mixed --ops 300 --seed 1 -o sample-logs/mixed.log
	$(VENV)/bin/p11lens drive --workload errors --seed 1 -o sample-logs/errors.log
	$(VENV)/bin/p11lens drive --workload threads --ops 80 --threads 4 --seed 1 -o sample-logs/threads.log
	$(VENV)/bin/p11lens drive --workload processes --ops 60 --processes 3 --seed 1 -o sample-logs/processes.log

# The wheel and sdist as shipped (scripts/wheel-check.sh): `maturin build --release` and
# `maturin sdist`; the wheel installed in a fresh venv and run (--version, parse smoke.log, row
# count) with no Rust toolchain on PATH; a wheel built from the sdist (cargo present).
# About 1.5 minutes: not part of `make test`.
wheel-check:
	bash scripts/wheel-check.sh

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) out .pytest_cache native/target

# The long mutation fuzz of real traces (fuzz/run.py; issue 15): FUZZ_CASES cases, every
# FUZZ_RUN_EVERY-th also through `p11lens run`; minimised findings and summary.json in out/fuzz/.
# Exit 1 when something was found.  About 40 cases/s on one core: 100,000 take ~45 minutes.
FUZZ_CASES ?= 100000
FUZZ_SEED ?= 1
FUZZ_RUN_EVERY ?= 200
.PHONY: fuzz
fuzz: setup
	$(PY) fuzz/run.py --cases $(FUZZ_CASES) --seed $(FUZZ_SEED) --run-every $(FUZZ_RUN_EVERY) --save out/fuzz
