# The two commands a new user needs: `make run` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= disable

.PHONY: run test bench-throughput bench-learning bench-agent bench-dashboard clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[agent,learner,sim,dashboard,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/robot-app demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest

$(VENV)/.bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

bench-throughput: $(VENV)/.bench
	$(BIN)/python bench/throughput.py

bench-learning: $(VENV)/.bench
	$(BIN)/python bench/learning.py

bench-agent: $(STAMP)
	$(BIN)/python bench/agent.py

bench-dashboard: $(STAMP)
	$(BIN)/python bench/dashboard.py

clean:
	rm -rf $(VENV) runs .pytest_cache
